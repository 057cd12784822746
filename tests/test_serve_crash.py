"""``dnsvr serve`` killed (SIGKILL) while an add job writes: the index opens, verifies and keeps
every committed video; a verdict whose request returned is still there."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from serve_helpers import TOKEN, serve_data  # noqa: E402,F401 - the fixture

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_kill_during_add_job_loses_nothing_committed(serve_data, tmp_path):
    from dnsvr.index.video_index import VideoIndex
    from dnsvr.synthetic import render_clip, write_video

    index = serve_data.fresh_index(tmp_path / "idx")
    many = serve_data.root / "many"
    many.mkdir(exist_ok=True)
    for i in range(24):  # three commits of 8
        path = many / f"m{i:02d}.mp4"
        if not path.exists():
            write_video(path, render_clip(seed=700 + i, seconds=3.0, fps=5, size=(96, 64)), fps=5)
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), DNSVR_TOKEN=TOKEN)
    proc = subprocess.Popen([sys.executable, "-m", "dnsvr", "serve", str(index), "--port", str(port),
                             "--media-root", str(serve_data.root)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    try:
        with httpx.Client(timeout=30) as c:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if c.get(url + "/api/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline and proc.poll() is None, "the server did not start"
                time.sleep(0.2)
            r = c.put(url + "/api/verdicts", json={"query": "orig_1", "video_id": "orig_1_crop", "verdict": "copy"},
                      headers=auth)
            assert r.status_code == 200
            job = c.post(url + "/api/jobs/add", json={"paths": ["many"]}, headers=auth).json()
            committed = 0
            deadline = time.monotonic() + 300
            while committed == 0:  # kill once the first batch has committed, mid-job
                state = c.get(f"{url}/api/jobs/{job['id']}").json()
                committed = state["done"]
                assert state["state"] in ("queued", "running"), state
                assert time.monotonic() < deadline, "no commit seen"
                time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    with VideoIndex.open(index) as ix:  # a writer open also recovers any uncommitted tail
        assert ix.verify().ok
        have = [v for v in ix.ids() if v.startswith("m")]
        assert len(have) >= committed and len(have) % 8 == 0 and len(have) < 24
        assert "orig_1" in ix and len(ix) == 7 + len(have)
    from dnsvr.serve.verdicts import VerdictStore

    store = VerdictStore(index)
    try:
        assert store.ground_truth() == {"orig_1": {"orig_1_crop": "copy"}}
    finally:
        store.close()

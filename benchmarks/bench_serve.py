"""Load test of ``dnsvr serve``: concurrent searches while a background job adds videos.

Builds (or reuses with ``--reuse``) a ``lite`` index of N generated videos (:mod:`dnsvr.synthetic`,
default 300 clips of 4 s at 160×96), starts ``dnsvr serve`` as a child process on 127.0.0.1 (a free
port; never another address), and runs two phases with the same client settings, one after the other:

- ``quiet``: ``--requests`` searches from ``--clients`` threads (random indexed ids and, one in
  ``--path-every``, a file under the media root, which the server decodes and extracts);
- ``with_add_job``: an add job of ``--add`` new videos is submitted, then the same number of
  searches run while it writes (the rows say how many searches overlapped the job).

Each phase reports p50/p90/p99 latency, throughput and failed requests (any status other than
200); the run then waits for the job, stops the server, and verifies the index. Bounded: a fixed
number of requests, a per-request timeout, and an overall ``--deadline`` after which the server is
stopped and the run fails.

Usage::

    PYTHONPATH=src python benchmarks/bench_serve.py [--videos 300] [--add 40] [--requests 300]
        [--clients 4] [--workdir /tmp/bench_serve] [--reuse] [--out benchmarks/results/serve.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import secrets
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

TOKEN = secrets.token_urlsafe(18)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_videos(folder: Path, n: int, seed0: int, seconds: float) -> None:
    from dnsvr.synthetic import render_clip, write_video

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        path = folder / f"v{seed0 + i:05d}.mp4"
        if not path.exists():
            write_video(path, render_clip(seed=seed0 + i, seconds=seconds, fps=5, size=(160, 96)), fps=5)


def build(workdir: Path, videos: int, add: int, seconds: float, reuse: bool) -> tuple[Path, Path, Path]:
    from dnsvr.index.video_index import VideoIndex

    media = workdir / "media"
    index = workdir / "index"
    if reuse and index.is_dir():
        # the add job of an earlier run: remove those videos again so that every run adds the same
        with VideoIndex.open(index) as ix:
            extra = [v for v in ix.ids() if v.startswith("v1")]
            if extra:
                ix.remove(extra)
                ix.compact()
        return media, index, media / "new"
    import shutil

    shutil.rmtree(workdir, ignore_errors=True)
    t = time.perf_counter()
    _write_videos(media / "base", videos, 0, seconds)
    _write_videos(media / "new", add, 10_000, seconds)
    print(f"generated {videos + add} videos in {time.perf_counter() - t:.1f} s", flush=True)
    t = time.perf_counter()
    with VideoIndex.create(index) as ix:
        report = ix.add([media / "base"], progress=False)
    print(f"indexed {len(report.added)} videos in {time.perf_counter() - t:.1f} s", flush=True)
    return media, index, media / "new"


class Server:
    """``dnsvr serve`` as a child process on 127.0.0.1; stopped (by its pid) on exit."""

    def __init__(self, index: Path, media: Path, concurrency: int, log: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), DNSVR_TOKEN=TOKEN)
        self.log = open(log, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dnsvr", "serve", str(index), "--host", "127.0.0.1", "--port", str(self.port),
             "--media-root", str(media), "--concurrency", str(concurrency), "--timeout", "60"],
            env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, client: Any, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}; see {self.log.name}")
            try:
                if client.get(self.url + "/api/health", timeout=2).status_code == 200:
                    return
            except Exception:  # noqa: BLE001 - not listening yet
                pass
            time.sleep(0.2)
        raise RuntimeError("the server did not become ready")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()


def run_phase(url: str, ids: list[str], paths: list[str], requests: int, clients: int, path_every: int,
              seed: int, job_running: Any = None) -> dict[str, Any]:
    import httpx

    rng = random.Random(seed)
    plan = []
    for i in range(requests):
        if path_every and i % path_every == path_every - 1:
            plan.append({"path": rng.choice(paths), "top_k": 10})
        else:
            plan.append({"video_id": rng.choice(ids), "top_k": 10})
    lock = threading.Lock()
    latencies: list[float] = []
    failures: list[str] = []
    overlapped = [0]
    nxt = [0]

    def worker() -> None:
        with httpx.Client(timeout=90.0) as c:
            while True:
                with lock:
                    if nxt[0] >= len(plan):
                        return
                    body = plan[nxt[0]]
                    nxt[0] += 1
                during = job_running is not None and job_running()
                t = time.perf_counter()
                try:
                    r = c.post(url + "/api/search", json=body)
                    ok = r.status_code == 200 and r.json()["queries"][0]["results"]
                    why = "" if ok else f"{r.status_code}: {r.text[:200]}"
                except Exception as exc:  # noqa: BLE001 - a failed request is counted, not fatal
                    ok, why = False, f"{type(exc).__name__}: {exc}"
                dt = time.perf_counter() - t
                with lock:
                    if ok:
                        latencies.append(dt)
                    else:
                        failures.append(why)
                    if during:
                        overlapped[0] += 1

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t0
    lat = np.asarray(latencies) * 1000.0
    p50, p90, p99 = np.percentile(lat, [50, 90, 99]) if len(lat) else (float("nan"),) * 3
    return {"requests": requests, "ok": len(latencies), "failed": len(failures), "failures": failures[:5],
            "seconds": round(wall, 3), "throughput_rps": round(len(latencies) / wall, 3),
            "p50_ms": round(float(p50), 2), "p90_ms": round(float(p90), 2), "p99_ms": round(float(p99), 2),
            "searches_during_job": overlapped[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--videos", type=int, default=300)
    ap.add_argument("--add", type=int, default=40)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--concurrency", type=int, default=2, help="the server's --concurrency")
    ap.add_argument("--path-every", type=int, default=10, help="one search in N by file path (0: none)")
    ap.add_argument("--deadline", type=float, default=1500.0, help="seconds before the run gives up")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/bench_serve"))
    ap.add_argument("--reuse", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "serve.json")
    args = ap.parse_args()

    import httpx

    from dnsvr.index.video_index import VideoIndex

    load_start = list(os.getloadavg())
    media, index, new = build(args.workdir, args.videos, args.add, args.seconds, args.reuse)
    with VideoIndex.open(index, readonly=True) as ix:
        ids = ix.ids()
    paths = [f"base/{p.name}" for p in sorted((media / "base").glob("*.mp4"))]
    server = Server(index, media, args.concurrency, args.workdir / "server.log")
    timer = threading.Timer(args.deadline, server.stop)  # stops itself whatever happens
    timer.daemon = True
    timer.start()
    auth = {"Authorization": f"Bearer {TOKEN}"}
    try:
        with httpx.Client(timeout=30.0) as c:
            server.wait_ready(c)
            # warm-up: the extractor and the first query's caches
            c.post(server.url + "/api/search", json={"path": paths[0]}, timeout=120)
            quiet = run_phase(server.url, ids, paths, args.requests, args.clients, args.path_every, seed=1)
            print("quiet:", json.dumps({k: v for k, v in quiet.items() if k != "failures"}), flush=True)
            job = c.post(server.url + "/api/jobs/add", json={"paths": ["new"]}, headers=auth).json()
            job_url = f"{server.url}/api/jobs/{job['id']}"
            state = {"s": job["state"]}

            def job_running() -> bool:
                return state["s"] in ("queued", "running")

            def poll() -> None:
                with httpx.Client(timeout=30.0) as pc:
                    while job_running():
                        state["s"] = pc.get(job_url).json()["state"]
                        time.sleep(0.1)

            poller = threading.Thread(target=poll, daemon=True)
            poller.start()
            busy = run_phase(server.url, ids, paths, args.requests, args.clients, args.path_every, seed=2,
                             job_running=job_running)
            print("with_add_job:", json.dumps({k: v for k, v in busy.items() if k != "failures"}), flush=True)
            poller.join(args.deadline)
            job = c.get(job_url).json()
            job_seconds = (job["finished"] or time.time()) - (job["started"] or time.time())
            metrics = c.get(server.url + "/api/metrics").json()
            videos_after = c.get(server.url + "/api/health").json()["videos"]
    finally:
        timer.cancel()
        server.stop()
    with VideoIndex.open(index, readonly=True) as ix:
        report = ix.verify()
    doc = {
        "command": "PYTHONPATH=src python benchmarks/bench_serve.py " + " ".join(sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_avg_1_5_15_at_start": load_start, "load_avg_1_5_15_at_end": None},
        "index": {"videos_before": len(ids), "videos_after": videos_after, "clip_seconds": args.seconds,
                  "verify_ok": report.ok, "problems": report.problems[:5]},
        "client": {"clients": args.clients, "server_concurrency": args.concurrency,
                   "path_every": args.path_every},
        "quiet": quiet, "with_add_job": busy,
        "ratio_p50_busy_over_quiet": round(busy["p50_ms"] / quiet["p50_ms"], 3) if quiet["p50_ms"] else None,
        "job": {"state": job["state"], "added": job["added"], "total": job["total"],
                "seconds": round(job_seconds, 2), "failures": job["failures"][:5], "error": job["error"]},
        "server_metrics": {"queries_served": metrics["queries_served"], "search": metrics["search"]},
    }
    doc["machine"]["load_avg_1_5_15_at_end"] = list(os.getloadavg())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps({k: doc[k] for k in ("index", "job", "ratio_p50_busy_over_quiet")}, indent=1))
    failed = quiet["failed"] + busy["failed"]
    if failed or not report.ok or job["state"] != "done" or videos_after != len(ids) + args.add:
        print(f"FAILED: {failed} failed requests, verify ok={report.ok}, job {job['state']}", file=sys.stderr)
        sys.exit(1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""What a first user meets on the command line: stdout/stderr, re-runs, ids, failures, help, messages."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from dnsvr.bundle import Bundle
from dnsvr.cli import app
from dnsvr.cli._common import option_names, plural
from dnsvr.cli.search import hms, segment_text
from dnsvr.index.video_index import VideoIndex
from dnsvr.search import Segment
from dnsvr import synthetic as S

runner = CliRunner()
SRC = str(Path(__file__).resolve().parents[1] / "src")
LITE0_DIMS = 1456  # efficientnet_lite0 regions, unwhitened


def _plain_index(tmp_path: Path) -> Path:
    """An index whose bundle takes raw Lite0 regions (no whitening to fit: fast, deterministic)."""
    bundle = Bundle("plain", "efficientnet_lite0", whitening=None, fine_type="chamfer",
                    fine_args={"dims": LITE0_DIMS}).save(tmp_path / "bundle")
    idx = tmp_path / "idx"
    r = runner.invoke(app, ["index", "create", str(idx), "--bundle", str(bundle)])
    assert r.exit_code == 0, r.output
    return idx


def _dnsvr(args: list[str], *, stderr_tty: bool, timeout: float = 300) -> tuple[int, str, str]:
    """Run ``python -m dnsvr`` with stdout a pipe and stderr a pseudo-terminal (or a pipe)."""
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), "COLUMNS": "100"}
    if not stderr_tty:
        p = subprocess.run([sys.executable, "-m", "dnsvr", *args], capture_output=True, text=True, env=env,
                           timeout=timeout)
        return p.returncode, p.stdout, p.stderr
    master, slave = pty.openpty()
    p = subprocess.Popen([sys.executable, "-m", "dnsvr", *args], stdout=subprocess.PIPE, stderr=slave, env=env)
    os.close(slave)
    err = b""
    while True:
        ready, _, _ = select.select([master], [], [], 1.0)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            err += chunk
        elif p.poll() is not None:
            break
    out = p.stdout.read().decode()  # type: ignore[union-attr]
    p.wait(timeout=timeout)
    os.close(master)
    return p.returncode, out, err.decode(errors="replace")


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("clips") / "videos"
    root.mkdir()
    for i in range(2):
        S.write_video(root / f"v{i}.mp4", S.render_clip(100 + i, seconds=2.0 + i, fps=10, size=(96, 64)), fps=10)
    return root


def test_json_stdout_parses_while_a_bar_is_drawn_on_a_terminal(tmp_path, clips):
    code, out, err = _dnsvr(["extract", str(clips), "-o", str(tmp_path / "f.h5"), "--json"], stderr_tty=True)
    assert code == 0, err
    assert json.loads(out)["extracted"] == 2  # nothing but the document on stdout
    assert "extracting" in err or "v1" in err  # the bar went to the terminal (stderr)
    assert "━" in err or "\x1b[" in err


def test_line_progress_when_stderr_is_not_a_terminal(tmp_path, clips):
    code, out, err = _dnsvr(["extract", str(clips), "-o", str(tmp_path / "f.h5"), "--json"], stderr_tty=False)
    assert code == 0, err
    assert json.loads(out)["extracted"] == 2
    lines = [ln for ln in err.splitlines() if ln.startswith("extracting ")]
    assert [ln.split(":")[0] for ln in lines] == ["extracting 1/2", "extracting 2/2"], err
    assert "\x1b[" not in err  # plain lines, no terminal codes
    code, out, err = _dnsvr(["extract", str(clips), "-o", str(tmp_path / "g.h5"), "--json", "--no-progress"],
                            stderr_tty=False)
    assert code == 0 and "extracting" not in err


def test_second_add_of_a_folder_decodes_nothing_and_exits_0(tmp_path, clips, monkeypatch):
    idx = _plain_index(tmp_path)
    r = runner.invoke(app, ["index", "add", str(idx), str(clips), "--json", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert sorted(json.loads(r.stdout)["added"]) == ["v0", "v1"]

    import dnsvr.extract

    def no_decoding(*args, **kwargs):
        raise AssertionError("a known video was decoded again")

    monkeypatch.setattr(dnsvr.extract, "iter_video_features", no_decoding)
    r = runner.invoke(app, ["index", "add", str(idx), str(clips), "--on-duplicate", "skip", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["added"] == [] and sorted(doc["already_indexed"]) == ["v0", "v1"] and doc["skipped"] == []
    # without --on-duplicate: stop before decoding, name the option as typed
    r = runner.invoke(app, ["index", "add", str(idx), str(clips)])
    assert r.exit_code == 2
    assert "--on-duplicate skip" in r.output and "on_duplicate" not in r.output and "2 videos already" in r.output
    # sources: every result and every listed video names its file
    r = runner.invoke(app, ["index", "list", str(idx), "--json"])
    assert {Path(x["source"]).name for x in json.loads(r.stdout)} == {"v0.mp4", "v1.mp4"}


def test_same_named_files_in_two_folders_get_two_ids(tmp_path, clips):
    import shutil

    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        shutil.copy(clips / "v0.mp4", tmp_path / sub / "clip.mp4")
    idx = _plain_index(tmp_path)
    r = runner.invoke(app, ["index", "add", str(idx), str(tmp_path / "a"), str(tmp_path / "b"), "--json",
                            "--no-progress"])
    assert r.exit_code == 0, r.output
    assert sorted(json.loads(r.stdout)["added"]) == ["a/clip", "b/clip"]
    r = runner.invoke(app, ["search", str(idx), "a/clip", "--json", "-k", "1"])
    hit = json.loads(r.stdout)["queries"][0]["results"][0]
    assert hit["video_id"] == "b/clip" and hit["source"] == str((tmp_path / "b" / "clip.mp4").absolute())
    assert hit["segments"]  # an exact copy shows where


def test_a_bad_query_beside_a_good_one(tmp_path, clips):
    idx = _plain_index(tmp_path)
    assert runner.invoke(app, ["index", "add", str(idx), str(clips), "--no-progress"]).exit_code == 0
    r = runner.invoke(app, ["search", str(idx), "v0", str(tmp_path / "missing.mp4"), "--json"])
    assert r.exit_code == 1
    doc = json.loads(r.stdout)
    assert [q["query"] for q in doc["queries"]] == ["v0", str(tmp_path / "missing.mp4")]
    assert doc["queries"][0]["results"] and "error" not in doc["queries"][0]
    assert doc["queries"][1]["results"] == [] and "neither" in doc["queries"][1]["error"]
    assert "missing.mp4" in r.stderr
    r = runner.invoke(app, ["search", str(idx), "v0", "--include-self", "-k", "1"])  # the table: a self-match
    assert r.exit_code == 0 and "00:00:00.0–00:00:02.0 ↔ 00:00:00.0–00:00:02.0" in r.stdout
    r = runner.invoke(app, ["search", str(idx), str(tmp_path / "missing.mp4")])
    assert r.exit_code == 2  # nothing could be searched


def test_library_search_takes_feature_arrays(tmp_path):
    rng = np.random.default_rng(0)
    feats = {f"x{i}": rng.standard_normal((5, 9, 16)).astype(np.float32) for i in range(3)}
    bundle = Bundle("plain", "efficientnet_lite0", whitening=None, fine_type="chamfer", fine_args={"dims": 16})
    import h5py

    with h5py.File(tmp_path / "f.h5", "w") as h5:
        for k, v in feats.items():
            h5[k] = v
    with VideoIndex.create(tmp_path / "idx", bundle) as index:
        index.add([tmp_path / "f.h5"])
        got = index.search([feats["x1"]], top_k=1)
        assert got[0].query == "array0" and got[0].results[0].video_id == "x1"
        with pytest.raises(Exception, match="feature array") as info:
            index.search([{"not": "a query"}])
        assert len(str(info.value)) < 300
        with pytest.raises(Exception, match=r"shape \(5, 16\)"):
            index.search([feats["x1"][:, 0]])
        bad = index.search([feats["x2"], np.zeros((3, 9, 7), np.float32)], on_error="report")
        assert bad[0].error is None and bad[1].error and not bad[1].results


def test_help_flags_and_conventions():
    r = runner.invoke(app, ["index", "add", "-h"])
    assert r.exit_code == 0 and "Examples:" in r.output
    for args in (["-h"], ["search", "-h"], ["extract", "-h"], ["evaluate", "-h"], ["train", "student", "-h"],
                 ["demo", "-h"], ["weights", "fetch", "-h"]):
        text = runner.invoke(app, args).output
        assert "<bool>" not in text and "<list[str]>" not in text and "dnsvr._" not in text, args
        if args != ["-h"]:
            assert "Examples:" in text, args
    # one meaning per short flag: -b is --bundle wherever it exists
    shorts: dict[str, set[str]] = {}
    from typer.main import get_command

    def walk(cmd):
        for sub in getattr(cmd, "commands", {}).values():
            walk(sub)
        for p in getattr(cmd, "params", []):
            longs = [o for o in getattr(p, "opts", []) if o.startswith("--")]
            for o in getattr(p, "opts", []):
                if len(o) == 2 and longs and o not in ("-h", "-v"):
                    shorts.setdefault(o, set()).add(longs[0])

    walk(get_command(app))
    assert all(len(v) == 1 for v in shorts.values()), shorts


def test_verbose_after_the_command(tmp_path):
    r = runner.invoke(app, ["index", "info", str(tmp_path), "-v"])
    assert r.exit_code == 2 and "not a dnsvr index" in r.output  # parsed: -v is not an unknown option


def test_words_and_times():
    assert plural(1, "video") == "1 video" and plural(0, "video") == "0 videos"
    assert hms(3723.46) == "01:02:03.5" and hms(0) == "00:00:00.0"
    assert segment_text(Segment(0, 12, 3, 15, 0.9), short=True) == "00:00:00.0–00:00:12.0 ↔ 00:00:03.0–00:00:15.0"
    assert option_names("x") == "x"  # outside a command: unchanged

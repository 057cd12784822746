"""kill -9 at random points of first-add / add / remove / compact, with concurrent writers and readers.

Each trial runs, on one index folder (``lite`` bundle, feature files as inputs: no decoding):

- two writer processes A and B, started together: both open the index for writing (the one that
  does not get the folder's writer lock retries), then loop over operations and print a journal
  line after each one *returns* (``add ids...``, ``remove ids...``, ``compact``);
- ``--readers`` reader processes searching the index (read-only) in a loop with a query video
  of their own, reopening it now and then, and recording every exception;
- A is killed (SIGKILL) at a random moment, then B (which got the lock in between) at another.

Trial kinds: ``first-add`` (a fresh index: A and B race for the first add, which fits the
whitening and creates the store), ``add``, ``remove``, ``compact`` (a populated index; the
writers' operations are weighted towards that kind). After the kills the trial checks:

1. the index opens for writing and ``verify()`` (checksums included) finds no problem;
2. nothing committed is lost: every id whose ``add`` returned (and not removed later by a
   ``remove`` that returned) is present, every id whose ``remove`` returned is absent; the ids of
   the operation in flight at the kill may go either way;
3. no reader error (before the first add the index is empty: that answer is expected);
4. the stored videos belong to the bundle's whitening: re-representing three committed videos
   from their features gives their stored coarse vectors.

Writes ``benchmarks/results/faults.json``. Usage::

    PYTHONPATH=src python benchmarks/bench_faults.py [--trials 60] [--readers 2] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

C, T = 48, 6  # raw region size and frames of the generated videos
KINDS = ("first-add", "add", "remove", "compact")

WRITER = textwrap.dedent(
    """
    import json, random, sys, time
    from pathlib import Path
    from dnsvr.index._lock import IndexLockedError
    from dnsvr.index.video_index import VideoIndex

    directory, name, kind, seed = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    files = json.loads(sys.argv[5])
    rng = random.Random(seed)
    print("ready", flush=True)
    while True:
        try:
            index = VideoIndex.open(directory)
            break
        except IndexLockedError:
            time.sleep(0.02)
    print(f"locked {time.time()}", flush=True)
    weights = {"first-add": (8, 1, 1), "add": (6, 2, 1), "remove": (2, 6, 1), "compact": (2, 2, 4)}[kind]
    while True:
        op = rng.choices(("add", "remove", "compact"), weights)[0]
        present = index.ids()
        if op == "add" and files:
            path, ids = files.pop(0)
            print("start add " + " ".join(ids), flush=True)
            index.add([path], on_duplicate="skip", progress=False)
            print("add " + " ".join(ids), flush=True)
        elif op == "remove" and len(present) > 4:
            ids = rng.sample(present, min(3, len(present) - 4))
            print("start remove " + " ".join(ids), flush=True)
            index.remove(ids)
            print("remove " + " ".join(ids), flush=True)
        elif op == "compact" and index.store is not None:
            print("start compact", flush=True)
            index.compact()
            print("compact", flush=True)
        elif not files:
            time.sleep(0.05)
    """
)

READER = textwrap.dedent(
    """
    import json, signal, sys, time, traceback
    from dnsvr.index.video_index import VideoIndex, VideoIndexError

    directory, query = sys.argv[1], sys.argv[2]
    stats = {"searches": 0, "empty": 0, "errors": []}
    stop = False

    def on_term(signum, frame):
        global stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    print("ready", flush=True)
    index = None
    n = 0
    while not stop:
        try:
            if index is None or n % 5 == 0:
                if index is not None:
                    index.close()
                index = VideoIndex.open(directory, readonly=True)
            n += 1
            index.search([query], top_k=5, budget="4", progress=False)
            stats["searches"] += 1
        except VideoIndexError as exc:
            if "is empty" in str(exc):
                stats["empty"] += 1
                time.sleep(0.01)
            else:
                stats["errors"].append(f"{type(exc).__name__}: {exc}")
        except Exception as exc:
            stats["errors"].append(f"{type(exc).__name__}: {exc} | {traceback.format_exc().splitlines()[-3]}")
    print(json.dumps(stats), flush=True)
    """
)


def features(seed: int, n: int, prefix: str) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((n // 2 + 1, T, 9, C)).astype(np.float32)
    return {f"{prefix}{i:03d}": (base[i // 2] + 0.3 * rng.standard_normal((T, 9, C))).astype(np.float32)
            for i in range(n)}


def write_h5(path: Path, videos: dict[str, np.ndarray]) -> Path:
    import h5py

    with h5py.File(path, "w") as f:
        for vid, x in videos.items():
            f.create_dataset(vid, data=x)
    return path


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def _spawn(code: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=_env())


class _Lines:
    """A process's stdout lines, collected by a thread as they come."""

    def __init__(self, proc: subprocess.Popen) -> None:
        import threading

        self.proc = proc
        self.lines: list[str] = []
        self.thread = threading.Thread(target=self._drain, daemon=True)
        self.thread.start()

    def _drain(self) -> None:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, want: str, timeout: float = 300.0) -> None:
        deadline = time.monotonic() + timeout
        while want not in self.lines:
            if time.monotonic() > deadline or (self.proc.poll() is not None and not self.thread.is_alive()):
                raise RuntimeError(f"process did not print {want!r}: {self.lines[-5:]} "
                                   f"{self.proc.stderr.read()[-2000:]}")  # type: ignore[union-attr]
            time.sleep(0.01)

    def finish(self) -> list[str]:
        self.thread.join(timeout=30)
        return self.lines


def _lock_time(lines: list[str]) -> float:
    for line in lines:
        if line.startswith("locked "):
            return float(line.split()[1])
    return float("inf")


def _journal(lines: list[str]) -> tuple[list[tuple[str, list[str]]], list[str]]:
    """(committed ops, ids of the op in flight) from a writer's stdout."""
    done: list[tuple[str, list[str]]] = []
    inflight: list[str] = []
    for line in lines:
        parts = line.split()
        if not parts or parts[0] in ("ready", "locked", "{"):
            continue
        if parts[0] == "start":
            inflight = parts[2:]
        else:
            done.append((parts[0], parts[1:]))
            inflight = []
    return done, inflight


def run_trial(work: Path, kind: str, seed: int, n_readers: int, template: Path | None,
              template_ids: list[str]) -> dict:
    from dnsvr.index.video_index import VideoIndex

    rng = random.Random(seed)
    idx = work / "idx"
    if kind == "first-add":
        VideoIndex.create(idx, "lite").close()
        present: set[str] = set()
    else:
        assert template is not None
        shutil.copytree(template, idx)
        present = set(template_ids)
    # each writer gets its own batches of new videos (feature files of 3..8 videos)
    batches = {}
    all_feats: dict[str, np.ndarray] = {}
    for w in ("A", "B"):
        files = []
        for b in range(6):
            n = rng.randint(3, 8) if kind != "first-add" or b else 14  # the first add must fit a whitening
            feats = features(seed * 100 + ord(w) * 10 + b, n, f"{w}{seed}_{b}_")
            all_feats.update(feats)
            files.append([str(write_h5(work / f"{w}{b}.h5", feats)), list(feats)])
        batches[w] = files
    query = write_h5(work / "query.h5", features(seed + 7, 1, "q"))
    readers = [_spawn(READER, str(idx), str(query)) for _ in range(n_readers)]
    reader_out = [_Lines(p) for p in readers]
    a = _Lines(_spawn(WRITER, str(idx), "A", kind, str(seed), json.dumps(batches["A"])))
    b = _Lines(_spawn(WRITER, str(idx), "B", kind, str(seed + 1), json.dumps(batches["B"])))
    for r in reader_out + [a, b]:
        r.wait_for("ready")
    # kill whichever holds the writer lock at a random moment, then the other (which takes over)
    t_first, t_second = rng.uniform(0.05, 2.0), rng.uniform(0.05, 2.0)
    time.sleep(t_first)
    first, second = (b, a) if _lock_time(b.lines) < _lock_time(a.lines) else (a, b)
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait()
    time.sleep(t_second)
    second.proc.send_signal(signal.SIGKILL)
    second.proc.wait()
    lines = {"A": a.finish(), "B": b.finish()}
    time.sleep(0.2)
    reader_stats = []
    for p in readers:
        p.send_signal(signal.SIGTERM)
    for p, r in zip(readers, reader_out):
        try:
            p.wait(timeout=120)
        except subprocess.TimeoutExpired:
            p.kill()
            reader_stats.append({"searches": 0, "empty": 0, "errors": ["reader hung"]})
            continue
        last = [ln for ln in r.finish() if ln.startswith("{")]
        reader_stats.append(json.loads(last[-1]) if last else
                            {"searches": 0, "empty": 0,
                             "errors": [f"reader died: {p.stderr.read()[-500:]}"]})  # type: ignore[union-attr]
    # the journal, in lock order (the lock serialises the writers)
    order = sorted(("A", "B"), key=lambda w: _lock_time(lines[w]))
    uncertain: set[str] = set()
    ops = 0
    for w in order:
        done, inflight = _journal(lines[w])
        for op, ids in done:
            ops += 1
            if op == "add":
                present |= set(ids)
                uncertain -= set(ids)
            elif op == "remove":
                present -= set(ids)
                uncertain -= set(ids)
        uncertain |= set(inflight)
    # the checks
    problems: list[str] = []
    with VideoIndex.open(idx) as index:
        ids = set(index.ids())
        lost = sorted(present - ids - uncertain)
        ghosts = sorted((ids - present) - uncertain)
        if lost:
            problems.append(f"committed videos lost: {lost[:5]}")
        if ghosts:
            problems.append(f"removed or never-committed videos present: {ghosts[:5]}")
        if index.store is not None:
            report = index.verify(checksums=True)
            if not report.ok:
                problems.append(f"verify: {report.problems[:2]}")
            for vid in sorted(ids & set(all_feats))[:3]:
                rep = index.bundle.represent(index.bundle.whiten(all_feats[vid]))
                stored = index.store.coarse_vectors([vid])[0]
                if not np.allclose(rep.coarse, stored, atol=1e-5):
                    problems.append(f"{vid}: stored under another whitening than the bundle's")
        elif present - uncertain:
            problems.append("committed videos but no store")
    reader_errors = [e for s in reader_stats for e in s["errors"]]
    return {"kind": kind, "seed": seed, "kill_after_s": [round(t_first, 3), round(t_second, 3)],
            "committed_ops": ops, "videos": len(ids), "uncertain": len(uncertain),
            "searches": sum(s["searches"] for s in reader_stats), "empty_answers": sum(s["empty"] for s in reader_stats),
            "reader_errors": reader_errors[:5], "n_reader_errors": len(reader_errors), "problems": problems,
            "ok": not problems and not reader_errors}


def make_template(work: Path) -> tuple[Path, list[str]]:
    from dnsvr.index.video_index import VideoIndex

    feats = features(99, 30, "base")
    path = work / "template"
    with VideoIndex.create(path, "lite") as index:
        index.add([write_h5(work / "base.h5", feats)], progress=False)
        ids = index.ids()
    return path, ids


def run(trials: int, n_readers: int, seed: int, out: Path | None, kinds: tuple[str, ...] = KINDS) -> dict:
    """Run ``trials`` trials (kinds in turn) and return (and write to ``out``) the summary."""
    base = Path(tempfile.mkdtemp(prefix="bench_faults_"))
    try:
        template, template_ids = make_template(base)
        results = []
        t0 = time.perf_counter()
        for i in range(trials):
            kind = kinds[i % len(kinds)]
            work = base / f"t{i}"
            work.mkdir()
            res = run_trial(work, kind, seed + i, n_readers, template, template_ids)
            results.append(res)
            print(f"trial {i:3d} {kind:9s} ops {res['committed_ops']:3d} videos {res['videos']:3d} searches "
                  f"{res['searches']:4d} {'ok' if res['ok'] else 'FAIL ' + str(res['problems'] + res['reader_errors'])}",
                  flush=True)
            shutil.rmtree(work, ignore_errors=True)
        summary = {
            "benchmark": "faults", "trials": trials, "readers": n_readers, "writers": 2, "seed": seed,
            "ok": sum(r["ok"] for r in results), "failed": sum(not r["ok"] for r in results),
            "by_kind": {k: {"trials": sum(r["kind"] == k for r in results),
                            "ok": sum(r["ok"] for r in results if r["kind"] == k)} for k in kinds},
            "kills": 2 * trials, "committed_ops": sum(r["committed_ops"] for r in results),
            "searches": sum(r["searches"] for r in results),
            "reader_errors": sum(r["n_reader_errors"] for r in results),
            "seconds": round(time.perf_counter() - t0, 1),
            "command": f"PYTHONPATH=src python benchmarks/bench_faults.py --trials {trials} --readers {n_readers} "
                       f"--seed {seed}",
            "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
            "trials_detail": results,
        }
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(summary, indent=1) + "\n")
        return summary
    finally:
        shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=60)
    ap.add_argument("--readers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "faults.json")
    args = ap.parse_args()
    s = run(args.trials, args.readers, args.seed, args.out)
    print(json.dumps({k: v for k, v in s.items() if k != "trials_detail"}, indent=1))
    sys.exit(0 if s["failed"] == 0 else 1)


if __name__ == "__main__":
    main()

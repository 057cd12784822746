"""Benchmark of the fine stage and of the end-to-end DnS query.

Part ``pairs``: per-pair fine similarity at T=60 and T=120 for S^f_A, S^f_B and the lite
Chamfer stage — the batched engine (:mod:`dnsvr._fine`: one matrix product per block of
candidates, comparator batched over pairs, int8 products for S^f_B's codes) against the
plain per-pair network call (``FineGrainedStudent.calculate_video_similarity`` /
``chamfer_video_similarity``), interleaved in the same process so that both see the same
machine load. Random weights at the published sizes (speed does not depend on the values).

Part ``dns``: end-to-end DnS queries (coarse over every video → selector → fine re-rank of the
budget → one list; segments off) through :class:`dnsvr.index.VideoIndex` on synthetic
indexes: S^f_B with N videos of 60 frames (default 100,000; 3.5 GB of packed codes), and —
to fit the shared disk — S^f_A with 10,000 videos of 60 frames (5.5 GB of float16), queried
with pair budgets equal to 1,000 pairs, 1% and 5% of 100,000.

Usage::

    PYTHONPATH=src python benchmarks/bench_search.py [--part pairs|dns|all] [--videos 100000]
        [--workdir /work/tmp/bench_search] [--keep]

Writes ``benchmarks/results/search.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from dnsvr._fine import FineComparator, fine_similarities, pack_codes
from dnsvr.bundle import Bundle, VideoRepresentation
from dnsvr.nn import CoarseGrainedStudent, FineGrainedStudent, SelectorNetwork
from dnsvr.nn.similarity import chamfer_video_similarity
from dnsvr.search import Budget

RESULTS = Path(__file__).resolve().parent / "results" / "search.json"
REFERENCE_MS_T60 = {"att": 4.4, "bin": 3.4}  # the reference implementation on this machine kind, 2 threads


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _calibrate() -> float:
    a = torch.randn(1080, 512)
    b = torch.randn(512, 1080)
    times = []
    for _ in range(5):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return min(times) * 1000


def bench_pairs(frames_list=(60, 120), n_cands: int = 64, repeats: int = 5) -> list[dict]:
    """Per-pair fine time: batched engine vs the plain network call, interleaved."""
    out = []
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    nets = {"att": FineGrainedStudent(attention=True).eval(), "bin": FineGrainedStudent(binarization=True).eval()}
    for frames in frames_list:
        base_q = _unit(rng.standard_normal((frames, 9, 512)))
        base_c = [_unit(rng.standard_normal((frames, 9, 512))) for _ in range(n_cands)]
        for kind in ("att", "bin", "chamfer"):
            with torch.inference_mode():
                if kind == "chamfer":
                    q_ref, c_ref = torch.from_numpy(base_q), [torch.from_numpy(c) for c in base_c]
                    q_fast, c_fast = base_q.astype(np.float16), [c.astype(np.float16) for c in base_c]
                    comp = None
                    ref_call = lambda q, c: chamfer_video_similarity(q, c)  # noqa: E731
                else:
                    net = nets[kind]
                    q_ref = net.index_video(torch.from_numpy(base_q)).reshape(frames, 9, -1)
                    c_ref = [net.index_video(torch.from_numpy(c)).reshape(frames, 9, -1) for c in base_c]
                    if kind == "bin":
                        q_fast, c_fast = pack_codes(q_ref), [pack_codes(c) for c in c_ref]
                    else:
                        q_fast = q_ref.numpy().astype(np.float16)
                        c_fast = [c.numpy().astype(np.float16) for c in c_ref]
                        # the reference sees the same (float16-rounded) values the index stores
                        q_ref = torch.from_numpy(q_fast.astype(np.float32))
                        c_ref = [torch.from_numpy(c.astype(np.float32)) for c in c_fast]
                    comp = FineComparator(net)
                    ref_call = lambda q, c, net=net: net.calculate_video_similarity(q, c)  # noqa: E731
                n_ref = 8  # per-pair reference calls per repeat (it is the slow side)
                ref_times, fast_times = [], []
                ref_vals = fast_vals = None
                for _ in range(repeats):
                    t = time.perf_counter()
                    ref_vals = [float(ref_call(q_ref, c).reshape(-1)[0]) for c in c_ref[:n_ref]]
                    ref_times.append((time.perf_counter() - t) / n_ref * 1000)
                    t = time.perf_counter()
                    fast_vals, _ = fine_similarities(q_fast, c_fast, kind, comp)
                    fast_times.append((time.perf_counter() - t) / n_cands * 1000)
                err = float(np.max(np.abs(np.asarray(ref_vals) - fast_vals[:n_ref])))
            row = {"fine": kind, "frames": frames, "candidates_per_call": n_cands,
                   "reference_per_pair_ms": statistics.median(ref_times), "reference_min_ms": min(ref_times),
                   "batched_per_pair_ms": statistics.median(fast_times), "batched_min_ms": min(fast_times),
                   "speedup_median": statistics.median(ref_times) / statistics.median(fast_times),
                   "speedup_min": min(ref_times) / min(fast_times),
                   "max_abs_diff": err}
            if frames == 60 and kind in REFERENCE_MS_T60:
                row["issue_reference_ms"] = REFERENCE_MS_T60[kind]
                row["speedup_vs_issue_reference"] = REFERENCE_MS_T60[kind] / row["batched_min_ms"]
            print(json.dumps(row), flush=True)
            out.append(row)
    return out


def _student_bundle(kind: str) -> Bundle:
    torch.manual_seed(0)
    fine_args = {"dims": 512, "attention": kind == "att", "binarization": kind == "bin"}
    return Bundle(f"bench-{kind}", "resnet50", fine_type=kind, fine_net=FineGrainedStudent(**fine_args),
                  fine_args=fine_args, coarse_type="student", coarse_net=CoarseGrainedStudent(),
                  coarse_args={}, selector_net=SelectorNetwork(), selector_args={})


def _build(directory: Path, kind: str, n: int, frames: int, batch: int = 2000) -> tuple[float, int]:
    from dnsvr.index import IndexRecord, VideoIndex

    rng = np.random.default_rng(1)
    index = VideoIndex.create(directory, _student_bundle(kind))
    ts = np.arange(frames, dtype=np.float64)
    pool_size = 97
    if kind == "bin":
        pool = [rng.integers(0, 256, (frames, 9, 64), dtype=np.uint8) for _ in range(pool_size)]
    else:
        pool = [(rng.standard_normal((frames, 9, 512)) * 0.05).astype(np.float16) for _ in range(pool_size)]
    t = time.perf_counter()
    for start in range(0, n, batch):
        recs = []
        coarse = _unit(rng.standard_normal((min(batch, n - start), 1024)))
        sel = rng.uniform(0.2, 1.0, len(coarse))
        for j in range(len(coarse)):
            i = start + j
            recs.append(IndexRecord(f"v{i:07d}", coarse[j], pool[i % pool_size], float(sel[j]),
                                    {"timestamps": ts}))
        index.store.add(recs)
        if start % 20000 == 0:
            print(f"  {kind}: {start + len(recs)}/{n} videos", file=sys.stderr, flush=True)
    build_s = time.perf_counter() - t
    index.close()
    return build_s, sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def bench_dns(workdir: Path, videos: int, keep: bool, queries: int = 2) -> list[dict]:
    from dnsvr.index import VideoIndex

    out = []
    plans = [("bin", videos, 60), ("att", min(videos, 10_000), 60)]
    budgets = [("1000 pairs", Budget(pairs=1000)), ("1%", Budget(pairs=int(0.01 * 100_000))),
               ("5%", Budget(pairs=int(0.05 * 100_000)))]
    rng = np.random.default_rng(2)
    for kind, n, frames in plans:
        directory = workdir / f"dns_{kind}"
        if directory.exists():
            shutil.rmtree(directory)
        build_s, size = _build(directory, kind, n, frames)
        print(f"  built {kind}: {n} videos in {build_s:.0f} s, {size / 1e9:.2f} GB", file=sys.stderr, flush=True)
        index = VideoIndex.open(directory, readonly=True)
        # warm the page cache and the coarse matrix once (a serving process keeps both)
        _ = index.store.coarse_search(_unit(rng.standard_normal((1, 1024))), k=10)
        for label, budget in budgets:
            if label.endswith("%") and n != 100_000:
                label = f"{label} of 100,000 ({budget.pairs} pairs)"
            times, parts = [], []
            for qi in range(queries):
                q_fine = np.asarray(index.store.fine([f"v{qi * 7919 % n:07d}"])[0])
                rep = VideoRepresentation(_unit(rng.standard_normal(1024)), q_fine, 0.6)
                t = time.perf_counter()
                res = index.search_representation(f"q{qi}", rep, top_k=100, budget=budget, segments=False)
                times.append(time.perf_counter() - t)
                parts.append(res.timings)
                assert res.fine_pairs == min(budget.pairs, n)
            row = {"fine": kind, "videos": n, "frames_per_video": frames, "budget": label,
                   "pairs": min(budget.pairs, n), "query_s_median": statistics.median(times),
                   "query_s_min": min(times), "queries": queries,
                   "stage_s_median": {k: statistics.median(p.get(k, 0.0) for p in parts)
                                      for k in ("coarse", "selector", "fine", "total")},
                   "index_build_s": build_s, "index_bytes": size}
            print(json.dumps(row), flush=True)
            out.append(row)
        index.close()
        if not keep:
            shutil.rmtree(directory)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", choices=["pairs", "dns", "all"], default="all")
    ap.add_argument("--videos", type=int, default=100_000)
    ap.add_argument("--workdir", type=Path, default=Path("/work/tmp/bench_search"))
    ap.add_argument("--keep", action="store_true", help="keep the synthetic indexes")
    args = ap.parse_args()
    torch.set_num_threads(2)
    result: dict = {"benchmark": "search", "command": "PYTHONPATH=src python benchmarks/bench_search.py "
                    + " ".join(sys.argv[1:]),
                    "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "torch": torch.__version__,
                    "threads": torch.get_num_threads(),
                    "note": "2-core machine shared with other jobs: absolute times are noisy; the engine and "
                            "the reference are interleaved so their ratio is comparable",
                    "calibration_matmul_1080x512x1080_ms": _calibrate()}
    if RESULTS.is_file():
        previous = json.loads(RESULTS.read_text())
        for key in ("pairs", "dns"):
            if key in previous:
                result[key] = previous[key]
    if args.part in ("pairs", "all"):
        result["pairs"] = bench_pairs()
    if args.part in ("dns", "all"):
        args.workdir.mkdir(parents=True, exist_ok=True)
        result["dns"] = bench_dns(args.workdir, args.videos, args.keep)
    result["calibration_after_ms"] = _calibrate()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()

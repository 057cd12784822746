"""Benchmark the DnS networks on CPU: ``index_video`` and per-pair ``calculate_video_similarity``.

For S^f_A, S^f_B, S^c, the selector, the ViSiL teachers (3840-d and 512-d symmetric) and the training-free
``chamfer_video_similarity`` of the lite profile, at T=60 and T=120 frames, on 2 threads (default), with random
weights at the published sizes (timings do not depend on the weight values). Per-pair similarity is timed both
for one pair per call and amortised over a batch of candidates per call. A matmul GFLOP/s calibration from the
same run makes numbers comparable across machines.

Usage:
    PYTHONPATH=src python benchmarks/bench_networks.py [--threads 2 [1 ...]] [--frames 60 120] [--batch 32] [--quick]

Several ``--threads`` values run the whole set once per value (the first is the headline; the calibration is
repeated for each, since thread count changes it).

Prints a table and writes ``benchmarks/results/networks.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from dnsvr.nn import (  # noqa: E402
    CoarseGrainedStudent,
    FineGrainedStudent,
    SelectorNetwork,
    ViSiLTeacher,
    chamfer_video_similarity,
)


def _time(fn: Callable[[], object], reps: int, min_seconds: float) -> dict[str, float]:
    """Median/min wall time (ms) of ``fn`` over at least ``reps`` calls and ``min_seconds`` (after one warm-up)."""
    fn()
    times = []
    start = time.perf_counter()
    while len(times) < reps or (time.perf_counter() - start) < min_seconds:
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
        if len(times) >= 50 * reps:
            break
    return {"median_ms": statistics.median(times), "min_ms": min(times), "calls": len(times)}


def calibrate(reps: int) -> dict[str, float]:
    """fp32 matmul throughput on the configured threads (GFLOP/s), two sizes."""
    out = {}
    for m, k in ((1080, 512), (2048, 2048)):
        a, b = torch.randn(m, k), torch.randn(k, m)
        t = _time(lambda: a @ b, reps, 0.5)
        out[f"matmul_{m}x{k}x{m}_gflops"] = 2 * m * k * m / (t["min_ms"] * 1e-3) / 1e9
        out[f"matmul_{m}x{k}x{m}_ms"] = t["median_ms"]
    return out


def _feats(t: int, d: int, batch: int | None = None) -> torch.Tensor:
    shape = (t, 9, d) if batch is None else (batch, t, 9, d)
    return F.normalize(torch.randn(shape), dim=-1)


def bench(frames: list[int], batch: int, reps: int, min_seconds: float) -> list[dict]:
    rows: list[dict] = []

    def add(network: str, t: int, op: str, timing: dict[str, float], per: int = 1) -> None:
        row = {"network": network, "frames": t, "op": op, "pairs_per_call": per,
               "median_ms": timing["median_ms"], "min_ms": timing["min_ms"],
               "per_item_ms": timing["median_ms"] / per, "calls": timing["calls"]}
        rows.append(row)
        print(f"{network:<22} T={t:<4} {op:<34} {row['per_item_ms']:9.3f} ms/item "
              f"({timing['median_ms']:.2f} ms/call, {per} per call)", flush=True)

    nets = {
        "S^f_A": FineGrainedStudent(attention=True).eval(),
        "S^f_B": FineGrainedStudent(binarization=True).eval(),
        "S^c": CoarseGrainedStudent().eval(),
        "selector": SelectorNetwork().eval(),
        "teacher_visil_3840": ViSiLTeacher().eval(),
        "teacher_visil_sym_512": ViSiLTeacher(dims=512, symmetric=True).eval(),
    }
    with torch.inference_mode():
        for t in frames:
            for name in ("S^f_A", "S^f_B"):
                net = nets[name]
                x = _feats(t, 512)
                add(name, t, "index_video", _time(lambda: net.index_video(x), reps, min_seconds))
                q = net.index_video(x)
                tgt = net.index_video(_feats(t, 512))
                tb = net.index_video(_feats(t, 512, batch))
                add(name, t, "calculate_video_similarity (1 pair)",
                    _time(lambda: net.calculate_video_similarity(q, tgt), reps, min_seconds))
                add(name, t, f"calculate_video_similarity (batch)",
                    _time(lambda: net.calculate_video_similarity(q, tb), reps, min_seconds), batch)
            net = nets["S^c"]
            x = _feats(t, 512)
            add("S^c", t, "index_video", _time(lambda: net.index_video(x), reps, min_seconds))
            qv, db = net.index_video(x), F.normalize(torch.randn(1000, net.output_dims), dim=-1)
            add("S^c", t, "calculate_video_similarity (batch)",
                _time(lambda: net.calculate_video_similarity(qv, db), reps, min_seconds), 1000)
            net = nets["selector"]
            add("selector", t, "index_video", _time(lambda: net.index_video(x), reps, min_seconds))
            mlp_in = torch.rand(1000, 3)
            add("selector", t, "forward (MLP score, batch)", _time(lambda: net(mlp_in), reps, min_seconds), 1000)
            for name, d in (("teacher_visil_3840", 3840), ("teacher_visil_sym_512", 512)):
                net = nets[name]
                x = _feats(t, d)
                add(name, t, "index_video", _time(lambda: net.index_video(x), reps, min_seconds))
                q, tgt = net.index_video(x), net.index_video(_feats(t, d))
                add(name, t, "calculate_video_similarity (1 pair)",
                    _time(lambda: net.calculate_video_similarity(q, tgt), reps, min_seconds))
            q, tgt, tb = _feats(t, 512), _feats(t, 512), _feats(t, 512, batch)
            add("lite_chamfer_512", t, "chamfer_video_similarity (1 pair)",
                _time(lambda: chamfer_video_similarity(q, tgt), reps, min_seconds))
            add("lite_chamfer_512", t, "chamfer_video_similarity (batch)",
                _time(lambda: chamfer_video_similarity(q, tb), reps, min_seconds), batch)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[2])
    parser.add_argument("--frames", type=int, nargs="+", default=[60, 120])
    parser.add_argument("--batch", type=int, default=32, help="candidates per call for the batched timings")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--min-seconds", type=float, default=0.5, help="minimum time spent per measurement")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (smoke run)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "networks.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.reps, args.min_seconds = 2, 0.0
    runs = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        torch.manual_seed(0)
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs visible, "
              f"load average {os.getloadavg()[0]:.1f}")
        cal = calibrate(args.reps)
        for k, v in cal.items():
            print(f"calibration {k}: {v:.1f}")
        rows = bench(args.frames, args.batch, args.reps, args.min_seconds)
        cal_after = calibrate(args.reps)  # a second calibration shows how much the machine's load drifted
        runs.append({"threads": threads, "load_average_1min": os.getloadavg()[0], "calibration": cal,
                     "calibration_after": cal_after, "results": rows})
    result = {
        "benchmark": "networks",
        "command": "PYTHONPATH=src python benchmarks/bench_networks.py " + " ".join(argv or sys.argv[1:]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpus_visible": os.cpu_count(),
        "weights": "random, published default sizes",
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

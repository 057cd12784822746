"""Network-alone throughput of the backbones (frames in memory → region features), and what each optimisation buys.

For EfficientNet-Lite0 (packaged weights) and ResNet-50 (random weights: timings do not depend on the values),
224×224 uint8 frames, ``--frames`` per call in batches of ``--batch-size``, on ``--threads`` threads. Variants:

* ``plain``   — batch norm not folded, NCHW memory format (the textbook eager path);
* ``default`` — what ``FeatureExtractor`` does: batch norm folded, oneDNN convolutions with the activation and
  residual addition fused, channels-last;
* ``bs=K``    — ``default`` with batches of K frames per network call (exploring the batch size);
* ``int8``    — ``default`` with ``precision="int8"`` (ResNet-50 only: PyTorch's quantized x86 kernels, calibrated
  on the first frames; skipped for the other backbones, which have no int8 path).

Variants are interleaved over ``--repeats`` rounds so that load from other processes hits them alike; each round
also times a fp32 matmul (GFLOP/s) so runs on a busy machine can be judged. Reports the best and median
frames/s (wall clock) and the CPU seconds per frame of this process.

Usage:
    PYTHONPATH=src python benchmarks/bench_backbones.py [--threads 2] [--batch-size 32] [--repeats 5]

Prints a table and writes ``benchmarks/results/backbones.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from dnsvr.backbones import INT8_BACKBONES, FeatureExtractor  # noqa: E402


def matmul_gflops(reps: int = 10) -> float:
    a, b = torch.randn(1080, 512), torch.randn(512, 1080)
    a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * 1080 * 512 * 1080 * reps / (time.perf_counter() - t0) / 1e9


def build(backbone: str, variant: str, batch_size: int) -> FeatureExtractor:
    weights = None if backbone == "efficientnet_lite0" else "random"
    if variant == "plain":
        ex = FeatureExtractor(backbone, weights=weights, fold_batchnorm=False, batch_size=batch_size)
        ex.net.to(memory_format=torch.contiguous_format)
        return ex
    if variant.startswith("bs="):
        return FeatureExtractor(backbone, weights=weights, batch_size=int(variant[3:]))
    if variant == "int8":
        return FeatureExtractor(backbone, weights=weights, batch_size=batch_size, precision="int8")
    if variant != "default":
        raise SystemExit(f"unknown variant {variant!r}: plain, default, int8 or bs=K")
    return FeatureExtractor(backbone, weights=weights, batch_size=batch_size)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--frames", type=int, default=64, help="frames per timed call")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--backbones", nargs="+", default=["efficientnet_lite0", "resnet50"])
    ap.add_argument("--variants", nargs="+", default=["plain", "default", "int8"])
    ap.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "backbones.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    frames = np.random.default_rng(0).integers(0, 256, size=(args.frames, 224, 224, 3), dtype=np.uint8)
    results: dict = {
        "benchmark": "backbones network-alone throughput",
        "command": "PYTHONPATH=src python benchmarks/bench_backbones.py " + " ".join(sys.argv[1:]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "threads": args.threads,
        "batch_size": args.batch_size,
        "frames_per_call": args.frames,
        "input": [224, 224],
        "machine": platform.processor() or platform.machine(),
        "backbones": {},
    }
    for backbone in args.backbones:
        exs = {v: build(backbone, v, args.batch_size) for v in args.variants
               if v != "int8" or backbone in INT8_BACKBONES}
        for ex in exs.values():
            ex(frames[: args.batch_size])  # warm-up: kernel selection, derived kernels
        walls: dict[str, list[float]] = {v: [] for v in exs}
        cpus: dict[str, list[float]] = {v: [] for v in exs}
        gflops: list[float] = []
        for _ in range(args.repeats):
            gflops.append(matmul_gflops())
            for v, ex in exs.items():
                c0, t0 = time.process_time(), time.perf_counter()
                ex(frames)
                walls[v].append(time.perf_counter() - t0)
                cpus[v].append(time.process_time() - c0)
        entry = {"dims": next(iter(exs.values())).dims, "matmul_gflops": {"median": statistics.median(gflops),
                                                                         "max": max(gflops)}, "variants": {}}
        for v in exs:
            best, med = args.frames / min(walls[v]), args.frames / statistics.median(walls[v])
            cpu_ms = 1e3 * statistics.median(cpus[v]) / args.frames
            entry["variants"][v] = {"fps_best": round(best, 2), "fps_median": round(med, 2),
                                    "cpu_ms_per_frame": round(cpu_ms, 2), "batch_size": exs[v].batch_size}
            print(f"{backbone:18s} {v:8s} best {best:6.1f} fps  median {med:6.1f} fps  "
                  f"cpu {cpu_ms:6.1f} ms/frame  (matmul median {statistics.median(gflops):.0f} GFLOP/s)", flush=True)
        results["backbones"][backbone] = entry
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()

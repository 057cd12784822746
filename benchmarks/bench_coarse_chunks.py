"""Cost of the chunked coarse stage against one mean vector per video (exact search, synthetic vectors).

The ``lite`` bundle's coarse vector is ``LITE_COARSE_CHUNKS`` unit chunk vectors of its whitened size
(``dnsvr.bundle.lite_chunk_vectors``), scored by ``dnsvr.index._coarse.chunked_similarities``; before,
one mean vector scored by inner product. This times one query's exact coarse search (scores of every
video + top 100) for 1, 4 and 8 chunks, interleaved in rounds, and reports each one's median time over
the one-vector search's. Usage::

    PYTHONPATH=src python benchmarks/bench_coarse_chunks.py [--videos 100000] [--dims 128] [--rounds 7]

Writes ``benchmarks/results/coarse_chunks.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from dnsvr.index._coarse import chunked_similarities, top_k  # noqa: E402


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--videos", type=int, default=100_000)
    ap.add_argument("--dims", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--chunks", default="1,4,8")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "coarse_chunks.json"))
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    sizes = [int(c) for c in args.chunks.split(",")]
    stored = {k: unit(rng.standard_normal((args.videos, k, args.dims))).reshape(args.videos, -1) for k in sizes}
    queries = {k: unit(rng.standard_normal((1, k, args.dims))).reshape(1, -1) for k in sizes}
    times: dict[int, list[float]] = {k: [] for k in sizes}
    for _ in range(args.rounds):
        for k in sizes:
            t = time.perf_counter()
            top_k(chunked_similarities(queries[k], stored[k], k), 100)
            times[k].append(time.perf_counter() - t)
    base = float(np.median(times[sizes[0]]))
    rows = {str(k): {"median_s": float(np.median(v)), "min_s": float(np.min(v)),
                     "median_over_first": float(np.median(v)) / base,
                     "bytes_per_video": 4 * k * args.dims} for k, v in times.items()}
    for k, r in rows.items():
        print(f"chunks {k:>2}: median {r['median_s'] * 1e3:8.2f} ms per query, x{r['median_over_first']:.2f} "
              f"of {sizes[0]} chunk(s); {r['bytes_per_video']} bytes per video")
    out = {"videos": args.videos, "dims": args.dims, "rounds": args.rounds, "results": rows,
           "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "numpy": np.__version__,
                       "processor": platform.processor()},
           "command": "PYTHONPATH=src python benchmarks/bench_coarse_chunks.py " + " ".join(sys.argv[1:])}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print("wrote", args.out)


if __name__ == "__main__":
    main()

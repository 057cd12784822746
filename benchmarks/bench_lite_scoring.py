"""Cost of the lite scoring per pair: the fine stage alone vs the fine stage read by the bundle's scoring.

    PYTHONPATH=src python benchmarks/bench_lite_scoring.py [--pairs 1000] [--frames 60] [--repeats 7]

Times, interleaved in one process, for one query against ``--pairs`` candidates of ``--frames`` frames
(128-d whitened regions, float16 as an index stores them):

- ``fine_similarities``: the engine's similarities alone (what a search cost before the scoring);
- ``fine_match``: what a search runs now — the engine's matrices, both Chamfer directions, coverages,
  the match mode's penalty and (``related`` mode) the shared-shot term;
- ``fine_match_no_shared_shot``: the same without the shared-shot term (the previous release's scoring);
- ``fine_match+inset``: the same with the query's inset vectors (query videos);
- ``previous_default_512d``: the previous ``lite`` default's search per pair (512-d regions, the engine's
  similarities alone), for the cost of a default search before and after.

Prints per-pair milliseconds and the ratios to the first; writes ``benchmarks/results/lite_scoring.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from pathlib import Path

import dataclasses

import numpy as np
import torch

from dnsvr.bundle import LITE_SCORING, Bundle
from dnsvr.fine.kernel import cpu_flags

logger = logging.getLogger("bench_lite_scoring")
RESULTS = Path(__file__).resolve().parent / "results" / "lite_scoring.json"


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=1000)
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--dims", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    query = _unit(rng.standard_normal((args.frames, 9, args.dims))).astype(np.float32)
    inset = _unit(rng.standard_normal((args.frames, args.dims))).astype(np.float32)
    cands = [_unit(rng.standard_normal((args.frames, 9, args.dims))).astype(np.float16) for _ in range(args.pairs)]
    bundle = Bundle("lite", "efficientnet_lite0", fine_type="chamfer", coarse_type="mean", scoring=LITE_SCORING)
    no_shot = Bundle("lite", "efficientnet_lite0", fine_type="chamfer", coarse_type="mean",
                     scoring=dataclasses.replace(LITE_SCORING, shared_shot_frames=None))
    old_query = _unit(rng.standard_normal((args.frames, 9, 512))).astype(np.float32)
    old_cands = [_unit(rng.standard_normal((args.frames, 9, 512))).astype(np.float16) for _ in range(args.pairs)]
    old = Bundle("lite", "efficientnet_lite0", fine_type="chamfer", coarse_type="mean")
    runs = {
        "fine_similarities": lambda: bundle.fine_similarities(query, cands),
        "fine_match": lambda: bundle.fine_match(query, cands),
        "fine_match_no_shared_shot": lambda: no_shot.fine_match(query, cands),
        "fine_match+inset": lambda: bundle.fine_match(query, cands, inset=inset),
        "previous_default_512d": lambda: old.fine_similarities(old_query, old_cands),
    }
    for fn in runs.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(args.repeats):
        for name, fn in runs.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    base = float(np.median(times["fine_similarities"]))
    rows = {name: {"ms_per_pair_median": round(1000 * float(np.median(v)) / args.pairs, 4),
                   "ratio_to_fine_similarities": round(float(np.median(v)) / base, 3)} for name, v in times.items()}
    for name, row in rows.items():
        logger.info("%-20s %.3f ms/pair  x%.3f", name, row["ms_per_pair_median"], row["ratio_to_fine_similarities"])
    doc = {"rows": rows, "pairs": args.pairs, "frames": args.frames, "dims": args.dims, "repeats": args.repeats,
           "threads": args.threads, "cpu": platform.processor() or platform.machine(),
           "avx512_vnni": "avx512_vnni" in (cpu_flags() or set()), "load_average": list(os.getloadavg()),
           "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "command": "PYTHONPATH=src python benchmarks/bench_lite_scoring.py "
                      f"--pairs {args.pairs} --frames {args.frames} --repeats {args.repeats}"}
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    logger.info("wrote %s", args.out)


if __name__ == "__main__":
    main()

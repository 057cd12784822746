"""Cost of the read checks of search: the CRC32 of each candidate's fine bytes, against the fine stage.

A search verifies the CRC32 of every video whose fine representation it reads (once per video
and open index handle), so that a damaged shard is refused instead of scored. This measures, on
an index of ``--videos`` lite-layout videos (float16 ``[T, 9, 512]``), in interleaved rounds
with a fresh read-only handle each time: reading every candidate with the checks, the same
with the checks skipped (their rowids marked verified in advance), and the fine stage itself
(one query against those candidates, the default precision). Prints the times and the ratio and
writes ``benchmarks/results/read_checks.json``. Usage::

    PYTHONPATH=src python benchmarks/bench_read_checks.py [--videos 200] [--frames 60] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from dnsvr.fine import DEFAULT_PRECISION, fine_similarities  # noqa: E402
from dnsvr.index import IndexConfig, IndexRecord, IndexStore  # noqa: E402
from dnsvr.index._shards import crc32 as shard_crc32  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=200)
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "read_checks.json")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_read_checks_"))
    try:
        rng = np.random.default_rng(0)
        cfg = IndexConfig.float16(dims=512, coarse_dim=512)
        with IndexStore.create(work / "idx", cfg) as store:
            for start in range(0, args.videos, 50):
                recs = []
                for i in range(start, min(start + 50, args.videos)):
                    fine = rng.standard_normal((args.frames, 9, 512)).astype(np.float16)
                    coarse = rng.standard_normal(512).astype(np.float32)
                    recs.append(IndexRecord(f"v{i}", coarse / np.linalg.norm(coarse), fine))
                store.add(recs)
        query = rng.standard_normal((args.frames, 9, 512)).astype(np.float16)
        checked, unchecked, fine_s = [], [], []
        for _ in range(args.rounds):
            for mode in ("checked", "unchecked"):
                with IndexStore.open(work / "idx", readonly=True) as reader:
                    ids = reader.ids()
                    if mode == "unchecked":
                        reader._verified.update(int(r) for r in reader._cat.rowid.tolist())
                    t = time.perf_counter()
                    fines = reader.fine(ids)
                    for f in fines:  # touch the bytes as the fine stage would (page cache warm either way)
                        f.sum(dtype=np.float32)
                    (checked if mode == "checked" else unchecked).append(time.perf_counter() - t)
                    if mode == "unchecked":
                        t = time.perf_counter()
                        fine_similarities(query, fines, "chamfer", None, precision=DEFAULT_PRECISION)
                        fine_s.append(time.perf_counter() - t)
        res = {
            "benchmark": "read_checks", "videos": args.videos, "frames": args.frames, "rounds": args.rounds,
            "bytes_read": int(args.videos * args.frames * 9 * 512 * 2),
            "crc32": getattr(shard_crc32, "__module__", "zlib"),
            "read_checked_s": float(np.median(checked)), "read_unchecked_s": float(np.median(unchecked)),
            "fine_stage_s": float(np.median(fine_s)),
            "command": f"PYTHONPATH=src python benchmarks/bench_read_checks.py --videos {args.videos} "
                       f"--frames {args.frames} --rounds {args.rounds}",
            "python": platform.python_version(),
        }
        res["check_cost_s"] = res["read_checked_s"] - res["read_unchecked_s"]
        res["check_cost_vs_fine_stage"] = res["check_cost_s"] / res["fine_stage_s"]
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=1) + "\n")
        print(json.dumps(res, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

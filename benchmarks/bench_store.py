"""Benchmark of the index store at scale (synthetic data): add, size, open, memory, coarse search.

Builds an index of N videos (default 100,000) of T frames (default 60) of S^f_B packed codes
(uint8 [T, 9, 64] = 576 bytes per frame, 34,560 bytes per 60-frame video) with 1024-d coarse
vectors and selector values, then measures:

- add throughput (one ``add`` call streaming every record, committed in batches);
- commit latency of small adds (one video per ``add`` call: a durable commit each);
- bytes on disk per video per stage (fine shards, SQLite rows incl. the coarse blob, derived coarse cache);
- open time and resident memory after open, in a fresh process;
- exact coarse search per query over all N (k=100 and k=None = every video ranked), cold and warm,
  and ANN-free batched queries;
- fine() for 1,000 random ids, streaming every fine representation with fine_blocks(), verify().

Writes JSON to benchmarks/results/store.json. Usage::

    PYTHONPATH=src python benchmarks/bench_store.py [--videos 100000] [--frames 60] [--dir /work/tmp/bench_store]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from dnsvr.index import IndexConfig, IndexRecord, IndexStore  # noqa: E402

DC = 1024


def records(n: int, frames: int, seed: int, start: int = 0):
    """Random records; a pool of fine arrays keeps generation cost out of the add timing."""
    rng = np.random.default_rng(seed)
    pool = [rng.integers(0, 256, (frames, 9, 64), dtype=np.uint8) for _ in range(64)]
    ts = np.arange(frames, dtype=np.float64)
    batch = 1000
    for b in range(start, start + n, batch):
        m = min(batch, start + n - b)
        coarse = rng.standard_normal((m, DC)).astype(np.float32)
        coarse /= np.linalg.norm(coarse, axis=1, keepdims=True)
        sel = rng.random(m)
        for j in range(m):
            i = b + j
            yield IndexRecord(f"video_{i:07d}", coarse[j], pool[i % 64], float(sel[j]),
                              {"timestamps": ts, "duration": float(frames), "source": f"/data/videos/{i:07d}.mp4"})


CHILD = r"""
import json, os, sys, time
import psutil
proc = psutil.Process()
t0 = time.perf_counter()
from dnsvr.index import IndexStore
t_import = time.perf_counter() - t0
rss0 = proc.memory_info().rss
t1 = time.perf_counter()
store = IndexStore.open(sys.argv[1], readonly=True)
n = len(store)
t_open = time.perf_counter() - t1
rss1 = proc.memory_info().rss
import numpy as np
rng = np.random.default_rng(7)
q = rng.standard_normal((1, 1024)).astype(np.float32)
t2 = time.perf_counter()
store.coarse_search(q, k=100)
t_first = time.perf_counter() - t2
rss2 = proc.memory_info().rss
print(json.dumps({"videos": n, "import_s": t_import, "open_s": t_open, "rss_before_open_mb": rss0 / 2**20,
                  "rss_after_open_mb": rss1 / 2**20, "rss_open_delta_mb": (rss1 - rss0) / 2**20,
                  "first_search_s": t_first, "rss_after_first_search_mb": rss2 / 2**20}))
"""


def fresh_process_open(directory: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    out = subprocess.run([sys.executable, "-c", CHILD, str(directory)], capture_output=True, text=True, env=env,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def timeit(fn, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=100_000)
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--dir", type=Path, default=Path("/work/tmp/bench_store"))
    ap.add_argument("--keep", action="store_true", help="keep the index directory afterwards")
    ap.add_argument("--reuse", action="store_true",
                    help="measure open/search/fine/verify on an index kept by an earlier --keep run (no build)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "store.json")
    args = ap.parse_args()
    n, frames = args.videos, args.frames
    need = n * (frames * 576 + 2 * 4 * DC + 600)
    args.dir.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(args.dir.parent).free
    if free < 1.5 * need and not args.reuse:
        sys.exit(f"not enough disk at {args.dir.parent}: {free / 1e9:.1f} GB free, ~{need / 1e9:.1f} GB needed")
    if args.dir.exists() and not args.reuse:
        shutil.rmtree(args.dir)
    res: dict = {"videos": n, "frames_per_video": frames, "fine": "S^f_B packed bits uint8 [T, 9, 64]",
                 "coarse_dim": DC, "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                                "note": "shared machine: other jobs ran concurrently; timings are noisy",
                                                "loadavg_at_start": list(os.getloadavg())}}
    cfg = IndexConfig.binary(dims=512, coarse_dim=DC)

    if args.reuse:
        prev = json.loads(args.out.read_text()) if args.out.is_file() else {}
        for key in ("add_bulk", "add_single", "build_coarse_cache_s"):
            if key in prev:
                res[key] = prev[key]
        res["reused_index_from_earlier_run"] = True
        build(args, res, cfg, n, frames, skip=True)
    else:
        build(args, res, cfg, n, frames, skip=False)
    measure(args, res)


def build(args: argparse.Namespace, res: dict, cfg: IndexConfig, n: int, frames: int, skip: bool) -> None:
    """Build the index (unless skip) and record its size on disk."""
    if skip:
        with IndexStore.open(args.dir, readonly=True) as reader:
            info = reader.info()
        record_sizes(res, info)
        return
    # -- bulk add --------------------------------------------------------------------------
    store = IndexStore.create(args.dir, cfg)
    t = time.perf_counter()
    store.add(records(n, frames, seed=0), batch_size=2000)
    dt = time.perf_counter() - t
    res["add_bulk"] = {"seconds": dt, "videos_per_s": n / dt, "fine_mb_per_s": n * frames * 576 / dt / 1e6,
                       "batch_size": 2000}
    print(f"bulk add: {n} videos in {dt:.1f} s = {n / dt:.0f} videos/s")

    # -- small adds: one durable commit per call --------------------------------------------
    small = list(records(200, frames, seed=1, start=n))
    lat = []
    for r in small:
        t = time.perf_counter()
        store.add([r])
        lat.append(time.perf_counter() - t)
    res["add_single"] = {"calls": len(lat), "median_ms": 1e3 * float(np.median(lat)),
                         "p90_ms": 1e3 * float(np.percentile(lat, 90))}
    print(f"single-video add: median {res['add_single']['median_ms']:.1f} ms per call")
    store.remove([r.video_id for r in small])
    t = time.perf_counter()
    store.build_coarse_index()
    res["build_coarse_cache_s"] = time.perf_counter() - t
    store.close()
    with IndexStore.open(args.dir, readonly=True) as reader:  # sizes after the writer's final checkpoint
        info = reader.info()
    record_sizes(res, info)


def record_sizes(res: dict, info: dict) -> None:
    res["info"] = {k: info[k] for k in ("videos", "frames", "bytes", "bytes_per_video")}
    bpv = info["bytes_per_video"]
    res["bytes_per_video"] = {
        "fine_shards": info["bytes"]["fine_live"] / info["videos"],
        "sqlite_row_incl_coarse_blob": bpv["sqlite_row"],
        "coarse_derived_cache": bpv["coarse_derived"],
        "total_on_disk": bpv["total_on_disk"],
    }
    print("bytes per video:", json.dumps(res["bytes_per_video"]))


def measure(args: argparse.Namespace, res: dict) -> None:
    """Open, search, fine access, streaming and verify on the built index."""
    info = res["info"]

    # -- open in a fresh process -----------------------------------------------------------
    opens = [fresh_process_open(args.dir) for _ in range(3)]
    res["open_fresh_process"] = opens
    res["open_s_median"] = float(np.median([o["open_s"] for o in opens]))
    print(f"open (fresh process): {res['open_s_median'] * 1e3:.0f} ms; RSS after open "
          f"{opens[-1]['rss_after_open_mb']:.0f} MB (+{opens[-1]['rss_open_delta_mb']:.0f} MB)")

    # -- searches ------------------------------------------------------------------------
    rng = np.random.default_rng(3)
    t = time.perf_counter()
    with IndexStore.open(args.dir, readonly=True) as reader:
        res["open_in_process_s"] = time.perf_counter() - t
        qs = rng.standard_normal((32, DC)).astype(np.float32)
        qs /= np.linalg.norm(qs, axis=1, keepdims=True)
        t = time.perf_counter()
        reader.coarse_search(qs[:1], k=100)
        res["coarse_first_query_s"] = time.perf_counter() - t
        k100 = [timeit(lambda i=i: reader.coarse_search(qs[i : i + 1], k=100), 1)[0] for i in range(32)]
        kall = [timeit(lambda i=i: reader.coarse_search(qs[i : i + 1], k=None), 1)[0] for i in range(8)]
        batch = timeit(lambda: reader.coarse_search(qs, k=100), 3)
        # the floor on this machine at this moment: the same product on a plain in-memory matrix
        plain = reader.coarse_vectors()
        bare = [timeit(lambda i=i: plain @ qs[i], 1)[0] for i in range(16)]
        del plain
        res["coarse_search_exact"] = {
            "n_db": len(reader), "dim": DC,
            "k100_ms_median": 1e3 * float(np.median(k100)), "k100_ms_p90": 1e3 * float(np.percentile(k100, 90)),
            "kall_ms_median": 1e3 * float(np.median(kall)),
            "batch32_k100_ms_per_query": 1e3 * float(np.median(batch)) / 32,
            "reference_bare_numpy_gemv_ms_median": 1e3 * float(np.median(bare)),
        }
        print("exact coarse search:", json.dumps(res["coarse_search_exact"]))
        ids = reader.ids()
        pick = [ids[i] for i in rng.choice(len(ids), 1000, replace=False)]
        f = timeit(lambda: reader.fine(pick), 5)
        res["fine_1000_random_ids_ms"] = 1e3 * float(np.median(f))
        t = time.perf_counter()
        total = 0
        for block in reader.fine_blocks(max_frames=65536):
            total += int(block.data.sum(dtype=np.uint64) & 1)  # touch every byte
        dt = time.perf_counter() - t
        res["fine_blocks_stream"] = {"seconds": dt, "gb_per_s": info["bytes"]["fine_live"] / dt / 1e9}
        print(f"fine(1000 ids): {res['fine_1000_random_ids_ms']:.1f} ms; stream all: {dt:.1f} s")
        t = time.perf_counter()
        rep = reader.verify()
        res["verify"] = {"seconds": time.perf_counter() - t, "ok": rep.ok, "checked": rep.n_checked}
        print(f"verify: {res['verify']}")
    res["machine"]["loadavg_at_end"] = list(os.getloadavg())
    res["command"] = "PYTHONPATH=src python benchmarks/bench_store.py " + " ".join(sys.argv[1:])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {args.out}")
    if not args.keep:
        shutil.rmtree(args.dir)


if __name__ == "__main__":
    main()

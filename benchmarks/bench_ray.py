"""Benchmark of the scale-out paths: distributed vs local extraction, and sharded search latency.

Part ``extract``: frames per second of :func:`dnsvr.extract.iter_video_features` in this process
(torch on every core) against :func:`dnsvr.cluster.extract.iter_video_features_ray` on a local Ray
cluster of ``--workers`` CPU workers (one model each, one thread each), on generated videos
(:mod:`dnsvr.synthetic`), runs interleaved; the cluster is warmed once first (its workers' start and
model load are reported apart).

Part ``search``: DnS query latency over N synthetic videos (default 100,000; S^f_B codes of 60
frames, 1024-d coarse vectors and selector values written straight into the stores, as
``bench_search.py`` does; random-weight students and selector) held by an ordinary index (1 shard)
and by sharded indexes of 2 and 4 shards with the same videos: searched in process, shard after
shard, and with one Ray actor per shard; budgets of 1,000 pairs, 1% and 5%. Every sharded result is
checked against the single index's (ids, order, scores to 1e-6).

Part ``merge``: the coordinator's own work in one query (merging every shard's candidates in the
canonical order, the selector over all of them, the budget, the ranking) for 100,000 to 3,000,000
candidates from 16 shards that answer instantly: what grows with the collection, for the sizing.

Usage::

    PYTHONPATH=src python benchmarks/bench_ray.py [--part extract|search|merge|all] [--videos 100000]
        [--workers 2] [--workdir /work/tmp/bench_ray] [--keep] [--reuse] [--out benchmarks/results/ray.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from dnsvr.bundle import Bundle, VideoRepresentation
from dnsvr.nn import CoarseGrainedStudent, FineGrainedStudent, SelectorNetwork
from dnsvr.search import Budget


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _engine() -> dict:
    """The CPU and the fine-stage engine this run used (the compiled kernel needs AVX-512 VNNI)."""
    from dnsvr.fine import engine as fine

    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), None) if Path("/proc/cpuinfo").exists() else None
    return {"cpu": model, "fine_engine": "compiled kernel" if fine._KERNEL is not None else "torch",
            "int8_products": "float32" if fine._INT8_MM_FLOAT else "oneDNN int8"}


def _calibrate() -> float:
    """Milliseconds of one 1080×512×1080 float32 product (the machine-load gauge of bench_search)."""
    a, b = torch.randn(1080, 512), torch.randn(512, 1080)
    t = time.perf_counter()
    for _ in range(5):
        a @ b
    return (time.perf_counter() - t) / 5 * 1000


# -- extraction ----------------------------------------------------------------------------
def bench_extract(workdir: Path, workers: int, n_videos: int = 12, seconds: float = 10.0, rounds: int = 2) -> dict:
    import ray

    from dnsvr import synthetic as S
    from dnsvr.backbones import FeatureExtractor
    from dnsvr.cluster._ray import worker_env
    from dnsvr.cluster.extract import iter_video_features_ray
    from dnsvr.extract import iter_video_features

    root = workdir / "videos"
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n_videos):
        path = root / f"x{i:03d}.mp4"
        if not path.exists():
            S.write_video(path, S.render_clip(100 + i, seconds=seconds, fps=25, size=(320, 180)), fps=25)
    ray.init(num_cpus=workers, include_dashboard=False, runtime_env=worker_env(), log_to_driver=False)
    t = time.perf_counter()
    warm = list(iter_video_features_ray([root / "x000.mp4", root / "x001.mp4"]))
    warm_s = time.perf_counter() - t
    extractor = FeatureExtractor("efficientnet_lite0")
    rows: dict[str, list[float]] = {"local": [], "ray": []}
    frames = 0
    calib = [_calibrate()]
    for r in range(rounds):
        for mode in (("local", "ray") if r % 2 == 0 else ("ray", "local")):
            t = time.perf_counter()
            if mode == "local":
                got = list(iter_video_features([root], extractor))
            else:
                got = list(iter_video_features_ray([root]))
            elapsed = time.perf_counter() - t
            frames = sum(r.frames for r in got)
            rows[mode].append(frames / elapsed)
            print(json.dumps({"extract": mode, "frames": frames, "seconds": round(elapsed, 2),
                              "frames_per_s": round(frames / elapsed, 1)}), flush=True)
    calib.append(_calibrate())
    ray.shutdown()
    out = {"videos": n_videos, "seconds_per_video": seconds, "frames": frames, "workers": workers,
           "torch_threads_local": torch.get_num_threads(), "ray_warmup_s_2_videos": round(warm_s, 2),
           "warmup_videos": len(warm),
           "local_frames_per_s_median": statistics.median(rows["local"]),
           "ray_frames_per_s_median": statistics.median(rows["ray"]),
           "ratio_ray_over_local": statistics.median(rows["ray"]) / statistics.median(rows["local"]),
           "runs": rows, "calibration_ms_before_after": calib}
    print(json.dumps({"extract_summary": out}), flush=True)
    return out


# -- sharded search ------------------------------------------------------------------------
def _bundle() -> Bundle:
    torch.manual_seed(0)
    fine_args = {"dims": 512, "attention": False, "binarization": True}
    return Bundle("bench-bin", "resnet50", fine_type="bin", fine_net=FineGrainedStudent(**fine_args),
                  fine_args=fine_args, coarse_type="student", coarse_net=CoarseGrainedStudent(), coarse_args={},
                  selector_net=SelectorNetwork(), selector_args={})


def _build(directory: Path, shards: int, n: int, frames: int, batch: int = 2000) -> float:
    """The same N synthetic videos (same seed) into an index of ``shards`` shards; build seconds."""
    from dnsvr.index import IndexRecord, VideoIndex
    from dnsvr.index.sharded import ShardedIndex

    rng = np.random.default_rng(1)
    index = VideoIndex.create(directory, _bundle()) if shards == 1 else \
        ShardedIndex.create(directory, _bundle(), shards=shards)
    ts = np.arange(frames, dtype=np.float64)
    pool = [rng.integers(0, 256, (frames, 9, 64), dtype=np.uint8) for _ in range(97)]
    t = time.perf_counter()
    for start in range(0, n, batch):
        coarse = _unit(rng.standard_normal((min(batch, n - start), 1024)))
        sel = rng.uniform(0.2, 1.0, len(coarse))
        recs = [IndexRecord(f"v{start + j:07d}", coarse[j], pool[(start + j) % 97], float(sel[j]), {"timestamps": ts})
                for j in range(len(coarse))]
        index._commit(recs, "error")
        if start % 20000 == 0:
            print(f"  {shards} shard(s): {start + len(recs)}/{n} videos", file=sys.stderr, flush=True)
    index.close()
    return time.perf_counter() - t


def _same(a, b) -> bool:
    if [r.video_id for r in a.results] != [r.video_id for r in b.results]:
        return False
    return all(abs(x.score - y.score) <= 1e-6 for x, y in zip(a.results, b.results))


def bench_search(workdir: Path, n: int, queries: int = 2, reuse: bool = False, keep: bool = False,
                 frames: int = 60, budgets: str = "1000,1%,5%") -> list[dict]:
    import ray

    from dnsvr.cluster._ray import worker_env
    from dnsvr.index import VideoIndex
    from dnsvr.index.sharded import ShardedIndex, open_any

    layouts = (1, 2, 4)
    build_s: dict[int, float] = {}
    for shards in layouts:
        directory = workdir / f"search_{shards}"
        if reuse and directory.exists():
            with open_any(directory, readonly=True) as ix:
                if len(ix) == n:
                    build_s[shards] = float("nan")
                    continue
        if directory.exists():
            shutil.rmtree(directory)
        build_s[shards] = _build(directory, shards, n, frames)
        print(f"  built {shards} shard(s) in {build_s[shards]:.0f} s", file=sys.stderr, flush=True)
    ray.init(num_cpus=max(2, os.cpu_count() or 2), include_dashboard=False, runtime_env=worker_env(),
             log_to_driver=False)
    plan = [(b if b.endswith("%") else f"{b} pairs", Budget.parse(b)) for b in budgets.split(",")]
    rng = np.random.default_rng(2)
    opened = {}
    for shards in layouts:
        path = workdir / f"search_{shards}"
        opened[(shards, "in-process")] = VideoIndex.open(path, readonly=True) if shards == 1 else \
            ShardedIndex.open(path, readonly=True)
        if shards > 1:  # one actor per shard
            opened[(shards, "ray")] = ShardedIndex.open(path, readonly=True, ray="auto")
    reference = opened[(1, "in-process")]
    qreps = []
    for qi in range(queries):
        vid = f"v{qi * 7919 % n:07d}"
        q_fine = np.asarray(reference.store.fine([vid])[0])
        qreps.append(VideoRepresentation(_unit(rng.standard_normal(1024)), q_fine, 0.6))
    # warm: page cache, coarse matrices, the actors' start
    t = time.perf_counter()
    for ix in opened.values():
        ix.search_representation("warm", qreps[0], top_k=100, budget=Budget(pairs=10), segments=False)
    warm_s = time.perf_counter() - t
    out = []
    variants = list(opened)
    for label, budget in plan:
        times: dict[tuple, list[float]] = {v: [] for v in variants}
        stages: dict[tuple, list[dict]] = {v: [] for v in variants}
        equal: dict[tuple, bool] = {v: True for v in variants}
        calib = [_calibrate()]
        load = [os.getloadavg()[0]]
        for qi, rep in enumerate(qreps):
            ref = None
            for v in (variants if qi % 2 == 0 else variants[::-1]):  # interleaved
                t = time.perf_counter()
                res = opened[v].search_representation(f"q{qi}", rep, top_k=100, budget=budget, segments=False)
                times[v].append(time.perf_counter() - t)
                stages[v].append(res.timings)
                if v == (1, "in-process"):
                    ref = res
                else:
                    stages[v][-1] = {**res.timings, "_res": res}
            for v in variants:
                if v != (1, "in-process"):
                    res = stages[v][-1].pop("_res")
                    equal[v] = equal[v] and _same(ref, res)
        calib.append(_calibrate())
        load.append(os.getloadavg()[0])
        for v in variants:
            row = {"shards": v[0], "mode": v[1], "videos": n, "frames_per_video": frames, "budget": label,
                   "pairs": budget.pairs_for(n), "query_s_median": statistics.median(times[v]),
                   "query_s_min": min(times[v]), "queries": queries,
                   "stage_s_median": {k: statistics.median(s.get(k, 0.0) for s in stages[v])
                                      for k in ("coarse", "selector", "fine", "total")},
                   "fine_ms_per_pair_median": statistics.median(s.get("fine", 0.0) for s in stages[v])
                   / max(budget.pairs_for(n), 1) * 1000,
                   "equals_single_index": equal[v], "calibration_ms_before_after": calib,
                   "load_average_1min_before_after": load,
                   "index_build_s": build_s[v[0]]}
            print(json.dumps(row), flush=True)
            out.append(row)
    for ix in opened.values():
        ix.close()
    ray.shutdown()
    out.append({"warmup_s_all_layouts": warm_s})
    if not keep:
        for shards in layouts:
            shutil.rmtree(workdir / f"search_{shards}", ignore_errors=True)
    return out


# -- the coordinator's merge ----------------------------------------------------------------
class _GivenShards:
    """A shard group that answers instantly from arrays made beforehand: what is left to time is the
    coordinator's work (merge, canonical order, selector, budget, ranking)."""

    def __init__(self, n: int, shards: int, seed: int = 3) -> None:
        from dnsvr.index.query import Candidates

        rng = np.random.default_rng(seed)
        self.names = [f"shard-{i:03d}" for i in range(shards)]
        self.answers = {}
        for i, part in enumerate(np.array_split(np.arange(n), shards)):
            scores = rng.uniform(-0.2, 1.0, len(part)).astype(np.float32)
            order = np.argsort(-scores, kind="stable")
            self.answers[i] = Candidates([f"v{j:08d}" for j in part[order]], scores[order],
                                         rng.uniform(0.2, 1.0, len(part)), len(part))
        self.rng = rng

    def call(self, method: str, args: dict) -> dict:
        if method == "candidates":
            return {i: self.answers[i] for i in args}
        if method == "fine_scores":
            return {i: self.rng.uniform(-1, 1, len(a[1])).astype(np.float32) for i, a in args.items()}
        raise ValueError(method)


def bench_merge(sizes: list[int], shards: int = 16, repeats: int = 3) -> list[dict]:
    """Seconds of the coordinator's part of one query over ``n`` candidates from ``shards`` shards
    (1 fine pair, answered instantly): how the merge grows with the collection."""
    from dnsvr.index.query import QueryRep, search_shards

    bundle = _bundle()
    rep = QueryRep("q", _unit(np.random.default_rng(4).standard_normal(1024)), np.zeros((60, 9, 64), np.uint8), 0.6)
    out = []
    for n in sizes:
        group = _GivenShards(n, shards)
        times, sel = [], []
        load = [os.getloadavg()[0]]
        for _ in range(repeats):
            t = time.perf_counter()
            res = search_shards(rep, group, bundle, top_k=100, budget=Budget(pairs=1), segments=False)
            times.append(time.perf_counter() - t)
            sel.append(res.timings.get("selector", 0.0))
        load.append(os.getloadavg()[0])
        row = {"candidates": n, "shards": shards, "coordinator_s_median": statistics.median(times),
               "selector_s_median": statistics.median(sel), "repeats": repeats,
               "load_average_1min_before_after": load}
        print(json.dumps(row), flush=True)
        out.append(row)
        del group
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", choices=("extract", "search", "merge", "all"), default="all")
    ap.add_argument("--merge-sizes", default="100000,1000000,3000000",
                    help="candidates per query for --part merge (comma-separated)")
    ap.add_argument("--videos", type=int, default=100_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--queries", type=int, default=2)
    ap.add_argument("--budgets", default="1000,1%,5%", help="comma-separated budgets (pairs, or percentages)")
    ap.add_argument("--workdir", type=Path, default=Path("/work/tmp/bench_ray"))
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--reuse", action="store_true")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "ray.json")
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    run: dict = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                 "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                             "load_average": os.getloadavg(), "niceness": os.nice(0),
                             "ray_worker_niceness": os.environ.get("RAY_worker_niceness"), **_engine()},
                 "command": " ".join(sys.argv)}
    # each part keeps the run that measured it (a later run of the other part leaves it as it is)
    result: dict = json.loads(args.out.read_text()) if args.out.exists() else {}
    for stale in ("date", "machine", "command"):
        result.pop(stale, None)
    if args.part in ("extract", "all"):
        result["extract"] = bench_extract(args.workdir, args.workers)
        result["extract_run"] = {**run, "machine": {**run["machine"], "load_average_after": os.getloadavg()}}
    if args.part in ("search", "all"):
        result["search"] = bench_search(args.workdir, args.videos, queries=args.queries, reuse=args.reuse,
                                        keep=args.keep, budgets=args.budgets)
        result["search_run"] = {**run, "machine": {**run["machine"], "load_average_after": os.getloadavg()}}
    if args.part in ("merge", "all"):
        result["merge"] = bench_merge([int(s) for s in args.merge_sizes.split(",")])
        result["merge_run"] = {**run, "machine": {**run["machine"], "load_average_after": os.getloadavg()}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()

"""Time ``dnsvr evaluate`` on FIVR-200K-sized similarities (100 queries x 225,960 videos).

Generates a similarity file with the real FIVR-200K ids (scores: label-correlated noise, six
decimals), then times loading it into a SimilarityTable — the compiled reader that ``dnsvr
evaluate`` uses (its default threads, and one thread), the numpy reader it falls back to when
the extension is not built, the same similarities saved as .npz, orjson + conversion, and
(unless --skip-stdlib) the standard library — and the FIVR-200K protocol, plus a plain-Python
loop in the style of the reference protocol (sorted() + per-video set tests) on a few queries,
extrapolated to 100. Wall and CPU times (CPU includes every thread of the process). With
--gzip the file is .json.gz, its decompression is also timed alone, and the compiled reader also
inflates first and then scans (its default scans while another thread inflates).

Usage:
    python benchmarks/bench_eval.py [--queries 100] [--gzip] [--keep FILE] [--skip-stdlib] [--skip-numpy]
                                        [--skip-orjson] [--reference-queries N] [--out FILE]

Writes benchmarks/results/eval.json.
"""

from __future__ import annotations

import argparse
import gc
import gzip
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from dnsvr.eval import FIVR, SimilarityTable, evaluate  # noqa: E402
from dnsvr.eval import _fastjson  # noqa: E402
from dnsvr.eval import similarities as sim_module  # noqa: E402


def write_similarities(path: Path, bench: FIVR, n_queries: int, seed: int = 0) -> None:
    """Write {query: {video: score}} for ``n_queries`` FIVR-200K queries against the whole database."""
    rng = np.random.default_rng(seed)
    database = bench.database
    keys = [json.dumps(v) + ":" for v in database]
    index = {v: i for i, v in enumerate(database)}
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", encoding="utf-8") as fh:
        fh.write("{")
        for qi, query in enumerate(bench.queries[:n_queries]):
            scores = rng.normal(0.0, 0.3, len(database))
            for label, boost in (("ND", 1.0), ("DS", 0.8), ("CS", 0.5), ("IS", 0.3)):
                pos = [index[v] for v in bench.annotation[query].get(label, []) if v in index]
                scores[pos] += boost + rng.normal(0.0, 0.3, len(pos))
            values = np.round(scores, 6).astype(str)
            fh.write(("," if qi else "") + json.dumps(query) + ":{")
            fh.write(",".join(k + v for k, v in zip(keys, values)))
            fh.write("}")
        fh.write("}")


def reference_style_fivr(bench: FIVR, sims: dict, all_db: set, queries: list[str]) -> list[float]:
    """The reference protocol's algorithm in plain Python (sorted + loop), for the time comparison."""
    out = []
    for query in queries:
        res = sims[query]
        for labels in (["ND", "DS"], ["ND", "DS", "CS"], ["ND", "DS", "CS", "IS"]):
            gt = set(sum([bench.annotation[query].get(lb, []) for lb in labels], [])) & all_db
            hits, ranked, total = 0.0, 0, 0.0
            for video in sorted(res, key=lambda x: res[x], reverse=True):
                if video != query and video in all_db:
                    ranked += 1
                    if video in gt:
                        hits += 1.0
                        total += hits / ranked
            out.append(total / len(gt))
    return out


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--gzip", action="store_true", help="write and read .json.gz instead of .json")
    parser.add_argument("--keep", type=Path, default=None, help="keep/reuse the generated file here")
    parser.add_argument("--skip-stdlib", action="store_true", help="do not time the json fallback")
    parser.add_argument("--skip-numpy", action="store_true", help="do not time the numpy reader")
    parser.add_argument("--skip-orjson", action="store_true", help="do not time orjson")
    parser.add_argument("--reference-queries", type=int, default=5,
                        help="queries timed with the plain-Python reference-style loop (extrapolated)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "eval.json")
    args = parser.parse_args()

    bench = FIVR("200k")
    suffix = ".json.gz" if args.gzip else ".json"
    tmpdir = None
    if args.keep is not None:
        path = args.keep
    else:
        tmpdir = tempfile.TemporaryDirectory()
        path = Path(tmpdir.name) / f"fivr200k_sims{suffix}"
    if not path.exists():
        t0 = time.perf_counter()
        write_similarities(path, bench, args.queries)
        print(f"generated {path} ({path.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - t0:.1f} s")

    result: dict = {
        "input": {"queries": args.queries, "videos": len(bench.database), "file": path.name,
                  "size_mib": round(path.stat().st_size / 2**20, 1)},
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "note": "shared 2-core machine; other jobs were running, timings are noisy"},
        "orjson": sim_module._orjson is not None,
        "compiled_reader": _fastjson.compiled_available(),
        "default_threads": _fastjson.default_threads(),
    }

    def timed(fn):
        gc.collect()
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        return out, time.perf_counter() - t0, time.process_time() - c0

    def read_only() -> int:  # the bytes the readers start from (decompression for .gz)
        with sim_module._file_text(path) as text:
            return len(text)

    if args.gzip:
        _, wall, cpu = timed(read_only)
        result["gzip_decompress"] = {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2)}
        print(f"[gzip] decompress {wall:.2f} s (cpu {cpu:.2f} s)")

    if not _fastjson.compiled_available():
        print("the compiled reader is not built (python setup.py build_ext --inplace): timing the numpy reader")
    loaders = []
    if _fastjson.compiled_available():
        loaders += [("compiled", lambda: SimilarityTable.from_file(path)),
                    ("compiled_1thread", lambda: SimilarityTable.from_file(path))]
        if args.gzip:  # the default scans while inflating; this one inflates first, then scans
            loaders.append(("compiled_inflate_first", lambda: SimilarityTable.from_file(path)))
    if not args.skip_numpy:
        loaders.append(("numpy", lambda: SimilarityTable.from_file(path)))
    if sim_module._orjson is not None and not args.skip_orjson:
        loaders.append(("orjson", lambda: SimilarityTable(sim_module.load_similarities(path), consume=True)))
    if not args.skip_stdlib:
        loaders.append(("json", lambda: SimilarityTable(sim_module.load_similarities(path), consume=True)))
    npz_path = Path(tempfile.mkdtemp()) / "sims.npz"
    sim_module.save_similarities(SimilarityTable.from_file(path), npz_path)
    result["input"]["npz_size_mib"] = round(npz_path.stat().st_size / 2**20, 1)
    loaders.insert(1, ("npz", lambda: SimilarityTable.from_file(npz_path)))
    saved, saved_scan, saved_threads = sim_module._orjson, _fastjson._simscan, _fastjson.default_threads
    saved_stream = _fastjson.STREAM_MIN_BYTES
    reference = None
    for name, loader in loaders:
        sim_module._orjson = None if name == "json" else saved
        _fastjson._simscan = None if name == "numpy" else saved_scan
        _fastjson.default_threads = (lambda: 1) if name == "compiled_1thread" else saved_threads
        _fastjson.STREAM_MIN_BYTES = 1 << 62 if name == "compiled_inflate_first" else saved_stream
        table, load_wall, load_cpu = timed(loader)
        if reference is None:
            reference = table
        elif name != "npz":  # every JSON reader gives the same table (the numpy one keeps one zero)
            assert table.ids == reference.ids and all(
                np.array_equal(a.positions, b.positions) and np.array_equal(a.scores, b.scores)
                for a, b in zip(table, reference)), f"{name} disagrees with {loaders[0][0]}"
        metrics, eval_wall, eval_cpu = timed(lambda: evaluate("FIVR-200K", table))
        result.setdefault("runs", {})[name] = {
            "load_wall_s": round(load_wall, 2), "load_cpu_s": round(load_cpu, 2),
            "evaluate_wall_s": round(eval_wall, 2), "evaluate_cpu_s": round(eval_cpu, 2),
            "peak_rss_gib_so_far": round(peak_rss_gib(), 2)}
        result["metrics"] = metrics
        print(f"[{name}] load {load_wall:.2f} s (cpu {load_cpu:.2f} s), evaluate {eval_wall:.2f} s "
              f"(cpu {eval_cpu:.2f} s); {metrics}")
        del table
    sim_module._orjson, _fastjson._simscan, _fastjson.default_threads = saved, saved_scan, saved_threads
    _fastjson.STREAM_MIN_BYTES = saved_stream
    npz_path.unlink()

    if args.reference_queries > 0:
        sims = sim_module.load_similarities(path)
        all_db = set(bench.database) & (set(sims) | set(next(iter(sims.values()))))
        queries = [q for q in sims if q in set(bench.queries)][: args.reference_queries]
        t0 = time.perf_counter()
        ref = reference_style_fivr(bench, sims, all_db, queries)
        t_ref = time.perf_counter() - t0
        ours = FIVR("200k").evaluate_detailed({q: sims[q] for q in queries}, available=all_db).per_query
        ours_flat = [ours[m][q] for q in queries for m in ("DSVR", "CSVR", "ISVR")]
        assert np.allclose(ref, ours_flat, atol=1e-12, rtol=0), "reference-style loop disagrees"
        per_query = t_ref / len(queries)
        result["reference_style_evaluate_s"] = {"queries_timed": len(queries),
                                                "per_query_s": round(per_query, 3),
                                                "extrapolated_100_s": round(per_query * 100, 1)}
        print(f"[reference-style loop] {per_query:.3f} s per query -> {per_query * 100:.1f} s for 100 queries")
        del sims
    result["peak_rss_gib"] = round(peak_rss_gib(), 2)
    print(f"peak RSS {result['peak_rss_gib']} GiB")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    if tmpdir is not None:
        tmpdir.cleanup()


if __name__ == "__main__":
    main()

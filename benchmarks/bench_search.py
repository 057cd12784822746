"""Benchmark of the fine stage and of the end-to-end DnS query.

Part ``pairs``: per-pair fine similarity at T=60 and T=120 for S^f_A, S^f_B and the lite
Chamfer stage — the batched engine (:mod:`dnsvr.fine`: one matrix product per block of
candidates, comparator batched over pairs, int8 products for S^f_B's codes) at
``precision="exact"`` and, for the float stages, ``precision="int8"``, against the plain
per-pair network call (``FineGrainedStudent.calculate_video_similarity`` /
``chamfer_video_similarity``), all interleaved in the same process so that they see the same
machine load; a 1080×512×1080 float32 product is timed before and after as the load gauge.
Random weights at the published sizes (speed does not depend on the values).

Part ``quality``: how far ``precision="int8"`` lies from ``"exact"`` — worst absolute
similarity error, top-10 agreement and Kendall's tau of the per-query rankings — on
(a) generated region features (:mod:`dnsvr.eval.synthetic`: queries, transformed copies,
unrelated videos; D=512, 60 frames) through a random-weight S^f_A and through the Chamfer
stage, and (b) real EfficientNet-Lite0 features of generated videos with transformed
copies (:mod:`dnsvr.synthetic`), indexed with the ``lite`` bundle and searched both ways.

Part ``dns``: end-to-end DnS queries (coarse over every video → selector → fine re-rank of the
budget → one list; segments off) through :class:`dnsvr.index.VideoIndex` on synthetic
indexes: S^f_B with N videos of 60 frames (default 100,000; 3.5 GB of packed codes), and —
to fit the shared disk — S^f_A with 10,000 videos of 60 frames (5.5 GB of float16), queried
with pair budgets equal to 1,000 pairs, 1% and 5% of 100,000. ``--page-cache`` adds rows at the 5%
budget with the shard files evicted from the page cache before the query ("cold"; as on a machine
whose memory does not hold the index), with and without the store's read-ahead of the candidates,
and the same query repeated at once ("warm"), with the major page faults of each.

``--baseline REV`` times the fine engine of git revision ``REV`` (its ``src/dnsvr/fine/`` package)
interleaved with the current one, in the ``pairs`` part and in the ``dns`` part (through
:mod:`dnsvr.bundle`), so that a speed-up is a ratio measured under the same load. Every row also
has CPU (process) time next to wall time.

Usage::

    PYTHONPATH=src python benchmarks/bench_search.py [--part pairs|quality|dns|all] [--videos 100000]
        [--workdir /work/tmp/bench_search] [--keep] [--reuse] [--baseline REV] [--frames 60,120] [--page-cache bin]
        [--out benchmarks/results/search.json]

Writes ``benchmarks/results/search.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from dnsvr.fine import kernel as _fine_kernel
from dnsvr.fine import FineComparator, fine_similarities, pack_codes
from dnsvr.bundle import Bundle, VideoRepresentation
from dnsvr.nn import CoarseGrainedStudent, FineGrainedStudent, SelectorNetwork
from dnsvr.nn.similarity import chamfer_video_similarity
from dnsvr.search import Budget

RESULTS = Path(__file__).resolve().parent / "results" / "search.json"
REFERENCE_MS_T60 = {"att": 4.4, "bin": 3.4}  # the reference implementation on this machine kind, 2 threads


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _load_engine(rev: str):
    """The fine engine of git revision ``rev``, as a separate module: its ``src/dnsvr/fine/`` package (one module
    per concept, relative imports) loaded under another name, or its single file (``src/dnsvr/fine/engine.py``
    before the split, ``src/dnsvr/_fine.py`` before the package)."""
    import importlib.util
    import tempfile

    here = Path(__file__).resolve().parent
    listed = subprocess.run(["git", "ls-tree", "--full-tree", "--name-only", f"{rev}:src/dnsvr/fine"],
                            capture_output=True, text=True, cwd=here)
    names = listed.stdout.split() if listed.returncode == 0 else []
    name = f"fine_{rev.replace('/', '_').replace('-', '_').replace('.', '_')}"
    folder = Path(tempfile.mkdtemp())
    if "kernel.py" in names:  # the package: engine.py imports its siblings
        pkg = folder / name
        pkg.mkdir()
        for file in (n for n in names if n.endswith(".py")):
            text = subprocess.run(["git", "show", f"{rev}:src/dnsvr/fine/{file}"], capture_output=True, text=True,
                                  cwd=here, check=True).stdout
            (pkg / file).write_text(text)
        spec = importlib.util.spec_from_file_location(name, pkg / "__init__.py", submodule_search_locations=[str(pkg)])
        package = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        sys.modules[name] = package
        spec.loader.exec_module(package)  # type: ignore[union-attr]
        return sys.modules[f"{name}.engine"]
    for where in ("src/dnsvr/fine/engine.py", "src/dnsvr/_fine.py"):  # the engine's path before and after the move
        shown = subprocess.run(["git", "show", f"{rev}:{where}"], capture_output=True, text=True, cwd=here)
        if shown.returncode == 0:
            src = shown.stdout
            break
    else:
        raise FileNotFoundError(f"revision {rev} has no fine engine (src/dnsvr/fine/ or src/dnsvr/_fine.py)")
    path = folder / f"{name}.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[spec.name] = module  # type: ignore[union-attr]  # dataclasses look their module up
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def _calibrate() -> float:
    a = torch.randn(1080, 512)
    b = torch.randn(512, 1080)
    times = []
    for _ in range(5):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return min(times) * 1000


def bench_pairs(frames_list=(60, 120), n_cands: int = 64, repeats: int = 5, baseline: str | None = None) -> list[dict]:
    """Per-pair fine time: batched engine (exact and int8) vs the plain network call, interleaved.

    With ``baseline`` (a git revision), that revision's engine is timed too, interleaved (``exact`` only).
    Where the compiled stages (``dnsvr._finekernel``) run, the same engine with them off (the torch
    path, ``*-torch`` variants: ``torch_path_*`` / ``int8_torch_path_*`` fields) is timed too.
    Wall and CPU (process) time are both recorded.
    """
    base_engine = _load_engine(baseline) if baseline else None
    out = []
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    nets = {"att": FineGrainedStudent(attention=True).eval(), "bin": FineGrainedStudent(binarization=True).eval()}
    for frames in frames_list:
        base_q = _unit(rng.standard_normal((frames, 9, 512)))
        base_c = [_unit(rng.standard_normal((frames, 9, 512))) for _ in range(n_cands)]
        for kind in ("att", "bin", "chamfer"):
            calib_before = _calibrate()
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
                    comp = FineComparator(net)
                    ref_call = lambda q, c, net=net: net.calculate_video_similarity(q, c)  # noqa: E731
                if kind != "bin":
                    # the reference sees the same (float16-rounded) values the index stores
                    q_ref = torch.from_numpy(q_fast.astype(np.float32))
                    c_ref = [torch.from_numpy(c.astype(np.float32)) for c in c_fast]
                precisions = ("exact",) if kind == "bin" else ("exact", "int8")
                # the same engine with its compiled stages off (dnsvr._finekernel): the torch path
                torch_variants = tuple(f"{p}-torch" for p in precisions) if _fine_kernel._KERNEL is not None else ()
                variants = precisions + torch_variants + (("baseline",) if base_engine is not None else ())
                base_comp = None if (base_engine is None or comp is None) else base_engine.FineComparator(comp.w)
                n_ref = 8  # per-pair reference calls per repeat (it is the slow side)
                ref_times: list[float] = []
                times: dict[str, list[float]] = {p: [] for p in variants}
                cpu: dict[str, list[float]] = {p: [] for p in variants}
                vals: dict[str, np.ndarray] = {}
                ref_vals: list[float] = []
                for r in range(repeats):
                    t = time.perf_counter()
                    ref_vals = [float(ref_call(q_ref, c).reshape(-1)[0]) for c in c_ref[:n_ref]]
                    ref_times.append((time.perf_counter() - t) / n_ref * 1000)
                    for p in (variants if r % 2 == 0 else variants[::-1]):
                        t, c0 = time.perf_counter(), time.process_time()
                        if p == "baseline":
                            vals[p], _ = base_engine.fine_similarities(q_fast, c_fast, kind, base_comp)
                        elif p.endswith("-torch"):
                            kernel, _fine_kernel._KERNEL = _fine_kernel._KERNEL, None
                            try:
                                vals[p], _ = fine_similarities(q_fast, c_fast, kind, comp, precision=p[:-6])
                            finally:
                                _fine_kernel._KERNEL = kernel
                        else:
                            vals[p], _ = fine_similarities(q_fast, c_fast, kind, comp, precision=p)
                        times[p].append((time.perf_counter() - t) / n_cands * 1000)
                        cpu[p].append((time.process_time() - c0) / n_cands * 1000)
                err = float(np.max(np.abs(np.asarray(ref_vals) - vals["exact"][:n_ref])))
            row = {"fine": kind, "frames": frames, "candidates_per_call": n_cands, "repeats": repeats,
                   "reference_per_pair_ms": statistics.median(ref_times), "reference_min_ms": min(ref_times),
                   "batched_per_pair_ms": statistics.median(times["exact"]),
                   "batched_min_ms": min(times["exact"]),
                   "batched_cpu_ms_median": statistics.median(cpu["exact"]),
                   "speedup_median": statistics.median(ref_times) / statistics.median(times["exact"]),
                   "speedup_min": min(ref_times) / min(times["exact"]),
                   "max_abs_diff": err}
            if "int8" in times:
                row.update({"int8_per_pair_ms": statistics.median(times["int8"]), "int8_min_ms": min(times["int8"]),
                            "int8_cpu_ms_median": statistics.median(cpu["int8"]),
                            "int8_speedup_vs_exact_median": statistics.median(times["exact"])
                            / statistics.median(times["int8"]),
                            "int8_speedup_vs_reference_median": statistics.median(ref_times)
                            / statistics.median(times["int8"]),
                            "int8_max_abs_diff_vs_exact": float(np.max(np.abs(vals["int8"] - vals["exact"])))})
            for p in torch_variants:
                key = "torch_path" if p == "exact-torch" else "int8_torch_path"
                mine = p[:-6]
                row.update({f"{key}_per_pair_ms": statistics.median(times[p]), f"{key}_min_ms": min(times[p]),
                            f"{key}_cpu_ms_median": statistics.median(cpu[p]),
                            f"{key}_speedup_of_kernel_median": statistics.median(times[p])
                            / statistics.median(times[mine]),
                            f"{key}_max_abs_diff": float(np.max(np.abs(vals[p] - vals[mine])))})
            if "baseline" in times:
                row.update({"baseline_engine": baseline, "baseline_per_pair_ms": statistics.median(times["baseline"]),
                            "baseline_min_ms": min(times["baseline"]),
                            "baseline_cpu_ms_median": statistics.median(cpu["baseline"]),
                            "speedup_vs_baseline_median": statistics.median(times["baseline"])
                            / statistics.median(times["exact"]),
                            "speedup_vs_baseline_min": min(times["baseline"]) / min(times["exact"]),
                            "speedup_vs_baseline_cpu_median": statistics.median(cpu["baseline"])
                            / statistics.median(cpu["exact"]),
                            "baseline_max_abs_diff": float(np.max(np.abs(vals["baseline"] - vals["exact"])))})
            row["calibration_ms_before"] = calib_before
            row["calibration_ms_after"] = _calibrate()
            if frames == 60 and kind in REFERENCE_MS_T60:
                row["issue_reference_ms"] = REFERENCE_MS_T60[kind]
                fastest = min(row["batched_min_ms"], row.get("int8_min_ms", float("inf")))
                row["speedup_vs_issue_reference"] = REFERENCE_MS_T60[kind] / fastest
            print(json.dumps(row), flush=True)
            out.append(row)
    return out


def _kendall_tau(a: np.ndarray, b: np.ndarray) -> float:
    """Kendall's tau-a of two score vectors (O(n²); n is a few hundred here)."""
    da = np.sign(a[:, None] - a[None, :])
    db = np.sign(b[:, None] - b[None, :])
    n = len(a)
    return float((da * db).sum() / (n * (n - 1))) if n > 1 else 1.0


def _compare_rankings(exact: np.ndarray, fast: np.ndarray, k: int = 10) -> dict:
    top_e = list(np.argsort(-exact, kind="stable")[:k])
    top_f = list(np.argsort(-fast, kind="stable")[:k])
    return {"max_abs_err": float(np.max(np.abs(exact - fast))), "top10_identical": top_e == top_f,
            "top10_overlap": len(set(top_e) & set(top_f)) / k, "kendall_tau": _kendall_tau(exact, fast)}


def _summarise(rows: list[dict]) -> dict:
    return {"queries": len(rows), "max_abs_err": max(r["max_abs_err"] for r in rows),
            "top10_identical_queries": sum(r["top10_identical"] for r in rows),
            "min_top10_overlap": min(r["top10_overlap"] for r in rows),
            "min_kendall_tau": min(r["kendall_tau"] for r in rows)}


def bench_quality_generated(n_queries: int = 6, n_distractors: int = 150, frames: int = 60) -> dict:
    """int8 vs exact on generated 512-d region features (random-weight S^f_A and the Chamfer stage)."""
    from dnsvr.eval.synthetic import TRANSFORMS, random_video, transform_video

    rng = np.random.default_rng(10)
    torch.manual_seed(10)
    net = FineGrainedStudent(attention=True).eval()
    comp = FineComparator(net)
    distractors = [random_video(rng, int(rng.integers(frames // 2, frames * 2)), 512) for _ in range(n_distractors)]
    out: dict = {"setup": f"{n_queries} queries of {frames} frames, each with {len(TRANSFORMS)} transformed copies "
                          f"({', '.join(TRANSFORMS)}), {n_distractors} unrelated videos of {frames // 2}-"
                          f"{frames * 2} frames; D=512; stored as float16"}
    for kind in ("att", "chamfer"):
        rows, storage, int8_vs_fp32 = [], [], []
        for _ in range(n_queries):
            query = random_video(rng, frames, 512)
            videos = [query] + [transform_video(query, t, rng) for t in TRANSFORMS] + distractors
            with torch.inference_mode():
                if kind == "att":
                    videos = [net.index_video(torch.from_numpy(v)).reshape(v.shape[0], 9, -1).numpy() for v in videos]
            stored = [v.astype(np.float16) for v in videos]
            exact, _ = fine_similarities(stored[0], stored[1:], kind, comp if kind == "att" else None)
            fast, _ = fine_similarities(stored[0], stored[1:], kind, comp if kind == "att" else None,
                                        precision="int8")
            rows.append(_compare_rankings(exact, fast))
            # what storing the representation as float16 (the index's format) already costs: the exact
            # engine on the float32 representation vs on the stored one, and int8 vs float32
            full, _ = fine_similarities(videos[0].astype(np.float32), [v.astype(np.float32) for v in videos[1:]],
                                        kind, comp if kind == "att" else None)
            storage.append(_compare_rankings(full, exact))
            int8_vs_fp32.append(_compare_rankings(full, fast))
        out[kind] = {**_summarise(rows), "float16_storage_vs_float32": _summarise(storage),
                     "int8_vs_float32": _summarise(int8_vs_fp32)}
        print(json.dumps({"quality": "generated", "fine": kind, **out[kind]}), flush=True)
    return out


def bench_quality_lite(workdir: Path, originals: int = 4, distractors: int = 8) -> dict:
    """int8 vs exact on real EfficientNet-Lite0 features: generated videos and copies in a ``lite`` index."""
    from dnsvr.demo import DEMO_TRANSFORMS
    from dnsvr.index import VideoIndex
    from dnsvr.synthetic import make_collection

    root = workdir / "quality_lite"
    if root.exists():
        shutil.rmtree(root)
    coll = make_collection(root / "videos", n_originals=originals, n_distractors=distractors,
                           transforms=DEMO_TRANSFORMS, seconds=10.0)
    index = VideoIndex.create(root / "index", "lite")
    try:
        index.add([root / "videos"], progress=False)
        everything = Budget(fraction=1.0)
        rows = []
        found = {"exact": 0, "int8": 0}
        for qid in coll.queries:
            res = {p: index.search(qid, top_k=None, budget=everything, segments=False, precision=p)[0]
                   for p in ("exact", "int8")}
            scores = {p: {r.video_id: r.fine_score for r in res[p].results} for p in res}
            ids = sorted(scores["exact"])
            rows.append(_compare_rankings(np.array([scores["exact"][i] for i in ids]),
                                          np.array([scores["int8"][i] for i in ids])))
            for p in res:
                top5 = {r.video_id for r in res[p].results[:5]}
                found[p] += len(top5 & set(coll.positives[qid]))
        n_videos = len(index)
    finally:
        index.close()
        shutil.rmtree(root, ignore_errors=True)
    out = {"setup": f"{originals} generated 10 s videos as queries (indexed too, excluded from their own results), "
                    f"each with copies {', '.join(DEMO_TRANSFORMS)}; {distractors} unrelated videos; "
                    f"{n_videos} videos in a lite index (EfficientNet-Lite0 regions, whitening fitted on them, "
                    "training-free Chamfer fine stage), every pair fine-scored",
           **_summarise(rows), "copies_in_top5": found,
           "copies_total": sum(len(coll.positives[q]) for q in coll.queries)}
    print(json.dumps({"quality": "lite", **out}), flush=True)
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


def _baseline_patch(rev: str):
    """A context manager that makes :mod:`dnsvr.bundle` call the fine engine of git revision ``rev``."""
    import contextlib

    import dnsvr.bundle as bundle_mod

    engine = _load_engine(rev)
    current = bundle_mod.fine_similarities

    def call(query, candidates, fine_type, comparator=None, **kwargs):
        kwargs.pop("memory_budget", None)
        comp = None if comparator is None else engine.FineComparator(comparator.w)
        return engine.fine_similarities(query, candidates, fine_type, comp, **kwargs)

    @contextlib.contextmanager
    def patched():
        bundle_mod.fine_similarities = call
        try:
            yield
        finally:
            bundle_mod.fine_similarities = current

    return patched


def bench_dns(workdir: Path, videos: int, keep: bool, queries: int = 2, fine: str = "both",
              baseline: str | None = None, reuse: bool = False, page_cache: tuple[str, ...] = ()) -> list[dict]:
    import contextlib

    from dnsvr.index import VideoIndex

    patched = _baseline_patch(baseline) if baseline else None
    out = []
    plans = [("bin", videos, 60), ("att", min(videos, 10_000), 60)]
    if fine != "both":
        plans = [p for p in plans if p[0] == fine]
    budgets = [("1000 pairs", Budget(pairs=1000)), ("1%", Budget(pairs=int(0.01 * 100_000))),
               ("5%", Budget(pairs=int(0.05 * 100_000)))]
    rng = np.random.default_rng(2)
    for kind, n, frames in plans:
        directory = workdir / f"dns_{kind}"
        index = VideoIndex.open(directory, readonly=True) if reuse and directory.exists() else None
        if index is not None and len(index) == n:
            build_s = float("nan")  # reused
            size = sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())
        else:
            if index is not None:
                index.close()
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
            precisions = ("exact",) if kind == "bin" else ("exact", "int8")
            variants = precisions + (("baseline",) if patched else ())
            times: dict[str, list[float]] = {p: [] for p in variants}
            cpu: dict[str, list[float]] = {p: [] for p in variants}
            parts: dict[str, list[dict]] = {p: [] for p in variants}
            calib = [_calibrate()]
            for qi in range(queries):
                q_fine = np.asarray(index.store.fine([f"v{qi * 7919 % n:07d}"])[0])
                rep = VideoRepresentation(_unit(rng.standard_normal(1024)), q_fine, 0.6)
                for p in (variants if qi % 2 == 0 else variants[::-1]):  # interleaved
                    ctx = patched() if p == "baseline" else contextlib.nullcontext()
                    with ctx:
                        t, c0 = time.perf_counter(), time.process_time()
                        res = index.search_representation(f"q{qi}", rep, top_k=100, budget=budget, segments=False,
                                                          precision="exact" if p == "baseline" else p)
                        times[p].append(time.perf_counter() - t)
                        cpu[p].append(time.process_time() - c0)
                    parts[p].append(res.timings)
                    if res.fine_pairs != min(budget.pairs, n):
                        raise RuntimeError(f"{res.fine_pairs} fine pairs, expected {min(budget.pairs, n)}")
            calib.append(_calibrate())
            for p in variants:
                row = {"fine": kind, "precision": "exact" if p == "baseline" else p, "videos": n,
                       "frames_per_video": frames, "budget": label,
                       "pairs": min(budget.pairs, n), "query_s_median": statistics.median(times[p]),
                       "query_s_min": min(times[p]), "query_cpu_s_median": statistics.median(cpu[p]),
                       "queries": queries,
                       "stage_s_median": {k: statistics.median(t.get(k, 0.0) for t in parts[p])
                                          for k in ("coarse", "selector", "fine", "total")},
                       "calibration_ms_before_after": calib,
                       "index_build_s": build_s, "index_bytes": size}
                if p == "baseline":
                    row["engine"] = f"baseline {baseline}"
                print(json.dumps(row), flush=True)
                out.append(row)
        if page_cache and kind in page_cache:
            index.close()
            index = None
            out.extend(_bench_page_cache(directory, kind, n, frames, budgets[-1], queries, rng))
        if index is not None:
            index.close()
        if not keep:
            shutil.rmtree(directory)
    return out


def _evict(directory: Path) -> None:
    """Drop the shard files' pages from the page cache (no process may have them mapped)."""
    for path in sorted((directory / "shards").glob("*.bin")):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _bench_page_cache(directory: Path, kind: str, n: int, frames: int, budget_spec: tuple[str, Budget],
                      queries: int, rng: np.random.Generator) -> list[dict]:
    """The DnS query with the candidates' pages on disk ("cold": evicted, index reopened) or in memory.

    Variants, interleaved: cold with the store's read-ahead of the candidates (``fine(..., prefetch=True)``,
    what ``VideoIndex.search`` does), cold without it, and the same query again at once (warm). Major page
    faults (reads that waited for the disk) are counted for each.
    """
    import contextlib
    import resource

    from dnsvr.index import VideoIndex
    from dnsvr.index.store import IndexStore

    label, budget = budget_spec
    plain_fine = IndexStore.fine

    @contextlib.contextmanager
    def no_prefetch():
        IndexStore.fine = lambda self, ids, prefetch=False: plain_fine(self, ids, False)  # type: ignore[method-assign]
        try:
            yield
        finally:
            IndexStore.fine = plain_fine  # type: ignore[method-assign]

    variants = ("cold, prefetch", "cold, no prefetch", "warm")
    rows: dict[str, list[tuple[float, float, int]]] = {v: [] for v in variants}
    for qi in range(queries):
        index = VideoIndex.open(directory, readonly=True)
        q_fine = np.array(index.store.fine([f"v{(qi * 7919 + 17) % n:07d}"])[0])
        index.close()
        rep = VideoRepresentation(_unit(rng.standard_normal(1024)), q_fine, 0.6)
        for variant in (variants[:2] if qi % 2 == 0 else variants[1::-1]):
            _evict(directory)
            index = VideoIndex.open(directory, readonly=True)
            _ = index.store.coarse_search(_unit(rng.standard_normal((1, 1024))), k=10)  # the coarse stage warm
            for v in (variant, "warm"):
                ctx = no_prefetch() if v == "cold, no prefetch" else contextlib.nullcontext()
                with ctx:
                    faults = resource.getrusage(resource.RUSAGE_SELF).ru_majflt
                    t, c0 = time.perf_counter(), time.process_time()
                    index.search_representation(f"q{qi}", rep, top_k=100, budget=budget, segments=False)
                    rows[v].append((time.perf_counter() - t, time.process_time() - c0,
                                    resource.getrusage(resource.RUSAGE_SELF).ru_majflt - faults))
                if v == "warm" and variant != variants[0]:
                    rows[v].pop()  # one warm repeat per query
            index.close()
    out = []
    for v in variants:
        row = {"fine": kind, "precision": "exact", "videos": n, "frames_per_video": frames, "budget": label,
               "pairs": min(budget.pairs, n), "page_cache": v, "queries": queries,
               "query_s_median": statistics.median(r[0] for r in rows[v]), "query_s_min": min(r[0] for r in rows[v]),
               "query_cpu_s_median": statistics.median(r[1] for r in rows[v]),
               "major_faults_median": statistics.median(r[2] for r in rows[v])}
        print(json.dumps(row), flush=True)
        out.append(row)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", choices=["pairs", "quality", "dns", "all"], default="all")
    ap.add_argument("--videos", type=int, default=100_000)
    ap.add_argument("--workdir", type=Path, default=Path("/work/tmp/bench_search"))
    ap.add_argument("--keep", action="store_true", help="keep the synthetic indexes")
    ap.add_argument("--out", type=Path, default=RESULTS, help="the JSON file (its other parts are kept)")
    ap.add_argument("--reuse", action="store_true",
                    help="dns part: query a kept synthetic index of the right size instead of rebuilding it")
    ap.add_argument("--fine", choices=["bin", "att", "both"], default="both",
                    help="dns part: which synthetic index(es) to build and query")
    ap.add_argument("--queries", type=int, default=2, help="dns part: queries per budget (and precision)")
    ap.add_argument("--baseline", default=None,
                    help="a git revision whose fine engine (src/dnsvr/fine/engine.py) is timed too, interleaved with "
                         "this one (pairs and dns parts; exact precision)")
    ap.add_argument("--page-cache", default="bin",
                    help="dns part: fine types (comma-separated; '' for none) whose index is also queried at the "
                         "largest budget with its shard pages evicted from the page cache first (cold, with and "
                         "without the store's prefetch) and again at once (warm)")
    ap.add_argument("--frames", default="60,120", help="pairs part: comma-separated video lengths")
    ap.add_argument("--repeats", type=int, default=5,
                    help="pairs part: interleaved repeats per variant (more give a steadier median under load)")
    ap.add_argument("--threads", type=int, default=2,
                    help="torch threads (2 = the issue's setting; results of other counts are stored under "
                         "keys suffixed _threadsN)")
    ap.add_argument("--key-suffix", default="",
                    help="suffix for the JSON keys of this run (e.g. _vs_0fe4295: keeps the main records)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    suffix = ("" if args.threads == 2 else f"_threads{args.threads}") + args.key_suffix


    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, check=False).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "src"], capture_output=True, text=True,
                               cwd=Path(__file__).parent, check=False).stdout.strip()
    except OSError:
        head, dirty = "unknown", ""
    run = {"command": "PYTHONPATH=src python benchmarks/bench_search.py " + " ".join(sys.argv[1:]),
           "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "torch": torch.__version__,
           "threads": torch.get_num_threads(), "engine": head + (" + uncommitted changes" if dirty else ""),
           "machine": "the 2-core development machine, shared with other jobs: absolute times are noisy; "
                      "the variants timed in one part are interleaved so their ratios are comparable",
           "load_average": list(os.getloadavg()),
           "calibration_matmul_1080x512x1080_ms": _calibrate()}
    result: dict = {"benchmark": "search"}
    if args.out.is_file():
        result.update(json.loads(args.out.read_text()))
    parts: dict = {}
    if args.part in ("pairs", "all"):
        parts["pairs" + suffix] = bench_pairs(tuple(int(f) for f in args.frames.split(",")), repeats=args.repeats,
                                             baseline=args.baseline)
    if args.part in ("quality", "all"):
        args.workdir.mkdir(parents=True, exist_ok=True)
        parts["quality"] = {"generated": bench_quality_generated(), "lite": bench_quality_lite(args.workdir)}
    if args.part in ("dns", "all"):
        args.workdir.mkdir(parents=True, exist_ok=True)
        parts["dns" + suffix] = bench_dns(args.workdir, args.videos, args.keep, args.queries, args.fine,
                                          args.baseline, args.reuse, tuple(args.page_cache.split(",")) if
                                          args.page_cache else ())
    run["calibration_after_ms"] = _calibrate()
    run["load_average_after"] = list(os.getloadavg())
    for key, value in parts.items():
        result[key] = value
        result.setdefault("runs", {})[key] = run
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

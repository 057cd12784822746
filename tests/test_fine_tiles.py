"""Long pairs in tiles: the tiled fine stage equals the untiled one, and its memory stays bounded."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dnsvr.fine import (
    DEFAULT_MEMORY_BUDGET,
    FineComparator,
    TilePlan,
    fine_similarities,
    pack_codes,
    pair_bytes,
    plan_tiles,
)
from dnsvr.fine.codes import _prepare
from dnsvr.fine.tiles import _long_pair
from dnsvr.nn import FineGrainedStudent


def _videos(rng: np.random.Generator, lengths: list[int], dims: int) -> list[np.ndarray]:
    out = []
    for n in lengths:
        x = rng.standard_normal((n, 9, dims)).astype(np.float32)
        # a shared component makes the matrices less uniform (real pairs have structure)
        x[:, :, 0] += 2.0
        out.append(x / np.linalg.norm(x, axis=-1, keepdims=True))
    return out


def _stage(fine_type: str, dims: int, seed: int = 0):
    """The stored representations of random videos and the comparator for ``fine_type``."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    query, *cands = _videos(rng, [37, 203, 5, 38, 13], dims)
    if fine_type == "chamfer":
        return query, cands, None, None
    net = FineGrainedStudent(dims=dims, attention=fine_type == "att", binarization=fine_type == "bin").eval()
    with torch.no_grad():
        idx = [net.index_video(torch.from_numpy(v)).reshape(v.shape[0], 9, -1).numpy() for v in [query, *cands]]
    if fine_type == "bin":
        idx = [pack_codes(v) for v in idx]
    return idx[0], idx[1:], FineComparator(net), net


@pytest.mark.parametrize("fine_type", ["att", "bin", "chamfer"])
def test_tiny_budget_tiles_equal_untiled(fine_type: str) -> None:
    query, cands, comp, _ = _stage(fine_type, 32)
    # 1 byte: every pair is "long" and gets the smallest tiles (4 frames, 1 candidate frame per block;
    # the 37 × 203 pair gets explicit plans below); 300 kB: the longer pairs are tiled
    for budget, subset in ((1, [c for c in cands if c.shape[0] < 100]), (300_000, cands)):
        whole, whole_m = fine_similarities(query, subset, fine_type, comp, return_matrices=True)
        tiled, tiled_m = fine_similarities(query, subset, fine_type, comp, return_matrices=True,
                                           memory_budget=budget)
        np.testing.assert_allclose(tiled, whole, atol=1e-5)
        for a, b in zip(tiled_m, whole_m):
            assert a.shape == b.shape
            np.testing.assert_allclose(a, b, atol=1e-6)
    if fine_type != "bin":
        # the opt-in int8 products quantise per candidate frame: tiles do not change a frame's scale
        whole, _ = fine_similarities(query, cands, fine_type, comp, precision="int8")
        tiled, _ = fine_similarities(query, cands, fine_type, comp, precision="int8", memory_budget=300_000)
        np.testing.assert_allclose(tiled, whole, atol=1e-5)


@pytest.mark.parametrize("fine_type", ["att", "bin"])
@pytest.mark.parametrize("plan", [TilePlan(4, 4, 29, 0, 200), TilePlan(8, 12, 7, 0), TilePlan(12, 8, 50, 0),
                                  TilePlan(20, 200, 203, 0), TilePlan(40, 16, 3, 0, 81)])
def test_tile_plans_equal_network_per_pair(fine_type: str, plan: TilePlan) -> None:
    """Awkward sizes (37 × 203, 37 × 5 ...) under explicit plans, against the per-pair network."""
    query, cands, comp, net = _stage(fine_type, 32, seed=1)
    q = _prepare(query, fine_type)
    q_mat = q.matrix()
    for cand in cands:
        if cand.shape[0] < 4:
            continue  # padded candidates never take the tiled path
        c = _prepare(cand, fine_type)
        mat = np.empty((q.frames, c.frames), dtype=np.float32)
        with torch.inference_mode():
            got = _long_pair(q_mat, None, q.frames, c, fine_type, comp, plan, "exact", mat)
            qt = torch.from_numpy(np.unpackbits(query, axis=-1).astype(np.float32) * 2 - 1 if fine_type == "bin"
                                  else query)
            ct = torch.from_numpy(np.unpackbits(cand, axis=-1).astype(np.float32) * 2 - 1 if fine_type == "bin"
                                  else cand)
            expected = float(net.calculate_video_similarity(qt, ct).reshape(-1)[0])
        assert abs(got - expected) < 1e-5, (cand.shape, plan, got, expected)
        untiled, m = fine_similarities(query, [cand], fine_type, comp, return_matrices=True)
        np.testing.assert_allclose(mat, m[0], atol=1e-6)


def test_planner_bounds_long_pairs() -> None:
    # one pair of hour-long videos untiled: gigabytes in the comparator's first layer
    assert pair_bytes(3600, 3600, 9, 512, "bin") > 2 * 2**30
    for t1, t2 in ((3600, 3600), (1500, 1500), (60, 36_000), (36_000, 60), (37, 203)):
        for fine_type in ("att", "bin", "chamfer"):
            plan = plan_tiles(t1, t2, 9, 512, fine_type, DEFAULT_MEMORY_BUDGET)
            assert plan.peak_bytes <= DEFAULT_MEMORY_BUDGET, (t1, t2, fine_type, plan)
            assert plan.block_frames >= 1 and plan.strip_frames >= 4
            if fine_type != "chamfer":  # tiles start aligned to the comparator's two 2× poolings
                assert plan.strip_frames % 4 == 0 and plan.tile_frames % 4 == 0
    plan = plan_tiles(3600, 3600, 9, 512, "att", DEFAULT_MEMORY_BUDGET)
    assert plan.strip_frames < 3600 and plan.tile_frames < 3600  # really tiled
    # the short pairs of a DnS query are not tiled
    assert pair_bytes(120, 120, 9, 512, "att") < DEFAULT_MEMORY_BUDGET


_RSS_SCRIPT = r"""
import sys, threading, time
import numpy as np, psutil, torch
from dnsvr.fine import FineComparator, fine_similarities, pack_codes
from dnsvr.nn import FineGrainedStudent

torch.manual_seed(3)
rng = np.random.default_rng(3)
comp = FineComparator(FineGrainedStudent(dims=16, binarization=True).eval())
codes = [pack_codes(np.where(rng.standard_normal((1500, 9, 16)) > 0, 1, -1)) for _ in range(2)]
proc = psutil.Process()
for budget in (int(sys.argv[1]), 2**31):
    base = proc.memory_info().rss
    peak = [base]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.001)

    th = threading.Thread(target=sample)
    th.start()
    scores, _ = fine_similarities(codes[0], codes[1:], "bin", comp, memory_budget=budget)
    done.set()
    th.join()
    print(budget, (peak[0] - base) / 2**20, float(scores[0]))
"""


@pytest.mark.slow
def test_long_pair_resident_memory_is_bounded() -> None:
    """1,500 × 1,500 frames: the tiled call's resident memory stays near its budget; untiled it does not.

    Measured in a child process whose allocator returns every large block to the system on free
    (a fixed mmap threshold), so that its resident size follows the live memory.
    """
    pytest.importorskip("psutil")
    budget = 24 * 2**20
    assert pair_bytes(1500, 1500, 9, 16, "bin") > 300 * 2**20
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_ARENA_MAX="2",
               PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[1] / "src"),
                                           os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, str(budget)], env=env, capture_output=True,
                         text=True, timeout=600, check=True).stdout.split("\n")
    (_, tiled_mb, tiled_score), (_, whole_mb, whole_score) = [map(float, line.split()) for line in out[:2]]
    assert abs(tiled_score - whole_score) < 1e-5
    # the budget plus one-time library set-up (~20 MB); untiled, the comparator alone needs ~400 MB
    assert tiled_mb < 24 + 40, f"tiled: resident memory grew by {tiled_mb:.0f} MB with a 24 MB budget"
    assert whole_mb > 200, f"untiled: only {whole_mb:.0f} MB: the measurement does not see the memory"


def test_long_pair_tiles_follow_the_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every comparator call and every region-product block of a tiled pair stays within the plan."""
    import dnsvr.fine.tiles as fine

    torch.manual_seed(4)
    rng = np.random.default_rng(4)
    comp = FineComparator(FineGrainedStudent(dims=16, binarization=True).eval())
    q, c = (pack_codes(np.where(rng.standard_normal((n, 9, 16)) > 0, 1, -1)) for n in (300, 250))
    budget = 2 * 2**20
    plan = plan_tiles(300, 250, 9, 16, "bin", budget)
    assert plan.strip_frames < 300 and plan.tile_frames < 250
    seen: dict[str, list] = {"cnn": [], "region": []}
    real_call, real_region = FineComparator.__call__, fine._region_chamfer

    def record_call(self, sim, widths):
        seen["cnn"].append(tuple(sim.shape))
        return real_call(self, sim, widths)

    def record_region(query, q_frames, cands, *args):
        seen["region"].append((q_frames, sum(x.frames for x in cands)))
        return real_region(query, q_frames, cands, *args)

    monkeypatch.setattr(FineComparator, "__call__", record_call)
    monkeypatch.setattr(fine, "_region_chamfer", record_region)
    got, _ = fine_similarities(q, [c], "bin", comp, memory_budget=budget)
    assert max(h for _, h, _ in seen["cnn"]) <= plan.strip_frames + 2 * fine.HALO
    assert max(w for _, _, w in seen["cnn"]) <= plan.tile_frames + 2 * fine.HALO
    assert len(seen["cnn"]) > 1 and all(b == 1 for b, _, _ in seen["cnn"])
    assert max(r for r, _ in seen["region"]) <= plan.strip_frames + 2 * fine.HALO
    assert max(f for _, f in seen["region"]) <= plan.block_frames
    monkeypatch.undo()
    whole, _ = fine_similarities(q, [c], "bin", comp)
    np.testing.assert_allclose(got, whole, atol=1e-5)

"""The int8 fine path (``precision="int8"``) stays within its documented tolerance of the exact path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dnsvr.fine import FineComparator, fine_similarities, pack_codes, quantize_rows
from dnsvr.fine.codes import _quantize_frames
from dnsvr.eval.synthetic import random_video, transform_video

#: Worst-case absolute similarity error the int8 path is held to (docs/notes/fine-engine.md).
TOLERANCE = 1e-2


def _videos(seed: int, n: int, frames: int, dims: int, copies_of: np.ndarray | None = None) -> list[np.ndarray]:
    """Generated region features: unrelated videos, plus noisy/cropped/sped-up copies of ``copies_of``."""
    rng = np.random.default_rng(seed)
    out = [random_video(rng, frames + k % 7, dims) for k in range(n)]
    if copies_of is not None:
        out += [transform_video(copies_of, kind, rng) for kind in ("noise", "crop", "speed", "mix")]
    return [v.astype(np.float16) for v in out]


def test_quantize_rows_round_trip():
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((50, 96)).astype(np.float32)) * torch.rand(50, 1)
    x[3] = 0
    q, scale = quantize_rows(x)
    assert q.dtype == torch.int8 and scale.shape == (50,)
    np.testing.assert_allclose(scale.numpy(), x.abs().amax(1).numpy() / 127, rtol=1e-6)
    assert int(q.abs().max()) == 127 and scale[3] == 0 and int(q[3].abs().max()) == 0
    err = (q.float() * scale[:, None] - x).abs()
    assert bool((err <= scale[:, None] / 2 + 1e-7).all())


def test_candidate_frames_quantised_with_own_scale():
    rng = np.random.default_rng(1)
    video = (rng.standard_normal((6, 9, 64)) * rng.uniform(0.01, 1, (6, 1, 1))).astype(np.float32)
    video[5] = 0  # a padding frame
    x = torch.from_numpy(video.reshape(-1, 64))
    q, scales = _quantize_frames(x.clone(), 9)
    assert q.dtype == torch.int8 and q.shape == (54, 64) and scales.shape == (6,)
    np.testing.assert_allclose(scales.numpy(), np.abs(video).max((1, 2)) / 127, rtol=1e-6)
    assert scales[5] == 0 and int(q[45:].abs().max()) == 0
    back = q.view(6, 9, 64).float() * scales[:, None, None]
    assert bool(((back - torch.from_numpy(video)).abs() <= scales[:, None, None] / 2 + 1e-7).all())


@pytest.mark.parametrize("fine_type", ["chamfer", "att"])
def test_int8_close_to_exact_and_ranks_alike(fine_type):
    dims = 128
    torch.manual_seed(0)
    comp = None
    rng = np.random.default_rng(2)
    query = random_video(rng, 30, dims)
    base = [query.astype(np.float16)] + _videos(3, 40, 20, dims, copies_of=query)
    if fine_type == "att":
        from dnsvr.nn import FineGrainedStudent

        net = FineGrainedStudent(dims=dims, attention=True).eval()
        comp = FineComparator(net)
        with torch.no_grad():
            base = [net.index_video(torch.from_numpy(v.astype(np.float32))).reshape(v.shape[0], 9, -1)
                    .numpy().astype(np.float16) for v in base]
    q, cands = base[0], base[1:]
    exact, m_exact = fine_similarities(q, cands, fine_type, comp, return_matrices=True)
    fast, m_fast = fine_similarities(q, cands, fine_type, comp, return_matrices=True, precision="int8")
    err = np.abs(exact - fast)
    assert err.max() <= TOLERANCE, err.max()
    assert err.max() > 0  # the quantised path really ran
    for a, b in zip(m_exact, m_fast):
        assert a.shape == b.shape and np.abs(a - b).max() <= TOLERANCE
    if fine_type == "chamfer":  # the copies first, in the same order
        assert list(np.argsort(-exact)[:10]) == list(np.argsort(-fast)[:10])
        assert set(np.argsort(-fast)[:4]) == set(range(40, 44))


def test_int8_block_splits_and_short_videos():
    rng = np.random.default_rng(4)
    query = random_video(rng, 9, 64).astype(np.float16)
    cands = [random_video(rng, n, 64).astype(np.float16) for n in (1, 2, 3, 4, 9, 17, 33)]
    ref, _ = fine_similarities(query, cands, "chamfer", precision="int8")
    for block in (3_000, 20_000):
        got, _ = fine_similarities(query, cands, "chamfer", precision="int8", block_elements=block)
        np.testing.assert_allclose(got, ref, atol=1e-6)
    exact, _ = fine_similarities(query, cands, "chamfer")
    assert np.abs(exact - ref).max() <= TOLERANCE


def test_broken_scales_would_be_caught():
    """Dropping the scales (what a broken quantiser would do) is far outside the tolerance."""
    rng = np.random.default_rng(5)
    query = random_video(rng, 8, 64)
    cands = [random_video(rng, 8, 64) for _ in range(3)]
    exact, _ = fine_similarities(query, cands, "chamfer")
    q_int, _ = quantize_rows(torch.from_numpy(query.reshape(-1, 64)))
    unscaled = [float((q_int.float() @ torch.from_numpy(c.reshape(-1, 64)).T).view(8, 9, 8, 9).amax(3).mean(1)
                      .amax(1).mean()) for c in cands]
    assert np.abs(np.asarray(unscaled) - exact).max() > 100 * TOLERANCE


def test_binary_codes_unaffected_by_precision():
    rng = np.random.default_rng(6)
    torch.manual_seed(0)
    from dnsvr.nn import FineGrainedStudent

    net = FineGrainedStudent(dims=64, binarization=True).eval()
    q = pack_codes(np.sign(rng.standard_normal((12, 9, 64))))
    cands = [pack_codes(np.sign(rng.standard_normal((n, 9, 64)))) for n in (5, 12, 20)]
    a, _ = fine_similarities(q, cands, "bin", FineComparator(net))
    b, _ = fine_similarities(q, cands, "bin", FineComparator(net), precision="int8")
    np.testing.assert_array_equal(a, b)


def test_unknown_precision():
    q = random_video(np.random.default_rng(7), 5, 32)
    with pytest.raises(ValueError, match="precision"):
        fine_similarities(q, [q], "chamfer", precision="fp4")


def test_index_search_precision_option(tmp_path):
    """``VideoIndex.search(precision="int8")``: same copies on top, scores within the tolerance."""
    from helpers import make_collection, plain_bundle, write_h5

    from dnsvr.index import VideoIndex

    videos, groups = make_collection(seed=3)
    index = VideoIndex.create(tmp_path / "idx", plain_bundle())
    index.add([write_h5(tmp_path / "feats.h5", videos)])
    queries = list(groups)
    exact = index.search(queries, top_k=None, budget="100%")
    fast = index.search(queries, top_k=None, budget="100%", precision="int8")
    for q, a, b in zip(queries, exact, fast):
        sa = {r.video_id: r.fine_score for r in a.results}
        sb = {r.video_id: r.fine_score for r in b.results}
        assert sa.keys() == sb.keys()
        assert max(abs(sa[k] - sb[k]) for k in sa) <= TOLERANCE
        assert max(abs(sa[k] - sb[k]) for k in sa) > 0
        assert set(r.video_id for r in b.results[:len(groups[q])]) == set(groups[q])
    with pytest.raises(ValueError, match="precision"):
        index.search(queries[:1], precision="bf16")
    index.close()


@pytest.mark.parametrize("use_float", [True, False])
@pytest.mark.parametrize("m,k,n", [(3, 5, 2), (40, 512, 33), (17, 1024, 20), (20, 1025, 18)])
def test_int8_products_are_exact_on_both_paths(monkeypatch, use_float, m, k, n) -> None:
    """The int8 product equals the int64 product bit for bit, through oneDNN's int8 kernel (CPUs with VNNI)
    and through float32 (CPUs without): at depth <= 1024 every partial sum of |x| <= 128·128 products is an
    integer below 2**24, exact in float32; past that depth the float path is not taken."""
    from dnsvr.fine import regions

    monkeypatch.setattr(regions, "_INT8_MM_FLOAT", use_float)
    g = torch.Generator().manual_seed(m * k + n)
    a = torch.randint(-128, 128, (m, k), generator=g, dtype=torch.int8)
    b = torch.randint(-128, 128, (k, n), generator=g, dtype=torch.int8)
    a[0] = -128  # the extreme products: -128 · -128 summed over the whole depth
    b[:, 0] = -128
    got = regions._int8_mm(a, b)
    want = a.long() @ b.long()
    assert got.dtype == torch.int32 and torch.equal(got.long(), want)
    assert int(want[0, 0]) == k * 128 * 128

"""The batched fine engine equals the per-pair networks (golden reference outputs and dnsvr.nn)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dnsvr.fine import FineComparator, fine_similarities, pack_codes, unpack_codes


def _golden(golden_models, name):
    z = np.load(golden_models / f"{name}.npz", allow_pickle=False)
    state = {k[len("state/"):]: torch.from_numpy(z[k]) for k in z.files if k.startswith("state/")}
    return z, state


@pytest.mark.parametrize("name,fine_type", [("fg_att_student", "att"), ("fg_bin_student", "bin")])
def test_batched_matches_reference_single_pair(golden_models, name, fine_type):
    z, state = _golden(golden_models, name)
    comp = FineComparator(state)
    q = z["out/query_indexed"]
    t = z["out/targets_indexed"]
    lengths = z["in/target_mask"].sum(1).astype(int)
    cands = [t[i, :lengths[i]] for i in range(len(lengths))]
    scores, _ = fine_similarities(q, cands, fine_type, comp)
    # the reference's similarity_single is the query against target 0 alone
    assert abs(scores[0] - z["out/similarity_single"].item()) < 1e-5
    # the longest target has no padding, so the reference's padded batch equals the single pair there
    full = int(np.argmax(lengths))
    assert lengths[full] == t.shape[1]
    assert abs(scores[full] - z["out/similarity_batch"][0, full]) < 1e-5
    if fine_type == "bin":
        packed, _ = fine_similarities(pack_codes(q), [pack_codes(c) for c in cands], "bin", comp)
        np.testing.assert_allclose(packed, scores, atol=1e-6)


def test_pack_roundtrip():
    rng = np.random.default_rng(0)
    codes = np.where(rng.standard_normal((5, 9, 512)) > 0, 1, -1).astype(np.int8)
    packed = pack_codes(codes)
    assert packed.shape == (5, 9, 64) and packed.dtype == np.uint8
    np.testing.assert_array_equal(unpack_codes(packed).numpy(), codes)


def _random_videos(rng, lengths, dims=64):
    out = []
    for n in lengths:
        x = rng.standard_normal((n, 9, dims)).astype(np.float32)
        out.append(x / np.linalg.norm(x, axis=-1, keepdims=True))
    return out


@pytest.mark.parametrize("fine_type", ["att", "bin"])
def test_batched_matches_network_per_pair(fine_type):
    from dnsvr import nn as nn_mod
    torch.manual_seed(0)
    net = nn_mod.FineGrainedStudent(dims=64, attention=fine_type == "att",
                                    binarization=fine_type == "bin").eval()
    rng = np.random.default_rng(1)
    lengths = [4, 5, 7, 9, 13, 16, 17, 30, 31, 61]
    query = _random_videos(rng, [23])[0]
    cands = _random_videos(rng, lengths)
    with torch.no_grad():
        q_idx = net.index_video(torch.from_numpy(query)).reshape(23, 9, -1)
        c_idx = [net.index_video(torch.from_numpy(c)).reshape(c.shape[0], 9, -1) for c in cands]
        expected = [float(net.calculate_video_similarity(q_idx, c).reshape(-1)[0]) for c in c_idx]
    comp = FineComparator(net)
    # tiny blocks force the split over query rows and over candidates
    for block in (10_000_000, 3_000):
        got, mats = fine_similarities(q_idx.numpy(), [c.numpy() for c in c_idx], fine_type, comp,
                                      return_matrices=True, block_elements=block, cnn_elements=50_000)
        np.testing.assert_allclose(got, expected, atol=1e-5)
        assert [m.shape for m in mats] == [(23, n) for n in lengths]


def test_chamfer_matches_nn_similarity():
    from dnsvr.nn import similarity as sim
    rng = np.random.default_rng(2)
    query = _random_videos(rng, [11])[0]
    cands = _random_videos(rng, [1, 2, 5, 11, 40])
    expected = [float(sim.chamfer_video_similarity(query, c)) for c in cands]
    got, _ = fine_similarities(query, cands, "chamfer")
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_chamfer_definition_on_arrays():
    """Independent of dnsvr.nn: Chamfer over regions, then Chamfer over frames, written out in numpy."""
    rng = np.random.default_rng(3)
    query = _random_videos(rng, [6])[0]
    cands = _random_videos(rng, [3, 8])
    got, mats = fine_similarities(query, cands, "chamfer", return_matrices=True)
    for c, g, m in zip(cands, got, mats):
        regions = np.einsum("iok,jpk->iojp", query, c)  # [T1, 9, T2, 9]
        f2f = regions.max(3).mean(1)
        np.testing.assert_allclose(m, f2f, atol=1e-5)
        assert abs(g - f2f.max(1).mean()) < 1e-5
    # a near copy scores higher than an unrelated video
    near = query + 0.05 * rng.standard_normal(query.shape).astype(np.float32)
    s, _ = fine_similarities(query, [near, cands[1]], "chamfer")
    assert s[0] > s[1] + 0.2


def test_errors():
    rng = np.random.default_rng(4)
    q = _random_videos(rng, [5])[0]
    with pytest.raises(ValueError, match="unknown fine type"):
        fine_similarities(q, [q], "nope")
    with pytest.raises(ValueError, match="comparator"):
        fine_similarities(q, [q], "att")
    with pytest.raises(ValueError, match="differ"):
        fine_similarities(q, [q[:, :, :32].copy()], "chamfer")
    assert fine_similarities(q, [], "chamfer")[0].shape == (0,)


@pytest.mark.parametrize("length", [60, 61, 63])
def test_uniform_length_bucket_matches_network(length):
    """A bucket whose pairs share one length skips the re-masking (and the padding to a multiple of 4)."""
    from dnsvr import nn as nn_mod
    torch.manual_seed(1)
    net = nn_mod.FineGrainedStudent(dims=64, attention=True).eval()
    rng = np.random.default_rng(7)
    query = _random_videos(rng, [length - 3])[0]
    cands = _random_videos(rng, [length] * 4)
    with torch.no_grad():
        q_idx = net.index_video(torch.from_numpy(query)).reshape(query.shape[0], 9, -1)
        c_idx = [net.index_video(torch.from_numpy(c)).reshape(length, 9, -1) for c in cands]
        expected = [float(net.calculate_video_similarity(q_idx, c).reshape(-1)[0]) for c in c_idx]
    got, _ = fine_similarities(q_idx.numpy(), [c.numpy() for c in c_idx], "att", FineComparator(net))
    np.testing.assert_allclose(got, expected, atol=1e-5)

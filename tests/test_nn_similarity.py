"""The similarity building blocks and the training-free fine similarity of the lite profile."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dnsvr.nn.similarity import (
    chamfer_similarity,
    chamfer_video_similarity,
    frame_to_frame_cross,
    frame_to_frame_paired,
    symmetric_chamfer_similarity,
)


def _video(t: int, seed: int, d: int = 16) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(t, 9, d, generator=g), dim=-1)


def _naive(q: np.ndarray, t: np.ndarray, symmetric: bool = False) -> float:
    """Loop-by-loop ViSiL_f: Chamfer over regions per frame pair, then Chamfer over frames."""
    f2f = np.zeros((len(q), len(t)))
    for i in range(len(q)):
        for j in range(len(t)):
            s = q[i] @ t[j].T  # [R, R]
            f2f[i, j] = s.max(1).mean() if not symmetric else (s.max(1).mean() + s.max(0).mean()) / 2
    v = f2f.max(1).mean()
    return v if not symmetric else (v + f2f.max(0).mean()) / 2


@pytest.mark.parametrize("symmetric", [False, True])
def test_chamfer_video_similarity_matches_naive_loops(symmetric: bool) -> None:
    q, t = _video(7, 0), _video(5, 1)
    got = chamfer_video_similarity(q, t, symmetric=symmetric)
    assert got.ndim == 0
    assert abs(float(got) - _naive(q.numpy().astype(np.float64), t.numpy().astype(np.float64), symmetric)) < 1e-5


def test_self_similarity_is_one_and_asymmetry() -> None:
    q = _video(6, 2)
    assert abs(float(chamfer_video_similarity(q, q)) - 1.0) < 1e-5
    # a query that is a sub-clip of the target is fully contained: asymmetric Chamfer = 1, not vice versa
    long = torch.cat([q, _video(10, 3)])
    assert abs(float(chamfer_video_similarity(q, long)) - 1.0) < 1e-5
    assert float(chamfer_video_similarity(long, q)) < 0.99


def test_batched_candidates_with_masks_equal_single_pairs() -> None:
    q = _video(8, 4)
    lengths = [3, 9, 6, 1]
    cands = [_video(n, 10 + i) for i, n in enumerate(lengths)]
    batch = torch.zeros(len(cands), max(lengths), 9, 16)
    mask = torch.zeros(len(cands), max(lengths))
    for i, c in enumerate(cands):
        batch[i, : len(c)] = c
        batch[i, len(c):] = 5.0  # garbage in padding must not matter
        mask[i, : len(c)] = 1
    expected = torch.stack([chamfer_video_similarity(q, c) for c in cands])
    for chunk in (1, 3, 64):
        got = chamfer_video_similarity(q, batch, target_mask=mask, chunk_size=chunk)
        assert got.shape == (4,)
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    # numpy inputs and a query mask
    qpad = torch.cat([q, torch.full((2, 9, 16), 3.0)])
    qmask = np.r_[np.ones(8), np.zeros(2)].astype(np.float32)
    got = chamfer_video_similarity(qpad.numpy(), batch.numpy(), query_mask=qmask, target_mask=mask.numpy())
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


def test_chamfer_similarity_mask_semantics() -> None:
    s = torch.tensor([[[0.1, 0.9, 7.0], [0.5, 0.2, 7.0], [7.0, 7.0, 7.0]]])
    mask = torch.tensor([[[1, 1, 0], [1, 1, 0], [0, 0, 0]]], dtype=torch.float32)
    # rows: max over valid columns = 0.9, 0.5; mean over the 2 valid rows
    assert abs(float(chamfer_similarity(s, mask, max_axis=2, mean_axis=1)) - 0.7) < 1e-6
    # columns direction: max over valid rows = 0.5, 0.9
    sym = symmetric_chamfer_similarity(s, mask, axes=(2, 1))
    assert abs(float(sym) - 0.7) < 1e-6
    assert float(chamfer_similarity(s, None, max_axis=2, mean_axis=1)) == pytest.approx(7.0)


def test_paired_and_cross_frame_to_frame_agree() -> None:
    q = torch.stack([_video(4, 20), _video(4, 21)])
    t = torch.stack([_video(6, 22), _video(6, 23), _video(6, 24)])
    cross = frame_to_frame_cross(q, t)
    assert cross.shape == (2, 3, 4, 6)
    for a in range(2):
        for b in range(3):
            torch.testing.assert_close(frame_to_frame_paired(q[a:a + 1], t[b:b + 1])[0], cross[a, b])


def test_shape_errors_name_the_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(1, 4, 9, 8\)"):
        chamfer_video_similarity(_video(3, 0), torch.zeros(4, 9, 8))
    with pytest.raises(ValueError, match="query must be one video"):
        chamfer_video_similarity(torch.zeros(2, 3, 9, 16), _video(3, 0))


def test_half_precision_inputs_are_computed_in_float32_on_cpu() -> None:
    q, t = _video(5, 30), torch.stack([_video(7, 31), _video(7, 32)])
    expected = chamfer_video_similarity(q, t)
    got = chamfer_video_similarity(q.half().numpy(), t.half())
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, atol=2e-3, rtol=0)

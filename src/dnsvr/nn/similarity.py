"""Similarity building blocks: Chamfer similarity, region-level tensor dot products, masks, and the
training-free fine similarity of the ``lite`` profile.

Conventions (those of the reference implementations):

* a video is a tensor [T, R, D] (T frames, R regions — 9 for L3-iMAC — and D dims); a batch is [B, T, R, D]
  with a padding mask [B, T] (1 = real frame, 0 = padding);
* Chamfer similarity of a matrix s[i, j] (query items i, target items j) = mean over i of max over j;
* frame-to-frame similarity = Chamfer over the regions of two frames (max over target regions, mean over
  query regions); video-to-video similarity = Chamfer over the frame-to-frame matrix.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor, nn

from dnsvr.nn._utils import as_mask, as_tensor, check_dims

logger = logging.getLogger(__name__)

__all__ = [
    "ChamferSimilarity",
    "chamfer_similarity",
    "symmetric_chamfer_similarity",
    "region_similarity_paired",
    "region_similarity_cross",
    "frame_to_frame_paired",
    "frame_to_frame_cross",
    "pair_mask_paired",
    "pair_mask_cross",
    "chamfer_video_similarity",
]


def chamfer_similarity(s: Tensor, mask: Tensor | None = None, max_axis: int = 1, mean_axis: int = 0) -> Tensor:
    """Chamfer similarity: max over ``max_axis``, then (masked) mean over ``mean_axis``; both axes are removed.

    Args:
        s: similarity tensor.
        mask: optional tensor of ``s``'s shape, 1 where an entry is valid, 0 where it is padding. Padded target
            entries never win the max; padded query entries do not count in the mean.
        max_axis: the axis of the target items.
        mean_axis: the axis of the query items.

    Returns:
        ``s`` reduced over both axes.
    """
    if mask is None:
        s = torch.amax(s, dim=max_axis, keepdim=True)
        s = torch.mean(s, dim=mean_axis, keepdim=True)
    else:
        valid = mask.to(torch.bool)
        s = s.masked_fill(~valid, float("-inf"))
        s = torch.amax(s, dim=max_axis, keepdim=True)
        m = torch.amax(mask.to(s.dtype), dim=max_axis, keepdim=True)
        s = s.masked_fill(m == 0, 0.0)
        s = torch.sum(s, dim=mean_axis, keepdim=True) / torch.sum(m, dim=mean_axis, keepdim=True)
    return s.squeeze(max(max_axis, mean_axis)).squeeze(min(max_axis, mean_axis))


def symmetric_chamfer_similarity(s: Tensor, mask: Tensor | None = None, axes: tuple[int, int] = (0, 1)) -> Tensor:
    """Average of the Chamfer similarity in both directions (``axes`` = (max axis, mean axis) of the first)."""
    return (
        chamfer_similarity(s, mask, max_axis=axes[0], mean_axis=axes[1])
        + chamfer_similarity(s, mask, max_axis=axes[1], mean_axis=axes[0])
    ) / 2


class ChamferSimilarity(nn.Module):
    """Chamfer similarity as a module, with the reference's ``axes=[max_axis, mean_axis]`` convention."""

    def __init__(self, symmetric: bool = False, axes: tuple[int, int] | list[int] = (1, 0)) -> None:
        super().__init__()
        self.symmetric = symmetric
        self.axes = (int(axes[0]), int(axes[1]))

    def forward(self, s: Tensor, mask: Tensor | None = None) -> Tensor:
        if self.symmetric:
            return symmetric_chamfer_similarity(s, mask, axes=self.axes)
        return chamfer_similarity(s, mask, max_axis=self.axes[0], mean_axis=self.axes[1])

    def extra_repr(self) -> str:
        return f"max_axis={self.axes[0]}, mean_axis={self.axes[1]}, symmetric={self.symmetric}"


def region_similarity_paired(query: Tensor, target: Tensor) -> Tensor:
    """Region-level dot products of paired videos (query b with target b).

    Args:
        query: [B, Tq, R, D].
        target: [B, Tt, Rt, D].

    Returns:
        [B, Tq, R, Tt, Rt] (the reference's ``biok,bjpk->biopj`` tensor, with the target axes kept together).
    """
    b, tq, r, d = query.shape
    _, tt, rt, _ = target.shape
    s = torch.bmm(query.reshape(b, tq * r, d), target.reshape(b, tt * rt, d).transpose(1, 2))
    return s.view(b, tq, r, tt, rt)


def region_similarity_cross(query: Tensor, target: Tensor) -> Tensor:
    """Region-level dot products of every query video with every target video.

    Args:
        query: [A, Tq, R, D].
        target: [B, Tt, Rt, D].

    Returns:
        [A, Tq, R, B, Tt, Rt].
    """
    a, tq, r, d = query.shape
    b, tt, rt, _ = target.shape
    s = query.reshape(a * tq * r, d) @ target.reshape(b * tt * rt, d).T
    return s.view(a, tq, r, b, tt, rt)


def _region_chamfer(s: Tensor, q_region_axis: int, t_region_axis: int, symmetric: bool) -> Tensor:
    forward = torch.amax(s, dim=t_region_axis, keepdim=True).mean(dim=q_region_axis, keepdim=True)
    if symmetric:
        backward = torch.amax(s, dim=q_region_axis, keepdim=True).mean(dim=t_region_axis, keepdim=True)
        forward = (forward + backward) / 2
    return forward.squeeze(max(q_region_axis, t_region_axis)).squeeze(min(q_region_axis, t_region_axis))


def frame_to_frame_paired(query: Tensor, target: Tensor, symmetric: bool = False) -> Tensor:
    """Frame-to-frame similarity matrices of paired videos: Chamfer over regions.

    Args:
        query: [B, Tq, R, D].
        target: [B, Tt, R, D].
        symmetric: average both Chamfer directions over regions (the symmetric ViSiL).

    Returns:
        [B, Tq, Tt].
    """
    s = region_similarity_paired(query, target)  # [B, Tq, R, Tt, Rt]
    return _region_chamfer(s, q_region_axis=2, t_region_axis=4, symmetric=symmetric)


def frame_to_frame_cross(query: Tensor, target: Tensor, symmetric: bool = False) -> Tensor:
    """Frame-to-frame similarity matrices of every query with every target: Chamfer over regions.

    Args:
        query: [A, Tq, R, D].
        target: [B, Tt, R, D].
        symmetric: average both Chamfer directions over regions.

    Returns:
        [A, B, Tq, Tt].
    """
    s = region_similarity_cross(query, target)  # [A, Tq, R, B, Tt, Rt]
    s = _region_chamfer(s, q_region_axis=2, t_region_axis=5, symmetric=symmetric)  # [A, Tq, B, Tt]
    return s.permute(0, 2, 1, 3)


def pair_mask_paired(query_mask: Tensor, target_mask: Tensor) -> Tensor:
    """Mask of the paired frame-to-frame matrices: [B, Tq] × [B, Tt] → [B, Tq, Tt]."""
    return query_mask.unsqueeze(2) * target_mask.unsqueeze(1)


def pair_mask_cross(query_mask: Tensor, target_mask: Tensor) -> Tensor:
    """Mask of all query×target frame-to-frame matrices: [A, Tq] × [B, Tt] → [A, B, Tq, Tt]."""
    return query_mask[:, None, :, None] * target_mask[None, :, None, :]


def chamfer_video_similarity(
    query: Any,
    target: Any,
    query_mask: Any = None,
    target_mask: Any = None,
    *,
    symmetric: bool = False,
    chunk_size: int = 64,
) -> Tensor:
    """Training-free fine similarity ("ViSiL_f" without learned layers), used by the ``lite`` profile.

    Region-level dot products → Chamfer over regions → frame-to-frame matrix → Chamfer over frames.
    With L2-normalised region vectors the result lies in [-1, 1]. Padded frames (mask 0) are ignored.

    Args:
        query: one video [Tq, R, D] (numpy or tensor; float16 is computed in float32 on CPU).
        target: one video [Tt, R, D] or a batch of candidates [B, Tt, R, D] (padded to a common length).
        query_mask: optional [Tq] mask of the query (1 = real frame).
        target_mask: optional [Tt] / [B, Tt] mask of the candidates.
        symmetric: average both Chamfer directions (at region and at frame level).
        chunk_size: candidates per matrix product (bounds the memory of the [Tq·R, chunk·Tt·R] product).

    Returns:
        A 0-d tensor for a single target, otherwise [B] — one similarity per candidate, on the query's device.

    Raises:
        ValueError: on shape mismatches (the message names the offending shapes).

    Example:
        >>> sims = chamfer_video_similarity(q_feats, candidate_batch, target_mask=mask)  # [B]
    """
    q = query if isinstance(query, Tensor) else as_tensor(query, torch.device("cpu"), dtype=None)
    if not q.is_floating_point() or (q.device.type == "cpu" and q.dtype in (torch.float16, torch.bfloat16)):
        q = q.float()  # stored float16 features: compute in float32 on CPU (faster and exact enough)
    t = as_tensor(target, q.device, dtype=q.dtype)
    if q.ndim != 3:
        raise ValueError(f"query must be one video [T, R, D]; got shape {tuple(q.shape)}")
    single = t.ndim == 3
    qm = as_mask(query_mask, q)
    tm = as_mask(target_mask, t)
    t, tm = check_dims(t, tm, name="target")
    if t.shape[-1] != q.shape[-1]:
        raise ValueError(f"query dims {q.shape[-1]} != target dims {t.shape[-1]} (query {tuple(q.shape)}, "
                         f"target {tuple(t.shape)})")
    if qm is not None and tuple(qm.shape) != (q.shape[0],):
        raise ValueError(f"query_mask must have shape [{q.shape[0]}]; got {tuple(qm.shape)}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1; got {chunk_size}")
    q4 = q.unsqueeze(0)
    out = []
    for start in range(0, t.shape[0], chunk_size):
        tc = t[start:start + chunk_size]
        f2f = frame_to_frame_cross(q4, tc, symmetric=symmetric)[0]  # [b, Tq, Tt]
        mask = None
        if qm is not None or tm is not None:
            qmc = qm if qm is not None else q.new_ones(q.shape[0])
            tmc = tm[start:start + chunk_size] if tm is not None else tc.new_ones(tc.shape[:2])
            mask = pair_mask_cross(qmc.unsqueeze(0), tmc)[0]
        if symmetric:
            out.append(symmetric_chamfer_similarity(f2f, mask, axes=(2, 1)))
        else:
            out.append(chamfer_similarity(f2f, mask, max_axis=2, mean_axis=1))
    sims = torch.cat(out)
    return sims[0] if single else sims

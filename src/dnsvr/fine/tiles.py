"""Long videos: a pair whose working memory would exceed the budget runs in tiles with the same result.

:func:`pair_bytes` estimates a pair's working memory; :func:`plan_tiles` sizes row strips of the
frame-to-frame matrix, comparator tiles (with a halo of :data:`HALO` frames) and region-product blocks;
:func:`_long_pair` computes one pair that way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .codes import _Prepared
from .comparator import FineComparator
from .params import _CNN_BYTES_PER_POSITION, DEFAULT_BLOCK_ELEMENTS, DEFAULT_PRECISION, HALO
from .regions import _region_chamfer

@dataclass(frozen=True)
class TilePlan:
    """How one long pair is split to stay within a memory budget.

    Attributes:
        strip_frames: query frames per row strip of the frame-to-frame matrix (a multiple of 4;
            each strip is computed with :data:`HALO` extra frames on both sides for the comparator).
        tile_frames: candidate frames per comparator tile (a multiple of 4; plus the halo).
        block_frames: candidate frames per region-product block (their regions converted at once).
        peak_bytes: the estimated working memory of one step.
        product_elements: bound on one region-product chunk (elements; ``block_elements`` of
            :func:`fine_similarities`, lowered to fit the budget).
    """

    strip_frames: int
    tile_frames: int
    block_frames: int
    peak_bytes: int
    product_elements: int = DEFAULT_BLOCK_ELEMENTS


def _convert_bytes(frames: int, regions: int, dims: int, fine_type: str, precision: str) -> int:
    """Bytes of ``frames`` candidate frames converted for the region product (int8 codes, else float32)."""
    return frames * regions * dims * (1 if fine_type == "bin" else 4)


def pair_bytes(t1: int, t2: int, regions: int, dims: int, fine_type: str,
               precision: str = DEFAULT_PRECISION, block_elements: int = DEFAULT_BLOCK_ELEMENTS) -> int:
    """Estimated working memory (bytes) of one (query, candidate) pair computed untiled.

    The comparator's first layer (``_CNN_BYTES_PER_POSITION`` per frame pair) dominates for the learned
    fine stages; then the frame-to-frame matrix, the converted candidate and one region-product block.
    """
    per_position = 4 + (0 if fine_type == "chamfer" else _CNN_BYTES_PER_POSITION)
    return (per_position * t1 * t2 + _convert_bytes(t2, regions, dims, fine_type, precision)
            + 4 * min(block_elements, t1 * t2 * regions * regions))


def plan_tiles(t1: int, t2: int, regions: int, dims: int, fine_type: str, memory_budget: int,
               precision: str = DEFAULT_PRECISION, block_elements: int = DEFAULT_BLOCK_ELEMENTS) -> TilePlan:
    """Tile sizes for one long pair so that one step's working memory stays under ``memory_budget``.

    A quarter of the budget goes to a row strip of the frame-to-frame matrix, half to one comparator
    tile, an eighth to the converted candidate block and an eighth to one region-product chunk; every
    size is at least the smallest that works (4 frames, one frame pair), so a budget too small for even
    that is exceeded rather than refused.

    Args:
        t1: query frames.
        t2: candidate frames.
        regions: regions per frame.
        dims: their dimensions (of the converted representation).
        fine_type: ``att`` / ``bin`` / ``chamfer``.
        memory_budget: bytes.
        precision: as :func:`fine_similarities`.
        block_elements: as :func:`fine_similarities`.

    Returns:
        The :class:`TilePlan`.
    """
    learned = fine_type != "chamfer"
    halo = 2 * HALO if learned else 0
    strip = (memory_budget // 4) // (4 * max(1, t2)) - halo
    if learned:
        # square-ish comparator tiles: the least halo recomputed for the area
        strip = min(strip, math.isqrt((memory_budget // 2) // _CNN_BYTES_PER_POSITION) - halo)
    strip = max(4, min(strip // 4 * 4, t1 + (-t1) % 4))
    if learned:
        tile = (memory_budget // 2) // (_CNN_BYTES_PER_POSITION * (strip + halo)) - halo
        tile = max(4, min(tile // 4 * 4, t2 + (-t2) % 4))
    else:
        tile = t2
    frame_bytes = _convert_bytes(1, regions, dims, fine_type, precision)
    block = max(1, min(t2, (memory_budget // 8) // frame_bytes))
    product = max(regions * regions, min(block_elements, memory_budget // 32))
    rows = min(t1, strip + halo)
    peak = (4 * rows * t2 + (_CNN_BYTES_PER_POSITION * rows * min(t2, tile + halo) if learned else 0)
            + block * frame_bytes + 4 * min(product, rows * block * regions * regions))
    return TilePlan(strip, tile, block, peak, product)


def _long_pair(q_mat: torch.Tensor, q_scale: torch.Tensor | None, t1: int, cand: _Prepared, fine_type: str,
               comparator: FineComparator | None, plan: TilePlan, precision: str,
               matrix: np.ndarray | None) -> float:
    """One pair in tiles (see :class:`TilePlan`); equals the untiled computation up to float rounding.

    The frame-to-frame matrix is computed one row strip at a time (the region product in blocks of
    candidate frames); the comparator runs over tiles of the strip with :data:`HALO` frames of context
    on every side that has data there, each tile contributing only its exact output positions; the
    Chamfer reduction (max over candidate positions, mean over query positions) is assembled across
    tiles. ``matrix`` (``[t1, t2]``), when given, receives the frame-to-frame matrix.
    """
    regions = cand.regions
    t2 = cand.frames

    def f2f_rows(r0: int, r1: int) -> torch.Tensor:
        strip = torch.empty((r1 - r0, t2))
        rows = q_mat[r0 * regions:r1 * regions]
        scale = None if q_scale is None else q_scale[r0 * regions:r1 * regions]
        for c0 in range(0, t2, plan.block_frames):
            c1 = min(t2, c0 + plan.block_frames)
            strip[:, c0:c1] = _region_chamfer(rows, r1 - r0, [cand.part(c0, c1)], regions, fine_type,
                                              plan.product_elements, precision, scale)[0]
        if matrix is not None:
            matrix[r0:r1] = strip.numpy()
        return strip

    if fine_type == "chamfer":
        total = 0.0
        for r0 in range(0, t1, plan.strip_frames):
            total += float(f2f_rows(r0, min(t1, r0 + plan.strip_frames)).amax(1).double().sum())
        return total / t1
    out_rows, out_cols = t1 // 4, t2 // 4
    step_r, step_c = plan.strip_frames // 4, plan.tile_frames // 4
    row_max = torch.full((out_rows,), -float("inf"))
    for a in range(0, out_rows, step_r):
        b = min(out_rows, a + step_r)
        r0 = max(0, 4 * a - HALO)
        r1 = t1 if b == out_rows else min(t1, 4 * b + HALO)
        strip = f2f_rows(r0, r1)
        for c in range(0, out_cols, step_c):
            d = min(out_cols, c + step_c)
            c0 = max(0, 4 * c - HALO)
            c1 = t2 if d == out_cols else min(t2, 4 * d + HALO)
            tile = strip[:, c0:c1].contiguous().unsqueeze(0)
            out = comparator(tile, torch.tensor([c1 - c0]))[0]  # type: ignore[misc]
            out = out[a - r0 // 4:b - r0 // 4, c - c0 // 4:d - c0 // 4]
            torch.maximum(row_max[a:b], out.amax(1), out=row_max[a:b])
    return float(row_max.double().mean())

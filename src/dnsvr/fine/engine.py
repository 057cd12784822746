"""Batched fine-grained similarity: one query against many candidates at once.

The reference networks compare one (query, target) pair per call: a region-level
tensor dot, Chamfer over regions, the video comparator CNN, Chamfer over frames.
Here the same arithmetic runs for a whole block of candidates:

* the query's ``T1·9`` region vectors against every region of a block of
  candidates in **one matrix product** (int8 ``torch._int_mm`` for the ±1 codes of
  S^f_B — exact — float32 otherwise);
* the comparator CNN over **many pairs at once**, candidates bucketed by length and
  zero-padded, with the per-pair valid area re-masked after every layer so that each
  pair's result equals what the network computes for that pair alone (not what the
  reference's padded-batch path computes: its max-pooling of the padding mask lets
  one padded row into odd-length videos);
* where the CPU has AVX-512 VNNI, the compiled stages of ``dnsvr._finekernel``: the region stage
  fused (products, max over a candidate frame's regions and mean over the query's, in registers; S^f_B's
  packed bits read directly; see :func:`kernel_region_chamfer`), and the comparator's conv1 + pooling and
  second pooling, all with the torch engine's results (bit for bit where the arithmetic is integer or a
  max; float sums to float32 rounding, since the BLAS under torch picks its summation order per CPU and
  shape); the torch code below is their fallback and reference;
* **blocks** bounded in elements (the region product is split over query rows and over
  candidates), and **tiles** for long videos: a pair whose working memory would exceed
  ``memory_budget`` (default 256 MB; one pair of hour-long videos needs ~2.5 GB untiled) is
  computed in row strips of its frame-to-frame matrix, the region product in blocks of
  candidate frames and the comparator in tiles with a halo of :data:`HALO` frames, so that
  every tile's kept output is exactly the untiled one (:func:`plan_tiles`, :func:`_long_pair`).

``precision="int8"`` (query-time option; float stages ``att`` and ``chamfer`` only — the
S^f_B codes are always exact) runs the region product in int8 too: every query region
vector is quantised symmetrically on its own (scale ``max|x| / 127``, float32), every
candidate *frame* (its 9 region vectors together) with one such scale, on the fly from
the stored float16 values. One scale per candidate frame, rather than per vector, lets
the max over a frame's regions run on the int32 products; the scales are applied to the
reduced ``[T2, T1·9]`` result, not to the full product. The result approximates the
exact path (errors measured in ``benchmarks/bench_search.py``; bound in the tests).

:func:`fine_similarities` is the entry point; :class:`FineComparator` holds the
comparator weights (from a ``dnsvr.nn`` network or any state dict with the
reference's ``visil_head.*`` names).

Videos shorter than 4 frames cannot pass the reference comparator (its two
pooling layers leave nothing); they are zero-padded to 4 frames here.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from .codes import _prepare, _prepare_many, pack_codes, quantize_rows, unpack_codes
from .comparator import FineComparator
from .params import (
    DEFAULT_BLOCK_ELEMENTS,
    DEFAULT_CNN_ELEMENTS,
    DEFAULT_MEMORY_BUDGET,
    DEFAULT_PRECISION,
    FINE_TYPES,
    FLOAT_BLOCK_ELEMENTS,
    HALO,
    MIN_FRAMES,
    PRECISIONS,
    FineType,
    Precision,
)
from .regions import _region_chamfer, kernel_region_chamfer
from .tiles import TilePlan, _long_pair, pair_bytes, plan_tiles

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_BLOCK_ELEMENTS", "DEFAULT_CNN_ELEMENTS", "DEFAULT_MEMORY_BUDGET", "DEFAULT_PRECISION", "FINE_TYPES",
    "FLOAT_BLOCK_ELEMENTS", "HALO", "MIN_FRAMES", "PRECISIONS", "FineComparator", "FineType", "Precision",
    "TilePlan", "fine_similarities", "kernel_region_chamfer", "pack_codes", "pair_bytes",
    "plan_tiles", "quantize_rows", "unpack_codes",
]


def _buckets(lengths: Sequence[int], t1: int, cnn_elements: int, waste: float = 0.25) -> Iterator[list[int]]:
    """Indices grouped by similar length; each group's padded CNN input stays under ``cnn_elements``."""
    order = sorted(range(len(lengths)), key=lambda k: lengths[k])
    group: list[int] = []
    for k in order:
        if group:
            width = lengths[k]
            too_wide = width > lengths[group[0]] * (1 + waste) + 4
            too_big = 32 * t1 * width * (len(group) + 1) > cnn_elements
            if too_wide or too_big:
                yield group
                group = []
        group.append(k)
    if group:
        yield group


def fine_similarities(query: np.ndarray | torch.Tensor,
                      candidates: Sequence[np.ndarray | torch.Tensor],
                      fine_type: str,
                      comparator: FineComparator | None = None,
                      *,
                      return_matrices: bool = False,
                      block_elements: int | None = None,
                      cnn_elements: int = DEFAULT_CNN_ELEMENTS,
                      precision: str = DEFAULT_PRECISION,
                      memory_budget: int = DEFAULT_MEMORY_BUDGET,
                      ) -> tuple[np.ndarray, list[np.ndarray] | None]:
    """Fine-grained similarity of one query to many candidates, batched.

    Equals, for every candidate, ``FineGrainedStudent.calculate_video_similarity(query,
    candidate)`` (``att``/``bin``) or ``dnsvr.nn.similarity.chamfer_video_similarity``
    (``chamfer``) on that pair alone.

    Args:
        query: the query's stored fine representation ``[T1, 9, D]`` (float, ±1, or packed
            uint8 bits ``[T1, 9, D/8]`` for ``bin``).
        candidates: the candidates' representations, same layout, any lengths.
        fine_type: ``"att"`` / ``"bin"`` (learned comparator) or ``"chamfer"`` (training-free).
        comparator: the comparator weights; required for ``att``/``bin``.
        return_matrices: also return each pair's frame-to-frame matrix ``[T1, T2]`` (the
            region-Chamfer matrix before the comparator; used for segment alignment).
        block_elements: bound on one region-product block (elements; default
            :data:`DEFAULT_BLOCK_ELEMENTS` for int8 products — S^f_B, ``precision="int8"`` —
            :data:`FLOAT_BLOCK_ELEMENTS` for float32 ones).
        cnn_elements: bound on one comparator batch's first feature map (elements).
        precision: ``"exact"`` (float32 region products; S^f_B's codes in exact int8) or
            ``"int8"`` (the float stages ``att``/``chamfer`` quantised to int8: faster, approximate;
            ``bin`` is unaffected).
        memory_budget: bytes of working memory one pair may use; a pair that would need more (see
            :func:`pair_bytes`) runs in tiles (:func:`plan_tiles`) with the same result. The query's
            converted matrix (``T1·9·D`` float32, or int8 for codes) and the returned matrices are
            not counted.

    Returns:
        ``(scores float32 [N], matrices or None)``; scores in [-1, 1] as the networks give them.

    Raises:
        ValueError: unknown ``fine_type`` or ``precision``, missing comparator, or mismatched shapes.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {PRECISIONS}")
    if fine_type not in FINE_TYPES:
        raise ValueError(f"unknown fine type {fine_type!r}; expected one of {FINE_TYPES}")
    if fine_type != "chamfer" and comparator is None:
        raise ValueError(f"fine type {fine_type!r} needs the comparator weights")
    n = len(candidates)
    if n == 0:
        return np.zeros(0, dtype=np.float32), ([] if return_matrices else None)
    if block_elements is None:
        int8 = fine_type == "bin" or precision == "int8"
        block_elements = DEFAULT_BLOCK_ELEMENTS if int8 else FLOAT_BLOCK_ELEMENTS
    with torch.inference_mode():
        q = _prepare(query, fine_type)
        q_mat = q.matrix()
        q_scale = None
        if precision == "int8" and fine_type != "bin":
            q_mat, q_scale = quantize_rows(q_mat)
        regions = q.regions
        cands = _prepare_many(candidates, fine_type)
        for k, c in enumerate(cands):
            if c.dims != q.dims or c.regions != regions:
                raise ValueError(f"candidate {k} has shape {tuple(candidates[k].shape)}, "
                                 f"query {tuple(query.shape)}: region count/dims differ")
        scores = np.zeros(n, dtype=np.float32)
        matrices: list[np.ndarray] | None = [None] * n if return_matrices else None  # type: ignore[list-item]
        # long pairs one at a time, in tiles bounded by the memory budget
        lengths = [c.frames for c in cands]
        short: list[int] = []
        for k, c in enumerate(cands):
            if c.frames == c.raw.shape[0] and pair_bytes(q.frames, c.frames, regions, q.dims, fine_type, precision,
                                                         block_elements) > memory_budget:
                plan = plan_tiles(q.frames, c.frames, regions, q.dims, fine_type, memory_budget, precision,
                                  block_elements)
                logger.debug("candidate %d (%d x %d frames) in tiles: %s", k, q.frames, c.frames, plan)
                mat = np.empty((q.frames, c.frames), dtype=np.float32) if matrices is not None else None
                scores[k] = _long_pair(q_mat, q_scale, q.frames, c, fine_type, comparator, plan, precision, mat)
                if matrices is not None:
                    matrices[k] = mat[:query.shape[0]]  # type: ignore[index]
            else:
                short.append(k)
        # the rest in groups of similar length: region product then comparator
        for sub in _buckets([lengths[k] for k in short], q.frames, cnn_elements):
            group = [short[k] for k in sub]
            mats = _region_chamfer(q_mat, q.frames, [cands[k] for k in group], regions, fine_type, block_elements,
                                   precision, q_scale)
            if matrices is not None:
                for k, m in zip(group, mats):
                    matrices[k] = m[:query.shape[0], :candidates[k].shape[0]].numpy().copy()
            if fine_type == "chamfer":
                for k, m in zip(group, mats):
                    scores[k] = float(m.amax(1).mean())
                continue
            width = max(m.shape[1] for m in mats)
            if all(m.shape[1] == width for m in mats):
                batch = torch.stack(mats)
            else:
                width += (-width) % 4  # mixed lengths: re-masked after each layer
                batch = torch.zeros((len(group), q.frames, width))
                for b, m in enumerate(mats):
                    batch[b, :, :m.shape[1]] = m
            widths = torch.tensor([m.shape[1] for m in mats], dtype=torch.int64)
            out = comparator(batch, widths)  # type: ignore[misc]
            valid = widths // 4
            if bool((valid < out.shape[-1]).any()):
                cols = torch.arange(out.shape[-1])
                out = out.masked_fill(cols[None, None, :] >= valid[:, None, None], -float("inf"))
            scores[np.asarray(group)] = out.amax(2).mean(1).numpy()
    return scores, matrices

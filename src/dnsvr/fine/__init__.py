"""The fine stage: one query against many candidates at once, with the students' or the training-free similarity.

Public: :func:`fine_similarities` (the entry point), :class:`FineComparator` (the comparator CNN's
weights), the S^f_B bit codes (:func:`pack_codes`, :func:`unpack_codes`), int8 quantisation
(:func:`quantize_rows`), long-video tiling (:func:`plan_tiles`, :func:`pair_bytes`), and the
vocabulary (:data:`FINE_TYPES`, :data:`PRECISIONS`, :data:`DEFAULT_PRECISION`).

One module per concept: :mod:`~dnsvr.fine.engine` (:func:`fine_similarities`: blocks, buckets, the
whole call), :mod:`~dnsvr.fine.comparator` (the comparator CNN), :mod:`~dnsvr.fine.codes` (bit codes,
int8 quantisation, views of stored representations), :mod:`~dnsvr.fine.regions` (the region stage),
:mod:`~dnsvr.fine.tiles` (long videos within a memory budget), :mod:`~dnsvr.fine.kernel` (the compiled
stages, ``dnsvr._finekernel``, where the CPU has AVX-512 VNNI), :mod:`~dnsvr.fine.params` (vocabulary
and default bounds). The modules import each other relatively, so that a benchmark can load another
revision's package beside this one. How it works and what it costs: docs/notes/fine-engine.md.

Example:
    >>> import numpy as np
    >>> from dnsvr.fine import fine_similarities
    >>> q = np.random.default_rng(0).standard_normal((8, 9, 16)).astype(np.float32)
    >>> scores, _ = fine_similarities(q, [q, -q], "chamfer")
    >>> bool(scores[0] > scores[1])
    True
"""

from __future__ import annotations

from .codes import pack_codes, quantize_rows, unpack_codes
from .comparator import FineComparator
from .engine import fine_similarities
from .params import DEFAULT_MEMORY_BUDGET, DEFAULT_PRECISION, FINE_TYPES, HALO, MIN_FRAMES, PRECISIONS, FineType
from .regions import kernel_region_chamfer
from .tiles import TilePlan, pair_bytes, plan_tiles

__all__ = [
    "DEFAULT_MEMORY_BUDGET", "DEFAULT_PRECISION", "FINE_TYPES", "HALO", "MIN_FRAMES", "PRECISIONS",
    "FineComparator", "FineType", "TilePlan", "fine_similarities", "kernel_region_chamfer", "pack_codes",
    "pair_bytes", "plan_tiles", "quantize_rows", "unpack_codes",
]

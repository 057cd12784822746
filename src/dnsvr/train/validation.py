"""Validation of a student on a retrieval benchmark during training (keeps the best epoch).

:func:`benchmark_validator` builds the ``validator`` callable that
:func:`dnsvr.train.students.train_student` calls after every epoch: it ranks
every video of a feature file for each benchmark query with the student being
trained and scores the ranking with :func:`dnsvr.eval.evaluate` (the reference
protocols: FIVR-5K, CC_WEB_VIDEO, SVD, EVVE, or a custom ground truth).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dnsvr.features import FeatureFile
from dnsvr.train.augment import MAX_FRAMES, clip_length
from dnsvr.train.students import pair_similarities

logger = logging.getLogger(__name__)


def benchmark_validator(features: str | Path, benchmark: str, kind: str, metric: str | None = None,
                        max_queries: int | None = None, device: str = "cpu", max_frames: int = MAX_FRAMES,
                        **benchmark_kwargs: Any) -> Callable[[torch.nn.Module], dict[str, float]]:
    """A validator that evaluates a student on a benchmark.

    Args:
        features: feature file with the benchmark's queries and database videos (any subset).
        benchmark: a :func:`dnsvr.eval.get_benchmark` name (``"FIVR-5K"``, ``"custom"``, ...).
        kind: the student type being trained (``fg-att``, ``fg-bin``, ``cg``).
        metric: the metric that is the validation ``score`` (default: the benchmark's first metric).
        max_queries: evaluate only the first queries (cost control: fine students compare every pair).
        device: where to run.
        max_frames: videos are cut to this many frames.
        **benchmark_kwargs: e.g. ``ground_truth=`` for ``custom``.

    Returns:
        ``model -> {metric: value, ..., "score": value}``.

    Raises:
        ValueError: when no benchmark query is in the feature file.
    """
    from dnsvr.eval import evaluate, get_benchmark

    bench = get_benchmark(benchmark, **benchmark_kwargs)
    with FeatureFile(features) as ff:
        ids = ff.ids()
        videos = [clip_length(ff.read(v), max_frames) for v in ids]
    pos = {v: i for i, v in enumerate(ids)}
    queries = [q for q in bench.get_queries() if q in pos][:max_queries]
    if not queries:
        raise ValueError(f"{features}: none of the {benchmark} queries has features "
                         f"(e.g. {bench.get_queries()[:3]})")
    pairs = np.array([(pos[q], j) for q in queries for j in range(len(ids)) if ids[j] != q], dtype=np.int64)
    logger.info("validation on %s: %d queries × %d videos", benchmark, len(queries), len(ids))

    def validate(model: torch.nn.Module) -> dict[str, float]:
        sims = pair_similarities(model, kind, videos, pairs, device=device)
        table: dict[str, dict[str, float]] = {q: {} for q in queries}
        for (i, j), s in zip(pairs, sims):
            table[ids[i]][ids[j]] = float(s)
        metrics = evaluate(bench, table, available=ids)
        name = metric or next(iter(metrics))
        if name not in metrics:
            raise ValueError(f"metric {name!r} not reported by {benchmark}; available: {sorted(metrics)}")
        return {**metrics, "score": float(metrics[name])}

    return validate

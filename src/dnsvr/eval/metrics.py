"""Average-precision variants used by the benchmark protocols, vectorised with numpy.

Three definitions appear in the reference evaluation code, and each benchmark
uses one of them:

* :func:`average_precision` — non-interpolated AP over a ranked list: the mean,
  over all ground-truth positives, of the precision at the rank of each
  retrieved positive (FIVR, CC_WEB_VIDEO, custom benchmarks).
* :func:`trapezoid_average_precision` — the area under the precision/recall
  curve accumulated as trapezoids over the ranks of the positives (EVVE).
* :func:`step_average_precision` — scikit-learn's ``average_precision_score``:
  tied scores form one threshold (SVD).

Ranking is always by descending score with ties kept in input order
(:func:`rank_order`), which is what Python's ``sorted(..., reverse=True)``
does in the reference code.
"""

from __future__ import annotations

import logging

import numpy as np

logger = logging.getLogger(__name__)


def rank_order(scores: np.ndarray) -> np.ndarray:
    """Indices that sort ``scores`` in descending order; equal scores keep their input order.

    Args:
        scores: 1-d array of similarity scores.

    Returns:
        int array of positions, best first.

    Raises:
        ValueError: if ``scores`` is not 1-d.
    """
    scores = np.asarray(scores)
    if scores.ndim != 1:
        raise ValueError(f"scores must be 1-d, got shape {scores.shape}")
    # Negating keeps ties in input order under a stable sort, like sorted(reverse=True).
    # NaN sorts last here (numpy puts NaN after every number).
    return np.argsort(-scores, kind="stable")


def positive_ranks(scores: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """0-based ranks of the positive items in the stable descending order of ``scores``.

    Equivalent to ``np.flatnonzero(positive[rank_order(scores)])`` mapped back to the
    positives, without a full stable sort: an unstable sort plus binary search counts the
    items scored higher; only when a positive's score is tied with another item does it fall
    back to the stable sort (ties are decided by input order).

    Args:
        scores: float [n] scores of the ranked items, in input (file) order.
        positive: bool [n], True for the positives.

    Returns:
        int64 [k] ranks of the ``k`` positives, in their input order (not sorted).

    Raises:
        ValueError: if the arrays differ in shape.
    """
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    if scores.shape != positive.shape or scores.ndim != 1:
        raise ValueError(f"scores {scores.shape} and positive {positive.shape} must be 1-d of equal length")
    pos_scores = scores[positive]
    if pos_scores.size == 0:
        return np.zeros(0, dtype=np.int64)
    ascending = np.sort(scores)
    right = np.searchsorted(ascending, pos_scores, side="right")
    ranks = (scores.size - right).astype(np.int64)  # items scored strictly higher
    tied = np.flatnonzero(right - np.searchsorted(ascending, pos_scores, side="left") > 1)
    if tied.size:
        # A positive tied with other items: those before it in input order rank above it.
        tied_values = np.unique(pos_scores[tied])
        slot = np.minimum(np.searchsorted(tied_values, scores), tied_values.size - 1)
        cand = np.flatnonzero(tied_values[slot] == scores)
        pos_index = np.flatnonzero(positive)[tied]
        if tied.size * cand.size > 20_000_000:  # massive ties: one stable sort is cheaper
            rank_of = np.empty(scores.size, dtype=np.int64)
            rank_of[rank_order(scores)] = np.arange(scores.size)
            return rank_of[positive]
        before = (scores[cand][None, :] == pos_scores[tied][:, None]) & (cand[None, :] < pos_index[:, None])
        ranks[tied] += before.sum(axis=1)
    return ranks


def average_precision_from_ranks(ranks: np.ndarray, n_positives: int) -> float:
    """:func:`average_precision` given the 0-based ranks of the retrieved positives (any order).

    Raises:
        ValueError: as :func:`average_precision`.
    """
    ranks = np.sort(np.asarray(ranks, dtype=np.int64))
    if n_positives <= 0:
        raise ValueError(f"n_positives must be positive, got {n_positives}")
    if ranks.size > n_positives:
        raise ValueError(f"{ranks.size} retrieved positives exceed n_positives={n_positives}")
    if ranks.size == 0:
        return 0.0
    precisions = np.arange(1, ranks.size + 1, dtype=np.float64) / (ranks + 1).astype(np.float64)
    return float(precisions.sum() / n_positives)


def average_precision(relevant_ranked: np.ndarray, n_positives: int) -> float:
    """Non-interpolated average precision of one ranked list.

    Args:
        relevant_ranked: boolean array, ``True`` where the item at that rank
            (best first) is a positive. Items that the protocol skips must
            already be removed.
        n_positives: number of ground-truth positives (the denominator); may be
            larger than the number of ``True`` entries (positives never
            retrieved contribute zero).

    Returns:
        AP in [0, 1].

    Raises:
        ValueError: if ``n_positives`` is not positive or smaller than the
            number of retrieved positives.

    Example:
        >>> average_precision(np.array([False, True]), 1)
        0.5
    """
    return average_precision_from_ranks(np.flatnonzero(np.asarray(relevant_ranked, dtype=bool)), n_positives)


def trapezoid_average_precision(positive_ranks: np.ndarray, n_positives: int) -> float:
    """EVVE's AP: trapezoids under the precision/recall curve, one per retrieved positive.

    Args:
        positive_ranks: increasing 0-based ranks of the retrieved positives.
        n_positives: number of ground-truth positives.

    Returns:
        AP in [0, 1]; 0.0 when there are no positives or none was retrieved.

    Example:
        >>> trapezoid_average_precision(np.array([0]), 1)
        1.0
    """
    ranks = np.asarray(positive_ranks, dtype=np.float64)
    if n_positives == 0 or ranks.size == 0:
        return 0.0
    ntp = np.arange(ranks.size, dtype=np.float64)
    # Precision just before this positive (1 at rank 0) and just after it.
    with np.errstate(divide="ignore", invalid="ignore"):
        before = np.where(ranks == 0, 1.0, ntp / np.where(ranks == 0, 1.0, ranks))
    after = (ntp + 1.0) / (ranks + 1.0)
    recall_step = 1.0 / n_positives
    return float(np.sum((after + before) * recall_step / 2.0))


def step_average_precision(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """AP as scikit-learn's ``average_precision_score`` computes it.

    The sum over distinct score thresholds (descending) of the recall gained at
    that threshold times the precision there; items with equal scores enter
    together.

    Args:
        y_true: binary labels (1 positive, 0 negative).
        y_score: scores, higher = more similar.

    Returns:
        AP in [0, 1]; 0.0 when ``y_true`` has no positive (scikit-learn warns and
        returns 0 there too).

    Raises:
        ValueError: if the arrays differ in length.
    """
    y_true = np.asarray(y_true)
    y_score = np.asarray(y_score, dtype=np.float64)
    if y_true.shape != y_score.shape or y_true.ndim != 1:
        raise ValueError(f"y_true {y_true.shape} and y_score {y_score.shape} must be 1-d of equal length")
    if y_true.size == 0:
        return 0.0
    order = np.argsort(-y_score, kind="stable")
    scores = y_score[order]
    labels = (y_true[order] == 1).astype(np.float64)
    # Last index of each run of equal scores = one threshold.
    last = np.r_[np.flatnonzero(scores[1:] != scores[:-1]), scores.size - 1]
    tps = np.cumsum(labels)[last]
    if tps[-1] == 0:
        logger.warning("no positive label among %d items: AP set to 0", y_true.size)
        return 0.0
    fps = (last + 1) - tps
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    gained = np.diff(np.r_[0.0, recall])
    return float(np.sum(gained * precision))

"""The DnS query: coarse → selector → budgeted fine re-rank → one ranked list, with segments.

The pipeline (Distill-and-Select, as the reference ``evaluation_dns.py`` combines it):

1. **coarse**: the query's coarse vector against every database video (exact inner
   product) or against an ANN top-N;
2. **selector**: a score per (query, candidate) pair from ``[query self-sim,
   candidate self-sim, coarse sim]`` — or, without a trained selector (the ``lite``
   bundle), the coarse order itself;
3. **budget**: the highest-scoring pairs, up to a budget that is a fraction of the
   database (the paper's protocol), an absolute number of pairs, or both (the smaller);
4. **fine**: the fine student (or the training-free Chamfer similarity) re-scores the
   selected pairs; its similarity ``s`` mapped to ``s/2 + 0.5`` replaces the coarse score;
5. one list ranked by the combined score; every result says which stage decided it.

For re-ranked results, :func:`align_segments` reads the fine frame-to-frame matrix and
returns where in the two videos the match is (query start–end, target start–end, in
seconds).

This module is array-level: :func:`dns_rank` takes the stage outputs as arrays and
callables, so it runs the same against the persistent index
(:class:`dnsvr.index.VideoIndex`) or against arrays in memory.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

#: Stage names a result can carry.
STAGE_COARSE = "coarse"
STAGE_FINE = "fine"


@dataclass(frozen=True)
class Budget:
    """How many (query, candidate) pairs the fine stage may re-score, per query.

    Args:
        fraction: a fraction of the database size (0.05 = the paper's "5%").
        pairs: an absolute number of pairs.

    With both, the smaller applies; with neither, no pair is re-scored (coarse only).

    Example:
        >>> Budget.parse("5%").pairs_for(100_000)
        5000
        >>> Budget.parse("1000,1%").pairs_for(50_000)
        500
    """

    fraction: float | None = None
    pairs: int | None = None

    def __post_init__(self) -> None:
        if self.fraction is not None and not (0.0 <= self.fraction <= 1.0):
            raise ValueError(f"budget fraction must lie in [0, 1], got {self.fraction}")
        if self.pairs is not None and self.pairs < 0:
            raise ValueError(f"budget pairs must be ≥ 0, got {self.pairs}")

    def pairs_for(self, database_size: int) -> int:
        """The number of pairs for a database of ``database_size`` videos."""
        limits = []
        if self.fraction is not None:
            # as the reference: int(percentage * number of available videos)
            limits.append(int(self.fraction * database_size + 1e-9))
        if self.pairs is not None:
            limits.append(int(self.pairs))
        return min(limits) if limits else 0

    @classmethod
    def parse(cls, text: str | int | float | Budget | None) -> Budget:
        """Parse ``"5%"``, ``"0.05"`` (fractions), ``"1000"`` (pairs), or both joined by a comma.

        Raises:
            ValueError: on anything else (the message shows the accepted forms).
        """
        if isinstance(text, Budget):
            return text
        if text is None:
            return DEFAULT_BUDGET
        if isinstance(text, bool):
            raise ValueError(f"invalid budget {text!r}")
        if isinstance(text, int):
            if text < 0:
                raise ValueError(f"invalid budget {text!r}: a number of pairs is >= 0")
            return cls(pairs=text)
        if isinstance(text, float):
            if not math.isfinite(text) or text < 0:
                raise ValueError(f"invalid budget {text!r}: a fraction in [0, 1] or a number of pairs")
            return cls(fraction=text) if text <= 1.0 else cls(pairs=int(text))
        usage = ("use a fraction of the database ('5%' or '0.05'), a number of pairs ('1000'), "
                 "or both ('5%,1000')")
        parts = str(text).replace(" ", "").split(",")
        if not str(text).strip() or len(parts) > 2 or any(not p for p in parts):
            raise ValueError(f"invalid budget {text!r}: {usage}")
        fraction: float | None = None
        pairs: int | None = None
        kinds: list[str] = []
        for part in parts:
            if re.fullmatch(r"\d+(\.\d+)?%", part):
                value: float | None = float(part[:-1]) / 100.0
                kind = "fraction"
            elif re.fullmatch(r"\d+", part):
                value, kind = int(part), "pairs"
            elif re.fullmatch(r"0?\.\d+|1\.0*|0", part):
                value, kind = float(part), "fraction"
            else:
                raise ValueError(f"invalid budget {text!r}: {usage}")
            if kind in kinds:
                raise ValueError(f"invalid budget {text!r}: two {kind} parts; {usage}")
            kinds.append(kind)
            if kind == "fraction" and value > 1.0:  # type: ignore[operator]
                raise ValueError(f"invalid budget {text!r}: a fraction above 100%")
            if kind == "fraction":
                fraction = value
            else:
                pairs = int(value)  # type: ignore[arg-type]
        return cls(fraction=fraction, pairs=pairs)

    def __str__(self) -> str:
        parts = []
        if self.fraction is not None:
            parts.append(f"{self.fraction * 100:g}%")
        if self.pairs is not None:
            parts.append(str(self.pairs))
        return ",".join(parts) if parts else "0"


#: The default query budget: up to 1,000 fine pairs per query (every candidate in a small index).
DEFAULT_BUDGET = Budget(pairs=1000)


@dataclass
class Segment:
    """An aligned matching segment of a (query, target) pair, times in seconds."""

    query_start: float
    query_end: float
    target_start: float
    target_end: float
    score: float

    def to_dict(self) -> dict[str, float]:
        return {k: round(float(v), 4) for k, v in asdict(self).items()}


@dataclass
class SearchResult:
    """One ranked database video for a query.

    Attributes:
        video_id: the database video.
        score: the combined score the list is ranked by (``fine`` mapped to ``s/2+0.5`` where
            re-ranked, else the coarse similarity).
        coarse_score: the coarse similarity.
        selector_score: the selector's score for the pair, or None without a trained selector.
        fine_score: the fine similarity in [-1, 1] as the network gives it, or None if not re-ranked.
        segments: aligned matching segments (re-ranked results only).
        stage: ``"fine"`` or ``"coarse"``, the stage whose similarity is ``score``.
        source: the file the video was indexed from (None when unknown).
        query_coverage: the share (0–1) of the query's frames that match a frame of this video, from
            the fine stage's frame-to-frame matrix (re-ranked results only; None otherwise).
        target_coverage: the same share of this video's frames.
    """

    video_id: str
    score: float
    coarse_score: float
    selector_score: float | None
    fine_score: float | None
    segments: list[Segment] = field(default_factory=list)
    stage: str = STAGE_COARSE
    source: str | None = None
    query_coverage: float | None = None
    target_coverage: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "video_id": self.video_id,
            "score": float(self.score),
            "coarse_score": float(self.coarse_score),
            "selector_score": None if self.selector_score is None else float(self.selector_score),
            "fine_score": None if self.fine_score is None else float(self.fine_score),
            "stage": self.stage,
            "source": self.source,
            "query_coverage": None if self.query_coverage is None else round(float(self.query_coverage), 4),
            "target_coverage": None if self.target_coverage is None else round(float(self.target_coverage), 4),
            "segments": [s.to_dict() for s in self.segments],
        }


@dataclass
class QueryResults:
    """The ranked results of one query, plus what the query cost.

    ``missing_shards`` names the shards of a sharded index left out of a partial result
    (``allow_partial``); it is empty for a complete one.

    ``error`` is set (and ``results`` empty) for a query that could not be searched, when the
    search was asked to report such queries instead of raising.
    """

    query: str
    results: list[SearchResult]
    fine_pairs: int = 0
    candidates: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    missing_shards: list[str] = field(default_factory=list)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {"query": self.query, "candidates": self.candidates, "fine_pairs": self.fine_pairs,
               "timings": {k: round(v, 6) for k, v in self.timings.items()},
               "results": [r.to_dict() for r in self.results]}
        if self.missing_shards:
            out["missing_shards"] = list(self.missing_shards)
        if self.error is not None:
            out["error"] = self.error
        return out


def results_document(index: str, budget: Budget, top_k: int | None,
                     results: Sequence[QueryResults]) -> dict[str, Any]:
    """The JSON document of ``dnsvr search --json`` (the service answers the same)."""
    return {"index": index, "budget": str(budget), "top_k": top_k, "queries": [q.to_dict() for q in results]}


def fine_to_score(fine: np.ndarray | float) -> np.ndarray | float:
    """Map a fine similarity in [-1, 1] to the coarse scale: ``s/2 + 0.5`` (the reference's combination)."""
    return fine / 2.0 + 0.5


def select_pairs(coarse_scores: np.ndarray, selector_scores: np.ndarray | None, n_pairs: int) -> np.ndarray:
    """Indices of the candidates the fine stage re-scores: the top ``n_pairs`` by selector score.

    Without selector scores the coarse order stands in. Ties break by coarse score, then by
    position, so the choice is deterministic.

    Args:
        coarse_scores: ``[N]`` coarse similarities.
        selector_scores: ``[N]`` selector scores, or None.
        n_pairs: the budget in pairs.

    Returns:
        int64 indices into the candidates, best first.
    """
    n = len(coarse_scores)
    k = max(0, min(int(n_pairs), n))
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    primary = coarse_scores if selector_scores is None else selector_scores
    order = np.lexsort((np.arange(n), -np.asarray(coarse_scores, dtype=np.float64),
                        -np.asarray(primary, dtype=np.float64)))
    return order[:k].astype(np.int64)


def combine(ids: Sequence[str], coarse_scores: np.ndarray, selector_scores: np.ndarray | None,
            selected: np.ndarray, fine_scores: np.ndarray, top_k: int | None, *,
            coverage: np.ndarray | None = None,
            coarse_as_fine: Callable[[np.ndarray], np.ndarray] | None = None) -> list[SearchResult]:
    """One ranked list: re-ranked pairs take ``fine/2 + 0.5``, the rest their coarse score.

    With ``coarse_as_fine`` (a bundle's :attr:`~dnsvr.bundle.Bundle.coarse_as_fine`), the coarse
    scores are first put on the fine scale, so the two kinds of rows share one scale. ``coverage``
    (``[len(selected), 2]``) gives the re-ranked results their query and target coverages.
    Ranking is by combined score, descending; ties by video id (deterministic).
    """
    n = len(ids)
    if coarse_as_fine is not None:
        combined = np.asarray(fine_to_score(np.asarray(coarse_as_fine(np.asarray(coarse_scores)), dtype=np.float64)),
                              dtype=np.float64)
    else:
        combined = np.asarray(coarse_scores, dtype=np.float64).copy()
    cover = np.full((n, 2), np.nan)
    if coverage is not None and len(selected):
        cover[selected] = coverage
    fine_all = np.full(n, np.nan)
    if len(selected):
        fine_all[selected] = fine_scores
        combined[selected] = fine_to_score(np.asarray(fine_scores, dtype=np.float64))
    ids_arr = np.asarray(ids, dtype=object)
    neg = -combined
    pool = np.arange(n)
    if top_k is not None and top_k < n:
        # only the top_k (and everything tied with the k-th score) need sorting: a partition first
        # (a full sort of 100,000 candidates in Python costs ~0.1 s per query)
        if top_k <= 0:
            pool = pool[:0]
        else:
            kth = np.partition(neg, top_k - 1)[top_k - 1]
            pool = np.nonzero(neg <= kth)[0]
    order = sorted(pool.tolist(), key=lambda i: (neg[i], ids_arr[i]))
    if top_k is not None:
        order = order[:top_k]
    out = []
    for i in order:
        fine = None if math.isnan(fine_all[i]) else float(fine_all[i])
        covered = not math.isnan(cover[i, 0])
        out.append(SearchResult(
            video_id=str(ids_arr[i]), score=float(combined[i]), coarse_score=float(coarse_scores[i]),
            selector_score=None if selector_scores is None else float(selector_scores[i]),
            fine_score=fine, stage=STAGE_FINE if fine is not None else STAGE_COARSE,
            query_coverage=float(cover[i, 0]) if covered else None,
            target_coverage=float(cover[i, 1]) if covered else None))
    return out


def dns_rank(ids: Sequence[str], coarse_scores: np.ndarray, *, budget: Budget, database_size: int,
             fine_fn: Callable[[Sequence[str]], Any],
             selector_fn: Callable[[Sequence[str], np.ndarray], np.ndarray] | None = None,
             top_k: int | None = None,
             coarse_as_fine: Callable[[np.ndarray], np.ndarray] | None = None) -> tuple[list[SearchResult], int]:
    """Run stages 2–5 of the DnS query on the coarse candidates.

    Args:
        ids: candidate video ids (every database video for exact search, or an ANN top-N).
        coarse_scores: ``[N]`` their coarse similarities to the query.
        budget: the fine budget.
        database_size: the number of videos in the database (what a fractional budget is of).
        fine_fn: ``ids → [n] fine similarities in [-1, 1]`` for the selected candidates, or
            ``ids → (similarities, coverages [n, 2])``.
        selector_fn: ``(ids, coarse_scores) → [N] selector scores``, or None (coarse order).
        top_k: how many results to return (None = all candidates).
        coarse_as_fine: puts coarse similarities on the fine scale (see :func:`combine`).

    Returns:
        ``(results, number of fine pairs computed)``.
    """
    coarse_scores = np.asarray(coarse_scores, dtype=np.float32)
    if len(ids) != len(coarse_scores):
        raise ValueError(f"{len(ids)} candidate ids but {len(coarse_scores)} coarse scores")
    selector_scores = None if selector_fn is None else np.asarray(selector_fn(ids, coarse_scores),
                                                                  dtype=np.float32)
    selected = select_pairs(coarse_scores, selector_scores, budget.pairs_for(database_size))
    coverage = None
    if len(selected):
        answer = fine_fn([ids[i] for i in selected])
        if isinstance(answer, tuple):
            answer, coverage = answer
        fine = np.asarray(answer, dtype=np.float32)
    else:
        fine = np.zeros(0, dtype=np.float32)
    if fine.shape != (len(selected),):
        raise ValueError(f"fine stage returned shape {fine.shape} for {len(selected)} pairs")
    return combine(ids, coarse_scores, selector_scores, selected, fine, top_k, coverage=coverage,
                   coarse_as_fine=coarse_as_fine), len(selected)


# -- segments -------------------------------------------------------------------------------


def _frame_times(timestamps: Sequence[float] | np.ndarray | None, n: int) -> tuple[np.ndarray, float]:
    """Frame start times and a frame duration (1 s when unknown: features sampled at 1 fps)."""
    if timestamps is None or len(timestamps) != n:
        return np.arange(n, dtype=np.float64), 1.0
    t = np.asarray(timestamps, dtype=np.float64)
    step = float(np.median(np.diff(t))) if n > 1 else 1.0
    return t, step if step > 0 else 1.0


def align_segments(matrix: np.ndarray, query_times: Sequence[float] | np.ndarray | None = None,
                   target_times: Sequence[float] | np.ndarray | None = None, *,
                   min_z: float = 5.0, max_gap: int = 2, max_step: int = 4, min_frames: int = 2,
                   max_segments: int = 3, exact: float = 0.99) -> list[Segment]:
    """Aligned matching segments from a frame-to-frame similarity matrix.

    Each query frame is matched to its most similar target frame. A match counts when it
    stands out from the matrix's background: at least ``min_z`` robust standard deviations
    (1.4826 × the median absolute deviation) above the median entry — scale-free, so the
    same rule serves the training-free Chamfer matrices and the students'. Matched frames
    are chained into segments while the target position moves forward monotonically (at
    most ``max_step`` target frames per query frame — speed-ups up to that factor stay one
    segment; still frames may repeat a target frame) across gaps of at most ``max_gap``
    unmatched query frames. A frame whose best match reaches ``exact`` (identical frames) always
    counts, so an exact copy shows its segment even when nothing in its matrix stands out (a
    still video against itself).

    Args:
        matrix: ``[T1, T2]`` frame-to-frame similarities (query rows, target columns).
        query_times: the query's frame start times in seconds (default: 1 fps).
        target_times: the target's frame start times in seconds (default: 1 fps).
        min_z: how far above the background a match must stand (robust standard deviations).
        max_gap: unmatched query frames a segment may bridge.
        max_step: target frames a segment may advance per query frame.
        min_frames: matched frames a segment needs.
        max_segments: segments returned at most.
        exact: a best match at least this high always counts (identical frames).

    Returns:
        Segments, best (longest × best-scoring) first, times in seconds; ``[]`` when nothing
        stands out.
    """
    s = np.asarray(matrix, dtype=np.float64)
    if s.ndim != 2 or s.shape[0] == 0 or s.shape[1] == 0:
        return []
    t1, t2 = s.shape
    qt, qstep = _frame_times(query_times, t1)
    tt, tstep = _frame_times(target_times, t2)
    best_v = s.max(1)
    # among equally good target frames (still video), take the one nearest the diagonal
    ties = s >= best_v[:, None] - 1e-6
    along = np.abs(np.arange(t2)[None, :] - np.arange(t1)[:, None] * (t2 / t1))
    best_j = np.where(ties, along, np.inf).argmin(1)
    background = float(np.median(s))
    sigma = 1.4826 * float(np.median(np.abs(s - background)))
    if sigma < 1e-9:
        sigma = float(s.std())
    thr = background + min_z * sigma if sigma >= 1e-9 else math.inf
    matched = np.nonzero((best_v >= thr) | (best_v >= exact))[0]
    chains: list[list[int]] = []
    for i in matched:
        if chains:
            last = chains[-1][-1]
            di, dj = i - last, best_j[i] - best_j[last]
            if di <= max_gap + 1 and 0 <= dj <= max_step * di:
                chains[-1].append(int(i))
                continue
        chains.append([int(i)])
    segments = []
    for chain in chains:
        if len(chain) < min(min_frames, t1):
            continue
        js = best_j[chain]
        segments.append((len(chain) * float(best_v[chain].mean()), Segment(
            query_start=float(qt[chain[0]]), query_end=float(qt[chain[-1]] + qstep),
            target_start=float(tt[js.min()]), target_end=float(tt[js.max()] + tstep),
            score=float(best_v[chain].mean()))))
    segments.sort(key=lambda x: -x[0])
    return [seg for _, seg in segments[:max_segments]]

"""The DnS query over one or many shards: one implementation for a single index and a sharded one.

A *shard* is anything that answers three calls about the videos it holds (:class:`Shard`):
its coarse candidates for a query (ids, coarse scores, selector self-similarities), the fine
similarities of the query to some of its videos, and the aligned segments of some of them.
A :class:`ShardGroup` makes those calls on several shards at once (in process, one after the
other: :class:`LocalGroup`; on Ray actors, concurrently: :mod:`dnsvr.cluster.search`).

:func:`search_shards` runs the query on a group:

1. coarse top-N (or everything) from every shard, merged into one candidate list in a
   canonical order (score descending, then id) — so the list does not depend on how the
   videos are spread over shards;
2. the selector scores and the budget on the merged list (:func:`dnsvr.search.dns_rank`),
   with the fraction taken of the whole collection;
3. the selected pairs' fine similarities, computed by the shards that hold them;
4. one merged ranking, and segments for the re-ranked results in the top-k.

A single index is the group of one local shard, so a sharded index returns what one index
holding all its videos returns (ids and order; scores to float rounding of the fine stage).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from dnsvr.bundle import DEFAULT_MATCH, FineMatches
from dnsvr.search import Budget, QueryResults, Segment, align_segments, dns_rank

logger = logging.getLogger(__name__)


class ShardUnavailableError(RuntimeError):
    """A shard could not answer (its actor is gone and could not be restarted, its files are unreadable)."""

    def __init__(self, shard: str, reason: str) -> None:
        self.shard = shard
        self.reason = reason
        super().__init__(f"shard {shard!r} is unavailable: {reason}")


@dataclass(frozen=True)
class Candidates:
    """One shard's coarse candidates for a query, best first.

    Attributes:
        ids: candidate video ids.
        scores: float32 ``[n]`` coarse similarities.
        selector: float64 ``[n]`` the candidates' selector self-similarities (None when not asked for).
        size: the number of videos the shard holds (what a fractional budget is of).
    """

    ids: list[str]
    scores: np.ndarray
    selector: np.ndarray | None
    size: int

    def __post_init__(self) -> None:
        if len(self.ids) != len(self.scores) or (self.selector is not None and len(self.selector) != len(self.ids)):
            raise ValueError(f"candidates: {len(self.ids)} ids, {len(self.scores)} scores, "
                             f"{None if self.selector is None else len(self.selector)} selector values")


@dataclass(frozen=True)
class QueryRep:
    """A query ready for the stages (arrays only, so that it travels to remote shards as it is).

    Attributes:
        name: the query's name in the results.
        coarse: float32 ``[Dc]``; fine: its fine representation; selector: its self-similarity or None.
        timestamps: its frame times in seconds, or None.
        index_id: its id when the query is a video of the index (left out of its own results).
        inset: its whitened inset vectors ``[T, D]`` (:meth:`dnsvr.bundle.Bundle.inset_vectors`), or
            None (a query given as stored features or as an indexed video has none).
    """

    name: str
    coarse: np.ndarray
    fine: np.ndarray
    selector: float | None
    timestamps: np.ndarray | None = None
    index_id: str | None = None
    inset: np.ndarray | None = None


class Shard(Protocol):
    """What a query asks of the videos one shard holds (see :class:`LocalShard`)."""

    name: str

    def candidates(self, coarse: np.ndarray, k: int | None, with_selector: bool) -> Candidates: ...

    def fine_scores(self, fine: np.ndarray, ids: Sequence[str], precision: str,
                    inset: np.ndarray | None = None, match: str = DEFAULT_MATCH) -> FineMatches: ...

    def segments(self, fine: np.ndarray, timestamps: np.ndarray | None, ids: Sequence[str],
                 precision: str) -> list[list[Segment]]: ...


class ShardGroup(Protocol):
    """Several shards asked the same question: ``call`` returns one result (or the exception) per shard."""

    names: list[str]

    def call(self, method: str, args: dict[int, tuple[Any, ...]]) -> dict[int, Any]: ...


class LocalShard:
    """A shard in this process: an :class:`~dnsvr.index.store.IndexStore` (or None: empty) and its bundle."""

    def __init__(self, name: str, store: Any, bundle: Any) -> None:
        self.name = name
        self.store = store
        self.bundle = bundle

    def candidates(self, coarse: np.ndarray, k: int | None, with_selector: bool) -> Candidates:
        """Coarse top-``k`` (every video when None), with their selector self-similarities if asked."""
        store = self.store
        if store is None or len(store) == 0:
            return Candidates([], np.zeros(0, np.float32), np.zeros(0) if with_selector else None, 0)
        size = len(store)
        generation = store.generation
        hits = store.coarse_search(np.asarray(coarse, dtype=np.float32)[None, :], k=k)
        valid = hits.positions[0] >= 0
        ids = hits.ids[0][valid].tolist()
        positions = hits.positions[0][valid]
        selector = None
        if with_selector:
            # the candidates' positions in store.ids() index the column of all self-similarities, unless a
            # writer changed the index since the coarse search: then look the ids up
            values = store.selector_values()
            selector = values[positions] if store.generation == generation and len(values) == size \
                else store.selector_values(ids)
        return Candidates(ids, hits.scores[0][valid], selector, size)

    def fine_scores(self, fine: np.ndarray, ids: Sequence[str], precision: str,
                    inset: np.ndarray | None = None, match: str = DEFAULT_MATCH) -> FineMatches:
        """The query's scores (about [-1, 1]) and coverages against these videos (:meth:`Bundle.fine_match`)."""
        if not len(ids):
            return FineMatches(np.zeros(0, dtype=np.float32), np.zeros((0, 2), dtype=np.float32))
        fines = self.store.fine(list(ids), prefetch=True)
        return self.bundle.fine_match(fine, fines, inset=inset, match=match, precision=precision)

    def segments(self, fine: np.ndarray, timestamps: np.ndarray | None, ids: Sequence[str],
                 precision: str) -> list[list[Segment]]:
        """Aligned matching segments of the query with each of these videos."""
        if not len(ids):
            return []
        fines = self.store.fine(list(ids))
        _, mats = self.bundle.fine_similarities(fine, fines, return_matrices=True, precision=precision)
        return [align_segments(m, timestamps, self.store.timestamps(v)) for v, m in zip(ids, mats or [])]


class LocalGroup:
    """Shards in this process, asked one after the other."""

    def __init__(self, shards: Sequence[Shard]) -> None:
        self.shards = list(shards)
        self.names = [s.name for s in self.shards]

    def call(self, method: str, args: dict[int, tuple[Any, ...]]) -> dict[int, Any]:
        out: dict[int, Any] = {}
        for i, a in args.items():
            try:
                out[i] = getattr(self.shards[i], method)(*a)
            except (OSError, ShardUnavailableError) as exc:  # unreadable files: the shard is unavailable
                out[i] = exc if isinstance(exc, ShardUnavailableError) else \
                    ShardUnavailableError(self.shards[i].name, str(exc))
        return out


def canonical_order(ids: Sequence[str], scores: np.ndarray) -> np.ndarray:
    """The order of candidates by score descending, ties by id: the same however they were gathered."""
    scores = np.asarray(scores, dtype=np.float32)
    order = np.argsort(-scores, kind="stable")
    s = scores[order]
    tied = np.flatnonzero(s[1:] == s[:-1])
    if len(tied):
        starts = tied[np.r_[True, np.diff(tied) > 1]]
        for start in starts.tolist():
            end = start + 1
            while end < len(s) and s[end] == s[start]:
                end += 1
            run = order[start:end]
            order[start:end] = run[np.argsort(np.asarray([ids[i] for i in run], dtype=object), kind="stable")]
    return order


def _unavailable(results: dict[int, Any], group: ShardGroup, allow_partial: bool, missing: list[str]) -> set[int]:
    """Shards whose call failed: raise, or (``allow_partial``) note them as missing."""
    failed = {i for i, r in results.items() if isinstance(r, BaseException)}
    for i in sorted(failed):
        exc = results[i]
        if not isinstance(exc, ShardUnavailableError):
            raise exc
        if not allow_partial:
            raise ShardUnavailableError(exc.shard, f"{exc.reason} (search with allow_partial to get the results "
                                                   "of the other shards, marked as missing this one)")
        logger.warning("%s; the results miss it", exc)
        missing.append(group.names[i])
    return failed


class _ShardFailed(Exception):
    def __init__(self, failed: set[int]) -> None:
        self.failed = failed


def search_shards(q: QueryRep, group: ShardGroup, bundle: Any, *, top_k: int | None, budget: Budget,
                  segments: bool = True, ann_candidates: int | None = None, include_self: bool = False,
                  precision: str = "exact", allow_partial: bool = False,
                  match: str = DEFAULT_MATCH) -> QueryResults:
    """Run the DnS query for one represented query over a group of shards (see the module docstring).

    Args:
        q: the query's representation.
        group: the shards (one local shard for an ordinary index).
        bundle: the model bundle all shards were built with (its selector runs here).
        top_k, budget, segments, ann_candidates, include_self, precision: as
            :meth:`dnsvr.index.VideoIndex.search`.
        allow_partial: a shard that cannot answer is left out and named in ``missing_shards``
            instead of failing the query.
        match: ``"related"`` or ``"copy"`` (:data:`dnsvr.bundle.MATCH_MODES`).

    Returns:
        The :class:`~dnsvr.search.QueryResults`.

    Raises:
        ShardUnavailableError: a shard cannot answer and ``allow_partial`` is False.
    """
    timings: dict[str, float] = {}
    missing: list[str] = []
    t0 = time.perf_counter()
    with_selector = bool(bundle.has_selector)
    active = set(range(len(group.names)))
    answers = group.call("candidates", {i: (q.coarse, ann_candidates, with_selector) for i in active})
    active -= _unavailable(answers, group, allow_partial, missing)
    cands: dict[int, Candidates] = {i: answers[i] for i in active}
    timings["coarse"] = time.perf_counter() - t0

    while True:
        try:
            results, pairs, n_candidates, owner = _rank(q, cands, bundle, group, top_k, budget, ann_candidates,
                                                        include_self, precision, timings, allow_partial, missing,
                                                        match)
            break
        except _ShardFailed as exc:
            # a shard failed in the fine stage (allow_partial): leave it out and rank again without it
            for i in exc.failed:
                cands.pop(i, None)
    if segments:
        t = time.perf_counter()
        by_shard: dict[int, list[int]] = {}
        for r_i, r in enumerate(results):
            if r.fine_score is not None:
                by_shard.setdefault(owner[r.video_id], []).append(r_i)
        if by_shard:
            answers = group.call("segments", {s: (q.fine, q.timestamps, [results[r].video_id for r in rs], precision)
                                              for s, rs in by_shard.items()})
            failed = _unavailable(answers, group, allow_partial, missing)
            for s, rs in by_shard.items():
                if s not in failed:
                    for r_i, segs in zip(rs, answers[s]):
                        results[r_i].segments = segs
        timings["segments"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    return QueryResults(q.name, results, fine_pairs=pairs, candidates=n_candidates, timings=timings,
                        missing_shards=sorted(set(missing)))


def _rank(q: QueryRep, cands: dict[int, Candidates], bundle: Any, group: ShardGroup, top_k: int | None,
          budget: Budget, ann_candidates: int | None, include_self: bool, precision: str,
          timings: dict[str, float], allow_partial: bool,
          missing: list[str], match: str) -> tuple[list[Any], int, int, dict[str, int]]:
    """Merge the shards' candidates and run stages 2–5 (``_ShardFailed`` when a shard fails the fine stage)."""
    parts = [(i, c) for i, c in sorted(cands.items())]
    ids: list[str] = [v for _, c in parts for v in c.ids]
    scores = np.concatenate([c.scores for _, c in parts]) if parts else np.zeros(0, np.float32)
    shard_of = np.concatenate([np.full(len(c.ids), i, dtype=np.int64) for i, c in parts]) if parts \
        else np.zeros(0, np.int64)
    selector = None
    if bundle.has_selector:
        selector = np.concatenate([c.selector for _, c in parts]) if parts else np.zeros(0)
    database_size = sum(c.size for _, c in parts)
    order = canonical_order(ids, scores)
    if ann_candidates is not None:
        order = order[:ann_candidates]  # the global top-N out of every shard's top-N
    ids = [ids[i] for i in order.tolist()]
    scores, shard_of = scores[order], shard_of[order]
    if selector is not None:
        selector = selector[order]
    if q.index_id is not None and not include_self:
        keep = np.asarray([v != q.index_id for v in ids], dtype=bool)
        if not keep.all():
            ids = [v for v, k in zip(ids, keep) if k]
            scores, shard_of = scores[keep], shard_of[keep]
            selector = None if selector is None else selector[keep]
        database_size -= 1
    owner = dict(zip(ids, shard_of.tolist()))

    selector_fn: Callable[[Sequence[str], np.ndarray], np.ndarray] | None = None
    if selector is not None:
        def selector_fn(cand_ids: Sequence[str], cand_coarse: np.ndarray) -> np.ndarray:
            t = time.perf_counter()
            out = bundle.selector_scores(q.selector, selector, cand_coarse)
            timings["selector"] = time.perf_counter() - t
            return out  # type: ignore[no-any-return]

    def fine_fn(cand_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        t = time.perf_counter()
        where = np.asarray([owner[v] for v in cand_ids], dtype=np.int64)
        asks = {int(s): (q.fine, [cand_ids[j] for j in np.flatnonzero(where == s)], precision, q.inset, match)
                for s in np.unique(where).tolist()}
        answers = group.call("fine_scores", asks)
        failed = _unavailable(answers, group, allow_partial, missing)
        if failed:
            raise _ShardFailed(failed)
        out = np.empty(len(cand_ids), dtype=np.float32)
        cover = np.empty((len(cand_ids), 2), dtype=np.float32)
        for s in asks:
            out[where == s] = answers[s].scores
            cover[where == s] = answers[s].coverage
        timings["fine"] = time.perf_counter() - t
        return out, cover

    results, pairs = dns_rank(ids, scores, budget=budget, database_size=database_size, fine_fn=fine_fn,
                              selector_fn=selector_fn, top_k=top_k, coarse_as_fine=bundle.coarse_as_fine)
    return results, pairs, len(ids), owner

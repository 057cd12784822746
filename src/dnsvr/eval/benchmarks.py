"""The public benchmarks' evaluation protocols, identical to the reference code's.

Each protocol reproduces the DnS/ViSiL reference evaluation (mever-team/
distill-and-select ``datasets``) to the last digit, including its quirks:

* **FIVR-5K / FIVR-200K** — per query, rank its results by descending score
  (ties in file order), skip the query itself and every video that is not in
  the benchmark's database *and* available; AP over the positives that are
  available. DSVR = ND+DS, CSVR = ND+DS+CS, ISVR = ND+DS+CS+IS, DAVR = DA.
  Mean over the benchmark's queries found in the similarities.
* **CC_WEB_VIDEO** — per query set, rank the results, skip ids outside the
  dataset index; ``mAP`` counts only labelled videos in the ranking, ``mAP_star``
  all videos; ``_c`` variants drop the set's excluded videos (the "clean" set).
  Positives are labels in ``"ESLMV"``; the denominator counts every labelled
  positive, available or not. The query itself is *not* skipped.
* **EVVE** — per query, AP by the trapezoid rule over the ranks of the event's
  available positives; videos outside the available set are removed from the
  ranks. The query itself is not skipped. ``mAP`` is the mean over all
  evaluated queries (the reference's "overall mAP"); ``avg_mAP`` the mean of
  per-event means (sum of the event's APs / its queries that are available).
* **SVD** — per query, scikit-learn's average precision over its available
  labelled targets plus the available unlabelled distractors (ids in the
  similarities that are neither an SVD query nor a labelled target).
* **custom** — FIVR's AP on a user's ``{query: {video: label}}`` ground truth.

"Available" videos are, as in the reference evaluation scripts, every id that
appears in the similarities (as a query or a result) unless given explicitly.

Where the reference would divide by zero (a query with no available positive)
the query is left out of that metric and a warning is logged.
"""

from __future__ import annotations

import functools
import importlib.resources
import logging
from abc import ABC, abstractmethod
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dnsvr.eval.metrics import (
    average_precision_from_ranks,
    positive_ranks,
    step_average_precision,
    trapezoid_average_precision,
)
from dnsvr.eval.similarities import (
    SimilarityFileError,
    SimilarityTable,
    Similarities,
    as_table,
    load_json,
    parse_json_bytes,
)

logger = logging.getLogger(__name__)

#: Benchmarks shipped with the package, by their reference names.
BENCHMARKS: tuple[str, ...] = ("FIVR-5K", "FIVR-200K", "CC_WEB_VIDEO", "SVD", "EVVE")


@dataclass
class EvaluationResult:
    """Metrics plus the details behind them.

    Attributes:
        benchmark: benchmark name.
        metrics: metric name → value (the reference's names).
        per_query: metric name → {query id: AP} for the metrics that are means over queries.
        n_queries: benchmark queries found in the similarities.
        n_database: available database videos the protocol ranked over.
        missing_queries: benchmark queries absent from the similarities (ignored).
        skipped: metric name → queries left out because they had no available positive.
    """

    benchmark: str
    metrics: dict[str, float]
    per_query: dict[str, dict[str, float]] = field(default_factory=dict)
    n_queries: int = 0
    n_database: int = 0
    missing_queries: list[str] = field(default_factory=list)
    skipped: dict[str, list[str]] = field(default_factory=dict)


@functools.lru_cache(maxsize=None)
def load_annotation(filename: str) -> Any:
    """Load one of the annotation files shipped in ``dnsvr/data/benchmarks`` (cached).

    Raises:
        FileNotFoundError: if the package data is missing (a broken install).
    """
    resource = importlib.resources.files("dnsvr") / "data" / "benchmarks" / filename
    if not resource.is_file():
        raise FileNotFoundError(f"benchmark annotation {filename!r} missing from the dnsvr package data")
    import gzip

    data = resource.read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return parse_json_bytes(data, source=filename)


def _mean(values: Iterable[float]) -> float:
    vals = list(values)
    return float(np.mean(vals)) if vals else float("nan")


class Benchmark(ABC):
    """A benchmark protocol: ground truth plus the way the reference scores a ranking.

    Subclasses implement :meth:`evaluate_detailed`.
    """

    #: Reference name.
    name: str = ""
    #: Metric names, in display order.
    metric_names: tuple[str, ...] = ()

    #: Query and database ids, set by each subclass's constructor.
    queries: list[str]
    database: list[str]

    def get_queries(self) -> list[str]:
        """The benchmark's query ids."""
        return list(self.queries)

    def get_database(self) -> list[str]:
        """The benchmark's database video ids."""
        return list(self.database)

    @abstractmethod
    def evaluate_detailed(self, similarities: Similarities | SimilarityTable | str | Path,
                          available: Collection[str] | None = None) -> EvaluationResult:
        """Evaluate similarities; see :meth:`evaluate`."""

    def evaluate(self, similarities: Similarities | SimilarityTable | str | Path,
                 available: Collection[str] | None = None) -> dict[str, float]:
        """Evaluate ``{query_id: {video_id: score}}`` with this benchmark's protocol.

        Args:
            similarities: nested mapping, :class:`SimilarityTable`, or a path to a similarity file.
            available: the videos that have features ("all_db"); default every id in ``similarities``.

        Returns:
            Metric name → value.
        """
        return self.evaluate_detailed(similarities, available).metrics

    # -- shared helpers --------------------------------------------------------
    @staticmethod
    def _available(table: SimilarityTable, available: Collection[str] | None) -> set[str]:
        return set(table.ids) if available is None else set(available)

    def _missing(self, table: SimilarityTable) -> list[str]:
        missing = [q for q in self.get_queries() if q not in table]
        if missing:
            logger.warning("%s: %d queries are missing from the results and will be ignored",
                           self.name, len(missing))
        return missing


def _marked_ranks(table: SimilarityTable, query: str, keep_mask: np.ndarray, marks: np.ndarray,
                  skip_query: bool) -> tuple[np.ndarray, np.ndarray]:
    """Ranks of the marked results of one query among its kept results.

    Args:
        keep_mask: bool over the vocabulary: results ranked at all (others are skipped).
        marks: int8 over the vocabulary, non-zero for the positives (the value says which sets).
        skip_query: drop the query itself from the ranking.

    Returns:
        (ranks, marks) of the kept positives, ranks 0-based in the stable descending order.
    """
    row = table[query]
    keep = keep_mask[row.positions]
    if skip_query:
        keep &= row.positions != row.query_pos
    kept_marks = marks[row.positions[keep]]
    is_pos = kept_marks != 0
    return positive_ranks(row.scores[keep], is_pos), kept_marks[is_pos]


def _nested_aps(ranks: np.ndarray, marks: np.ndarray, thresholds: Mapping[str, int],
                n_positives: Mapping[str, int]) -> dict[str, float]:
    """AP for several nested positive sets at once: metric m's positives are ``1 <= mark <= thresholds[m]``.
    Metrics whose ``n_positives`` is 0 are left out."""
    out = {}
    for metric, top in thresholds.items():
        n = n_positives[metric]
        if n > 0:
            out[metric] = average_precision_from_ranks(ranks[(marks >= 1) & (marks <= top)], n)
    return out


class FIVR(Benchmark):
    """FIVR-5K or FIVR-200K (fine-grained incident video retrieval).

    Args:
        version: ``"5k"`` or ``"200k"``.
        annotation: optional ``{query: {ND/DS/CS/IS/DA: [video ids]}}`` (a mapping or the path
            of FIVR's ``annotation.json``) replacing the shipped annotation; the query and
            database lists stay the shipped ones. The shipped DA lists hold label names
            instead of video ids, so DAVR needs this.

    Raises:
        ValueError: for another version.
    """

    #: label → task level: a video is positive for task t when its level is <= t.
    _LEVELS = {"ND": 1, "DS": 1, "CS": 2, "IS": 3}
    _TASKS = {"DSVR": 1, "CSVR": 2, "ISVR": 3}
    metric_names = ("DSVR", "CSVR", "ISVR", "DAVR")

    def __init__(self, version: str = "200k",
                 annotation: Mapping[str, Mapping[str, list[str]]] | str | Path | None = None) -> None:
        version = version.lower()
        if version not in ("5k", "200k"):
            raise ValueError(f"FIVR version must be '5k' or '200k', got {version!r}")
        self.version = version
        self.name = f"FIVR-{version.upper()}"
        data = load_annotation("fivr.json.gz")
        if isinstance(annotation, (str, Path)):
            annotation = load_json(annotation)
        if annotation is not None and not (isinstance(annotation, Mapping)
                                           and all(isinstance(v, Mapping) for v in annotation.values())):
            raise ValueError("FIVR annotation must be {query: {label: [video ids]}}")
        self.annotation: Mapping[str, Mapping[str, list[str]]] = (
            annotation if annotation is not None else data["annotation"])
        self.queries: list[str] = list(data[version]["queries"])
        self.database: list[str] = list(data[version]["database"])

    def evaluate_detailed(self, similarities: Similarities | SimilarityTable | str | Path,
                          available: Collection[str] | None = None) -> EvaluationResult:
        """See :meth:`Benchmark.evaluate`. Metrics: DSVR, CSVR, ISVR, and DAVR over the
        queries that have available duplicate-audio (DA) videos."""
        table = as_table(similarities)
        all_db = set(self.database).intersection(self._available(table, available))
        keep_mask = table.mask(all_db)
        level = np.zeros(len(table.ids), dtype=np.int8)
        audio = np.zeros(len(table.ids), dtype=np.int8)
        per_query: dict[str, dict[str, float]] = {m: {} for m in self.metric_names}
        skipped: dict[str, list[str]] = {m: [] for m in self.metric_names}
        query_set = set(self.queries)
        n_queries = 0
        for row in table:
            if row.query not in query_set:
                continue
            n_queries += 1
            gt = self.annotation.get(row.query, {})
            n_pos: dict[str, int] = {}
            touched = []
            # Strictest level first so a video listed under two labels gets the lower level.
            for label, lev in sorted(self._LEVELS.items(), key=lambda kv: -kv[1]):
                pos = table.positions_of(gt.get(label, []))
                level[pos] = lev
                touched.append(pos)
            for task, top in self._TASKS.items():
                labels = [lb for lb, lev in self._LEVELS.items() if lev <= top]
                n_pos[task] = len(set().union(*(gt.get(lb, []) for lb in labels)) & all_db)
            da = table.positions_of(gt.get("DA", []))
            audio[da] = 1
            n_pos["DAVR"] = len(set(gt.get("DA", [])) & all_db)
            ranks, marks = _marked_ranks(table, row.query, keep_mask, level, skip_query=True)
            aps = _nested_aps(ranks, marks, self._TASKS, n_pos)
            if n_pos["DAVR"]:
                ranks, marks = _marked_ranks(table, row.query, keep_mask, audio, skip_query=True)
                aps.update(_nested_aps(ranks, marks, {"DAVR": 1}, n_pos))
            for pos in touched:
                level[pos] = 0
            audio[da] = 0
            for metric in self.metric_names:
                if metric in aps:
                    per_query[metric][row.query] = aps[metric]
                else:
                    skipped[metric].append(row.query)
        for metric in self._TASKS:
            if skipped[metric]:
                logger.warning("%s %s: %d queries have no available positive and are left out: %s",
                               self.name, metric, len(skipped[metric]), skipped[metric][:5])
        if n_queries == 0:
            raise ValueError(f"{self.name}: none of the {len(self.queries)} queries is in the similarities")
        metrics = {m: _mean(per_query[m].values()) for m in self.metric_names if per_query[m]}
        return EvaluationResult(self.name, metrics, per_query, n_queries, len(all_db),
                                self._missing(table), {m: v for m, v in skipped.items() if v})


class CCWebVideo(Benchmark):
    """CC_WEB_VIDEO (near-duplicate video retrieval), 24 query sets.

    Args:
        positive_labels: labels counted as positives (a string, tested with
            Python's ``in`` like the reference).
    """

    name = "CC_WEB_VIDEO"
    metric_names = ("mAP", "mAP_star", "mAP_c", "mAP_c_star")

    def __init__(self, positive_labels: str = "ESLMV") -> None:
        data = load_annotation("cc_web_video.json.gz")
        self.index: dict[str, int] = data["index"]
        self.queries: list[str] = list(data["queries"])
        # Keys were ints in the reference's pickle; JSON made them strings.
        self.ground_truth: list[dict[int, str]] = [{int(k): v for k, v in gt.items()}
                                                   for gt in data["ground_truth"]]
        self.excluded: list[set[int]] = [set(map(int, ex)) for ex in data["excluded"]]
        self.positive_labels = positive_labels
        self._size = max(self.index.values()) + 1
        self.database = list(self.index)

    def evaluate_detailed(self, similarities: Similarities | SimilarityTable | str | Path,
                          available: Collection[str] | None = None) -> EvaluationResult:
        """See :meth:`Benchmark.evaluate`. As in the reference, ``available`` is not used:
        the ranking keeps every result id found in the dataset index."""
        table = as_table(similarities)
        number = np.fromiter((self.index.get(v, 0) for v in table.ids), dtype=np.int64, count=len(table.ids))
        variants = {"mAP": (False, False), "mAP_star": (True, False),
                    "mAP_c": (False, True), "mAP_c_star": (True, True)}
        per_query: dict[str, dict[str, float]] = {m: {} for m in variants}
        for qset, labels in enumerate(self.ground_truth):
            query = self.queries[qset]
            if query not in table:
                continue
            row = table[query]
            nums = number[row.positions]
            in_index = nums > 0  # ids outside the dataset index are skipped
            labelled = np.zeros(self._size, dtype=bool)
            positive = np.zeros(self._size, dtype=bool)
            excluded = np.zeros(self._size, dtype=bool)
            for video, label in labels.items():
                labelled[video] = True
                positive[video] = label in self.positive_labels
            excluded[list(self.excluded[qset])] = True
            for metric, (all_videos, clean) in variants.items():
                keep = in_index if all_videos else in_index & labelled[nums]
                if clean:
                    keep = keep & ~excluded[nums]
                ranks = positive_ranks(row.scores[keep], positive[nums[keep]])
                # n_pos counts every labelled positive, available or not, like the reference.
                n_pos = sum(1 for video, label in labels.items()
                            if label in self.positive_labels and (not clean or video not in self.excluded[qset]))
                per_query[metric][query] = average_precision_from_ranks(ranks, n_pos) if n_pos else float("nan")
        n = len(set(self.queries).intersection(table.queries))
        if n == 0:
            raise ValueError(f"{self.name}: none of the {len(self.queries)} queries is in the similarities")
        metrics = {m: float(np.sum(list(per_query[m].values())) / n) for m in variants}
        n_db = int(np.count_nonzero(number))
        return EvaluationResult(self.name, metrics, per_query, n, n_db, self._missing(table))


class EVVE(Benchmark):
    """EVVE (event video retrieval): 13 events, 620 queries, 2,373 database videos."""

    name = "EVVE"
    metric_names = ("mAP", "avg_mAP")

    def __init__(self) -> None:
        data = load_annotation("evve.json.gz")
        self.events: dict[str, dict[str, list[str]]] = data["annotation"]
        self.queries: list[str] = list(data["queries"])
        self.database: list[str] = list(data["database"])
        self.query_to_event = {q: ev for ev, ann in self.events.items() for q in ann["queries"]}

    def evaluate_detailed(self, similarities: Similarities | SimilarityTable | str | Path,
                          available: Collection[str] | None = None) -> EvaluationResult:
        """See :meth:`Benchmark.evaluate`. ``mAP`` is the mean AP over the evaluated
        queries; ``avg_mAP`` the mean over events of (sum of the event's APs / number of
        the event's queries that are available)."""
        table = as_table(similarities)
        all_db = self._available(table, available)
        if not all_db:
            raise ValueError("EVVE: the set of available videos is empty")
        available_mask = table.mask(all_db)
        results: dict[str, dict[str, float]] = {ev: {} for ev in self.events}
        positive = np.zeros(len(table.ids), dtype=bool)
        for query in self.queries:
            if query not in table:
                continue
            event = self.query_to_event[query]
            pos = set(self.events[event]["positives"]) & all_db
            row = table[query]
            keep = available_mask[row.positions]
            pos_idx = table.positions_of(pos)
            positive[pos_idx] = True
            # Unavailable videos are taken out of the ranks; the query itself is not.
            ranks = np.sort(positive_ranks(row.scores[keep], positive[row.positions[keep]]))
            positive[pos_idx] = False
            results[event][query] = trapezoid_average_precision(ranks, len(pos))
        per_query = {"mAP": {q: ap for ev in sorted(self.events) for q, ap in results[ev].items()}}
        if not per_query["mAP"]:
            raise ValueError(f"{self.name}: none of the {len(self.queries)} queries is in the similarities")
        event_maps = []
        for ev in sorted(self.events):
            nq = len(set(self.events[ev]["queries"]) & all_db)
            if nq == 0:
                logger.warning("EVVE event %r has no available query; left out of avg_mAP", ev)
                continue
            event_maps.append(float(np.sum(list(results[ev].values()))) / nq)
        metrics = {"mAP": _mean(per_query["mAP"].values()), "avg_mAP": _mean(event_maps)}
        n_db = len(all_db - set(self.queries))
        return EvaluationResult(self.name, metrics, per_query, len(per_query["mAP"]), n_db, self._missing(table))


class SVD(Benchmark):
    """SVD (short video dataset): 206 queries with labelled targets, plus unlabelled distractors.

    Args:
        include_unlabeled: count available ids that are neither an SVD query nor
            a labelled target as negatives of every query (the reference's
            default "unlabeled" version); False = only labelled targets.
    """

    name = "SVD"
    metric_names = ("mAP",)

    def __init__(self, include_unlabeled: bool = True) -> None:
        data = load_annotation("svd.json.gz")
        self.ground_truth: dict[str, dict[str, int]] = data["ground_truth"]
        self.include_unlabeled = include_unlabeled
        self.labelled = {t for targets in self.ground_truth.values() for t in targets}
        self.queries = list(self.ground_truth)
        self.database = list(dict.fromkeys(t for targets in self.ground_truth.values() for t in targets))

    def evaluate_detailed(self, similarities: Similarities | SimilarityTable | str | Path,
                          available: Collection[str] | None = None) -> EvaluationResult:
        """See :meth:`Benchmark.evaluate`. A pair that is available but absent from the
        query's results is ranked last (score -inf)."""
        table = as_table(similarities)
        all_db = self._available(table, available)
        ids = table.ids
        unlabeled_pos = np.zeros(0, dtype=np.int64)
        if self.include_unlabeled:
            unlabeled_pos = np.fromiter(
                (i for i, v in enumerate(ids) if v in all_db and v not in self.labelled and v not in self.ground_truth),
                dtype=np.int64)
        slot = np.full(len(ids), -1, dtype=np.int64)
        aps: dict[str, float] = {}
        n_missing_pairs = 0
        for query, targets in self.ground_truth.items():
            if query not in table:
                continue
            row = table[query]
            slot[row.positions] = np.arange(row.positions.size)
            scores_ext = np.r_[row.scores, -np.inf]  # slot -1 → -inf
            labelled = [(t, lab) for t, lab in targets.items() if t in all_db]
            tpos = np.array([table.index.get(t, -1) for t, _ in labelled], dtype=np.int64)
            tslot = np.where(tpos >= 0, slot[np.maximum(tpos, 0)], -1)
            y_true = np.r_[np.array([lab for _, lab in labelled], dtype=np.int64),
                           np.zeros(unlabeled_pos.size, dtype=np.int64)]
            all_slots = np.r_[tslot, slot[unlabeled_pos]]
            n_missing_pairs += int(np.count_nonzero(all_slots < 0))
            aps[query] = step_average_precision(y_true, scores_ext[all_slots])
            slot[row.positions] = -1
        if n_missing_pairs:
            logger.warning("SVD: %d available (query, video) pairs have no score; ranked last", n_missing_pairs)
        if not aps:
            raise ValueError(f"{self.name}: none of the {len(self.ground_truth)} queries is in the similarities")
        n_db = len(all_db - set(self.ground_truth))
        return EvaluationResult(self.name, {"mAP": _mean(aps.values())}, {"mAP": aps}, len(aps), n_db,
                                self._missing(table))


def _label_key(label: Any) -> str:
    if isinstance(label, bool):
        return "1" if label else "0"
    if isinstance(label, float) and label.is_integer():
        return str(int(label))
    return str(label)


class CustomBenchmark(Benchmark):
    """A user's benchmark: ``{query_id: {video_id: label}}`` and the labels that count as positive.

    Ranking as FIVR: each query's results by descending score, skipping the
    query itself and unavailable videos; AP over the available positives;
    videos without a label are negatives. Queries with no available positive
    are left out (with a warning).

    Args:
        ground_truth: ``{query_id: {video_id: label}}`` (labels: strings, ints or booleans).
        positive_labels: labels that count as positive (compared as strings;
            ``True`` counts as ``"1"``). Default ``("1",)``.
        name: shown in reports.

    Raises:
        ValueError: if the ground truth is not a mapping of mappings.
    """

    metric_names = ("mAP",)

    def __init__(self, ground_truth: Mapping[str, Mapping[str, Any]],
                 positive_labels: Iterable[Any] | None = None, name: str = "custom") -> None:
        if not isinstance(ground_truth, Mapping) or not all(isinstance(v, Mapping) for v in ground_truth.values()):
            raise ValueError("custom ground truth must be {query_id: {video_id: label}}")
        self.name = name
        self.positive_labels = frozenset(_label_key(p) for p in (positive_labels or ("1",)))
        self.ground_truth = {str(q): {str(v): lab for v, lab in targets.items()}
                             for q, targets in ground_truth.items()}
        self.positives = {q: {v for v, lab in targets.items() if _label_key(lab) in self.positive_labels}
                          for q, targets in self.ground_truth.items()}
        self.queries = list(self.ground_truth)
        self.database = list(dict.fromkeys(v for t in self.ground_truth.values() for v in t))
        if not any(self.positives.values()):
            labels = sorted({_label_key(lab) for t in self.ground_truth.values() for lab in t.values()})
            logger.warning("custom ground truth: no label in %s matches the positive labels %s",
                           labels[:20], sorted(self.positive_labels))

    @classmethod
    def from_file(cls, path: str | Path, positive_labels: Iterable[Any] | None = None) -> CustomBenchmark:
        """Load the ground truth from a ``.json``/``.json.gz`` file.

        Raises:
            FileNotFoundError: if the file is missing.
            ValueError: if it is not ``{query_id: {video_id: label}}``.
        """
        try:
            data = load_json(path)
        except SimilarityFileError as exc:
            raise ValueError(str(exc)) from exc
        return cls(data, positive_labels, name=f"custom ({Path(path).name})")

    def evaluate_detailed(self, similarities: Similarities | SimilarityTable | str | Path,
                          available: Collection[str] | None = None) -> EvaluationResult:
        """See :meth:`Benchmark.evaluate`. Metric: ``mAP``."""
        table = as_table(similarities)
        all_db = self._available(table, available)
        keep_mask = table.mask(all_db)
        level = np.zeros(len(table.ids), dtype=np.int8)
        aps: dict[str, float] = {}
        skipped = []
        for query, pos in self.positives.items():
            if query not in table:
                continue
            pos_idx = table.positions_of(pos)
            level[pos_idx] = 1
            n = len((pos & all_db) - {query})
            ranks, marks = _marked_ranks(table, query, keep_mask, level, skip_query=True)
            ap = _nested_aps(ranks, marks, {"mAP": 1}, {"mAP": n})
            level[pos_idx] = 0
            if "mAP" in ap:
                aps[query] = ap["mAP"]
            else:
                skipped.append(query)
        if skipped:
            logger.warning("%s: %d queries have no available positive and are left out: %s",
                           self.name, len(skipped), skipped[:5])
        if not aps:
            raise ValueError(f"{self.name}: no query of the ground truth with an available positive "
                             f"is in the similarities")
        n_db = len(all_db)
        return EvaluationResult(self.name, {"mAP": _mean(aps.values())}, {"mAP": aps}, len(aps), n_db,
                                self._missing(table), {"mAP": skipped} if skipped else {})


def get_benchmark(name: str, **kwargs: Any) -> Benchmark:
    """A benchmark by name (case-insensitive): FIVR-5K, FIVR-200K, CC_WEB_VIDEO, SVD, EVVE, or custom.

    Args:
        name: benchmark name.
        **kwargs: for ``custom``: ``ground_truth`` (mapping or path) and ``positive_labels``;
            for FIVR: ``annotation``; for ``SVD``: ``include_unlabeled``; for ``CC_WEB_VIDEO``: ``positive_labels``.

    Returns:
        The benchmark.

    Raises:
        ValueError: for an unknown name (listing the valid ones) or a custom benchmark without ground truth.
    """
    key = name.strip().upper().replace("-", "_")
    if key in ("FIVR_5K", "FIVR5K"):
        return FIVR("5k", **kwargs)
    if key in ("FIVR_200K", "FIVR200K"):
        return FIVR("200k", **kwargs)
    if key in ("CC_WEB_VIDEO", "CC_WEB", "CCWEB"):
        return CCWebVideo(**kwargs)
    if key == "SVD":
        return SVD(**kwargs)
    if key == "EVVE":
        return EVVE()
    if key == "CUSTOM":
        gt = kwargs.get("ground_truth")
        if gt is None:
            raise ValueError("the custom benchmark needs ground_truth ({query_id: {video_id: label}} or a JSON path)")
        if isinstance(gt, (str, Path)):
            return CustomBenchmark.from_file(gt, kwargs.get("positive_labels"))
        return CustomBenchmark(gt, kwargs.get("positive_labels"))
    raise ValueError(f"unknown benchmark {name!r}; choose one of {', '.join(BENCHMARKS)}, custom")


def evaluate(benchmark: str | Benchmark, similarities: Similarities | SimilarityTable | str | Path,
             available: Collection[str] | None = None, **kwargs: Any) -> dict[str, float]:
    """Evaluate similarities on a benchmark with the reference protocol.

    Args:
        benchmark: a name (see :func:`get_benchmark`) or a :class:`Benchmark`.
        similarities: ``{query_id: {video_id: score}}``, a :class:`SimilarityTable`, or a path
            to a ``.json``/``.json.gz`` similarity file.
        available: videos with features ("all_db"); default every id in ``similarities``.
        **kwargs: passed to :func:`get_benchmark` (e.g. ``ground_truth=`` for ``custom``).

    Returns:
        Metric name → value, keyed by the reference's names (FIVR: DSVR, CSVR, ISVR, DAVR;
        CC_WEB_VIDEO: mAP, mAP_star, mAP_c, mAP_c_star; SVD, EVVE, custom: mAP).

    Example:
        >>> evaluate("FIVR-5K", "sims.json.gz")     # doctest: +SKIP
        {'DSVR': 0.89..., 'CSVR': 0.88..., 'ISVR': 0.79..., 'DAVR': ...}
    """
    bench = benchmark if isinstance(benchmark, Benchmark) else get_benchmark(benchmark, **kwargs)
    return bench.evaluate(similarities, available)

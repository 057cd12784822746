"""Run the networks over a benchmark's feature file and evaluate: mAP, time per query, storage per video.

The feature file (HDF5, published layout, read through :class:`dnsvr.features.FeatureFile`)
is streamed: the queries are represented and kept in memory, the database is read once, in
storage order, and fine similarities are computed against every query in batches of
database videos. Representations and similarities come from :mod:`dnsvr.bundle` (students,
selector, training-free stages) or the ViSiL teacher of :mod:`dnsvr.nn`; the DnS pair
selection is :func:`dnsvr.search.select_pairs`.

Models:

* ``teacher`` — ViSiL (``visil`` for 3840-d features, ``visil_symmetric`` for 512-d);
* ``fg-att`` / ``fg-bin`` — the bundle's fine student (S^f_A / S^f_B) on every pair;
* ``cg`` — the bundle's coarse stage (S^c) on every pair;
* ``dns`` — coarse on every pair, the selector picks which pairs the fine stage re-scores
  (its similarity ``s`` becomes ``s/2 + 0.5``, as in the reference), evaluated at every
  fraction of pairs 0%, 5%, …, 100% — the curve of the paper.

Time per query follows the reference ``evaluation_dns.py``: the similarity computations only
(fine, coarse, selector), summed over the database and divided by the number of queries;
DnS at fraction p costs ``p·fine + coarse + selector``. Storage per video counts 4 bytes per
float and 1 bit per binary code, as the reference does.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dnsvr.eval.benchmarks import Benchmark, CustomBenchmark
from dnsvr.eval.similarities import SimilarityTable
from dnsvr.features import FeatureFile
from dnsvr._progress import progress_bar
from dnsvr.stages import EVALUATED, Stage

logger = logging.getLogger(__name__)

#: Models ``evaluate_features`` runs (:data:`dnsvr.stages.EVALUATED`; ``fg_att`` etc. are read too).
MODELS: tuple[str, ...] = tuple(s.value for s in EVALUATED)
#: Fractions of the (query, database video) pairs sent to the fine stage on the DnS curve.
FRACTIONS: tuple[float, ...] = tuple(float(np.round(i * 0.05, 2)) for i in range(21))


@dataclass
class FeatureRunReport:
    """What :func:`evaluate_features` measured.

    Attributes:
        benchmark: benchmark name.
        model: the model run.
        bundle: the bundle used (name), or None for the teacher.
        features: the feature file.
        n_queries: queries found in the feature file.
        n_database: database videos found in the feature file.
        metrics: the benchmark's metrics (for ``dns``: at the largest fraction, normally 100%).
        time_per_query_s: seconds per query of each stage's similarity computation.
        storage_per_video_kb: KiB per database video of each stage's representation.
        curve: ``dns`` only: one entry per fraction with ``fraction``, ``pairs`` (per query),
            ``time_per_query_s`` and the metrics.
        missing_queries: benchmark queries absent from the feature file.
    """

    benchmark: str
    model: str
    bundle: str | None
    features: str
    n_queries: int
    n_database: int
    metrics: dict[str, float]
    time_per_query_s: dict[str, float]
    storage_per_video_kb: dict[str, float]
    curve: list[dict[str, Any]] | None = None
    missing_queries: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return asdict(self)


def _bundle_for(model: str, bundle: Any, dims: int) -> Any:
    """The bundle a student model runs with; checks that it has the stage the model needs."""
    from dnsvr.bundle import Bundle, BundleError, lite_bundle, load_bundle

    if isinstance(bundle, Bundle):
        chosen = bundle
    else:
        spec = "paper" if bundle is None else str(bundle)
        if spec == "lite":
            chosen = lite_bundle(dims=dims)
        else:
            if spec == "paper" and model == Stage.FG_BIN:
                spec = "paper-bin"
            chosen = load_bundle(spec)
    want = Stage.parse(model).fine_type if model in (Stage.FG_ATT, Stage.FG_BIN) else None
    if want is not None and chosen.fine_type != want:
        raise BundleError(f"--model {model} needs a bundle whose fine stage is {want!r}; bundle "
                          f"{chosen.name!r} has {chosen.fine_type!r} (use --model dns or cg, or another bundle)")
    return chosen


def _teacher_for(dims: int, teacher: torch.nn.Module | None) -> torch.nn.Module:
    if teacher is not None:
        return teacher.eval()
    from dnsvr.nn import ViSiLTeacher

    if dims == 3840:
        return ViSiLTeacher(dims=3840, symmetric=False, pretrained=True).eval()
    if dims == 512:
        return ViSiLTeacher(dims=512, symmetric=True, pretrained=True).eval()
    raise ValueError(f"the published ViSiL teachers take 3840-d or 512-d region features, the file has {dims}-d")


def _fine_bytes(fine: np.ndarray, binary: bool) -> float:
    # As the reference counts: 1 bit per binary code, 4 bytes per float element.
    return float(fine.nbytes) if binary else float(fine.size * 4)


def _database_ids(bench: Benchmark, file_ids: list[str]) -> list[str]:
    if isinstance(bench, CustomBenchmark):
        return list(file_ids)  # a user's collection: every video in the file
    wanted = set(bench.get_database())
    return [v for v in file_ids if v in wanted]


def evaluate_features(benchmark: Benchmark, features: str | Path, model: str, *, bundle: Any = None,
                      teacher: torch.nn.Module | None = None, batch_size: int = 64,
                      fractions: Sequence[float] = FRACTIONS, progress: bool | None = None,
                      ) -> tuple[FeatureRunReport, SimilarityTable]:
    """Run ``model`` over a feature file and evaluate it on ``benchmark``.

    Args:
        benchmark: the benchmark (its queries and database pick the videos in the file;
            a custom benchmark takes every video in the file as the database).
        features: HDF5 feature file in the published layout (``[T, 9, D]`` per video id).
        model: one of :data:`MODELS`.
        bundle: for the student models: ``"paper"`` (default; ``paper-bin`` for ``fg-bin``),
            ``"lite"``, a bundle folder, or a :class:`dnsvr.bundle.Bundle`.
        teacher: for ``teacher``: the network (default: the published ViSiL head for the
            features' size, downloaded once).
        batch_size: database videos per fine-similarity batch.
        fractions: the DnS curve's fractions of pairs re-scored by the fine stage.
        progress: show progress bars (None = when stderr is a terminal).

    Returns:
        ``(report, similarities)``: the report, and the similarities the metrics came from
        (for ``dns``: at the largest fraction).

    Raises:
        ValueError: unknown model, no query or no database video in the file, bad fractions.
        dnsvr.bundle.BundleError: the bundle lacks the stage the model needs.
        dnsvr.weights.WeightsUnavailableError: published weights not cached and offline.
    """
    try:
        model = Stage.parse(model, EVALUATED).value
    except ValueError:
        raise ValueError(f"unknown model {model!r}; choose one of {', '.join(MODELS)}") from None
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    fractions = [float(f) for f in fractions]
    if model == "dns" and (not fractions or any(not 0.0 <= f <= 1.0 for f in fractions)):
        raise ValueError(f"fractions must lie in [0, 1], got {fractions}")
    with FeatureFile(features) as ff:
        file_ids = ff.ids()
        in_file = set(file_ids)
        queries = [q for q in _queries(benchmark) if q in in_file]
        missing = [q for q in _queries(benchmark) if q not in in_file]
        database = _database_ids(benchmark, file_ids)
        if not queries:
            raise ValueError(f"{benchmark.name}: none of the {len(_queries(benchmark))} queries is in {features}")
        if not database:
            raise ValueError(f"{benchmark.name}: no database video is in {features}")
        if missing:
            logger.warning("%s: %d queries are not in %s and are ignored", benchmark.name, len(missing), features)
        dims = int(ff.shape(queries[0])[-1])
        runner = _TeacherRun(_teacher_for(dims, teacher)) if model == "teacher" else \
            _BundleRun(_bundle_for(model, bundle, dims), model)
        with progress_bar(progress) as bar:
            task = bar.add_task("queries", total=len(queries))
            for q in queries:
                runner.add_query(ff.read(q))
                bar.advance(task)
            task = bar.add_task("database", total=len(database))
            for start in range(0, len(database), batch_size):
                batch = database[start:start + batch_size]
                runner.add_database([ff.read(v) for v in batch])
                bar.advance(task, len(batch))
    n_q, n_db = len(queries), len(database)
    curve = None
    if model == "dns":
        fine, coarse, selector = runner.finish_dns()
        times = {k: v / n_q for k, v in runner.seconds.items()}
        storage = {k: v / n_db / 1024.0 for k, v in runner.bytes.items()}
        storage["dns_total"] = sum(storage.values())
        curve, table = _dns_curve(benchmark, queries, database, fine, coarse, selector, fractions, times)
        metrics = dict(curve[int(np.argmax([c["fraction"] for c in curve]))]["metrics"])
    else:
        scores = runner.finish(model)
        times = {k: v / n_q for k, v in runner.seconds.items()}
        storage = {k: v / n_db / 1024.0 for k, v in runner.bytes.items()}
        table = SimilarityTable.from_arrays(queries, database, scores)
        metrics = benchmark.evaluate(table)
    report = FeatureRunReport(benchmark.name, model, getattr(runner, "bundle_name", None), str(features), n_q, n_db,
                              metrics, times, storage, curve, missing)
    return report, table


def _queries(benchmark: Benchmark) -> list[str]:
    return list(benchmark.get_queries())


def _dns_curve(benchmark: Benchmark, queries: list[str], database: list[str], fine: np.ndarray,
               coarse: np.ndarray, selector: np.ndarray | None, fractions: Sequence[float],
               times: dict[str, float]) -> tuple[list[dict[str, Any]], SimilarityTable]:
    """mAP at each fraction of pairs re-scored by the fine stage (reference ``evaluation_dns.py``)."""
    from dnsvr.search import fine_to_score, select_pairs

    n_db = len(database)
    # The selection at any budget is a prefix of the full selection order.
    orders = [select_pairs(coarse[i], None if selector is None else selector[i], n_db) for i in range(len(queries))]
    fine_scores = fine_to_score(fine.astype(np.float64))
    curve = []
    table = None
    largest = max(fractions)
    for fraction in fractions:
        pairs = int(fraction * n_db)  # as the reference: int(percentage * available videos)
        sims = coarse.astype(np.float64).copy()
        for i, order in enumerate(orders):
            chosen = order[:pairs]
            sims[i, chosen] = fine_scores[i, chosen]
        point_table = SimilarityTable.from_arrays(queries, database, sims)
        if fraction == largest:
            table = point_table
        seconds = fraction * times["fine"] + times["coarse"] + times.get("selector", 0.0)
        curve.append({"fraction": fraction, "pairs": pairs, "time_per_query_s": seconds,
                      "metrics": benchmark.evaluate(point_table)})
    if table is None:
        raise ValueError("no fraction to evaluate")
    return curve, table


class _BundleRun:
    """Stage outputs of a bundle, accumulated query by query and database batch by batch."""

    def __init__(self, bundle: Any, model: str) -> None:
        self.bundle = bundle
        self.bundle_name = bundle.name
        self.model = model
        self.need_fine = model in (Stage.FG_ATT, Stage.FG_BIN, Stage.DNS)
        self.need_coarse = model in ("cg", "dns")
        self.q_reps: list[Any] = []
        self.fine_cols: list[np.ndarray] = []
        self.db_coarse: list[np.ndarray] = []
        self.db_selector: list[float] = []
        self.seconds: dict[str, float] = {}
        self.bytes: dict[str, float] = {}

    def _base(self, x: np.ndarray) -> np.ndarray:
        if self.bundle.whitening is not None and self.bundle.whitened:
            return self.bundle.whiten(x)
        return x

    def _count(self, key: str, seconds: float = 0.0, nbytes: float = 0.0) -> None:
        self.seconds[key] = self.seconds.get(key, 0.0) + seconds
        if nbytes:
            self.bytes[key] = self.bytes.get(key, 0.0) + nbytes

    def add_query(self, x: np.ndarray) -> None:
        self.q_reps.append(self.bundle.represent(self._base(x)))

    def add_database(self, videos: list[np.ndarray]) -> None:
        reps = [self.bundle.represent(self._base(x)) for x in videos]
        if self.need_fine:
            binary = self.bundle.fine_type == "bin"
            for rep in reps:
                self._count("fine", nbytes=_fine_bytes(rep.fine, binary))
            cands = [rep.fine for rep in reps]
            col = np.empty((len(self.q_reps), len(reps)), dtype=np.float32)
            start = time.perf_counter()
            for i, q in enumerate(self.q_reps):
                col[i] = self.bundle.fine_similarities(q.fine, cands)[0]
            self._count("fine", time.perf_counter() - start)
            self.fine_cols.append(col)
        if self.need_coarse:
            for rep in reps:
                self.db_coarse.append(rep.coarse)
                self._count("coarse", nbytes=rep.coarse.size * 4.0)
                if self.model == "dns" and rep.selector is not None:
                    self.db_selector.append(rep.selector)
                    self._count("selector", nbytes=4.0)

    def _coarse(self) -> np.ndarray:
        q = np.stack([r.coarse for r in self.q_reps]).astype(np.float32)
        d = np.stack(self.db_coarse).astype(np.float32)
        start = time.perf_counter()
        sims = q @ d.T
        self._count("coarse", time.perf_counter() - start)
        return sims

    def finish(self, model: str) -> np.ndarray:
        if model == "cg":
            return self._coarse()
        return np.concatenate(self.fine_cols, axis=1)

    def finish_dns(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        fine = np.concatenate(self.fine_cols, axis=1)
        coarse = self._coarse()
        selector = None
        if self.bundle.has_selector:
            targets = np.asarray(self.db_selector, dtype=np.float32)
            start = time.perf_counter()
            selector = np.stack([self.bundle.selector_scores(q.selector, targets, coarse[i])
                                 for i, q in enumerate(self.q_reps)])
            self._count("selector", time.perf_counter() - start)
        return fine, coarse, selector


class _TeacherRun:
    """The ViSiL teacher on every pair (one pair at a time: its comparator sees each video's true edges)."""

    bundle_name = None

    def __init__(self, teacher: torch.nn.Module) -> None:
        self.teacher = teacher
        self.q_idx: list[torch.Tensor] = []
        self.cols: list[np.ndarray] = []
        self.seconds: dict[str, float] = {"fine": 0.0}
        self.bytes: dict[str, float] = {"fine": 0.0}

    def add_query(self, x: np.ndarray) -> None:
        with torch.inference_mode():
            self.q_idx.append(self.teacher.index_video(torch.from_numpy(x)))

    def add_database(self, videos: list[np.ndarray]) -> None:
        col = np.empty((len(self.q_idx), len(videos)), dtype=np.float32)
        with torch.inference_mode():
            for j, x in enumerate(videos):
                t = self.teacher.index_video(torch.from_numpy(x))
                self.bytes["fine"] += t.numel() * 4.0
                start = time.perf_counter()
                for i, q in enumerate(self.q_idx):
                    col[i, j] = float(self.teacher.calculate_video_similarity(q, t).reshape(-1)[0])
                self.seconds["fine"] += time.perf_counter() - start
        self.cols.append(col)

    def finish(self, model: str) -> np.ndarray:
        return np.concatenate(self.cols, axis=1)


def plot_curve(report: FeatureRunReport, path: str | Path) -> Path:
    """Plot a ``dns`` report's curve (metrics against the percentage of pairs re-scored) as a PNG.

    Raises:
        ValueError: if the report has no curve.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not report.curve:
        raise ValueError(f"report of model {report.model!r} has no DnS curve")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(6.4, 4.2), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    xs = [100.0 * c["fraction"] for c in report.curve]
    for metric in report.curve[0]["metrics"]:
        ax.plot(xs, [c["metrics"].get(metric, np.nan) for c in report.curve], marker="o", markersize=3,
                label=metric)
    ax.set_xlabel("pairs re-scored by the fine student (% of the database)")
    ax.set_ylabel("mAP")
    ax.set_title(f"DnS on {report.benchmark} ({report.bundle})")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    return path

"""Refit a collection-fitted whitening on the whole collection, into a new index.

The ``lite`` bundle's PCA whitening is fitted by an index's first ``add`` and the index keeps only
whitened features, so a whitening fitted on a few first videos would otherwise stay for good.
:func:`refit_whitening` builds a **new** index from the old one's recorded sources:

1. every indexed video's source file is decoded again (``--videos DIR`` finds moved files) with the
   index's backbone and extraction settings, by :func:`dnsvr.extract.extract_videos` — raw regions go
   to ``<output>.partial/raw.h5``, which is crash-safe and resumable (decoding is the cost of a
   refit; reading the raw features twice from disk is not);
2. the whitening is fitted on a sample spread over *all* videos (each video's frames evenly spaced, an
   equal share each, up to :data:`~dnsvr.index.video_index.WHITENING_SAMPLE_VECTORS` in total);
3. every video is committed again, in the old order, under the same id, into
   ``<output>.partial/index``, which is renamed to ``<output>`` at the very end.

The old index is only read. An interrupted refit leaves no ``<output>``, only ``<output>.partial``,
which the next run with the same output resumes from (its decoded videos are reused).
:func:`refit_recommended` is the rule ``index add`` and ``index info`` use to recommend a refit.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dnsvr._fsutil import fsync_dir
from dnsvr.bundle import MIN_WHITENED_DIMS, WHITENING_RECOMMENDED_VECTORS, Bundle, BundleError
from dnsvr.index._lock import LOCK_NAME, WriterLock
from dnsvr.index._paths import inside, read_json, write_json_atomic
from dnsvr.index.video_index import BUNDLE_DIR, FEATURE_SUFFIXES, MANIFEST, WHITENING_SAMPLE_VECTORS, VideoIndex, \
    VideoIndexError

if TYPE_CHECKING:
    from dnsvr.index.records import VideoEntry

logger = logging.getLogger(__name__)

#: The index must hold this many times the region vectors its whitening was fitted on before a refit is
#: recommended: each refit then at least doubles the sample (on the real-content dev split, fitting on 8 /
#: 15 / 30 / 60 videos gave related mAP 0.83-0.87 / 0.91-0.92 / 0.93 / 0.95), and the decoding of all
#: refits together stays below about twice the collection's own (a geometric series).
REFIT_GROWTH = 2.0
#: Suffix of the working folder beside the output (raw features, the index being built).
PARTIAL_SUFFIX = ".partial"
_RAW_FILE = "raw.h5"
_MARKER = "refit.json"
_BUILD_DIR = "index"
_COMMIT_BATCH = 64


class RefitError(VideoIndexError):
    """A refit cannot be done as asked (sources missing or undecodable, a sharing output folder)."""


@dataclass
class RefitReport:
    """What :func:`refit_whitening` did.

    Attributes:
        output: the new index.
        videos: ids re-indexed, in the old index's order.
        skipped: ``(video_id, source, reason)`` of videos left out (with ``skip_missing``).
        moved: ids whose source was found under ``videos_root`` (recorded there as their new source).
        changed: ``(video_id, frames before, frames now)`` where the source no longer gives the frames it gave.
        fitted_on: the new whitening's record (``videos``, ``region_vectors``, ``dims``, ``by``).
        reused: ids whose decoded features an interrupted earlier run had left (not decoded again).
        seconds: wall time.
    """

    output: Path
    videos: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str, str]] = field(default_factory=list)
    moved: list[str] = field(default_factory=list)
    changed: list[tuple[str, int, int]] = field(default_factory=list)
    fitted_on: dict[str, Any] = field(default_factory=dict)
    reused: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"output": str(self.output), "videos": len(self.videos),
                "skipped": [{"video_id": v, "source": s, "reason": r} for v, s, r in self.skipped],
                "moved": self.moved, "changed": [{"video_id": v, "frames_before": a, "frames_now": b}
                                                 for v, a, b in self.changed],
                "whitening_fitted_on": self.fitted_on, "reused": len(self.reused), "seconds": round(self.seconds, 3)}


@dataclass(frozen=True)
class _Source:
    """Where one indexed video's raw regions come from: a video file, or a dataset of a feature file."""

    entry: VideoEntry
    path: Path
    dataset: str | None = None  # set for a feature file
    moved: bool = False

    @property
    def video_id(self) -> str:
        return self.entry.video_id


def refit_recommended(fitted_on: dict[str, Any] | None, region_vectors: int) -> bool:
    """Whether an index whose whitening was fitted as ``fitted_on`` says should be refitted.

    True when the whitening saw fewer than :data:`~dnsvr.bundle.WHITENING_RECOMMENDED_VECTORS` region
    vectors and the index now holds at least :data:`REFIT_GROWTH` times as many (``region_vectors``).
    """
    if not fitted_on:
        return False
    fitted = int(fitted_on.get("region_vectors", 0))
    return fitted < WHITENING_RECOMMENDED_VECTORS and region_vectors >= REFIT_GROWTH * max(fitted, 1)


def _feature_source(entry: VideoEntry) -> tuple[str, str] | None:
    """``(file, dataset)`` when the video was added from a feature file (source ``file.h5:id``)."""
    source = entry.source or ""
    if source.endswith(":" + entry.video_id):
        path, dataset = source[:-len(entry.video_id) - 1], entry.video_id
    else:
        path, _, dataset = source.rpartition(":")
    return (path, dataset) if path and Path(path).suffix.lower() in FEATURE_SUFFIXES else None


def _look_up(recorded: str, videos_root: Path | None) -> tuple[Path | None, bool]:
    """``(file, moved)``: under ``videos_root`` by the recorded path's trailing components (longest first),
    else at the recorded path; ``(None, False)`` when neither is a file."""
    rec = Path(recorded)
    if videos_root is not None:
        parts = [p for p in rec.parts if p not in (rec.anchor, "", ".", "..")]
        for k in range(len(parts)):
            candidate = videos_root.joinpath(*parts[k:])
            if candidate.is_file():
                return candidate, candidate.absolute() != rec.absolute()
    return (rec, False) if rec.is_file() else (None, False)


def _plan(entries: Sequence[VideoEntry], videos_root: Path | None, raw_dims: int
          ) -> tuple[list[_Source], list[tuple[str, str, str]]]:
    """Find every video's raw regions without decoding; ``(sources, unavailable)``."""
    from dnsvr.features import FeatureFile

    sources: list[_Source] = []
    unavailable: list[tuple[str, str, str]] = []
    for entry in entries:
        recorded = entry.source or ""
        if not recorded:
            unavailable.append((entry.video_id, "", "no source was recorded when it was added"))
            continue
        feature = _feature_source(entry)
        path, moved = _look_up(feature[0] if feature else recorded, videos_root)
        if path is None:
            where = f" (nor under {videos_root})" if videos_root is not None else ""
            unavailable.append((entry.video_id, recorded, f"not found{where}"))
            continue
        if feature is None:
            sources.append(_Source(entry, path, moved=moved))
            continue
        try:
            with FeatureFile(path) as ff:
                shape = ff.shape(feature[1])
        except (OSError, ValueError, KeyError) as exc:
            unavailable.append((entry.video_id, recorded, f"unreadable feature file: {exc}"))
            continue
        if shape[-1] != raw_dims:
            unavailable.append((entry.video_id, recorded, f"the feature file stores {shape[-1]}-d features, not the "
                                                          f"backbone's raw {raw_dims}-d regions a refit needs"))
            continue
        sources.append(_Source(entry, path, dataset=feature[1], moved=moved))
    return sources, unavailable


def _listing(items: Sequence[tuple[str, str, str]], limit: int = 10) -> str:
    shown = "; ".join(f"{vid} ({src or 'no source'}: {why})" for vid, src, why in items[:limit])
    return shown + (f"; and {len(items) - limit} more" if len(items) > limit else "")


def spread_sample(frames: Sequence[int], regions: int, budget: int) -> list[np.ndarray]:
    """Which frames of each video feed the whitening: an equal share of ``budget`` region vectors each.

    Every video gets the same number of frames ``q`` (fewer when it is shorter; ``q`` as large as the
    budget allows), evenly spaced over the video. With more videos than the budget has frames, one
    frame (the middle one) of evenly spaced videos.

    Args:
        frames: frame count T of each video.
        regions: region vectors per frame.
        budget: region vectors in total.

    Returns:
        Frame indices per video (empty for videos left out).
    """
    counts = np.asarray(frames, dtype=np.int64)
    cap = max(budget // max(regions, 1), 1)  # frames in total
    if len(counts) == 0:
        return []
    if len(counts) > cap:
        chosen = set(np.linspace(0, len(counts) - 1, cap).round().astype(int).tolist())
        return [np.array([t // 2]) if i in chosen and t > 0 else np.zeros(0, dtype=np.int64)
                for i, t in enumerate(counts.tolist())]
    lo, hi = 1, int(counts.max(initial=1))  # the largest per-video quota whose total fits the cap
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if int(np.minimum(counts, mid).sum()) <= cap:
            lo = mid
        else:
            hi = mid - 1
    out = []
    for t in counts.tolist():
        k = min(t, lo)
        out.append(np.linspace(0, t - 1, k).round().astype(np.int64) if k > 0 else np.zeros(0, dtype=np.int64))
    return out


class _RawReader:
    """Raw regions and extraction records of the planned videos (the refit's raw file or their feature files)."""

    def __init__(self, raw_h5: Path) -> None:
        from dnsvr.features import FeatureFile

        self._raw = FeatureFile(raw_h5) if raw_h5.exists() else None
        self._open: dict[Path, Any] = {}

    def _file(self, src: _Source) -> Any:
        from dnsvr.features import FeatureFile

        if src.dataset is None:
            return self._raw
        if src.path not in self._open:
            self._open[src.path] = FeatureFile(src.path)
        return self._open[src.path]

    def frames(self, src: _Source) -> int:
        return int(self._file(src).shape(src.dataset or src.video_id)[0])

    def read(self, src: _Source, picks: np.ndarray | None = None) -> np.ndarray:
        feats = self._file(src).read(src.dataset or src.video_id)
        return feats if picks is None else feats[picks]

    def meta(self, src: _Source, feats: np.ndarray) -> dict[str, Any]:
        """The record's metadata: the new extraction's (a decoded video) or the one recorded at its add; the
        source is where the file is now."""
        from dnsvr.features import VideoFeatures

        if src.dataset is not None:
            meta = src.entry.record_meta()
            if src.moved:
                meta["source"] = f"{src.path.absolute()}:{src.dataset}"
        else:
            info = {k: v for k, v in self._raw.info(src.video_id).items() if k not in ("dnsvr_complete", "video_id")}
            meta = VideoFeatures.from_attrs(src.video_id, feats, info).attrs()
            meta["source"] = str(src.path.absolute())
        meta["first_added"] = float(src.entry.meta.get("first_added", src.entry.added))
        return meta

    def close(self) -> None:
        for ff in [self._raw, *self._open.values()]:
            if ff is not None:
                ff.close()


def refit_whitening(index: VideoIndex, output: str | Path, *, videos_root: str | Path | None = None,
                    skip_missing: bool = False, dims: int | None = None, progress: bool | None = None,
                    sample_vectors: int | None = None) -> RefitReport:
    """Build a new index at ``output`` whose whitening is fitted on all of ``index``'s videos.

    See the module docstring for the steps and :meth:`dnsvr.index.VideoIndex.refit_whitening` for the
    arguments. ``sample_vectors`` caps the fit's sample (default
    :data:`~dnsvr.index.video_index.WHITENING_SAMPLE_VECTORS`).
    """
    started = time.perf_counter()
    problem = index.bundle.refit_problem()
    if problem:
        raise BundleError(problem)
    if not index.bundle.whitened:
        raise RefitError(f"index {index.directory} is empty: its whitening is fitted by the first add")
    output = Path(output)
    partial = output.with_name(output.name + PARTIAL_SUFFIX)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise FileExistsError(f"cannot refit into {output}: it exists and is not an empty folder")
    old_root = index.directory.resolve()
    for target in (output, partial):
        resolved = target.resolve()
        if resolved == old_root or old_root in resolved.parents or resolved in old_root.parents:
            raise RefitError(f"the new index {output} must lie outside the old one ({index.directory}) and not "
                             "contain it: a refit never writes into the index it reads")
    if dims is not None and (isinstance(dims, bool) or not isinstance(dims, int) or dims < MIN_WHITENED_DIMS):
        raise RefitError(f"dims must be a whitened size of at least {MIN_WHITENED_DIMS}, got {dims!r}")
    root = Path(videos_root) if videos_root is not None else None
    if root is not None and not root.is_dir():
        raise FileNotFoundError(f"videos folder not found: {root}")

    report = RefitReport(output=output)
    with index._snapshot():
        entries = [index.entry(v) for v in index.ids()]
    if not entries:
        raise RefitError(f"index {index.directory} holds no videos: nothing to refit")
    raw_dims = int(index.bundle.whitening.input_dims)
    sources, unavailable = _plan(entries, root, raw_dims)
    if unavailable and not skip_missing:
        raise RefitError(f"{len(unavailable)} of {len(entries)} indexed videos cannot be read again: "
                         f"{_listing(unavailable)}. Nothing was written; give where the videos are now "
                         "(videos_root), or leave them out (skip_missing)")
    report.skipped.extend(unavailable)

    partial.mkdir(parents=True, exist_ok=True)
    lock = WriterLock(partial)  # one refit per output at a time
    lock.acquire()
    try:
        return _refit_into(index, output, partial, sources, len(entries), report, skip_missing=skip_missing,
                           dims=dims, progress=progress, sample_vectors=sample_vectors, started=started)
    finally:
        lock.release()


def _claim(index: VideoIndex, partial: Path) -> None:
    """Make ``partial`` this refit's working folder: new, or left by an interrupted refit of the same index."""
    manifest = read_json(index.directory, MANIFEST)
    mine = {"index": str(index.directory.resolve()), "created": manifest.get("created")}
    marker = partial / _MARKER
    if marker.exists():
        theirs = read_json(partial, _MARKER)
        if theirs != mine:
            raise RefitError(f"{partial} was left by a refit of another index ({theirs.get('index')}): remove it, "
                             "or choose another output")
        logger.info("resuming the refit left in %s", partial)
    elif any(p.name != LOCK_NAME for p in partial.iterdir()):
        raise RefitError(f"{partial} exists and was not left by a refit: remove it, or choose another output")
    else:
        write_json_atomic(marker, mine)


def _refit_into(index: VideoIndex, output: Path, partial: Path, sources: list[_Source], n_entries: int,
                report: RefitReport, *, skip_missing: bool, dims: int | None, progress: bool | None,
                sample_vectors: int | None, started: float) -> RefitReport:
    """The refit's steps once its sources are known, under the lock of its working folder."""
    from dnsvr.backbones import PCAWhitening
    from dnsvr.bundle import LITE_DIMS
    from dnsvr.extract import extract_videos

    _claim(index, partial)
    raw_h5 = partial / _RAW_FILE
    videos = {s.video_id: s.path for s in sources if s.dataset is None}
    if videos:
        extraction = extract_videos(videos, raw_h5, index._get_extractor(), progress=progress)
        report.reused = list(extraction.already_extracted)
        failed = {f.video_id: f for f in extraction.failures if not f.extracted}
        for f in extraction.failures:
            if f.extracted:
                logger.warning("%s: %s (frames before the damage were kept)", f.path, f.reason)
        if failed:
            lost = [(s.video_id, s.entry.source or "", failed[s.video_id].reason)
                    for s in sources if s.video_id in failed]
            if not skip_missing:
                raise RefitError(f"{len(lost)} of {n_entries} indexed videos could not be decoded: "
                                 f"{_listing(lost)}. No index was written; the videos decoded so far are kept in "
                                 f"{partial} for the next run (leave the others out with skip_missing)")
            report.skipped.extend(lost)
            sources = [s for s in sources if s.video_id not in failed]
    if not sources:
        raise RefitError(f"none of the {n_entries} indexed videos could be read again: {_listing(report.skipped)}")

    reader = _RawReader(raw_h5)
    try:
        counts = [reader.frames(s) for s in sources]
        regions = index.bundle.fine_layout()[1][0]
        picks = spread_sample(counts, regions, int(sample_vectors or WHITENING_SAMPLE_VECTORS))
        bundle = Bundle.load(inside(index.directory, BUNDLE_DIR, kind="dir"))  # a copy: the old index keeps its own
        target = int(dims) if dims is not None else max(int(index.bundle.input_dims or 0), LITE_DIMS)
        bundle.whitening = PCAWhitening(dims=target)
        bundle.whitening_dims = target
        bundle.fit_whitening([reader.read(s, p) for s, p in zip(sources, picks) if len(p)], dims=target)
        bundle.extra["whitening_fitted_on"] = {**bundle.extra["whitening_fitted_on"], "by": "refit",
                                               "collection_videos": len(sources)}
        report.fitted_on = dict(bundle.extra["whitening_fitted_on"])

        build = partial / _BUILD_DIR
        if build.exists():  # an earlier run stopped while committing: its features are kept, not its index
            shutil.rmtree(build)
        coarse_index = read_json(index.directory, MANIFEST).get("coarse_index", "Flat")
        shards = getattr(index, "shards", None)
        if shards is not None:
            new: VideoIndex = type(index).create(build, bundle, shards=len(shards), coarse_index=coarse_index)
        else:
            new = VideoIndex.create(build, bundle, coarse_index=coarse_index)
        try:
            _commit_all(new, bundle, sources, counts, reader, report)
        finally:
            new.close()
    finally:
        reader.close()
    os.rename(build, output)  # the last step: before it there is no output, after it a complete one
    fsync_dir(output.parent)
    shutil.rmtree(partial)
    report.seconds = time.perf_counter() - started
    logger.info("refitted %s into %s: %d videos, whitening on %d region vectors → %d dims, %d skipped, %.1f s",
                index.directory, output, len(report.videos), report.fitted_on["region_vectors"],
                report.fitted_on["dims"], len(report.skipped), report.seconds)
    return report


def _commit_all(new: VideoIndex, bundle: Bundle, sources: Sequence[_Source], counts: Sequence[int],
                reader: _RawReader, report: RefitReport) -> None:
    """Whiten, represent and commit every video under its id, in the old order."""
    from dnsvr.index.records import IndexRecord

    pending: list[IndexRecord] = []
    for src, frames in zip(sources, counts):
        raw = reader.read(src)
        rep = bundle.represent(bundle.whiten(raw))
        pending.append(IndexRecord(src.video_id, rep.coarse, rep.fine, rep.selector, reader.meta(src, raw)))
        if frames != src.entry.n_frames:
            logger.warning("%s: its source gives %d frames now, %d when it was indexed (the file changed?)",
                           src.video_id, frames, src.entry.n_frames)
            report.changed.append((src.video_id, src.entry.n_frames, frames))
        if src.moved:
            report.moved.append(src.video_id)
        if len(pending) >= _COMMIT_BATCH:
            new._commit(pending, "error")
            report.videos.extend(r.video_id for r in pending)
            pending.clear()
    if pending:
        new._commit(pending, "error")
        report.videos.extend(r.video_id for r in pending)


__all__ = ["REFIT_GROWTH", "RefitError", "RefitReport", "refit_recommended", "refit_whitening", "spread_sample"]

"""``VideoIndex``: the persistent index as users see it (videos in, ranked results out).

A facade over three parts: the model bundle (:mod:`dnsvr.bundle`: features →
representations, similarities), the on-disk store (:class:`dnsvr.index.store.IndexStore`:
metadata, fine shards, coarse search) and extraction (:mod:`dnsvr.extract`: videos →
region features). The query itself is :mod:`dnsvr.search`.

Directory layout::

    DIR/
      index.json     facade manifest: format + version, versions that wrote it, bundle identity
      bundle/        the model bundle the index was built with (dnsvr.bundle folder)
      store/         the IndexStore (SQLite + fine shards + derived coarse index)

With the ``lite`` bundle the whitening is fitted on the first videos added, so ``store/``
appears with the first ``add`` (its per-frame layout depends on the whitened size);
:meth:`VideoIndex.refit_whitening` fits it again on all the videos, into a new index.

Example:
    >>> index = VideoIndex.create("my.index")                    # doctest: +SKIP
    >>> index.add(["videos/"])                                   # doctest: +SKIP
    >>> for r in index.search(["query.mp4"], top_k=5)[0].results:  # doctest: +SKIP
    ...     print(r.video_id, r.score, r.segments)
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dnsvr import __version__
from dnsvr.backbones.whitening import map_whitened
from dnsvr.fine import DEFAULT_PRECISION, PRECISIONS
from dnsvr.bundle import DEFAULT_MATCH, MATCH_MODES, Bundle, BundleError, VideoRepresentation, load_bundle
from dnsvr.index._lock import LOCK_NAME, WriterLock
from dnsvr.index._paths import DamagedIndexError, check_entries, inside, read_json, write_json_atomic
from dnsvr.index.records import IndexConfig, IndexRecord, UnknownVideoError, VideoEntry, check_video_id
from dnsvr.index.store import IndexStore
from dnsvr.search import (
    Budget,
    QueryResults,
)

if TYPE_CHECKING:
    from dnsvr.features import VideoFeatures

logger = logging.getLogger(__name__)

INDEX_FORMAT = "dnsvr-video-index"
INDEX_FORMAT_VERSION = 1
MANIFEST = "index.json"
BUNDLE_DIR = "bundle"
STORE_DIR = "store"
FEATURE_SUFFIXES = (".h5", ".hdf5")
#: Region vectors collected from the first videos before the lite whitening is fitted.
WHITENING_SAMPLE_VECTORS = 50_000


class VideoIndexError(ValueError):
    """An index directory is missing, malformed, or used in a way it cannot serve."""


@dataclass
class AddReport:
    """What :meth:`VideoIndex.add` did, per input (the store's per-commit ids are
    :class:`~dnsvr.index.records.AddResult`; the same words mean the same there).

    Attributes:
        added: ids added (or replaced).
        skipped: ``(input, reason)`` for inputs that could not be added (unreadable, damaged,
            an id that another file already has): the caller's to look at.
        already_indexed: ids already in the index and left as they were (``on_duplicate="skip"``);
            nothing of theirs was decoded. Not a failure.
        seconds: wall time.
    """

    added: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    already_indexed: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"added": self.added, "skipped": [{"input": i, "reason": r} for i, r in self.skipped],
                "already_indexed": self.already_indexed, "seconds": round(self.seconds, 3)}


@dataclass
class _Query:
    """A query made ready for the stages: its representation, timestamps, and id (if from the index)."""

    name: str
    rep: VideoRepresentation
    timestamps: np.ndarray | None
    index_id: str | None = None
    inset: np.ndarray | None = None


def _read_manifest(directory: Path) -> dict[str, Any]:
    """``index.json``, checked (format, version); damage is one :class:`DamagedIndexError` line."""
    path = directory / MANIFEST
    if not os.path.lexists(path):
        raise VideoIndexError(f"not a dnsvr index (no {MANIFEST}): {directory}")
    try:
        manifest = read_json(directory, MANIFEST)
    except OSError as exc:
        raise DamagedIndexError(MANIFEST, f"unreadable ({exc.strerror or exc})") from None
    if isinstance(manifest, dict) and manifest.get("format") == "dnsvr-sharded-index":
        raise VideoIndexError(f"{directory} is a sharded index: open it with dnsvr.index.open_any() or "
                              "dnsvr.index.ShardedIndex.open()")
    if not isinstance(manifest, dict) or manifest.get("format") != INDEX_FORMAT:
        fmt = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise VideoIndexError(f"{path}: not a dnsvr index (format {fmt!r})")
    version = manifest.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise DamagedIndexError(MANIFEST, f"bad format_version {version!r}")
    if version > INDEX_FORMAT_VERSION:
        raise VideoIndexError(f"{path}: index format {version} is newer than this dnsvr supports "
                              f"({INDEX_FORMAT_VERSION}); written by {manifest.get('written_by')}")
    if not isinstance(manifest.get("coarse_index", "Flat"), str):
        raise DamagedIndexError(MANIFEST, f"coarse_index {manifest.get('coarse_index')!r} is not a string")
    return manifest


def _store_dir(directory: Path) -> Path | None:
    """The folder's store if one was fully created (its manifest is written last), else None."""
    store = inside(directory, STORE_DIR, kind="dir")
    if not store.is_dir():
        return None
    if not os.path.lexists(store / "manifest.json"):
        return None  # an interrupted first add: the writer that holds the lock removes and recreates it
    return store


def _check_layout(directory: Path) -> None:
    """The fixed entries of an index folder resolve inside it and are what they should be."""
    check_entries(directory, files=(MANIFEST, LOCK_NAME), dirs=(BUNDLE_DIR, STORE_DIR))


def _check_top_k(top_k: object) -> None:
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise VideoIndexError(f"top_k must be a positive number of results (or None for all), got {top_k!r}")


def _is_feature_file(path: str | Path) -> bool:
    return Path(path).suffix.lower() in FEATURE_SUFFIXES


class VideoIndex:
    """A persistent, searchable video index.

    Use :meth:`create` or :meth:`open`. A writable index holds the store's single-writer lock
    (other writers get a clear error); ``readonly=True`` opens a reader that may search while
    another process adds.
    """

    def __init__(self, directory: Path, bundle: Bundle, store: IndexStore | None, readonly: bool,
                 lock: WriterLock | None = None) -> None:
        self.directory = directory
        self.bundle = bundle
        self._store = store
        self.readonly = readonly
        self._lock = lock  # the writer lock of the whole folder (held by a writable index)
        self._extractor: Any = None

    # -- lifecycle -------------------------------------------------------------------------
    @classmethod
    def create(cls, directory: str | Path, bundle: str | Path | Bundle = "lite", *,
               coarse_index: str = "Flat", offline: bool | None = None) -> VideoIndex:
        """Create an empty index.

        Args:
            directory: a new or empty directory.
            bundle: ``"lite"`` (offline default), ``"paper"``, ``"paper-bin"``, a bundle folder, or a
                :class:`~dnsvr.bundle.Bundle`.
            coarse_index: FAISS spec of the coarse search (``"Flat"`` exact; e.g. ``"HNSW32"`` for ANN).
            offline: forbid downloading published weights.

        Returns:
            The open, writable index.

        Raises:
            FileExistsError: the directory is not empty.
            BundleError / dnsvr.weights.WeightsUnavailableError: the bundle cannot be loaded.
        """
        directory = Path(directory)
        if directory.exists() and any(directory.iterdir()):
            raise FileExistsError(f"cannot create an index at {directory}: the directory is not empty")
        b = load_bundle(bundle, offline=offline)
        directory.mkdir(parents=True, exist_ok=True)
        lock = WriterLock(directory)
        lock.acquire()
        try:
            if any(p.name != LOCK_NAME for p in directory.iterdir()):
                raise FileExistsError(f"cannot create an index at {directory}: another process is creating one")
            b.save(directory / BUNDLE_DIR)
            manifest = {"format": INDEX_FORMAT, "format_version": INDEX_FORMAT_VERSION,
                        "written_by": {"dnsvr": __version__}, "created": time.time(),
                        "bundle": b.identity(), "coarse_index": coarse_index}
            write_json_atomic(directory / MANIFEST, manifest)
            index = cls(directory, b, None, readonly=False, lock=lock)
            if b.whitened:
                index._create_store()
        except BaseException:
            lock.release()
            raise
        logger.info("created index %s with bundle %s", directory, b)
        return index

    @classmethod
    def open(cls, directory: str | Path, readonly: bool = False) -> VideoIndex:
        """Open an existing index.

        Raises:
            VideoIndexError: not an index, or written by a newer format.
            dnsvr.index.IndexLockedError: another process is writing (``readonly=False``).
        """
        directory = Path(directory)
        if not directory.is_dir():
            raise VideoIndexError(f"not a dnsvr index (no such folder): {directory}")
        _check_layout(directory)
        _read_manifest(directory)
        lock = None
        if not readonly:
            # one writer for the whole folder, taken before the bundle is read: the first add's
            # whitening is fitted under it, so a second writer never replaces what a first committed
            lock = WriterLock(directory)
            lock.acquire()
        try:
            bundle = Bundle.load(inside(directory, BUNDLE_DIR, kind="dir"))
            store = None
            store_dir = _store_dir(directory)
            if store_dir is not None:
                store = IndexStore.open(store_dir, readonly=readonly)
            return cls(directory, bundle, store, readonly, lock=lock)
        except BaseException:
            if lock is not None:
                lock.release()
            raise

    def close(self) -> None:
        """Release the store (and the writer locks)."""
        try:
            if self._store is not None:
                self._store.close()
                self._store = None
        finally:
            if self._lock is not None:
                self._lock.release()
                self._lock = None

    def __enter__(self) -> VideoIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return 0 if self.store is None else len(self.store)

    def __contains__(self, video_id: object) -> bool:
        return self.store is not None and video_id in self.store

    def __repr__(self) -> str:
        return f"VideoIndex({str(self.directory)!r}, bundle={self.bundle.name!r}, videos={len(self)})"

    @property
    def store(self) -> IndexStore | None:
        """The underlying store (None until the lite whitening is fitted by the first ``add``)."""
        if self._store is None:
            store_dir = _store_dir(self.directory)
            if store_dir is not None:
                # another process fitted the lite whitening and created the store: take its bundle first
                # (the bundle is saved before the store is created, so it is the one the store was built with)
                self.bundle = Bundle.load(inside(self.directory, BUNDLE_DIR, kind="dir"))
                self._store = IndexStore.open(store_dir, readonly=self.readonly)
        return self._store

    def _create_store(self) -> IndexStore:
        dtype, shape = self.bundle.fine_layout()
        manifest = _read_manifest(self.directory)
        config = IndexConfig(coarse_dim=self.bundle.coarse_dims(), coarse_chunks=self.bundle.coarse_chunks,
                             fine_dtype=dtype, fine_shape=shape,
                             coarse_index=manifest.get("coarse_index", "Flat"),
                             extra={"bundle": self.bundle.identity()})
        partial = inside(self.directory, STORE_DIR, kind="dir")
        if partial.is_dir() and _store_dir(self.directory) is None:
            # a first add killed while creating the store: nothing was committed in it (its manifest,
            # written last, is missing); under the writer lock it is safe to start again
            logger.warning("removing the unfinished store of %s (an interrupted first add)", self.directory)
            shutil.rmtree(partial)
        self._store = IndexStore.create(self.directory / STORE_DIR, config)
        manifest["bundle"] = self.bundle.identity()
        write_json_atomic(self.directory / MANIFEST, manifest)
        return self._store

    def _writable_store(self) -> IndexStore:
        if self.readonly:
            raise VideoIndexError(f"index {self.directory} was opened read-only")
        store = self.store
        if store is None:
            raise VideoIndexError(f"index {self.directory} is empty (its whitening is fitted by the first add)")
        return store

    # -- extraction ------------------------------------------------------------------------
    def _get_extractor(self) -> Any:
        if self._extractor is None:
            from dnsvr.backbones import FeatureExtractor

            self._extractor = FeatureExtractor(self.bundle.backbone)
        return self._extractor

    def _iter_inputs(self, inputs: Sequence[str | Path], report: AddReport,
                     progress: bool | None) -> Iterator[VideoFeatures]:
        """The features (raw or whitened) of every input; failures go to ``report``."""
        features, videos = self._plan(inputs, report)
        return self._iter_planned(features, videos, report, progress)

    def _plan(self, inputs: Sequence[str | Path], report: AddReport
              ) -> tuple[list[tuple[Path, list[str]]], list[tuple[str, Path]]]:
        """Split inputs into feature files (with their ids) and ``(video_id, path)`` videos, without decoding."""
        from dnsvr.extract import resolve_inputs
        from dnsvr.features import FeatureFile

        features: list[tuple[Path, list[str]]] = []
        others: list[str | Path] = []
        for item in inputs:
            if _is_feature_file(item):
                try:
                    with FeatureFile(item) as ff:
                        features.append((Path(item), list(ff.ids())))
                except (OSError, ValueError) as exc:
                    report.skipped.append((str(item), str(exc)))
            else:
                others.append(item)
        videos: list[tuple[str, Path]] = []
        if others:
            failures: list[Any] = []
            videos = resolve_inputs(others, failures)
            self._report_failures(failures, 0, report)
        return features, videos

    def _iter_planned(self, features: list[tuple[Path, list[str]]], videos: list[tuple[str, Path]],
                      report: AddReport, progress: bool | None, ray: str | None = None,
                      inset_scale: float | None = None) -> Iterator[VideoFeatures]:
        """Features of the planned inputs; videos are extracted here, or on a Ray cluster when ``ray`` names one.

        With ``inset_scale`` (query videos), each frame also brings its inset vector as a tenth region
        (:class:`~dnsvr.backbones.extractor.InsetExtractor`).
        """
        from dnsvr.features import FeatureFile, VideoFeatures

        for path, ids in features:
            if not ids:
                continue
            try:
                ff = FeatureFile(path)
            except (OSError, ValueError) as exc:
                report.skipped.append((str(path), str(exc)))
                continue
            with ff:
                for vid in ids:
                    try:
                        feats = ff.read(vid)
                        info = ff.info(vid)
                    except (OSError, ValueError, KeyError) as exc:
                        report.skipped.append((f"{path}:{vid}", str(exc)))
                        continue
                    ts = info.get("timestamps")
                    yield VideoFeatures(vid, feats, ts if ts is not None and len(ts) == len(feats) else None,
                                        f"{path.absolute()}:{vid}")
        if videos:
            from dnsvr.extract import iter_video_features

            failures: list[Any] = []
            reported = 0
            if ray is not None:
                from dnsvr.cluster.extract import iter_video_features_ray

                extracted = iter_video_features_ray(videos, self.bundle.backbone, address=ray, failures=failures,
                                                    progress=progress)
            else:
                extractor = self._get_extractor()
                if inset_scale is not None:
                    from dnsvr.backbones.extractor import InsetExtractor

                    extractor = InsetExtractor(extractor, inset_scale)
                extracted = iter_video_features(videos, extractor, failures=failures, progress=progress)
            for rec in extracted:
                reported = self._report_failures(failures, reported, report)
                yield dataclasses.replace(rec, features=np.asarray(rec.features, dtype=np.float32),
                                          source=str(Path(rec.source).absolute()) if rec.source else rec.source)
            self._report_failures(failures, reported, report)

    def _drop_known(self, features: list[tuple[Path, list[str]]], videos: list[tuple[str, Path]],
                    report: AddReport, on_duplicate: str
                    ) -> tuple[list[tuple[Path, list[str]]], list[tuple[str, Path]]]:
        """Apply ``on_duplicate`` to ids already in the index *before* anything is decoded or read.

        ``"error"`` raises :class:`~dnsvr.index.records.DuplicateVideoError` naming them; ``"skip"``
        leaves them out (``report.already_indexed``; a *different* file under a known id is reported in
        ``report.skipped``); ``"replace"`` keeps them.
        """
        from dnsvr.index.records import DuplicateVideoError

        store = self  # membership and sources through the index (a sharded one asks the owning shard)
        if on_duplicate not in ("error", "replace", "skip"):
            raise ValueError(f"on_duplicate must be 'error', 'replace' or 'skip', got {on_duplicate!r}")
        if len(self) == 0 or on_duplicate == "replace":
            return features, videos
        known = [vid for _, ids in features for vid in ids if vid in store]
        known += [vid for vid, _ in videos if vid in store]
        if not known:
            return features, videos
        if on_duplicate == "error":
            shown = ", ".join(repr(v) for v in known[:5]) + (", ..." if len(known) > 5 else "")
            raise DuplicateVideoError(known, f"{len(known)} of the inputs {'is' if len(known) == 1 else 'are'} "
                                             f"already in the index ({shown}); skip or replace them")
        kept_features = [(path, [v for v in ids if v not in store]) for path, ids in features]
        report.already_indexed.extend(v for _, ids in features for v in ids if v in store)
        kept_videos = []
        for vid, path in videos:
            if vid not in store:
                kept_videos.append((vid, path))
                continue
            stored = self._source_of(vid)
            if stored and Path(stored).absolute() != Path(path).absolute():
                report.skipped.append((str(path), f"id {vid!r} already names another file in the index "
                                                  f"({stored}); give this one its own id in a list file "
                                                  "(id<TAB>path lines)"))
            else:
                report.already_indexed.append(vid)
        return kept_features, kept_videos

    @staticmethod
    def _report_failures(failures: list[Any], reported: int, report: AddReport) -> int:
        for f in failures[reported:]:
            if getattr(f, "extracted", False):
                logger.warning("%s: %s (frames before the damage were kept)", f.path, f.reason)
            else:
                report.skipped.append((str(getattr(f, "path", f)), str(getattr(f, "reason", f))))
        return len(failures)

    # -- writing ---------------------------------------------------------------------------
    def add(self, inputs: Sequence[str | Path] | str | Path, *, on_duplicate: str = "error",
            progress: bool | None = None, batch_size: int = 64, ray: str | None = None) -> AddReport:
        """Add videos (files, folders, list files) or HDF5 feature files.

        Videos that cannot be decoded are reported in the result and skipped. With the ``lite``
        bundle, the whitening is fitted on the first videos of the first ``add``; an add after which the
        index holds twice the region vectors a small whitening was fitted on logs a warning recommending
        :meth:`refit_whitening`.

        Args:
            inputs: paths; ``.h5``/``.hdf5`` files are read as feature files, everything else goes to
                :func:`dnsvr.extract.iter_video_features`.
            on_duplicate: for ids already in the index: ``"error"`` (raise before decoding anything),
                ``"replace"``, or ``"skip"`` (left out before decoding; listed in ``already_indexed``).
            progress: progress on stderr (default: a bar on a terminal, a line per video otherwise;
                False: none).
            batch_size: videos per commit (each commit is durable).
            ray: decode and extract the videos on a Ray cluster (``"auto"``, an address such as
                ``"ray://head:10001"``, or ``"local"`` for a cluster on this machine; see
                docs/scale-out.md); the features are committed here, by this index's single writer, in
                order of completion. With ``on_duplicate="skip"``, re-running an interrupted add
                resumes it. Needs ``pip install 'dnsvr[ray]'``.

        Returns:
            :class:`AddReport`.

        Raises:
            dnsvr.index.records.DuplicateVideoError: ``on_duplicate="error"`` and some ids are already
                in the index (nothing was decoded or added).
        """
        if self.readonly:
            raise VideoIndexError(f"index {self.directory} was opened read-only")
        if isinstance(inputs, str | Path):
            inputs = [inputs]
        start = time.perf_counter()
        report = AddReport()
        features, videos = self._plan(list(inputs), report)
        features, videos = self._drop_known(features, videos, report, on_duplicate)
        stream = self._iter_planned(features, videos, report, progress, ray=ray)
        if not self.bundle.whitened:
            stream = self._fit_whitening_from(stream)
        pending: list[IndexRecord] = []

        def flush() -> None:
            if not pending:
                return
            result = self._commit(pending, on_duplicate)
            report.added.extend(result.added)
            report.already_indexed.extend(result.already_indexed)
            pending.clear()

        for rec in stream:
            vid = rec.video_id
            problem = check_video_id(vid)
            if problem:  # one odd name is one skipped input, never a failed call
                report.skipped.append((repr(vid), f"invalid video id: {problem}"))
                continue
            try:
                rep = self.bundle.represent(self.bundle.whiten(rec.features))
            except BundleError as exc:
                report.skipped.append((vid, str(exc)))
                continue
            pending.append(IndexRecord(vid, rep.coarse, rep.fine, rep.selector, rec.attrs()))
            if len(pending) >= batch_size:
                flush()
        flush()
        if report.added:
            self._advise_refit()
        report.seconds = time.perf_counter() - start
        logger.info("added %d videos to %s (%d skipped) in %.1f s", len(report.added), self.directory,
                    len(report.skipped), report.seconds)
        return report

    def _commit(self, records: list[IndexRecord], on_duplicate: str) -> Any:
        """Commit a batch of records through the store (created by the first commit); the store's AddResult."""
        store = self.store
        if store is None:
            store = self._create_store()
        return store.add(records, on_duplicate=on_duplicate)  # type: ignore[arg-type]

    def _bundle_saved(self) -> None:
        """Called after the fitted lite whitening was saved into ``bundle/`` (a sharded index copies it)."""

    def entry(self, video_id: str) -> VideoEntry:
        """Metadata of one indexed video (frames, duration, source, when it was added).

        Raises:
            dnsvr.index.UnknownVideoError: the id is not (or no longer) indexed.
        """
        if self.store is None:
            raise UnknownVideoError([video_id])
        return self.store.get(video_id)

    def refresh(self) -> None:
        """Take in now what other processes committed (a reader's every read call does it as well)."""
        if self.store is not None:
            self.store.refresh()

    def _source_of(self, video_id: str) -> str | None:
        """The file an indexed video was added from (None if unknown or no longer indexed)."""
        try:
            return self.store.get(video_id).source if self.store is not None else None
        except KeyError:  # removed by a writer meanwhile
            return None

    def _fit_whitening_from(self, stream: Iterator[VideoFeatures]) -> Iterator[VideoFeatures]:
        """Buffer the first videos, fit the lite whitening on them, save the bundle, then replay them."""
        buffered: list[VideoFeatures] = []
        vectors = 0
        for item in stream:
            buffered.append(item)
            vectors += int(np.prod(item.features.shape[:-1]))
            if vectors >= WHITENING_SAMPLE_VECTORS:
                break
        if buffered:
            # under the folder's writer lock (held since open): look again, in case a writer that
            # held it before us fitted and committed a whitening since we read the bundle
            on_disk = Bundle.load(inside(self.directory, BUNDLE_DIR, kind="dir"))
            if on_disk.whitened:
                logger.info("the whitening of %s was fitted by another writer; using it", self.directory)
                self.bundle = on_disk
            else:
                self.bundle.fit_whitening([b.features for b in buffered])
                self.bundle.extra["whitening_fitted_on"]["by"] = "first add"
                self.bundle.save(inside(self.directory, BUNDLE_DIR, kind="dir"))
                self._bundle_saved()
        yield from buffered
        yield from stream

    def remove(self, video_ids: Iterable[str] | str, *, missing: str = "error") -> int:
        """Remove videos (hidden at once; :meth:`compact` reclaims their space). Returns how many."""
        return self._writable_store().remove(video_ids, missing=missing)  # type: ignore[arg-type]

    def compact(self) -> Any:
        """Rewrite the fine shards without removed videos (returns the store's report)."""
        return self._writable_store().compact()

    def verify(self, checksums: bool = True) -> Any:
        """Check the store's consistency (returns the store's :class:`~dnsvr.index.VerifyReport`)."""
        if self.store is None:
            raise VideoIndexError(f"index {self.directory} is empty: nothing to verify")
        return self.store.verify(checksums=checksums)

    def ids(self) -> list[str]:
        """Ids of the indexed videos, in the order they were added."""
        return [] if self.store is None else self.store.ids()

    def frames(self) -> list[int]:
        """Frame counts of the indexed videos, in :meth:`ids` order."""
        return [] if self.store is None else self.store.n_frames().tolist()

    def sources(self) -> list[str | None]:
        """The files the indexed videos were added from, in :meth:`ids` order."""
        return [self._source_of(v) for v in self.ids()]

    def info(self) -> dict[str, Any]:
        """Bundle, counts and storage (JSON-ready)."""
        manifest = _read_manifest(self.directory)
        out: dict[str, Any] = {"directory": str(self.directory), "format_version": manifest.get("format_version"),
                               "bundle": self.bundle.identity(), "videos": len(self)}
        out.update(self._whitening_info())
        learned = self.bundle.extra.get("learned_whitening")
        if learned is not None:  # dnsvr train whitening: learned from augmented copies, on what
            out["learned_whitening"] = learned
        out["scoring"] = self.bundle.scoring.to_dict()
        if self.store is not None:
            out["store"] = self.store.info()
        return out

    def _whitening_info(self) -> dict[str, Any]:
        """What a collection-fitted (lite) whitening was fitted on, and whether a refit is recommended."""
        from dnsvr.bundle import WHITENING_RECOMMENDED_VECTORS
        from dnsvr.index.refit import refit_recommended

        fitted_on = self.bundle.extra.get("whitening_fitted_on")
        if fitted_on is None:  # a published or trained whitening
            return {}
        if "learned_whitening" in self.bundle.extra:  # refit the index it was attached from instead
            return {"whitening_fitted_on": fitted_on, "whitening_refit_recommended": False}
        if int(fitted_on.get("region_vectors", 0)) >= WHITENING_RECOMMENDED_VECTORS:
            return {"whitening_fitted_on": fitted_on, "whitening_refit_recommended": False}  # no need to count
        return {"whitening_fitted_on": fitted_on,
                "whitening_refit_recommended": refit_recommended(fitted_on, self._region_vectors())}

    def _region_vectors(self) -> int:
        """Region vectors the indexed videos hold (frames × regions per frame)."""
        frames = int(sum(self.frames()))
        return frames * int(self.bundle.fine_layout()[1][0]) if frames else 0

    def _advise_refit(self) -> None:
        """Log once, after an add, when the index has outgrown the few videos its whitening was fitted on."""
        info = self._whitening_info()
        if info.get("whitening_refit_recommended"):
            fitted = info["whitening_fitted_on"]
            logger.warning("the whitening of %s was fitted on %d region vectors of %d videos; the index now holds "
                           "%d videos (%d region vectors): refit it on all of them with `dnsvr index refit %s "
                           "NEW_INDEX` (docs/search.md)", self.directory, fitted["region_vectors"], fitted["videos"],
                           len(self), self._region_vectors(), self.directory)

    def refit_whitening(self, output: str | Path, *, videos_root: str | Path | None = None,
                        skip_missing: bool = False, dims: int | None = None,
                        progress: bool | None = None) -> Any:
        """Build a new index at ``output`` whose lite whitening is fitted on all of this index's videos.

        The whitening of a ``lite`` index is fitted by its first add; this re-decodes every indexed
        video's source (the index keeps only whitened features), fits the whitening on frames spread
        over all videos, and commits every video again under the same id, in the same order, with its
        timestamps and source (where the file is now; the first ``added`` time is kept as
        ``first_added`` in the video's metadata). This index is only read. Swap the folders afterwards
        (``mv``). See :mod:`dnsvr.index.refit`.

        Args:
            output: the new index folder (must not exist, or be empty; outside this index).
            videos_root: where the videos are now, when they moved: a source missing at its recorded path
                is looked up under this folder by its path's trailing components, longest first
                (``ROOT/a/b/clip.mp4``, then ``ROOT/b/clip.mp4``, then ``ROOT/clip.mp4``); looked up there
                first when given.
            skip_missing: leave out (and report) videos whose source is missing or cannot be decoded,
                instead of raising.
            dims: whitened size (default: the larger of this index's and the lite default, 128).
            progress: progress on stderr while decoding.

        Returns:
            :class:`dnsvr.index.refit.RefitReport` (ids re-indexed, skipped, the new ``fitted_on``).

        Raises:
            BundleError: the bundle's whitening is published or read by trained networks.
            dnsvr.index.refit.RefitError: sources missing or undecodable (without ``skip_missing``; nothing
                usable is written: an interrupted or failed run leaves ``<output>.partial``, which the
                next run resumes from), or an output inside this index.
            FileExistsError: ``output`` exists and is not empty.

        Example:
            >>> rep = index.refit_whitening("my.index.new", videos_root="videos/")  # doctest: +SKIP
            >>> rep.fitted_on                       # doctest: +SKIP
            {'videos': 240, 'region_vectors': 50004, 'dims': 128, 'by': 'refit', 'collection_videos': 240}
        """
        from dnsvr.index.refit import refit_whitening

        return refit_whitening(self, output, videos_root=videos_root, skip_missing=skip_missing, dims=dims,
                               progress=progress)

    def attach(self, bundle: str | Path | Bundle, output: str | Path, *, batch_size: int = 256) -> VideoIndex:
        """Build a new index at ``output`` with another (trained) bundle, from this index's stored features.

        No video is decoded: this index's fine representations are its base features (the ``lite``
        bundle's training-free fine stage stores them as they are), and the new bundle represents
        them again. The new bundle must take the same backbone and whitening, or a whitening that
        follows this one by a linear map (``dnsvr train whitening``): the stored features are then
        mapped (:meth:`dnsvr.backbones.PCAWhitening.relative_to`).

        Returns:
            The new index, open for writing.

        Raises:
            BundleError: this index does not store base features, or the whitening differs.
        """
        store = self.store
        if store is None:
            raise VideoIndexError(f"index {self.directory} is empty")
        new_bundle = load_bundle(bundle)
        if self.bundle.fine_type != "chamfer":
            raise BundleError(f"index {self.directory} stores {self.bundle.fine_type!r} representations, not base "
                              "features; build the new index from the videos or feature files instead")
        mine = self.bundle.identity().get("whitening")
        theirs = new_bundle.identity().get("whitening")
        conversion = None  # a learned whitening: a linear map of this index's whitened features
        if new_bundle.whitening is None:
            new_bundle.whitening = self.bundle.whitening
        elif theirs != mine:
            if hasattr(new_bundle.whitening, "relative_to") and hasattr(self.bundle.whitening, "relative_to"):
                conversion = new_bundle.whitening.relative_to(self.bundle.whitening)
            if conversion is None:
                raise BundleError(f"bundle {new_bundle.name!r} whitening {theirs} differs from the index's {mine}: "
                                  "its networks expect other features")
        out = VideoIndex.create(output, new_bundle)
        ids = store.ids()
        records: list[IndexRecord] = []
        for start in range(0, len(ids), batch_size):
            chunk = ids[start:start + batch_size]
            for vid, fine in zip(chunk, store.fine(chunk)):
                entry = store.get(vid)
                rep = new_bundle.represent(map_whitened(self.bundle.base_features(fine), conversion))
                records.append(IndexRecord(vid, rep.coarse, rep.fine, rep.selector, entry.record_meta()))
            out._writable_store().add(records)
            records.clear()
        return out

    # -- searching -------------------------------------------------------------------------
    def _indexed_query(self, video_id: str) -> _Query | None:
        """The query made of an indexed video (None when the id is not in the index)."""
        store = self.store
        if store is None or video_id not in store:
            return None
        fine = np.asarray(store.fine([video_id])[0])
        entry = store.get(video_id)
        coarse = store.coarse_vectors([video_id])[0]
        return _Query(video_id, VideoRepresentation(coarse, fine, entry.selector), entry.timestamps,
                      index_id=video_id)

    def _prepare_queries(self, queries: Sequence[Any], progress: bool | None,
                         failed: list[tuple[int, str, str]] | None = None) -> list[tuple[int, _Query]]:
        """``(position in queries, prepared query)`` for each query video, in order.

        A query that cannot be used raises :class:`VideoIndexError`, or with ``failed`` given is
        appended there as ``(position, name, reason)`` and the others go on.
        """
        out: list[tuple[int, _Query]] = []
        video_inputs: list[tuple[int, str]] = []

        def bad(pos: int, name: str, reason: str) -> None:
            if failed is None:
                raise VideoIndexError(f"query {name}: {reason}")
            failed.append((pos, name, reason))

        for pos, q in enumerate(queries):
            if isinstance(q, np.ndarray):
                name = f"array{pos}"
                try:
                    rep = self.bundle.represent(self.bundle.whiten(q))
                except BundleError as exc:
                    bad(pos, name, str(exc))
                    continue
                out.append((pos, _Query(name, rep, None)))
                continue
            if not isinstance(q, str | Path):
                bad(pos, f"#{pos}", f"a query is a video file, an indexed video id, a feature file (.h5) or a "
                                    f"[T, 9, D] feature array (numpy), not {type(q).__name__}")
                continue
            text = str(q)
            indexed = self._indexed_query(text)
            if indexed is not None:
                out.append((pos, indexed))
            elif _is_feature_file(text):
                report = AddReport()
                for rec in self._iter_inputs([text], report, progress):
                    try:
                        rep = self.bundle.represent(self.bundle.whiten(rec.features))
                    except BundleError as exc:
                        bad(pos, f"{text}:{rec.video_id}", str(exc))
                        continue
                    out.append((pos, _Query(rec.video_id, rep, rec.timestamps)))
                for item, reason in report.skipped:
                    bad(pos, item, reason)
            elif Path(text).exists():
                video_inputs.append((pos, text))
            else:
                bad(pos, text, "neither a video id in the index nor an existing file")
        if video_inputs:
            report = AddReport()
            # the file name names the query in progress lines; a name given twice gets its position
            names = [Path(text).name or f"query{pos}" for pos, text in video_inputs]
            keys = [n if names.count(n) == 1 else f"{n}#{pos}" for n, (pos, _) in zip(names, video_inputs)]
            pairs = [(key, Path(text)) for key, (_, text) in zip(keys, video_inputs)]
            where = {key: item for key, item in zip(keys, video_inputs)}
            inset_scale = self.bundle.scoring.inset_scale
            for rec in self._iter_planned([], pairs, report, progress, inset_scale=inset_scale):
                pos, text = where[rec.video_id]
                feats, inset = rec.features, None
                if inset_scale is not None:  # the tenth row of each frame is its inset vector
                    feats, inset = feats[:, :-1], feats[:, -1]
                try:
                    rep = self.bundle.represent(self.bundle.whiten(feats))
                    inset = self.bundle.inset_vectors(inset)
                except BundleError as exc:
                    bad(pos, text, str(exc))
                    continue
                out.append((pos, _Query(Path(text).stem or text, rep, rec.timestamps, inset=inset)))
            by_path = {str(Path(text)): (pos, text) for pos, text in video_inputs}
            for item, reason in report.skipped:
                pos, text = by_path.get(str(Path(item)), (len(queries), item))
                bad(pos, text, reason)
        out.sort(key=lambda x: x[0])
        return out

    def search(self, queries: Sequence[str | Path | np.ndarray] | str | Path | np.ndarray, *,
               top_k: int | None = 10, budget: Budget | str | int | float | None = None, segments: bool = True,
               ann_candidates: int | None = None, include_self: bool = False,
               progress: bool | None = None, precision: str = DEFAULT_PRECISION,
               on_error: str = "raise", allow_partial: bool = False,
               match: str = DEFAULT_MATCH) -> list[QueryResults]:
        """Rank the indexed videos for each query with the DnS pipeline.

        Args:
            queries: video files, ids of indexed videos, HDF5 feature files (every video in it), or
                feature arrays ``[T, 9, D]`` (numpy; raw backbone regions or already whitened).
            top_k: results per query (None = all).
            budget: fine re-ranking budget: a :class:`~dnsvr.search.Budget`, ``"5%"``, ``"1000"``,
                ``"5%,1000"``... (default: up to 1,000 pairs).
            segments: compute the aligned matching segments of re-ranked results in the top-k.
            ann_candidates: coarse stage over an ANN top-N instead of every video (needs an ANN
                coarse index; exact otherwise).
            include_self: keep a query that is an indexed video in its own results.
            progress: progress on stderr while extracting query videos.
            precision: fine-stage region products, ``"exact"`` or ``"int8"`` (faster, approximate;
                S^f_B's binary codes are exact either way).
            on_error: ``"raise"`` (a query that cannot be used raises) or ``"report"`` (it comes back
                as a :class:`~dnsvr.search.QueryResults` with ``error`` set and no results; the
                others are searched).
            allow_partial: (sharded index) a shard that cannot answer is left out and named in each
                result's ``missing_shards`` instead of failing the query.
            match: how re-scored pairs rank: ``"related"`` (everything that shares content with the
                query, whole copies and videos containing some of its shots) or ``"copy"`` (whole
                copies above videos that merely contain some shots); see docs/search.md.

        Returns:
            One :class:`~dnsvr.search.QueryResults` per query video, in the order of ``queries``.

        Raises:
            VideoIndexError: an unknown or unreadable query (``on_error="raise"``), or an empty index.
            ValueError: an unknown ``precision`` or ``on_error``.
            dnsvr.index.query.ShardUnavailableError: a shard cannot answer (without ``allow_partial``).

        Example:
            >>> hits = index.search(["query.mp4"], top_k=5)[0]     # doctest: +SKIP
            >>> [(r.video_id, round(r.score, 2), r.source) for r in hits.results]  # doctest: +SKIP
        """
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
        if on_error not in ("raise", "report"):
            raise ValueError(f"on_error must be 'raise' or 'report', got {on_error!r}")
        if match not in MATCH_MODES:
            raise ValueError(f"unknown match mode {match!r}; expected one of {', '.join(MATCH_MODES)}")
        if isinstance(queries, str | Path | np.ndarray):
            queries = [queries]  # type: ignore[list-item]
        if len(self) == 0:
            raise VideoIndexError(f"index {self.directory} is empty: add videos first")
        budget = Budget.parse(budget)
        _check_top_k(top_k)
        if ann_candidates is not None and (isinstance(ann_candidates, bool) or not isinstance(ann_candidates, int)
                                           or ann_candidates < 1):
            raise VideoIndexError(f"ann_candidates must be a positive number of candidates, got {ann_candidates!r}")
        failed: list[tuple[int, str, str]] | None = [] if on_error == "report" else None
        group = self._shard_group()
        # one consistent state for the whole search: a concurrent remove/compact/add never makes an
        # id found by the coarse stage disappear before the fine stage reads it
        with self._snapshot():
            prepared = self._prepare_queries(list(queries), progress, failed)
            done = [(pos, self._with_sources(self._search_one(q, self.store, top_k, budget, segments,
                                                              ann_candidates, include_self, precision,
                                                              allow_partial, group, match)))
                    for pos, q in prepared]
        done += [(pos, QueryResults(name, [], error=reason)) for pos, name, reason in failed or []]
        done.sort(key=lambda x: x[0])
        return [q for _, q in done]

    def _snapshot(self) -> Any:
        """One consistent state of the stored videos for a whole search (see IndexStore.snapshot)."""
        return self.store.snapshot() if self.store is not None else contextlib.nullcontext()

    def _with_sources(self, q: QueryResults) -> QueryResults:
        """Fill each result's ``source`` (the file it was indexed from) from the store."""
        for r in q.results:
            r.source = self._source_of(r.video_id)
        return q

    def search_representation(self, name: str, rep: VideoRepresentation, timestamps: np.ndarray | None = None,
                              **kwargs: Any) -> QueryResults:
        """Search with a query already represented by this index's bundle (see :meth:`search`)."""
        if len(self) == 0:
            raise VideoIndexError(f"index {self.directory} is empty: add videos first")
        _check_top_k(kwargs.get("top_k", 10))
        with self._snapshot():
            return self._with_sources(
                self._search_one(_Query(name, rep, timestamps), self.store, kwargs.get("top_k", 10),
                                 Budget.parse(kwargs.get("budget")), kwargs.get("segments", True),
                                 kwargs.get("ann_candidates"), kwargs.get("include_self", False),
                                 kwargs.get("precision", DEFAULT_PRECISION), kwargs.get("allow_partial", False),
                                 match=kwargs.get("match", DEFAULT_MATCH)))

    def _shard_group(self) -> Any:
        """The shards a query fans out to: this index is one local shard."""
        from dnsvr.index.query import LocalGroup, LocalShard

        return LocalGroup([LocalShard(self.directory.name, self.store, self.bundle)])

    def _search_one(self, q: _Query, store: IndexStore | None, top_k: int | None, budget: Budget, segments: bool,
                    ann_candidates: int | None, include_self: bool,
                    precision: str = DEFAULT_PRECISION, allow_partial: bool = False,
                    group: Any = None, match: str = DEFAULT_MATCH) -> QueryResults:
        from dnsvr.index.query import QueryRep, search_shards

        rep = QueryRep(q.name, q.rep.coarse, q.rep.fine, q.rep.selector, q.timestamps, q.index_id, q.inset)
        return search_shards(rep, group if group is not None else self._shard_group(), self.bundle, top_k=top_k,
                             budget=budget, segments=segments, ann_candidates=ann_candidates,
                             include_self=include_self, precision=precision, allow_partial=allow_partial,
                             match=match)


@contextlib.contextmanager
def open_index(directory: str | Path, readonly: bool = False) -> Iterator[VideoIndex]:
    """``with open_index(dir) as index: ...`` (closes the store and releases the lock)."""
    index = VideoIndex.open(directory, readonly=readonly)
    try:
        yield index
    finally:
        index.close()

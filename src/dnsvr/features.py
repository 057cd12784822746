"""Feature files: HDF5 with one dataset per video id, shape [T, 9, D].

This is the layout of the published FIVR/CC_WEB_VIDEO/SVD/EVVE/VCDB/DnS-100K
feature files, and the layout ``dnsvr extract`` writes. Every command that
consumes features reads them through :class:`FeatureFile`, so the published
files work as they are.

Example:
    >>> with FeatureFile("fivr5k.hdf5") as ff:          # doctest: +SKIP
    ...     for video_id, feats in ff.iter():
    ...         print(video_id, feats.shape)
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from dnsvr._fsutil import fsync_dir

logger = logging.getLogger(__name__)

#: Attribute of dnsvr-written datasets: False while the video is being written, True once complete.
COMPLETE_ATTR = "dnsvr_complete"


class FeatureFileError(ValueError):
    """A feature file or one of its datasets is missing or malformed."""


@dataclass(frozen=True)
class VideoFeatures:
    """One video's region features as they cross from extraction (or a feature file) into the index.

    The record every producer yields (:func:`dnsvr.extract.iter_video_features`, its Ray variant, the
    index reading a feature file) and every consumer reads: the timestamps and the source have a
    field each, everything else the extraction recorded is in :attr:`info`.

    Attributes:
        video_id: the video id.
        features: region features ``[T, regions, D]`` (raw or whitened).
        timestamps: float64 ``[T]``, each frame's time in seconds; None where unknown.
        source: the file the features came from (``file.h5:id`` for a feature file); None where unknown.
        info: the rest of the extraction's record, JSON-like values: ``fps``, ``backbone``, ``whitening``,
            ``duration``, ``frames``, ``width``, ``height``, ``rotation``, ``truncated``, ``damage``, ``decode``,
            ``max_sampling_error`` (what :func:`dnsvr.extract.iter_video_features` records; empty for others).

    Raises:
        ValueError: features that are not ``[T, regions, D]``, or timestamps that are not ``[T]``.
    """

    video_id: str
    features: np.ndarray
    timestamps: np.ndarray | None = None
    source: str | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        shape = tuple(np.shape(self.features))
        if len(shape) != 3:
            raise ValueError(f"{self.video_id!r}: features must be [T, regions, D], got shape {shape}")
        if self.timestamps is not None:
            ts = np.asarray(self.timestamps, dtype=np.float64)
            if ts.shape != (shape[0],):
                raise ValueError(f"{self.video_id!r}: {ts.shape} timestamps for {shape[0]} frames")
            object.__setattr__(self, "timestamps", ts)

    @property
    def frames(self) -> int:
        """T, the number of frames."""
        return int(np.shape(self.features)[0])

    @classmethod
    def from_attrs(cls, video_id: str, features: np.ndarray, attrs: dict[str, Any]) -> VideoFeatures:
        """The record of a flat attribute dict (the extraction's, or an HDF5 dataset's): ``timestamps`` and
        ``source`` taken out, the rest kept as :attr:`info`."""
        info = dict(attrs)
        ts = info.pop("timestamps", None)
        source = info.pop("source", None)
        return cls(video_id, features, None if ts is None else np.asarray(ts, dtype=np.float64),
                   None if source is None else str(source), info)

    def attrs(self) -> dict[str, Any]:
        """The flat attribute dict (the inverse of :meth:`from_attrs`): what a feature file's dataset and the
        index's metadata record, ``frames`` included."""
        out = {**self.info, "frames": self.frames}
        if self.source is not None:
            out["source"] = self.source
        if self.timestamps is not None:
            out["timestamps"] = self.timestamps
        return out


class FeatureFile:
    """Read-only access to an HDF5 feature file.

    Datasets may sit at the root (published files) or in nested groups; a
    video id is the dataset's path relative to the root (``"a/b"``).
    A dataset whose ``dnsvr_complete`` attribute exists and is false is an
    unfinished write of ``dnsvr extract`` and is skipped; published files have
    no such attribute and every rank-3 dataset counts.

    Args:
        path: the ``.h5``/``.hdf5`` file.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        FeatureFileError: if it is not a readable HDF5 file.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if self.path.exists() and not self.path.is_file():
            raise FeatureFileError(f"{self.path}: not a regular file (a FIFO, device, socket or folder): refused")
        if not self.path.is_file():
            raise FileNotFoundError(f"feature file not found: {self.path}")
        try:
            self._h5 = h5py.File(self.path, "r")
        except OSError as exc:
            raise FeatureFileError(f"{self.path}: not a readable HDF5 file ({exc})") from exc
        self._ids: list[str] | None = None

    # -- container protocol -------------------------------------------------
    def ids(self) -> list[str]:
        """Video ids in storage order (complete datasets of rank 3 only)."""
        if self._ids is None:
            ids: list[str] = []

            def visit(name: str, obj: Any) -> None:
                if isinstance(obj, h5py.Dataset) and obj.ndim == 3:
                    if COMPLETE_ATTR in obj.attrs and not bool(obj.attrs[COMPLETE_ATTR]):
                        return
                    ids.append(name)

            self._h5.visititems(visit)
            self._ids = ids
        return list(self._ids)

    def __contains__(self, video_id: object) -> bool:
        return isinstance(video_id, str) and video_id in set(self.ids())

    def __len__(self) -> int:
        return len(self.ids())

    def __iter__(self) -> Iterator[str]:
        return iter(self.ids())

    # -- access ---------------------------------------------------------------
    def _dataset(self, video_id: str) -> h5py.Dataset:
        try:
            ds = self._h5[video_id]
        except KeyError:
            raise KeyError(f"video id {video_id!r} not in {self.path}") from None
        if not isinstance(ds, h5py.Dataset) or ds.ndim != 3:
            shape = getattr(ds, "shape", None)
            raise FeatureFileError(f"{self.path}:{video_id}: expected a [T, 9, D] dataset, got shape {shape}")
        return ds

    def shape(self, video_id: str) -> tuple[int, int, int]:
        """The dataset's shape ``(T, regions, D)`` without reading it."""
        return tuple(self._dataset(video_id).shape)  # type: ignore[return-value]

    def read(self, video_id: str, dtype: np.dtype | type = np.float32) -> np.ndarray:
        """The features of one video as a ``[T, 9, D]`` array of ``dtype``."""
        return np.asarray(self._dataset(video_id)[()], dtype=dtype)

    def info(self, video_id: str) -> dict[str, Any]:
        """The dataset's attributes (fps, backbone, timestamps, ... when dnsvr wrote it)."""
        out: dict[str, Any] = {}
        for key, value in self._dataset(video_id).attrs.items():
            out[key] = value.tolist() if isinstance(value, np.ndarray) else value
        return out

    def file_attrs(self) -> dict[str, Any]:
        """The file's root attributes (how ``dnsvr extract`` made the features; empty for published files)."""
        out: dict[str, Any] = {}
        for key, value in self._h5.attrs.items():
            out[key] = value.tolist() if isinstance(value, np.ndarray) else value
        return out

    def iter(self, ids: Iterable[str] | None = None,
             dtype: np.dtype | type = np.float32) -> Iterator[tuple[str, np.ndarray]]:
        """Yield ``(video_id, features)`` one video at a time (streamed, bounded memory).

        Args:
            ids: which videos, in this order; default every video in storage order.
            dtype: the array type to return.
        """
        for video_id in (self.ids() if ids is None else ids):
            yield video_id, self.read(video_id, dtype)

    # -- lifecycle ------------------------------------------------------------
    def close(self) -> None:
        self._h5.close()

    def __enter__(self) -> FeatureFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------

#: Root attribute marking a file written by dnsvr (its format version).
FORMAT_ATTR = "dnsvr_format"
FORMAT_VERSION = 1
#: Root attributes that must agree before videos are added to an existing file.
PROVENANCE_ATTRS = ("backbone", "weights", "whitening", "dims", "fps", "short_side", "crop", "decode", "precision")
#: HDF5 1.8 object formats: dense attribute storage (long timestamp lists), readable by every HDF5 >= 1.8.
_LIBVER = ("v108", "v108")


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def _attr_value(value: Any) -> Any:
    """A value HDF5 can store as an attribute (None becomes an empty string)."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return np.asarray(value)
    if isinstance(value, Path):
        return str(value)
    return value


def _same(a: Any, b: Any) -> bool:
    a = a.tolist() if isinstance(a, np.ndarray) else a
    b = b.tolist() if isinstance(b, np.ndarray) else b
    if isinstance(a, bytes):
        a = a.decode()
    if isinstance(b, bytes):
        b = b.decode()
    if isinstance(a, float) or isinstance(b, float):
        try:
            return abs(float(a) - float(b)) < 1e-9
        except (TypeError, ValueError):
            return False
    return a == b


class VideoFeatureWriter:
    """Streams one video's features into a journal part; see :meth:`FeatureWriter.begin`.

    Call :meth:`append` with consecutive ``[n, 9, D]`` blocks, then :meth:`commit` (atomic)
    or :meth:`abort`. Memory does not grow with the video's length.
    """

    def __init__(self, owner: FeatureWriter, video_id: str, tmp: Path, final: Path) -> None:
        self.video_id = video_id
        self._owner = owner
        self._tmp = tmp
        self._final = final
        self._h5: h5py.File | None = h5py.File(tmp, "w", libver=_LIBVER)
        self._ds: h5py.Dataset | None = None
        self.frames = 0

    def append(self, features: np.ndarray) -> None:
        """Add ``[n, regions, D]`` features after those already written.

        Raises:
            ValueError: if the shape disagrees with the earlier blocks.
        """
        if self._h5 is None:
            raise RuntimeError(f"video {self.video_id!r}: writer already closed")
        arr = np.asarray(features)
        if arr.ndim != 3:
            raise ValueError(f"video {self.video_id!r}: features must be [T, 9, D], got shape {arr.shape}")
        if self._ds is None:
            self._ds = self._h5.create_dataset(
                "features", shape=(0, *arr.shape[1:]), maxshape=(None, *arr.shape[1:]),
                dtype=self._owner.dtype, chunks=(max(1, min(64, 2 ** 20 // max(arr[0].nbytes, 1))), *arr.shape[1:]))
        elif arr.shape[1:] != self._ds.shape[1:]:
            raise ValueError(f"video {self.video_id!r}: block of shape {arr.shape} after blocks of "
                             f"[*, {', '.join(map(str, self._ds.shape[1:]))}]")
        n = arr.shape[0]
        if n:
            self._ds.resize(self.frames + n, axis=0)
            self._ds[self.frames:self.frames + n] = arr.astype(self._owner.dtype, copy=False)
            self.frames += n

    def commit(self, attrs: dict[str, Any] | None = None) -> None:
        """Finish the video: the part becomes visible atomically (rename), durable with fsync.

        Raises:
            ValueError: if no frame was appended.
        """
        if self._h5 is None:
            raise RuntimeError(f"video {self.video_id!r}: writer already closed")
        if self._ds is None or self.frames == 0:
            self.abort()
            raise ValueError(f"video {self.video_id!r}: no features to write")
        self._ds.attrs["video_id"] = self.video_id
        for key, value in (attrs or {}).items():
            self._ds.attrs[key] = _attr_value(value)
        self._h5.close()
        self._h5 = None
        if self._owner.fsync:
            _fsync_file(self._tmp)
        os.replace(self._tmp, self._final)
        if self._owner.fsync:
            fsync_dir(self._final.parent)
        self._owner._committed(self)

    def abort(self) -> None:
        """Drop the video (nothing of it becomes visible)."""
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> VideoFeatureWriter:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if self._h5 is not None:
            self.abort()


class FeatureWriter:
    """Crash-safe, resumable writer of a feature file (the layout :class:`FeatureFile` reads).

    HDF5 files are not crash-safe: a process killed while it modifies one can leave
    the whole file unreadable. So the feature file itself is only ever *replaced*,
    never modified in place:

    1. Each finished video is written to its own small file in a journal folder
       ``<output>.parts/`` (written under a temporary name, fsynced, then renamed:
       a part is either complete or absent).
    2. A *checkpoint* copies the feature file, adds the journal's videos to the
       copy (each dataset created with ``dnsvr_complete=False`` and flagged True
       once written), fsyncs it and atomically renames it over the feature file;
       then the merged parts are deleted. Checkpoints run at :meth:`close` (also
       on Ctrl-C and exceptions, via the context manager), and during a run every
       ``checkpoint_interval`` seconds, spaced so that copying costs at most ~5% of
       the run.
    3. Opening a writer first merges any parts left by a crashed run.

    So at every instant the feature file is a valid HDF5 file holding every video
    of the last checkpoint, and every finished video is either in it or in the
    journal (and merged on the next open). Re-running skips :meth:`completed_ids`.

    Args:
        path: the ``.h5`` feature file (created if missing).
        attrs: root attributes describing how the features were made (``backbone``,
            ``whitening``, ``dims``, ``fps``, ...). When the file exists, the
            attributes in :data:`PROVENANCE_ATTRS` must agree with it.
        dtype: storage type, ``float32`` or ``float16``.
        checkpoint_interval: seconds between checkpoints during a run (0: after every video).
        fsync: make each part and checkpoint durable (power loss), not only atomic.

    Raises:
        FeatureFileError: when the existing file is not a dnsvr feature file, or was
            written with other settings (mixing them would make the features incomparable).

    Example:
        >>> with FeatureWriter("out.h5", attrs={"backbone": "resnet50"}) as w:   # doctest: +SKIP
        ...     w.write("video1", feats, {"fps": 1.0})
    """

    def __init__(self, path: str | Path, attrs: dict[str, Any] | None = None,
                 dtype: np.dtype | type | str = np.float32, checkpoint_interval: float = 30.0,
                 fsync: bool = True) -> None:
        self.path = Path(path)
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.dtype(np.float32), np.dtype(np.float16)):
            raise ValueError(f"dtype must be float32 or float16, got {self.dtype}")
        self.attrs = {k: _attr_value(v) for k, v in (attrs or {}).items()}
        self.attrs.setdefault("dtype", self.dtype.name)
        self.checkpoint_interval = float(checkpoint_interval)
        self.fsync = bool(fsync)
        self.journal = self.path.with_name(self.path.name + ".parts")
        self._tmp_main = self.path.with_name(self.path.name + ".tmp")
        self._closed = False
        self._last_checkpoint = time.monotonic()
        self._last_merge_seconds = 0.0
        self._pending: dict[str, Path] = {}      # video id -> committed part not yet merged
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_path = self.path.with_name(self.path.name + ".lock")
        self._lock_fh = _lock(self._lock_path, self.path)
        try:
            self._init_state()
        except BaseException:
            self._unlock()
            raise

    def _init_state(self) -> None:
        self._main_ids = self._check_existing()
        self.journal.mkdir(exist_ok=True)
        for stale in self.journal.glob("*.tmp"):
            stale.unlink(missing_ok=True)        # a video that was being written when a run died
        self._tmp_main.unlink(missing_ok=True)   # a checkpoint that died before its rename
        for part in sorted(self.journal.glob("*.h5")):
            video_id = self._part_id(part)
            if video_id is not None:
                self._pending[video_id] = part
        if self._pending:
            logger.info("%s: recovering %d finished videos from %s", self.path, len(self._pending), self.journal)
            self.checkpoint()

    # -- state --------------------------------------------------------------------------------
    def _check_existing(self) -> set[str]:
        if not self.path.exists():
            return set()
        with FeatureFile(self.path) as ff:
            ids = set(ff.ids())
            root = ff.file_attrs()
        if FORMAT_ATTR not in root:
            if ids:
                raise FeatureFileError(
                    f"{self.path}: exists and was not written by dnsvr extract ({len(ids)} datasets, no "
                    f"{FORMAT_ATTR!r} attribute); choose another output file")
            return ids
        for key in PROVENANCE_ATTRS:
            if key in self.attrs and key in root and not _same(root[key], self.attrs[key]):
                raise FeatureFileError(
                    f"{self.path}: was written with {key}={root[key]!r}, this run uses {key}={self.attrs[key]!r}; "
                    "features made differently are not comparable — choose another output file")
        stored_dtype = root.get("dtype")
        if stored_dtype is not None and not _same(stored_dtype, self.dtype.name):
            logger.warning("%s: stored as %s; new videos are written as %s", self.path, stored_dtype, self.dtype)
        return ids

    @staticmethod
    def _part_id(part: Path) -> str | None:
        try:
            with h5py.File(part, "r") as h5:
                return str(h5["features"].attrs["video_id"])
        except (OSError, KeyError) as exc:
            logger.warning("ignoring unreadable journal part %s (%s)", part, exc)
            return None

    def completed_ids(self) -> set[str]:
        """Ids already complete: in the feature file or finished in the journal."""
        return set(self._main_ids) | set(self._pending)

    def __contains__(self, video_id: object) -> bool:
        return isinstance(video_id, str) and (video_id in self._main_ids or video_id in self._pending)

    # -- writing ------------------------------------------------------------------------------
    def _part_name(self, video_id: str) -> str:
        return hashlib.sha1(video_id.encode("utf-8")).hexdigest()[:24]

    def begin(self, video_id: str) -> VideoFeatureWriter:
        """Start writing one video (stream blocks with ``append``, then ``commit``).

        Raises:
            ValueError: for an id HDF5 cannot use as a dataset path.
        """
        if self._closed:
            raise RuntimeError(f"{self.path}: writer is closed")
        video_id = validate_video_id(video_id)
        name = self._part_name(video_id)
        return VideoFeatureWriter(self, video_id, self.journal / f"{name}.tmp", self.journal / f"{name}.h5")

    def write(self, video_id: str, features: np.ndarray, attrs: dict[str, Any] | None = None) -> None:
        """Write one video's ``[T, 9, D]`` features at once (atomic)."""
        with self.begin(video_id) as part:
            part.append(features)
            part.commit(attrs)

    def _committed(self, part: VideoFeatureWriter) -> None:
        self._pending[part.video_id] = part._final
        self.maybe_checkpoint()

    def maybe_checkpoint(self) -> bool:
        """Checkpoint if the interval has passed (and the last merge's cost allows it)."""
        if not self._pending:
            return False
        wait = max(self.checkpoint_interval, 20.0 * self._last_merge_seconds) if self.checkpoint_interval > 0 else 0
        if time.monotonic() - self._last_checkpoint >= wait:
            self.checkpoint()
            return True
        return False

    def checkpoint(self) -> None:
        """Merge the journal into the feature file (copy, add, fsync, atomic rename)."""
        if not self._pending:
            return
        started = time.monotonic()
        tmp = self._tmp_main
        if self.path.exists():
            shutil.copyfile(self.path, tmp)
            mode = "a"
        else:
            mode = "w"
        merged: list[Path] = []
        try:
            with h5py.File(tmp, mode, libver=_LIBVER) as out:
                out.attrs[FORMAT_ATTR] = FORMAT_VERSION
                for key, value in self.attrs.items():
                    if key not in out.attrs:
                        out.attrs[key] = value
                for video_id, part in sorted(self._pending.items()):
                    with h5py.File(part, "r") as src:
                        ds = src["features"]
                        self._add(out, video_id, ds, dict(ds.attrs))
                    merged.append(part)
            if self.fsync:
                _fsync_file(tmp)
            os.replace(tmp, self.path)
            if self.fsync:
                fsync_dir(self.path.parent)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        for video_id in list(self._pending):
            self._main_ids.add(video_id)
        self._pending.clear()
        for part in merged:
            part.unlink(missing_ok=True)
        self._last_merge_seconds = time.monotonic() - started
        self._last_checkpoint = time.monotonic()
        logger.debug("%s: checkpoint of %d videos in %.3f s", self.path, len(merged), self._last_merge_seconds)

    @staticmethod
    def _add(out: h5py.File, video_id: str, data: h5py.Dataset, attrs: dict[str, Any]) -> None:
        if video_id in out:
            del out[video_id]                      # an older copy (re-extracted) or an unfinished write
        parent = video_id.rsplit("/", 1)[0] if "/" in video_id else None
        if parent:
            out.require_group(parent)
        # contiguous, as in the published files; copied in blocks so memory does not grow with the video
        ds = out.create_dataset(video_id, shape=data.shape, dtype=data.dtype)
        ds.attrs[COMPLETE_ATTR] = False
        step = max(1, (16 << 20) // max(1, int(np.prod(data.shape[1:])) * data.dtype.itemsize))
        for start in range(0, data.shape[0], step):
            ds[start:start + step] = data[start:start + step]
        for key, value in attrs.items():
            if key != "video_id":
                ds.attrs[key] = value
        ds.attrs[COMPLETE_ATTR] = True

    # -- lifecycle ----------------------------------------------------------------------------
    def close(self) -> None:
        """Checkpoint what is finished and remove the (empty) journal. Idempotent."""
        if self._closed:
            return
        try:
            self.checkpoint()
            self._closed = True
            try:
                self.journal.rmdir()
            except OSError:
                pass
            if not self.path.exists():
                # a run that finished nothing still leaves a valid (empty) feature file
                with h5py.File(self._tmp_main, "w", libver=_LIBVER) as out:
                    out.attrs[FORMAT_ATTR] = FORMAT_VERSION
                    for key, value in self.attrs.items():
                        out.attrs[key] = value
                os.replace(self._tmp_main, self.path)
        finally:
            if self._closed:
                self._unlock()

    def _unlock(self) -> None:
        if self._lock_fh is not None:
            self._lock_path.unlink(missing_ok=True)
            self._lock_fh.close()          # closing releases the lock
            self._lock_fh = None

    def __enter__(self) -> FeatureWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _lock(lock_path: Path, path: Path) -> Any:
    """Take the single-writer lock of a feature file (released by the OS if the process dies).

    Two writers on one file would each replace it with their own copy and lose the other's videos.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no lock
        return None
    fh = open(lock_path, "a+")  # noqa: SIM115 - held until close()
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        raise FeatureFileError(f"{path}: another process is writing this feature file (lock {lock_path}); "
                               "wait for it to finish or choose another output") from None
    return fh


def validate_video_id(video_id: str) -> str:
    """Normalise a video id for use as an HDF5 dataset path (``/`` separates groups).

    Raises:
        ValueError: for an empty id or one with empty, ``.`` or ``..`` path components.
    """
    if not isinstance(video_id, str):
        raise ValueError(f"video id must be a string, got {type(video_id).__name__}")
    from dnsvr.index.records import check_video_id  # noqa: PLC0415 - the one rule, shared with the index

    vid = video_id.strip().strip("/")
    parts = vid.split("/")
    if not vid or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"invalid video id {video_id!r}: empty, '.' or '..' path components")
    problem = check_video_id(vid)
    if problem:
        raise ValueError(f"invalid video id {video_id!r}: {problem}")
    return vid

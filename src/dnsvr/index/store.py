"""The persistent index directory at the numpy level: :class:`IndexStore`.

An index is a directory (see :mod:`dnsvr.index._schema` for the file list):

- ``meta.sqlite`` (SQLite, WAL mode) is the source of truth: one row per video with its
  id, status, frame count, timestamps, source, the location and CRC32 of its fine
  representation, its coarse vector (a float32 blob), its selector self-similarity,
  the time it was added and free JSON metadata;
- ``shards/fine-NNNNNN.bin`` hold the fine representations, appended, never rewritten
  in place (``compact`` writes new shards and swaps them in with one SQLite commit);
- ``coarse/`` and ``catalog.npz`` hold derived data only (an appended copy of the coarse
  vectors for exact search, an optional FAISS ANN index, a snapshot of the active rows),
  checked against SQLite and rebuilt whenever missing or stale.

Commit protocol of :meth:`IndexStore.add`: the fine bytes are appended past the
committed end of a shard and fsynced, then the rows and the shards' new committed
lengths are committed in one SQLite transaction (synchronous=FULL). A crash before
the commit leaves only bytes past the committed length, which readers ignore and the
next writer truncates; a crash after it leaves a complete video. So an index opens and
verifies after ``kill -9`` at any point and holds every video whose ``add`` returned.

Example:
    >>> cfg = IndexConfig.binary(dims=512, coarse_dim=1024)            # doctest: +SKIP
    >>> with IndexStore.create("my.index", cfg) as store:             # doctest: +SKIP
    ...     store.add([IndexRecord("v1", coarse, codes, 0.8, {"source": "v1.mp4"})])
    ...     hits = store.coarse_search(query[None], k=100)
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import json
import logging
import math
import os
import sqlite3
import threading
import time
import zipfile
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np

from dnsvr.index._coarse import CoarseCache, is_exact_spec
from dnsvr.index._lock import LOCK_NAME, IndexLockedError, WriterLock
from dnsvr.index._paths import check_entries, create_new, inside, open_nofollow
from dnsvr.index._schema import (
    COARSE_DIR,
    DB_NAME,
    MANIFEST_NAME,
    SHARD_DIR,
    STATUS_ACTIVE,
    STATUS_REMOVED,
    DamagedIndexError,
    IndexFormatError,
    connect,
    fsync_dir,
    init_schema,
    make_manifest,
    read_manifest,
    write_json_atomic,
)
from dnsvr.index._shards import SHARD_RE, ShardAppender, ShardReader

logger = logging.getLogger(__name__)

__all__ = [
    "AddResult",
    "CoarseHits",
    "CompactReport",
    "DamagedIndexError",
    "DuplicateVideoError",
    "FineBlock",
    "IndexConfig",
    "IndexFormatError",
    "IndexLockedError",
    "IndexRecord",
    "IndexStore",
    "IndexStoreError",
    "ReadOnlyIndexError",
    "RecordError",
    "UnknownVideoError",
    "VerifyReport",
    "VideoEntry",
    "check_video_id",
]

_FINE_DTYPES = ("uint8", "float16", "float32", "int8")
_SQL_CHUNK = 900  # stay below SQLite's host-parameter limit
_MAX_ID_LEN = 1024
_DERIVED_APPEND_MAX = 32_768  # coarse vectors held per transaction for the derived files (128 MB at 1024-d)
# Limits checked when a config is read, before anything is allocated from it.
_MAX_COARSE_DIM = 1 << 16
_MAX_FRAME_BYTES = 1 << 26  # 64 MiB per frame
_MAX_SHARD_BYTES = 1 << 44
_MAX_SHARD_ID = 1 << 40
_MAX_BYTES = 1 << 50  # a committed length or offset beyond this is damage


# ----------------------------------------------------------------------------------------------
# errors
class IndexStoreError(Exception):
    """Base class of index-store errors."""


class ReadOnlyIndexError(IndexStoreError):
    """A write was attempted on an index opened with ``readonly=True``."""


class RecordError(IndexStoreError, ValueError):
    """A record does not fit the index (shape, dtype, id, metadata); the message names the video."""


class DuplicateVideoError(RecordError):
    """A video id is already in the index (or twice in one ``add``) and ``on_duplicate="error"``."""

    def __init__(self, video_ids: Sequence[str], message: str) -> None:
        self.video_ids = list(video_ids)
        super().__init__(message)


class UnknownVideoError(IndexStoreError, KeyError):
    """One or more video ids are not (or no longer) in the index."""

    def __init__(self, video_ids: Sequence[str]) -> None:
        self.video_ids = list(video_ids)
        shown = ", ".join(repr(v) for v in self.video_ids[:10])
        more = f" and {len(self.video_ids) - 10} more" if len(self.video_ids) > 10 else ""
        super().__init__(f"{len(self.video_ids)} video id(s) not in the index: {shown}{more}")

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


# ----------------------------------------------------------------------------------------------
# records and config
@dataclass(frozen=True)
class IndexConfig:
    """What an index stores; fixed at creation and recorded in ``manifest.json``.

    Args:
        coarse_dim: dimension of the coarse vectors (1024 for the DnS coarse student).
        fine_dtype: element dtype of the fine representation: ``"uint8"`` (packed ±1 bits of
            S^f_B), ``"float16"`` (S^f_A, the training-free fine stage), ``"float32"``, ``"int8"``.
        fine_shape: per-frame shape of the fine representation, e.g. ``(9, 64)`` for 9 regions of
            512 bits, ``(9, 512)`` for float16 regions.
        coarse_index: FAISS ``index_factory`` spec for coarse search with a finite ``k``:
            ``"Flat"`` (exact, the default) or an ANN spec such as ``"IVF1024,Flat"`` or
            ``"HNSW32"`` (inner-product metric). ``k=None`` searches are always exact.
        coarse_params: default query-time FAISS parameters for the ANN index, e.g.
            ``"nprobe=32"`` or ``"efSearch=256"`` (overridable per query).
        shard_bytes: a new shard file is started when the current one would pass this size.
        extra: free JSON data recorded with the config (e.g. the bundle that built the index).

    Raises:
        ValueError: on an unknown dtype or non-positive sizes.
    """

    coarse_dim: int = 1024
    fine_dtype: str = "uint8"
    fine_shape: tuple[int, ...] = (9, 64)
    coarse_index: str = "Flat"
    coarse_params: str = ""
    shard_bytes: int = 1 << 30
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.fine_dtype not in _FINE_DTYPES:
            raise ValueError(f"fine_dtype {self.fine_dtype!r} not supported; choose one of {_FINE_DTYPES}")
        if not isinstance(self.fine_shape, (tuple, list)) or any(
                isinstance(s, bool) or not isinstance(s, (int, np.integer)) for s in self.fine_shape):
            raise ValueError(f"fine_shape must be a non-empty tuple of positive ints, got {self.fine_shape!r}")
        shape = tuple(int(s) for s in self.fine_shape)
        if not shape or len(shape) > 8 or any(s <= 0 or s > _MAX_FRAME_BYTES for s in shape):
            raise ValueError(f"fine_shape must be a non-empty tuple of positive ints, got {self.fine_shape!r}")
        object.__setattr__(self, "fine_shape", shape)
        for name in ("coarse_dim", "shard_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ValueError(f"{name} must be an int, got {value!r}")
        if not 0 < int(self.coarse_dim) <= _MAX_COARSE_DIM:
            raise ValueError(f"coarse_dim must be in 1..{_MAX_COARSE_DIM}, got {self.coarse_dim}")
        if not 0 < int(self.shard_bytes) <= _MAX_SHARD_BYTES:
            raise ValueError(f"shard_bytes must be in 1..{_MAX_SHARD_BYTES}, got {self.shard_bytes}")
        if math.prod(shape) * np.dtype(self.fine_dtype).itemsize > _MAX_FRAME_BYTES:
            raise ValueError(f"fine_shape {shape} of {self.fine_dtype} exceeds {_MAX_FRAME_BYTES} bytes per frame")
        if not isinstance(self.extra, dict):
            raise ValueError(f"extra must be a dict, got {type(self.extra).__name__}")
        if not isinstance(self.coarse_index, str) or not self.coarse_index.strip():
            raise ValueError(f"coarse_index must be a FAISS index_factory spec, got {self.coarse_index!r}")
        json.dumps(self.extra)  # raises TypeError early if not JSON

    @classmethod
    def binary(cls, dims: int = 512, regions: int = 9, **kwargs: Any) -> IndexConfig:
        """Config for packed ±1 codes (S^f_B): uint8 ``[regions, dims // 8]`` per frame."""
        if dims % 8:
            raise ValueError(f"binary codes need dims divisible by 8, got {dims}")
        return cls(fine_dtype="uint8", fine_shape=(regions, dims // 8), **kwargs)

    @classmethod
    def float16(cls, dims: int = 512, regions: int = 9, **kwargs: Any) -> IndexConfig:
        """Config for float16 region features (S^f_A, the lite fine stage): ``[regions, dims]``."""
        return cls(fine_dtype="float16", fine_shape=(regions, dims), **kwargs)

    @property
    def frame_bytes(self) -> int:
        return int(np.prod(self.fine_shape)) * np.dtype(self.fine_dtype).itemsize

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["fine_shape"] = list(self.fine_shape)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> IndexConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            logger.warning("ignoring unknown index config keys %s (written by a newer dnsvr?)", sorted(unknown))
        kw = {k: v for k, v in d.items() if k in known}
        if "fine_shape" in kw:
            kw["fine_shape"] = tuple(kw["fine_shape"])
        return cls(**kw)


class IndexRecord(NamedTuple):
    """One video to add: a plain tuple ``(video_id, coarse, fine, selector, meta)`` works too.

    ``meta`` may hold ``timestamps`` (T seconds), ``duration`` (s) and ``source`` (path or URL),
    which get their own columns; every other key is stored as JSON.
    """

    video_id: str
    coarse: np.ndarray
    fine: np.ndarray
    selector: float | None = None
    meta: dict[str, Any] | None = None


@dataclass(frozen=True)
class VideoEntry:
    """Metadata of one stored video (no arrays except the timestamps)."""

    video_id: str
    n_frames: int
    timestamps: np.ndarray | None
    duration: float | None
    source: str | None
    selector: float | None
    added: float
    meta: dict[str, Any]
    shard: int
    offset: int
    nbytes: int
    crc32: int


class CoarseHits(NamedTuple):
    """Coarse search result: ``ids`` object array [n, k] (None where an ANN search found fewer),
    ``scores`` float32 [n, k] (-inf there), ``positions`` int64 [n, k] into :meth:`IndexStore.ids`
    (-1 there), and whether the search was exact."""

    ids: np.ndarray
    scores: np.ndarray
    positions: np.ndarray
    exact: bool


@dataclass(frozen=True)
class FineBlock:
    """A run of videos stored contiguously: ``data[frame_offsets[i]:frame_offsets[i+1]]`` is video i."""

    video_ids: list[str]
    frame_offsets: np.ndarray
    data: np.ndarray

    def __len__(self) -> int:
        return len(self.video_ids)

    def video(self, i: int) -> np.ndarray:
        return self.data[self.frame_offsets[i] : self.frame_offsets[i + 1]]


@dataclass
class AddResult:
    """What an :meth:`IndexStore.add` call committed."""

    added: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.added)


@dataclass
class CompactReport:
    """What :meth:`IndexStore.compact` did."""

    purged_videos: int
    bytes_before: int
    bytes_after: int
    shards_before: int
    shards_after: int
    seconds: float


@dataclass
class VerifyReport:
    """Result of :meth:`IndexStore.verify`: ``ok`` is False when any problem was found.

    ``problems`` are damage (each a dict with ``kind``, ``message`` and ``video_id`` where one
    applies); ``notes`` are harmless findings (an uncommitted tail, a stale derived cache).
    """

    ok: bool
    n_videos: int
    n_removed: int
    n_checked: int
    checksums: bool
    problems: list[dict[str, Any]]
    notes: list[str]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------------------------
# helpers
def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def check_video_id(video_id: object) -> str | None:
    """Why ``video_id`` cannot be a video id, or None when it can (the one rule of extract and index).

    A video id is a non-empty string of at most 1,024 characters, valid UTF-8, without control
    characters (a newline in a file name would split every line-based listing).
    """
    if not isinstance(video_id, str) or not video_id:
        return "a video id must be a non-empty string"
    if len(video_id) > _MAX_ID_LEN:
        return f"longer than {_MAX_ID_LEN} characters"
    if any(ord(c) < 32 or ord(c) == 127 for c in video_id):
        return "contains control characters (a newline or tab in a file name?)"
    try:
        video_id.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid UTF-8 (an undecodable file name)"
    return None


def _sqlite_error(exc: sqlite3.Error) -> IndexStoreError | DamagedIndexError:
    """One line for a SQLite failure: damage of ``meta.sqlite``, or an operational error (locked, disk full)."""
    text = str(exc) or type(exc).__name__
    low = text.lower()
    operational = isinstance(exc, sqlite3.OperationalError) and not any(
        w in low for w in ("no such", "malformed", "not a database", "corrupt", "schema"))
    if operational:
        return IndexStoreError(f"{DB_NAME}: {text}")
    return DamagedIndexError(DB_NAME, f"SQLite says: {text}")


_F = Any


def _guarded(fn: _F) -> _F:
    """Turn SQLite exceptions escaping a public method into :func:`_sqlite_error`'s one line."""

    @functools.wraps(fn)
    def wrapper(self: IndexStore, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(self, *args, **kwargs)
        except sqlite3.Error as exc:
            raise _sqlite_error(exc) from exc

    return wrapper


def _chunks(seq: Sequence[Any], n: int = _SQL_CHUNK) -> Iterator[Sequence[Any]]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


class _Prepared(NamedTuple):
    video_id: str
    coarse: np.ndarray
    fine: np.ndarray
    selector: float | None
    duration: float | None
    source: str | None
    ts_start: float | None
    ts_step: float | None
    ts_blob: bytes | None
    meta_json: str | None


class _Catalog:
    """In-memory view of the active rows (rowid order) used by every read."""

    def __init__(self) -> None:
        self.generation = -1
        self.epoch = -1
        self.rowid = np.empty(0, dtype=np.int64)
        self.shard = np.empty(0, dtype=np.int64)
        self.offset = np.empty(0, dtype=np.int64)
        self.n_frames = np.empty(0, dtype=np.int64)
        self.selector = np.empty(0, dtype=np.float64)
        self.crc32 = np.empty(0, dtype=np.int64)
        self.ids = np.empty(0, dtype=object)
        self.from_file = False  # loaded from the saved catalog.npz (derived data)
        self.pos: dict[str, int] = {}
        self.shard_files: dict[int, tuple[str, int]] = {}

    def set_rows(self, rows: list[tuple], append: bool) -> None:
        if rows:
            cols = list(zip(*rows))
            rowid = np.fromiter(cols[0], dtype=np.int64, count=len(rows))
            ids = np.empty(len(rows), dtype=object)
            ids[:] = cols[1]
            shard = np.fromiter(cols[2], dtype=np.int64, count=len(rows))
            offset = np.fromiter(cols[3], dtype=np.int64, count=len(rows))
            nfr = np.fromiter(cols[4], dtype=np.int64, count=len(rows))
            sel = np.array([np.nan if s is None else s for s in cols[5]], dtype=np.float64)
            crc = np.fromiter(cols[6], dtype=np.int64, count=len(rows))
        else:
            rowid = shard = offset = nfr = crc = np.empty(0, dtype=np.int64)
            ids = np.empty(0, dtype=object)
            sel = np.empty(0, dtype=np.float64)
        if append:
            base = len(self.ids)
            self.rowid = np.concatenate([self.rowid, rowid])
            self.ids = np.concatenate([self.ids, ids])
            self.shard = np.concatenate([self.shard, shard])
            self.offset = np.concatenate([self.offset, offset])
            self.n_frames = np.concatenate([self.n_frames, nfr])
            self.selector = np.concatenate([self.selector, sel])
            self.crc32 = np.concatenate([self.crc32, crc])
            for i, vid in enumerate(ids.tolist()):
                self.pos[vid] = base + i
        else:
            self.rowid, self.ids, self.shard, self.offset, self.n_frames, self.selector, self.crc32 = (
                rowid, ids, shard, offset, nfr, sel, crc)
            self.pos = dict(zip(ids.tolist(), range(len(ids))))

    # A snapshot of the catalog saved by the writer at close (derived data, like coarse/): opening
    # a large index then reads a few arrays instead of turning 100k SQLite rows into Python objects.
    _ARRAYS = ("rowid", "shard", "offset", "n_frames", "selector", "crc32")
    _DTYPES = {"rowid": "i8", "shard": "i8", "offset": "i8", "n_frames": "i8", "selector": "f8", "crc32": "i8",
               "ids": "u1", "generation": "i8", "epoch": "i8", "n": "i8"}

    def save(self, path: Path) -> None:
        ids = self.ids.tolist()
        blob = np.frombuffer("\x00".join(ids).encode("utf-8"), dtype=np.uint8)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        with os.fdopen(create_new(tmp), "wb") as fh:
            np.savez(fh, generation=np.int64(self.generation), epoch=np.int64(self.epoch), ids=blob,
                     n=np.int64(len(ids)), **{k: getattr(self, k) for k in self._ARRAYS})
        os.replace(tmp, path)

    @classmethod
    def _read_arrays(cls, path: Path) -> dict[str, np.ndarray]:
        """The catalog's arrays, each checked (plain dtype, declared size within the member) before allocation."""
        fd = open_nofollow(path, os.O_RDONLY)
        with os.fdopen(fd, "rb") as raw, zipfile.ZipFile(raw) as zf:
            limit = os.fstat(raw.fileno()).st_size
            out: dict[str, np.ndarray] = {}
            for key, want in cls._DTYPES.items():
                info = zf.getinfo(key + ".npy")
                if info.file_size > limit:
                    raise ValueError(f"{key}: member larger than the file")
                data = zf.read(info)
                fh = io.BytesIO(data)
                version = np.lib.format.read_magic(fh)
                header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                          else np.lib.format.read_array_header_2_0)
                shape, _, dtype = header(fh)
                if dtype.hasobject or dtype.str[1:] != want or math.prod(shape) * dtype.itemsize > len(data):
                    raise ValueError(f"{key}: {dtype} {shape} in {len(data)} bytes")
                fh.seek(0)
                out[key] = np.lib.format.read_array(fh, allow_pickle=False)
            return out

    @classmethod
    def load(cls, path: Path) -> _Catalog | None:
        """The saved catalog, or None when it is missing, unreadable or implausible (derived data: rebuilt)."""
        try:
            z = cls._read_arrays(path)
            cat = cls()
            cat.generation, cat.epoch, n = int(z["generation"]), int(z["epoch"]), int(z["n"])
            for k in cls._ARRAYS:
                arr = z[k]
                if arr.shape != (n,):
                    return None
                setattr(cat, k, arr)
            text = z["ids"].tobytes().decode("utf-8")
        except Exception as exc:  # noqa: BLE001 - derived data: any damage means "read SQLite instead"
            logger.info("saved catalog %s unusable (%s: %s); reading SQLite", path, type(exc).__name__, exc)
            return None
        ids = text.split("\x00") if n else []
        if len(ids) != n:
            return None
        cat.ids = np.empty(n, dtype=object)
        cat.ids[:] = ids
        cat.pos = dict(zip(ids, range(n)))
        cat.from_file = True
        return cat


try:  # ISA-L's CRC32 gives zlib's values about 4x faster (the read checks of every search use it)
    from isal.isal_zlib import crc32 as _crc32
except ImportError:  # pragma: no cover - isal is optional
    _crc32 = zlib.crc32


_ROW_COLS = "rowid, video_id, shard, offset, n_frames, selector, crc32"


def _is_int(v: object, lo: int, hi: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _attr_value(key: str, text: Any) -> Any:
    try:
        return json.loads(text)
    except (TypeError, ValueError, RecursionError):
        raise DamagedIndexError(f"{DB_NAME} attrs", f"the value of {key!r} is not JSON") from None


def _check_rows(rows: list[tuple]) -> None:
    """Types and ranges of catalog rows read from SQLite (before numpy sees them)."""
    for rowid, vid, shard, offset, nfr, sel, crc in rows:
        if not (isinstance(vid, str) and _is_int(rowid, 1, 1 << 62) and _is_int(shard, 0, _MAX_SHARD_ID)
                and _is_int(offset, 0, _MAX_BYTES) and _is_int(nfr, 1, 1 << 40) and _is_int(crc, 0, 0xFFFFFFFF)
                and (sel is None or isinstance(sel, (int, float)))):
            raise DamagedIndexError(f"{DB_NAME} videos", f"row {rowid!r} ({vid!r}) has out-of-range values "
                                    f"(shard {shard!r}, offset {offset!r}, frames {nfr!r}, crc32 {crc!r}, "
                                    f"selector {sel!r})")


def _check_shards(shards: list[tuple]) -> dict[int, tuple[str, int]]:
    """``{shard: (file name, committed bytes)}`` from the shards table; a bad name or length is damage."""
    out: dict[int, tuple[str, int]] = {}
    names: set[str] = set()
    for shard, name, committed in shards:
        if not _is_int(shard, 0, _MAX_SHARD_ID):
            raise DamagedIndexError(f"{DB_NAME} shards.shard", f"shard id {shard!r} is out of range")
        if not isinstance(name, str) or not SHARD_RE.match(name) or name in names:
            raise DamagedIndexError(f"{DB_NAME} shards.file", f"{name!r} is not a shard file name of this index "
                                    f"(fine-NNNNNN.bin inside {SHARD_DIR}/, once)")
        if not _is_int(committed, 0, _MAX_BYTES):
            raise DamagedIndexError(f"{DB_NAME} shards.committed", f"{committed!r} bytes for {name} is out of range")
        names.add(name)
        out[shard] = (name, committed)
    return out
CATALOG_NAME = "catalog.npz"


# ----------------------------------------------------------------------------------------------
class IndexStore:
    """A persistent index directory: SQLite metadata, fine-feature shards, derived coarse search.

    Use :meth:`create` or :meth:`open`, not the constructor. One writer at a time (an
    ``fcntl`` lock); any number of readers (``readonly=True``) alongside it, each seeing the
    videos committed when it last looked (every read call picks up new commits).
    Thread-safe within a process (one lock per handle).
    """

    def __init__(self, directory: Path, manifest: dict[str, Any], readonly: bool, lock: WriterLock | None):
        self.directory = directory
        self.manifest = manifest
        cfg = manifest.get("config")
        try:
            if not isinstance(cfg, dict):
                raise ValueError(f"config is {type(cfg).__name__}, not an object")
            self.config = IndexConfig.from_dict(cfg)
        except (ValueError, TypeError) as exc:
            raise DamagedIndexError(MANIFEST_NAME, f"bad config: {exc}") from None
        self.readonly = readonly
        self._lock = lock
        self._mutex = threading.RLock()
        self._pins = 0
        self._closed = False
        self._verified: set[int] = set()  # rowids whose fine bytes passed their CRC32 in this handle
        # the writer never trusts the saved catalog (derived data): it reads SQLite and rewrites it at close
        self._use_saved_catalog = readonly
        check_entries(directory, files=(DB_NAME, DB_NAME + "-wal", DB_NAME + "-shm", DB_NAME + "-journal",
                                        MANIFEST_NAME, LOCK_NAME, CATALOG_NAME), dirs=(SHARD_DIR, COARSE_DIR))
        try:
            self._db = connect(inside(directory, DB_NAME), readonly=readonly)
            self._setup(directory, readonly)
        except sqlite3.Error as exc:
            db = getattr(self, "_db", None)
            if db is not None:
                db.close()
            raise _sqlite_error(exc) from exc
        except BaseException:
            db = getattr(self, "_db", None)
            if db is not None:
                db.close()
            raise

    def _setup(self, directory: Path, readonly: bool) -> None:
        self._dtype = np.dtype(self.config.fine_dtype)
        self._frame_bytes = self.config.frame_bytes
        self._cat = _Catalog()
        self._reader = ShardReader(directory / SHARD_DIR, self._dtype, self.config.fine_shape)
        self._coarse = CoarseCache(directory / COARSE_DIR, self.config.coarse_dim, self.config.coarse_index,
                                   self._load_coarse_rows)
        self._appender: ShardAppender | None = None
        self._refresh(force=True)
        if not readonly:
            self._appender = ShardAppender(directory / SHARD_DIR, self._cat.shard_files, self.config.shard_bytes)
            for action in self._appender.recover():
                logger.warning("index %s: %s", directory, action)

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def create(cls, directory: str | Path, config: IndexConfig | None = None) -> IndexStore:
        """Create a new, empty index directory and open it for writing.

        Args:
            directory: a path that does not exist or is an empty directory.
            config: what the index stores (default: packed S^f_B codes, 1024-d coarse).

        Returns:
            The open, writable store.

        Raises:
            FileExistsError: ``directory`` exists and is not empty (an existing index included).
            NotADirectoryError: ``directory`` is a file.
        """
        config = config or IndexConfig()
        directory = Path(directory)
        if directory.exists():
            if not directory.is_dir():
                raise NotADirectoryError(f"cannot create an index at {directory}: it is a file")
            if any(directory.iterdir()):
                what = ("an index" if (directory / MANIFEST_NAME).exists() else
                        "not empty (an interrupted create leaves no manifest.json; delete the directory)"
                        if (directory / DB_NAME).exists() else "not empty")
                raise FileExistsError(f"cannot create an index at {directory}: the directory is {what}"
                                      f" (use IndexStore.open for an existing index)")
        directory.mkdir(parents=True, exist_ok=True)
        lock = WriterLock(directory)
        lock.acquire()
        try:
            (directory / SHARD_DIR).mkdir(exist_ok=True)
            (directory / COARSE_DIR).mkdir(exist_ok=True)
            # 64 KiB pages hold 15 coarse vectors of 4 KiB (+ cell headers) each with 6% slack; 16 KiB
            # pages hold only 3 (25% slack) and 4 KiB pages need an overflow page per vector (50%).
            # Incremental vacuum lets compact() return the space of purged rows. Both must be set
            # before the database switches to WAL mode.
            raw = sqlite3.connect(str(directory / DB_NAME), isolation_level=None)
            try:
                raw.execute("PRAGMA page_size = 65536")
                raw.execute("PRAGMA auto_vacuum = INCREMENTAL")
                raw.execute("VACUUM")
            finally:
                raw.close()
            conn = connect(directory / DB_NAME, readonly=False)
            try:
                init_schema(conn)
            finally:
                conn.close()
            # The manifest is written last: a directory without it is an unfinished create.
            write_json_atomic(directory / MANIFEST_NAME, make_manifest(config.to_dict()))
            manifest = read_manifest(directory)
            store = cls(directory, manifest, readonly=False, lock=lock)
        except BaseException:
            lock.release()
            raise
        logger.info("created index %s (%s %s per frame, coarse %d-d, %s)", directory, config.fine_dtype,
                    config.fine_shape, config.coarse_dim, config.coarse_index)
        return store

    @classmethod
    def open(cls, directory: str | Path, readonly: bool = False) -> IndexStore:
        """Open an existing index.

        Args:
            directory: the index directory.
            readonly: open as a reader (no lock; sees new commits of a concurrent writer).

        Returns:
            The open store.

        Raises:
            IndexFormatError: not an index, or a newer format version.
            IndexLockedError: ``readonly=False`` and another writer holds the lock (names its pid).
        """
        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"index directory not found: {directory}")
        manifest = read_manifest(directory)
        if not (directory / DB_NAME).is_file():
            raise IndexFormatError(f"{directory}: {DB_NAME} is missing")
        lock = None
        if not readonly:
            lock = WriterLock(directory)
            lock.acquire()
        try:
            return cls(directory, manifest, readonly=readonly, lock=lock)
        except BaseException:
            if lock is not None:
                lock.release()
            raise

    def close(self) -> None:
        """Persist derived coarse data (writer), release maps and the write lock. Idempotent."""
        with self._mutex:
            if self._closed:
                return
            self._closed = True
            try:
                if not self.readonly:
                    try:
                        self._refresh()
                        self._coarse.persist(self._cat.rowid, self._cat.generation)
                    except (OSError, sqlite3.Error, IndexStoreError) as exc:
                        logger.warning("could not save the derived coarse data of %s (%s); it will be rebuilt",
                                       self.directory, exc)
                if not self.readonly:
                    try:
                        self._refresh()
                        self._cat.save(self.directory / CATALOG_NAME)
                    except (OSError, sqlite3.Error) as exc:
                        logger.warning("could not save the catalog of %s (%s)", self.directory, exc)
                self._coarse.close()
                self._reader.close()
                if self._appender is not None:
                    self._appender.close()
                if not self.readonly:
                    try:  # fold the WAL into the database file so that a closed index is one file
                        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                    except sqlite3.Error as exc:
                        logger.debug("checkpoint at close failed: %s", exc)
                self._db.close()
            finally:
                if self._lock is not None:
                    self._lock.release()

    def __enter__(self) -> IndexStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = "readonly" if self.readonly else "writer"
        state = "closed" if self._closed else f"{len(self._cat.ids)} videos"
        return f"IndexStore({str(self.directory)!r}, {mode}, {state})"

    # -- catalog ---------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise IndexStoreError(f"index {self.directory} is closed")

    def _check_writable(self) -> None:
        self._check_open()
        if self.readonly:
            raise ReadOnlyIndexError(f"index {self.directory} was opened readonly")
        if self._pins:
            raise IndexStoreError("cannot write inside snapshot(); leave the with-block first")

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[IndexStore]:
        """Pin the current committed state for several read calls.

        Outside a snapshot every call picks up new commits, so ids from one call may be gone
        by the next if another process removes or compacts. Inside, every read sees the state
        of its start: shard files and derived coarse files are mapped up front, so a concurrent
        compaction that deletes them changes nothing here. Nested snapshots share the outer one.

        Example:
            >>> with store.snapshot():                                       # doctest: +SKIP
            ...     hits = store.coarse_search(q, k=1000)
            ...     fines = store.fine(hits.ids[0].tolist())   # never UnknownVideoError

        Raises:
            IndexStoreError: on a write call inside it.
        """
        with self._mutex:
            self._check_open()
            if not self._pins:
                # One SQLite read transaction holds the state for the whole block (WAL snapshot);
                # the catalog is loaded inside it. A compaction may delete files between the commit
                # we see and our mapping them: then start again on the newer state.
                for attempt in range(10):
                    self._db.execute("BEGIN")
                    try:
                        self._load_catalog(force=attempt > 0)
                        if self._reader.map_all({s: n for s, (_, n) in self._cat.shard_files.items()}):
                            self._coarse.sync(self._cat.rowid)
                            break
                    except IndexStoreError:
                        pass
                    except BaseException:
                        self._db.execute("COMMIT")
                        raise
                    self._db.execute("COMMIT")
                else:
                    raise IndexStoreError(f"could not pin a consistent state of {self.directory}: it keeps changing")
                self._coarse.pinned = True
            self._pins += 1
        try:
            yield self
        finally:
            with self._mutex:
                self._pins -= 1
                if not self._pins:
                    self._coarse.pinned = False
                    if not self._closed:
                        self._db.execute("COMMIT")  # end the read transaction

    def _state(self) -> tuple[int, int]:
        rows = dict(self._db.execute("SELECT key, value FROM state").fetchall())
        gen, epoch = rows.get("generation"), rows.get("epoch")
        if not (_is_int(gen, 0, 1 << 62) and _is_int(epoch, 0, 1 << 62)):
            raise DamagedIndexError(f"{DB_NAME} state", f"generation {gen!r} / epoch {epoch!r} are not counters")
        return gen, epoch  # type: ignore[return-value]

    def _refresh(self, force: bool = False) -> None:
        """Pick up commits made since the catalog was loaded (cheap when nothing changed)."""
        if self._pins and not force:
            return
        gen, _ = self._state()
        if not force and gen == self._cat.generation:
            return
        db = self._db
        db.execute("BEGIN")  # one snapshot for state, rows and shards
        try:
            self._load_catalog(force)
        finally:
            db.execute("COMMIT")

    def _load_catalog(self, force: bool) -> None:
        """Bring the catalog to the state of the current read transaction."""
        db = self._db
        cat = self._cat
        gen, epoch = self._state()
        if force and cat.generation < 0 and self._use_saved_catalog:
            saved = self._load_saved_catalog(gen, epoch)
            if saved is not None:
                self._cat = cat = saved
                force = False
        if not force and gen == cat.generation:
            pass
        elif not force and epoch == cat.epoch:
            last = int(cat.rowid[-1]) if len(cat.rowid) else 0
            rows = db.execute(f"SELECT {_ROW_COLS} FROM videos WHERE status = 0 AND rowid > ? ORDER BY rowid",
                              (last,)).fetchall()
            _check_rows(rows)
            cat.set_rows(rows, append=True)
        else:
            rows = db.execute(f"SELECT {_ROW_COLS} FROM videos WHERE status = 0 ORDER BY rowid").fetchall()
            _check_rows(rows)
            cat.set_rows(rows, append=False)
        shards = db.execute("SELECT shard, file, committed FROM shards").fetchall()
        cat.shard_files = _check_shards(shards)
        cat.generation, cat.epoch = gen, epoch
        self._reader.set_files({s: f for s, (f, _) in cat.shard_files.items()})

    def _load_saved_catalog(self, gen: int, epoch: int) -> _Catalog | None:
        """The writer's saved catalog if it describes this state (or an earlier one of the same epoch)."""
        path = self.directory / CATALOG_NAME
        if not path.is_file():
            return None
        saved = _Catalog.load(path)
        if saved is None or saved.epoch != epoch or saved.generation > gen:
            logger.debug("saved catalog of %s is stale or unreadable; reading SQLite", self.directory)
            return None
        if saved.generation == gen:
            # cheap cross-check against SQLite (the partial index makes the count an index scan)
            n, last = self._db.execute("SELECT COUNT(*), MAX(rowid) FROM videos WHERE status = 0").fetchone()
            if n != len(saved.ids) or (n and int(last) != int(saved.rowid[-1])):
                logger.warning("saved catalog of %s disagrees with SQLite; ignoring it", self.directory)
                return None
        return saved

    @_guarded
    def refresh(self) -> None:
        """Load commits made by another process now (every read call does this itself)."""
        with self._mutex:
            self._check_open()
            self._refresh()

    def _positions(self, video_ids: Iterable[str] | str) -> np.ndarray:
        if isinstance(video_ids, str):
            video_ids = [video_ids]
        pos = self._cat.pos
        out = []
        missing = []
        for vid in video_ids:
            p = pos.get(vid)
            if p is None:
                missing.append(vid)
            else:
                out.append(p)
        if missing:
            raise UnknownVideoError(missing)
        return np.asarray(out, dtype=np.int64)

    # -- reading ---------------------------------------------------------------------------
    @_guarded
    def __len__(self) -> int:
        with self._mutex:
            self._check_open()
            self._refresh()
            return len(self._cat.ids)

    @_guarded
    def __contains__(self, video_id: object) -> bool:
        with self._mutex:
            self._check_open()
            self._refresh()
            return video_id in self._cat.pos

    @_guarded
    def ids(self) -> list[str]:
        """Ids of the active videos, in the order they were added."""
        with self._mutex:
            self._check_open()
            self._refresh()
            return self._cat.ids.tolist()

    @property
    @_guarded
    def generation(self) -> int:
        """Counter bumped by every commit that changes the stored set (add/remove/compact)."""
        with self._mutex:
            self._check_open()
            self._refresh()
            return self._cat.generation

    @_guarded
    def fine(self, video_ids: Iterable[str] | str, prefetch: bool = False) -> list[np.ndarray]:
        """Fine representations as read-only memory-mapped arrays ``[T, *fine_shape]`` (no copy).

        Args:
            video_ids: ids (a single id is accepted too).
            prefetch: also ask the kernel to start reading all their bytes into the page cache now
                (``MADV_WILLNEED``), so that a caller working through many videos in order overlaps
                the disk reads of later videos with its work on earlier ones.

        Returns:
            One array per id, in the given order; valid after :meth:`close` too.

        Raises:
            UnknownVideoError: some ids are not in the index (all of them are listed).
        """
        with self._mutex:
            self._check_open()
            self._refresh()
            video_ids = [video_ids] if isinstance(video_ids, str) else list(video_ids)
            for attempt in range(3):
                cat = self._cat
                pos = self._positions(video_ids)
                try:
                    self._check_ranges(cat, pos)
                    view = self._reader.view
                    shards, offsets, frames = cat.shard[pos], cat.offset[pos], cat.n_frames[pos]
                    views = [view(s, o, n) for s, o, n in zip(shards.tolist(), offsets.tolist(), frames.tolist())]
                    if prefetch and len(pos):
                        self._reader.will_need(shards, offsets, frames.astype(np.int64) * self._frame_bytes)
                    self._check_crc(cat, pos, views)
                    return views
                except (FileNotFoundError, KeyError):
                    if attempt or self._pins:
                        raise
                    self._refresh(force=True)  # a compaction swapped the shards under us
                except DamagedIndexError:
                    if not cat.from_file or self._pins:
                        raise
                    # the saved catalog is derived data: read the truth from SQLite and look again
                    logger.warning("saved catalog of %s disagrees with the shards; reading SQLite", self.directory)
                    self._use_saved_catalog = False
                    self._cat = _Catalog()
                    self._refresh(force=True)
            raise AssertionError("unreachable")

    def _check_ranges(self, cat: _Catalog, pos: np.ndarray) -> None:
        """Every range lies inside its shard's committed length (from SQLite), before anything is mapped."""
        if not len(pos):
            return
        shard, end = cat.shard[pos], cat.offset[pos] + cat.n_frames[pos] * self._frame_bytes
        for s in np.unique(shard).tolist():
            entry = cat.shard_files.get(s)
            sel = shard == s
            if entry is None or int(end[sel].max()) > entry[1]:
                i = int(pos[np.flatnonzero(sel)[0]])
                raise DamagedIndexError(f"{DB_NAME} videos", f"video {cat.ids[i]!r} lies outside shard {s}'s "
                                        f"committed bytes ({'no such shard' if entry is None else entry[1]})")

    def _check_crc(self, cat: _Catalog, pos: np.ndarray, views: list[np.ndarray]) -> None:
        """CRC32 of each video's fine bytes, once per video and handle; a mismatch is damage (never scored)."""
        verified = self._verified
        for p, v in zip(pos.tolist(), views):
            rid = int(cat.rowid[p])
            if rid in verified:
                continue
            if _crc32(v) != int(cat.crc32[p]):
                name = cat.shard_files.get(int(cat.shard[p]), ("?", 0))[0]
                raise DamagedIndexError(f"{SHARD_DIR}/{name}", f"the fine bytes of video {cat.ids[p]!r} fail their "
                                        f"CRC32 check (run `dnsvr index verify`)")
            verified.add(rid)

    def fine_blocks(self, video_ids: Iterable[str] | None = None, max_frames: int = 65536) -> Iterator[FineBlock]:
        """Stream fine representations in runs of videos stored back to back (one view per run).

        Args:
            video_ids: which videos (default: all active); blocks follow storage order, not this order.
            max_frames: frames per block at most (a longer video gets a block of its own).

        Yields:
            :class:`FineBlock` s covering every requested video exactly once, from the state at the
            first ``next()`` (its shard files are mapped then, so a later compaction does not matter).

        Raises:
            UnknownVideoError: some ids are not in the index.
        """
        with self._mutex:
            self._check_open()
            self._refresh()
            if not self._reader.map_all({s: n for s, (_, n) in self._cat.shard_files.items()}):
                self._refresh(force=True)  # a compaction deleted files since the last refresh
                self._reader.map_all({s: n for s, (_, n) in self._cat.shard_files.items()})
            cat = self._cat
            pos = np.arange(len(cat.ids)) if video_ids is None else self._positions(list(video_ids))
            self._check_ranges(cat, pos)
            order = np.lexsort((cat.offset[pos], cat.shard[pos]))
            pos = pos[order]
            shard, offset, nfr = cat.shard[pos], cat.offset[pos], cat.n_frames[pos]
            ids = cat.ids[pos]
            reader, fb = self._reader, self._frame_bytes
        start = 0
        n = len(pos)
        while start < n:
            end = start + 1
            frames = int(nfr[start])
            while (end < n and shard[end] == shard[start] and offset[end] == offset[end - 1] + nfr[end - 1] * fb
                   and frames + nfr[end] <= max_frames):
                frames += int(nfr[end])
                end += 1
            with self._mutex:
                data = reader.view(int(shard[start]), int(offset[start]), frames)
            frame_offsets = np.zeros(end - start + 1, dtype=np.int64)
            np.cumsum(nfr[start:end], out=frame_offsets[1:])
            yield FineBlock(ids[start:end].tolist(), frame_offsets, data)
            start = end

    @_guarded
    def selector_values(self, video_ids: Iterable[str] | str | None = None) -> np.ndarray:
        """Selector self-similarities, float64 (NaN where none was stored); all videos when None."""
        with self._mutex:
            self._check_open()
            self._refresh()
            if video_ids is None:
                return self._cat.selector.copy()
            return self._cat.selector[self._positions(video_ids)]

    @_guarded
    def n_frames(self, video_ids: Iterable[str] | str | None = None) -> np.ndarray:
        """Frame counts, int64; all videos (in :meth:`ids` order) when None."""
        with self._mutex:
            self._check_open()
            self._refresh()
            if video_ids is None:
                return self._cat.n_frames.copy()
            return self._cat.n_frames[self._positions(video_ids)]

    def _load_coarse_rows(self, rowids: np.ndarray) -> np.ndarray:
        dim = self.config.coarse_dim
        out = np.empty((len(rowids), dim), dtype=np.float32)
        found = np.zeros(len(rowids), dtype=bool)
        index = {int(r): i for i, r in enumerate(rowids.tolist())}
        for chunk in _chunks(rowids.tolist(), 20000):
            if len(chunk) > _SQL_CHUNK:  # a range scan beats a huge IN list
                lo, hi = min(chunk), max(chunk)
                cur = self._db.execute("SELECT video_row, vector FROM coarse WHERE video_row BETWEEN ? AND ?",
                                       (lo, hi))
            else:
                marks = ",".join("?" * len(chunk))
                cur = self._db.execute(f"SELECT video_row, vector FROM coarse WHERE video_row IN ({marks})", chunk)
            for rowid, blob in cur:
                i = index.get(rowid)
                if i is not None:
                    if not isinstance(blob, bytes) or len(blob) != 4 * dim:
                        raise DamagedIndexError(f"{DB_NAME} coarse", f"the coarse vector of row {rowid} has "
                                                f"{len(blob) if isinstance(blob, bytes) else type(blob).__name__} "
                                                f"bytes, not {4 * dim}")
                    out[i] = np.frombuffer(blob, dtype="<f4", count=dim)
                    found[i] = True
        if not found.all():
            raise IndexStoreError(f"{int((~found).sum())} coarse vectors are missing from SQLite (rows "
                                  f"{rowids[~found][:5].tolist()}...): purged by a concurrent compaction, or damage")
        return out

    def _sync_coarse(self) -> None:
        try:
            self._coarse.sync(self._cat.rowid)
        except IndexStoreError:
            if self._pins:
                raise
            self._refresh(force=True)  # a compaction purged rows since the catalog was read
            self._coarse.sync(self._cat.rowid)

    @_guarded
    def coarse_vectors(self, video_ids: Iterable[str] | str | None = None) -> np.ndarray:
        """Coarse vectors float32 ``[n, coarse_dim]`` (all videos, in :meth:`ids` order, when None)."""
        with self._mutex:
            self._check_open()
            self._refresh()
            self._sync_coarse()
            cat = self._cat
            pos = np.arange(len(cat.ids)) if video_ids is None else self._positions(video_ids)
            return self._coarse.vectors(pos)

    @_guarded
    def coarse_search(
        self, queries: np.ndarray, k: int | None = None, *, exact: bool = False, params: str | None = None
    ) -> CoarseHits:
        """Inner-product search of the coarse vectors.

        Args:
            queries: float ``[n, coarse_dim]`` (or one ``[coarse_dim]`` vector).
            k: results per query; ``None`` returns every active video, exactly scored, best first.
            exact: force the exact search even when the index has an ANN spec.
            params: query-time FAISS parameters for the ANN index (e.g. ``"nprobe=64"``);
                default: the config's ``coarse_params``.

        Returns:
            :class:`CoarseHits` ``(ids, scores, positions, exact)``, each ``[n, min(k, N)]``.

        Raises:
            ValueError: wrong query shape, non-finite values, or a negative ``k``.
        """
        q = np.asarray(queries)
        if q.ndim == 1:
            q = q[None, :]
        if q.ndim != 2 or q.shape[1] != self.config.coarse_dim:
            raise ValueError(f"queries must be [n, {self.config.coarse_dim}], got shape {tuple(np.shape(queries))}")
        if not np.issubdtype(q.dtype, np.number):
            raise ValueError(f"queries must be numeric, got dtype {q.dtype}")
        q = np.ascontiguousarray(q, dtype=np.float32)
        if not np.isfinite(q).all():
            raise ValueError("queries contain NaN or inf")
        if k is not None and (int(k) != k or k < 0):
            raise ValueError(f"k must be a non-negative int or None, got {k!r}")
        with self._mutex:
            self._check_open()
            self._refresh()
            self._sync_coarse()
            cat = self._cat
            kk = None if k is None else min(int(k), len(cat.ids))
            if exact or kk is None:
                pos, scores = self._coarse.exact(q, kk)
                was_exact = True
            else:
                pos, scores, was_exact = self._coarse.search(q, kk, params or self.config.coarse_params or None)
            ids = np.empty(pos.shape, dtype=object)
            valid = pos >= 0
            ids[valid] = cat.ids[pos[valid]]
            return CoarseHits(ids, scores.astype(np.float32, copy=False), pos, was_exact)

    @_guarded
    def get(self, video_id: str) -> VideoEntry:
        """Metadata of one video.

        Raises:
            UnknownVideoError: the id is not in the index.
        """
        with self._mutex:
            self._check_open()
            self._refresh()
            row = self._db.execute(
                "SELECT video_id, n_frames, ts_start, ts_step, ts_blob, duration, source, selector, added, meta,"
                " shard, offset, nbytes, crc32 FROM videos WHERE video_id = ? AND status = 0", (video_id,)
            ).fetchone()
        if row is None:
            raise UnknownVideoError([video_id])
        vid, nfr, t0, dt, blob, duration, source, sel, added, meta, shard, offset, nbytes, crc = row
        try:
            if not _is_int(nfr, 1, 1 << 40):
                raise ValueError(f"n_frames {nfr!r}")
            if blob is not None:
                if not isinstance(blob, bytes) or len(blob) != 8 * nfr:
                    raise ValueError(f"{len(blob) if isinstance(blob, bytes) else blob!r} timestamp bytes")
                ts = np.frombuffer(blob, dtype="<f8").copy()
            elif t0 is not None and dt is not None:
                ts = float(t0) + np.arange(nfr, dtype=np.float64) * float(dt)
            else:
                ts = None
            extra = json.loads(meta) if meta else {}
            if not isinstance(extra, dict):
                raise ValueError("meta is not a JSON object")
            entry = VideoEntry(vid, int(nfr), ts, None if duration is None else float(duration),
                               None if source is None else str(source), None if sel is None else float(sel),
                               float(added), extra, int(shard), int(offset), int(nbytes), int(crc))
        except (ValueError, TypeError, RecursionError) as exc:
            raise DamagedIndexError(f"{DB_NAME} videos", f"the row of {video_id!r} is damaged ({exc})") from None
        return entry

    def timestamps(self, video_id: str) -> np.ndarray | None:
        """Frame timestamps in seconds (None when the record had none)."""
        return self.get(video_id).timestamps

    # -- attrs -----------------------------------------------------------------------------
    @_guarded
    def get_attr(self, key: str, default: Any = None) -> Any:
        """An index-level JSON value stored in SQLite (e.g. the bundle identity)."""
        with self._mutex:
            self._check_open()
            row = self._db.execute("SELECT value FROM attrs WHERE key = ?", (key,)).fetchone()
        return default if row is None else _attr_value(key, row[0])

    @_guarded
    def set_attr(self, key: str, value: Any) -> None:
        """Store an index-level JSON value (committed at once)."""
        text = json.dumps(value, default=_json_default)
        with self._mutex:
            self._check_writable()
            self._db.execute("INSERT OR REPLACE INTO attrs(key, value) VALUES (?, ?)", (key, text))

    @_guarded
    def attrs(self) -> dict[str, Any]:
        """Every index-level JSON value."""
        with self._mutex:
            self._check_open()
            return {k: _attr_value(k, v) for k, v in self._db.execute("SELECT key, value FROM attrs")}

    # -- writing ---------------------------------------------------------------------------
    def _prepare(self, record: Any) -> _Prepared:
        cfg = self.config
        if isinstance(record, dict):
            try:
                record = IndexRecord(**record)
            except TypeError as exc:
                raise RecordError(f"bad record dict keys {sorted(record)}: {exc}") from exc
        try:
            video_id, coarse, fine, *rest = record
        except (TypeError, ValueError) as exc:
            raise RecordError(f"a record is (video_id, coarse, fine, selector, meta); got {type(record).__name__}"
                              ) from exc
        if len(rest) > 2:
            raise RecordError(f"record for {video_id!r} has {3 + len(rest)} fields, at most 5 expected")
        selector = rest[0] if len(rest) > 0 else None
        meta = rest[1] if len(rest) > 1 else None
        problem = check_video_id(video_id)
        if problem:
            raise RecordError(f"video id {video_id!r}: {problem}")
        # coarse
        c = np.asarray(coarse)
        if c.ndim == 2 and c.shape[0] == 1:
            c = c[0]
        if c.shape != (cfg.coarse_dim,) or not (np.issubdtype(c.dtype, np.floating) or
                                                 np.issubdtype(c.dtype, np.integer)):
            raise RecordError(f"{video_id!r}: coarse vector must be numeric [{cfg.coarse_dim}], "
                              f"got {c.dtype} {tuple(np.shape(coarse))}")
        c = np.ascontiguousarray(c, dtype="<f4")
        if not np.isfinite(c).all():
            raise RecordError(f"{video_id!r}: coarse vector contains NaN or inf")
        # fine
        f = np.asarray(fine)
        want = ("T", *cfg.fine_shape)
        if f.ndim != len(want) or tuple(f.shape[1:]) != cfg.fine_shape or f.shape[0] < 1:
            raise RecordError(f"{video_id!r}: fine representation must be [{', '.join(map(str, want))}] "
                              f"with T >= 1, got {tuple(f.shape)}")
        if f.dtype != self._dtype:
            raise RecordError(f"{video_id!r}: fine representation must be {cfg.fine_dtype} (the index's dtype), "
                              f"got {f.dtype}; convert it explicitly")
        if self._dtype.kind == "f" and not np.isfinite(f).all():
            raise RecordError(f"{video_id!r}: fine representation contains NaN or inf")
        f = np.ascontiguousarray(f)
        if f.dtype.byteorder == ">":
            f = f.astype(f.dtype.newbyteorder("<"))
        n_frames = f.shape[0]
        # selector
        if selector is not None:
            try:
                selector = float(selector)
            except (TypeError, ValueError) as exc:
                raise RecordError(f"{video_id!r}: selector must be a float or None, got {selector!r}") from exc
            if not math.isfinite(selector):
                raise RecordError(f"{video_id!r}: selector value {selector} is not finite")
        # meta
        meta = dict(meta or {})
        ts = meta.pop("timestamps", None)
        duration = meta.pop("duration", None)
        source = meta.pop("source", None)
        t0 = dt = None
        blob = None
        if ts is not None:
            t = np.asarray(ts, dtype=np.float64).reshape(-1)
            if len(t) != n_frames:
                raise RecordError(f"{video_id!r}: {len(t)} timestamps for {n_frames} frames")
            if not np.isfinite(t).all():
                raise RecordError(f"{video_id!r}: timestamps contain NaN or inf")
            t0 = float(t[0])
            dt = float(t[1] - t[0]) if n_frames > 1 else 0.0
            if not np.array_equal(t0 + np.arange(n_frames, dtype=np.float64) * dt, t):
                t0 = dt = None
                blob = t.astype("<f8").tobytes()
        if duration is not None:
            try:
                duration = float(duration)
            except (TypeError, ValueError) as exc:
                raise RecordError(f"{video_id!r}: duration must be a number, got {duration!r}") from exc
        if source is not None:
            if not isinstance(source, (str, os.PathLike)):
                raise RecordError(f"{video_id!r}: source must be a path or str, got {type(source).__name__}")
            source = os.fspath(source)
        try:
            meta_json = json.dumps(meta, default=_json_default, allow_nan=False) if meta else None
        except (TypeError, ValueError) as exc:
            raise RecordError(f"{video_id!r}: meta is not JSON serialisable ({exc})") from exc
        return _Prepared(video_id, c, f, selector, duration, source, t0, dt, blob, meta_json)

    @_guarded
    def add(
        self,
        records: Iterable[IndexRecord | tuple],
        *,
        on_duplicate: Literal["error", "replace", "skip"] = "error",
        batch_size: int | None = None,
    ) -> AddResult:
        """Add videos; when this returns, every added video is committed (durable).

        Args:
            records: :class:`IndexRecord` s or tuples ``(video_id, coarse [Dc], fine [T, *fine_shape],
                selector | None, meta | None)``; any iterable (streamed, not held in memory).
            on_duplicate: what to do with an id already in the index: ``"error"`` (raise, nothing
                of this call/batch is committed), ``"replace"`` (the old video is removed in the
                same commit), ``"skip"`` (keep the old one). An id twice in one call always raises.
            batch_size: commit every this many records (default: the whole call is one
                transaction, all or nothing). With batches, a failure keeps earlier batches.

        Returns:
            :class:`AddResult` with the ids added, replaced and skipped.

        Raises:
            RecordError: a record does not fit the config (id, shapes, dtype, metadata).
            DuplicateVideoError: an id is already present (``on_duplicate="error"``) or repeated.
            ReadOnlyIndexError: the store was opened readonly.
        """
        if on_duplicate not in ("error", "replace", "skip"):
            raise ValueError(f"on_duplicate must be 'error', 'replace' or 'skip', got {on_duplicate!r}")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 or None, got {batch_size}")
        result = AddResult()
        with self._mutex:
            self._check_writable()
            self._refresh()
            appender = self._appender
            assert appender is not None
            db = self._db
            seen: set[str] = set()
            rows: list[tuple] = []
            replaced_rowids: list[int] = []
            in_txn = False
            n_in_batch = 0
            now = time.time()

            coarse_rows: list[tuple] = []
            next_rowid = 0
            # vectors of this transaction, appended to the derived coarse files after the commit
            txn_rowids: list[int] = []
            txn_vectors: list[np.ndarray] = []

            def flush_rows() -> None:
                if rows:
                    db.executemany(
                        "INSERT INTO videos(rowid, video_id, status, n_frames, shard, offset, nbytes, crc32, "
                        "selector, duration, source, ts_start, ts_step, ts_blob, added, meta) "
                        "VALUES (?, ?, 0, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
                    db.executemany("INSERT INTO coarse(video_row, vector) VALUES (?, ?)", coarse_rows)
                    rows.clear()
                    coarse_rows.clear()

            def commit() -> None:
                nonlocal in_txn, n_in_batch
                flush_rows()
                appender.sync()
                for shard, (name, length) in appender.pending().items():
                    db.execute("INSERT INTO shards(shard, file, committed) VALUES (?, ?, ?) "
                               "ON CONFLICT(shard) DO UPDATE SET committed = excluded.committed",
                               (shard, name, length))
                db.execute("UPDATE state SET value = value + 1 WHERE key = 'generation'")
                if replaced_rowids:
                    db.execute("UPDATE state SET value = value + 1 WHERE key = 'epoch'")
                    replaced_rowids.clear()
                db.execute("COMMIT")
                in_txn = False
                appender.committed()
                n_in_batch = 0
                if txn_rowids:
                    try:
                        self._coarse.append(np.asarray(txn_rowids, dtype=np.int64), np.stack(txn_vectors),
                                            self._cat.generation + 1)
                    except OSError as exc:  # derived data: searches read the rows from SQLite instead
                        logger.warning("could not append to the derived coarse files of %s: %s", self.directory,
                                       exc)
                txn_rowids.clear()
                txn_vectors.clear()

            try:
                for record in records:
                    p = self._prepare(record)
                    vid = p.video_id
                    if vid in seen:
                        raise DuplicateVideoError([vid], f"video id {vid!r} appears twice in one add call")
                    seen.add(vid)
                    old = self._cat.pos.get(vid)
                    if old is not None:
                        if on_duplicate == "error":
                            raise DuplicateVideoError(
                                [vid], f"video id {vid!r} is already in the index "
                                       f"(pass on_duplicate='replace' or 'skip', or remove it first)")
                        if on_duplicate == "skip":
                            result.skipped.append(vid)
                            continue
                    if not in_txn:
                        db.execute("BEGIN IMMEDIATE")
                        in_txn = True
                        # rowids are assigned here (AUTOINCREMENT semantics: never reused) so that the
                        # coarse table can be filled by the same executemany batches
                        seq = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'videos'").fetchone()
                        next_rowid = (int(seq[0]) if seq else 0) + 1
                    if old is not None:  # replace: tombstone the old row in this transaction
                        flush_rows()
                        rid = int(self._cat.rowid[old])
                        db.execute("UPDATE videos SET status = ?, removed = ? WHERE rowid = ?",
                                   (STATUS_REMOVED, now, rid))
                        replaced_rowids.append(rid)
                        result.replaced.append(vid)
                    buf = memoryview(p.fine).cast("B")
                    shard, offset = appender.append(buf)
                    rows.append((next_rowid, vid, p.fine.shape[0], shard, offset, buf.nbytes, _crc32(buf),
                                 p.selector, p.duration, p.source, p.ts_start, p.ts_step, p.ts_blob, now,
                                 p.meta_json))
                    coarse_rows.append((next_rowid, p.coarse.tobytes()))
                    if len(txn_rowids) < _DERIVED_APPEND_MAX:
                        txn_rowids.append(next_rowid)
                        txn_vectors.append(p.coarse)
                    # else: a huge single transaction; its later rows are read from SQLite when
                    # searched and written to the derived files at the writer's close
                    next_rowid += 1
                    result.added.append(vid)
                    n_in_batch += 1
                    if len(rows) >= 1000:
                        flush_rows()
                    if batch_size is not None and n_in_batch >= batch_size:
                        commit()
                        self._refresh()
                if in_txn:
                    commit()
            except BaseException:
                if in_txn:
                    try:
                        db.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass
                    appender.rollback()
                raise
            finally:
                self._refresh()
            logger.debug("added %d videos to %s", len(result.added), self.directory)
            return result

    @_guarded
    def remove(self, video_ids: Iterable[str] | str, *, missing: Literal["error", "ignore"] = "error") -> int:
        """Remove videos: hidden from every read at once; their bytes are reclaimed by :meth:`compact`.

        Args:
            video_ids: ids to remove.
            missing: ``"error"`` raises for unknown ids (nothing removed); ``"ignore"`` skips them.

        Returns:
            The number of videos removed.

        Raises:
            UnknownVideoError: unknown ids with ``missing="error"``.
        """
        video_ids = [video_ids] if isinstance(video_ids, str) else list(dict.fromkeys(video_ids))
        with self._mutex:
            self._check_writable()
            self._refresh()
            pos = self._cat.pos
            unknown = [v for v in video_ids if v not in pos]
            if unknown and missing == "error":
                raise UnknownVideoError(unknown)
            rowids = [int(self._cat.rowid[pos[v]]) for v in video_ids if v in pos]
            if not rowids:
                return 0
            now = time.time()
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany("UPDATE videos SET status = ?, removed = ? WHERE rowid = ? AND status = 0",
                               [(STATUS_REMOVED, now, r) for r in rowids])
                db.execute("UPDATE state SET value = value + 1 WHERE key IN ('generation', 'epoch')")
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            self._refresh()
            logger.info("removed %d videos from %s", len(rowids), self.directory)
            return len(rowids)

    @_guarded
    def compact(self) -> CompactReport:
        """Rewrite the shards without removed videos and purge their rows; swapped in by one commit.

        Every copied video's CRC32 is checked on the way. A crash at any point leaves either the
        old or the new layout (the next writer deletes the other's files).

        Returns:
            :class:`CompactReport`.

        Raises:
            IndexStoreError: a stored video's bytes fail their checksum (nothing is changed).
        """
        t0 = time.perf_counter()
        with self._mutex:
            self._check_writable()
            self._refresh()
            db = self._db
            assert self._appender is not None
            old_shards = dict(self._cat.shard_files)
            bytes_before = sum(n for _, n in old_shards.values())
            n_removed = db.execute("SELECT COUNT(*) FROM videos WHERE status != 0").fetchone()[0]
            rows = db.execute("SELECT rowid, video_id, shard, offset, nbytes, crc32 FROM videos WHERE status = 0 "
                              "ORDER BY rowid").fetchall()
            live_bytes = sum(r[4] for r in rows if isinstance(r[4], int))
            if n_removed == 0 and live_bytes == bytes_before:
                return CompactReport(0, bytes_before, bytes_before, len(old_shards), len(old_shards),
                                     time.perf_counter() - t0)
            first = (max(old_shards) + 1) if old_shards else 0
            # new shard ids continue after the old ones, so old and new files never share a name
            new = ShardAppender(self.directory / SHARD_DIR, {}, self.config.shard_bytes, first_shard=first)
            updates = []
            for rowid, vid, shard, offset, nbytes, crc in rows:
                entry = old_shards.get(shard)
                if not (_is_int(offset, 0, _MAX_BYTES) and _is_int(nbytes, 0, _MAX_BYTES)) or entry is None \
                        or offset + nbytes > entry[1]:
                    raise DamagedIndexError(f"{DB_NAME} videos", f"compaction aborted: video {vid!r} lies outside "
                                            f"the committed bytes of shard {shard!r}; run verify()")
            try:
                for rowid, vid, shard, offset, nbytes, crc in rows:
                    buf = self._reader.raw(shard, offset, nbytes)
                    if _crc32(buf) != crc:
                        raise IndexStoreError(f"compaction aborted: video {vid!r} fails its checksum "
                                              f"(shard {shard} offset {offset}); run verify()")
                    s, o = new.append(buf)
                    updates.append((s, o, rowid))
                new.sync()
                pending = new.pending()
                db.execute("BEGIN IMMEDIATE")
                try:
                    db.executemany("UPDATE videos SET shard = ?, offset = ? WHERE rowid = ?", updates)
                    db.execute("DELETE FROM coarse WHERE video_row IN (SELECT rowid FROM videos WHERE status != 0)")
                    db.execute("DELETE FROM videos WHERE status != 0")
                    db.execute("DELETE FROM shards")
                    db.executemany("INSERT INTO shards(shard, file, committed) VALUES (?, ?, ?)",
                                   [(s, f, n) for s, (f, n) in pending.items()])
                    db.execute("UPDATE state SET value = value + 1 WHERE key IN ('generation', 'epoch')")
                    db.execute("COMMIT")
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
            except BaseException:
                new.rollback()
                new.close()
                raise
            new.committed()
            new.close()
            self._appender.close()
            for name, _ in old_shards.values():
                try:
                    (self.directory / SHARD_DIR / name).unlink()
                except FileNotFoundError:
                    pass
            fsync_dir(self.directory / SHARD_DIR)
            try:
                db.execute("PRAGMA incremental_vacuum")
            except sqlite3.Error as exc:
                logger.debug("incremental_vacuum failed: %s", exc)
            self._refresh(force=True)
            self._appender = ShardAppender(self.directory / SHARD_DIR, self._cat.shard_files,
                                           self.config.shard_bytes)
            self._coarse.persist(self._cat.rowid, self._cat.generation, force_rewrite=True)
            bytes_after = sum(n for _, n in self._cat.shard_files.values())
            report = CompactReport(int(n_removed), bytes_before, bytes_after, len(old_shards),
                                   len(self._cat.shard_files), time.perf_counter() - t0)
            logger.info("compacted %s: purged %d videos, %d -> %d shard bytes", self.directory, n_removed,
                        bytes_before, bytes_after)
            return report

    @_guarded
    def set_coarse_index(self, spec: str, params: str = "") -> None:
        """Change the coarse index spec (and its default query-time parameters); recorded in the manifest.

        The ANN index is derived data: it is built for the new spec on the next search with a finite
        ``k`` (or by :meth:`build_coarse_index`).

        Args:
            spec: ``"Flat"`` (exact) or a FAISS ``index_factory`` spec, e.g. ``"IVF1024,Flat"``, ``"HNSW32"``.
            params: default query-time parameters, e.g. ``"nprobe=32"``.

        Raises:
            ValueError: FAISS does not understand the spec or the parameters.
        """
        import faiss  # noqa: PLC0415

        if not is_exact_spec(spec):
            try:
                probe = faiss.index_factory(self.config.coarse_dim, spec, faiss.METRIC_INNER_PRODUCT)
                if params:
                    faiss.ParameterSpace().set_index_parameters(probe, params)
            except RuntimeError as exc:
                raise ValueError(f"invalid coarse index spec {spec!r} / params {params!r} for "
                                 f"{self.config.coarse_dim}-d vectors: {exc}") from exc
        with self._mutex:
            self._check_writable()
            config = dataclasses.replace(self.config, coarse_index=spec, coarse_params=params)
            manifest = dict(self.manifest, config=config.to_dict())
            write_json_atomic(self.directory / MANIFEST_NAME, manifest)
            self.manifest, self.config = manifest, config
            coarse = self._coarse
            coarse.spec, coarse.ann, coarse.ann_rowids, coarse.ann_failed = spec, None, None, False
            logger.info("coarse index of %s set to %r (%s)", self.directory, spec, params or "default params")

    @_guarded
    def build_coarse_index(self) -> None:
        """Bring the derived coarse data (matrix, ANN index) up to date now and save it (writer)."""
        with self._mutex:
            self._check_writable()
            self._refresh()
            self._coarse.sync(self._cat.rowid)
            if not is_exact_spec(self.config.coarse_index):
                self._coarse._ann_ready()
            self._coarse.persist(self._cat.rowid, self._cat.generation)

    # -- checks ----------------------------------------------------------------------------
    @_guarded
    def verify(self, checksums: bool = True) -> VerifyReport:
        """Check the whole index; never modifies it.

        Checks: SQLite integrity; every shard file exists and covers its committed length; every
        row's range lies inside its shard, matches ``n_frames`` x frame bytes and overlaps no other
        row; its CRC32 (``checksums=True``); coarse blobs' size and finiteness; timestamps; and the
        derived coarse data (cached matrix and ANN index) against SQLite.

        Args:
            checksums: recompute every video's CRC32 (reads every shard byte).

        Returns:
            :class:`VerifyReport`.
        """
        t0 = time.perf_counter()
        problems: list[dict[str, Any]] = []
        notes: list[str] = []

        def bad(kind: str, message: str, video_id: str | None = None) -> None:
            problems.append({"kind": kind, "message": message, "video_id": video_id})

        with self._mutex:
            self._check_open()
            if self._pins:
                raise IndexStoreError("verify() reloads the catalog: call it outside snapshot()")
            self._refresh(force=True)
            db = self._db
            try:
                read_manifest(self.directory)
            except IndexFormatError as exc:
                bad("manifest", str(exc))
            integrity = [r[0] for r in db.execute("PRAGMA quick_check").fetchall()]
            if integrity != ["ok"]:
                bad("sqlite", f"SQLite quick_check: {'; '.join(integrity[:5])}")
            shards = dict(self._cat.shard_files)
            for shard, (name, committed) in shards.items():
                try:
                    path = inside(self.directory / SHARD_DIR, name, where=f"{SHARD_DIR}/{name}")
                except DamagedIndexError as exc:
                    bad("shard", str(exc))
                    continue
                if not path.is_file():
                    bad("shard", f"shard file {name} is missing")
                    continue
                size = path.stat().st_size
                if size < committed:
                    bad("shard", f"shard file {name} has {size} bytes, {committed} are committed")
                elif size > committed:
                    notes.append(f"{name}: {size - committed} uncommitted bytes past the end "
                                 f"(an interrupted add; the next writer truncates them)")
            dim = self.config.coarse_dim
            fb = self._frame_bytes
            n_checked = n_removed = n_active = 0
            ranges: dict[int, list[tuple[int, int, str]]] = {}
            all_rowids = []
            cur = db.execute("SELECT v.rowid, v.video_id, v.status, v.n_frames, v.shard, v.offset, v.nbytes, "
                             "v.crc32, c.vector, v.ts_start, v.ts_step, v.ts_blob "
                             "FROM videos v LEFT JOIN coarse c ON c.video_row = v.rowid")
            for rowid, vid, status, nfr, shard, offset, nbytes, crc, coarse, t0_, dt_, ts_blob in cur:
                all_rowids.append(rowid)
                if status == STATUS_ACTIVE:
                    n_active += 1
                else:
                    n_removed += 1
                if not (_is_int(nfr, 1, 1 << 40) and _is_int(shard, 0, _MAX_SHARD_ID) and _is_int(offset, 0, _MAX_BYTES)
                        and _is_int(nbytes, 0, _MAX_BYTES) and _is_int(crc, 0, 0xFFFFFFFF)):
                    bad("row", f"non-integer or out-of-range values: frames {nfr!r}, shard {shard!r}, offset "
                               f"{offset!r}, bytes {nbytes!r}, crc32 {crc!r}", vid)
                    continue
                if nbytes != nfr * fb or nfr < 1:
                    bad("shape", f"{nbytes} bytes stored for {nfr} frames of {fb} bytes "
                                 f"({self.config.fine_dtype} {self.config.fine_shape})", vid)
                    continue
                if shard not in shards:
                    bad("location", f"refers to unknown shard {shard}", vid)
                    continue
                if offset < 0 or offset + nbytes > shards[shard][1]:
                    bad("location", f"range [{offset}, {offset + nbytes}) exceeds shard {shard}'s committed "
                                    f"length {shards[shard][1]}", vid)
                    continue
                ranges.setdefault(shard, []).append((offset, offset + nbytes, vid))
                if not isinstance(coarse, bytes) or len(coarse) != 4 * dim:
                    size = len(coarse) if isinstance(coarse, bytes) else f"no ({type(coarse).__name__})"
                    bad("coarse", f"coarse blob has {size} bytes, expected {4 * dim}", vid)
                elif not np.isfinite(np.frombuffer(coarse, dtype="<f4")).all():
                    bad("coarse", "coarse vector contains NaN or inf", vid)
                if ts_blob is not None and (not isinstance(ts_blob, bytes) or len(ts_blob) != 8 * nfr):
                    bad("timestamps", f"{len(ts_blob) // 8 if isinstance(ts_blob, bytes) else 'no'} timestamps "
                                      f"for {nfr} frames", vid)
                if checksums and status == STATUS_ACTIVE:
                    try:
                        got = _crc32(self._reader.raw(shard, offset, nbytes))
                    except (OSError, DamagedIndexError) as exc:
                        bad("read", f"cannot read its fine bytes: {exc}", vid)
                        continue
                    n_checked += 1
                    if got != crc:
                        bad("checksum", f"fine bytes in shard {shard} at offset {offset} fail CRC32 "
                                        f"(stored {crc:#010x}, computed {got:#010x})", vid)
            for shard, rs in ranges.items():
                rs.sort()
                for (_, end_a, vid_a), (start_b, _, vid_b) in zip(rs, rs[1:]):
                    if start_b < end_a:
                        bad("overlap", f"fine ranges of {vid_a!r} and {vid_b!r} overlap in shard {shard}", vid_b)
            saved = _Catalog.load(self.directory / CATALOG_NAME) if (self.directory / CATALOG_NAME).is_file() else None
            if saved is not None and saved.generation == self._cat.generation:
                same = saved.ids.tolist() == self._cat.ids.tolist() and all(
                    np.array_equal(getattr(saved, k), getattr(self._cat, k), equal_nan=(k == "selector"))
                    for k in _Catalog._ARRAYS)
                if not same:
                    bad("derived", f"derived {CATALOG_NAME} disagrees with SQLite: writers ignore it and rewrite it "
                                   f"at close (any write command repairs it, or delete the file)")
            orphans = db.execute("SELECT COUNT(*) FROM coarse WHERE video_row NOT IN (SELECT rowid FROM videos)"
                                 ).fetchone()[0]
            if orphans:
                bad("coarse", f"{orphans} coarse vectors belong to no video row")
            dup = db.execute("SELECT video_id, COUNT(*) FROM videos WHERE status = 0 GROUP BY video_id "
                             "HAVING COUNT(*) > 1").fetchall()
            for vid, n in dup:
                bad("duplicate", f"{n} active rows share this id", vid)
            self._verify_coarse(np.asarray(sorted(all_rowids), dtype=np.int64), bad, notes)
        report = VerifyReport(ok=not problems, n_videos=n_active, n_removed=n_removed, n_checked=n_checked,
                              checksums=checksums, problems=problems, notes=notes,
                              seconds=time.perf_counter() - t0)
        if problems:
            logger.warning("verify %s: %d problem(s), first: %s", self.directory, len(problems), problems[0]["message"])
        return report

    def _verify_coarse(self, all_rowids: np.ndarray, bad: Any, notes: list[str]) -> None:
        try:
            problems, more = self._coarse.check(all_rowids, self._load_coarse_rows)
        except DamagedIndexError as exc:  # a coarse blob in SQLite itself (reported per video above)
            notes.append(f"derived coarse files not compared with SQLite: {exc}")
            return
        for message in problems:
            bad("derived", message)
        notes.extend(more)

    @_guarded
    def info(self) -> dict[str, Any]:
        """Counts, bytes on disk per stage and per video, config and versions (JSON-ready)."""
        with self._mutex:
            self._check_open()
            self._refresh()
            db = self._db
            n_active = len(self._cat.ids)
            n_removed = db.execute("SELECT COUNT(*) FROM videos WHERE status != 0").fetchone()[0]
            live_fine = int((self._cat.n_frames * self._frame_bytes).sum())
            frames = int(self._cat.n_frames.sum())
            n_sel = int(np.isfinite(self._cat.selector).sum())
            shard_bytes = sum(n for _, n in self._cat.shard_files.values())

        def size(p: Path) -> int:
            try:
                return p.stat().st_size
            except OSError:
                return 0

        sqlite_bytes = sum(size(self.directory / (DB_NAME + s)) for s in ("", "-wal", "-shm"))
        coarse_dir = self.directory / COARSE_DIR
        derived = sum(size(p) for p in coarse_dir.iterdir()) if coarse_dir.is_dir() else 0
        per = max(n_active, 1)
        return {
            "directory": str(self.directory),
            "format_version": self.manifest.get("format_version"),
            "written_by": self.manifest.get("written_by"),
            "config": self.config.to_dict(),
            "generation": self._cat.generation,
            "videos": n_active,
            "removed_pending_compact": int(n_removed),
            "frames": frames,
            "bytes": {
                "fine_live": live_fine,
                "fine_shards": shard_bytes,
                "fine_reclaimable": shard_bytes - live_fine,
                "sqlite": sqlite_bytes,
                "coarse_derived": derived,
            },
            "bytes_per_video": {
                "fine": live_fine / per,
                "coarse": 4 * self.config.coarse_dim,
                "selector": 8 if n_sel else 0,
                "sqlite_row": sqlite_bytes / per,
                "coarse_derived": derived / per,
                "total_on_disk": (shard_bytes + sqlite_bytes + derived) / per,
            },
            "selector_values": n_sel,
        }

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

This module holds the store's handle (open, snapshot, reads, attrs, the write entry points); its
parts live beside it by concept: :mod:`dnsvr.index.records` (config, records, reports, errors),
``_catalog`` (the active rows), ``_validate`` (a record checked), ``_add`` (the add transaction),
``_maintenance`` (compact, verify), ``_shards`` (shard files), ``_coarse`` (derived coarse search).

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
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from dnsvr.index import _maintenance
from dnsvr.index._add import AddTransaction
from dnsvr.index._catalog import _ROW_COLS, CATALOG_NAME, _Catalog, _check_rows, _check_shards, _is_int
from dnsvr.index._coarse import CoarseCache, is_exact_spec
from dnsvr.index._lock import LOCK_NAME, IndexLockedError, WriterLock
from dnsvr.index._paths import check_entries, inside, write_json_atomic
from dnsvr.index._schema import (
    COARSE_DIR,
    DB_NAME,
    MANIFEST_NAME,
    SHARD_DIR,
    STATUS_REMOVED,
    DamagedIndexError,
    IndexFormatError,
    connect,
    init_schema,
    make_manifest,
    read_manifest,
)
from dnsvr.index._shards import ShardAppender, ShardReader
from dnsvr.index._shards import crc32 as _crc32
from dnsvr.index.records import (
    AddResult,
    CoarseHits,
    CompactReport,
    FineBlock,
    IndexConfig,
    IndexRecord,
    IndexStoreError,
    ReadOnlyIndexError,
    UnknownVideoError,
    VerifyReport,
    VideoEntry,
    _json_default,
)

logger = logging.getLogger(__name__)

__all__ = ["DamagedIndexError", "IndexFormatError", "IndexLockedError", "IndexStore"]

_SQL_CHUNK = 900  # stay below SQLite's host-parameter limit


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


def _attr_value(key: str, text: Any) -> Any:
    try:
        return json.loads(text)
    except (TypeError, ValueError, RecursionError):
        raise DamagedIndexError(f"{DB_NAME} attrs", f"the value of {key!r} is not JSON") from None


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
                                   self._load_coarse_rows, chunks=self.config.coarse_chunks)
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
        """Search of the coarse vectors: inner products, or chunked similarities (``config.coarse_chunks``).

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
        with self._mutex:
            self._check_writable()
            self._refresh()
            result = AddTransaction(self, on_duplicate, batch_size).run(records)
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
        return _maintenance.compact(self)

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
            self._coarse.set_spec(spec)
            logger.info("coarse index of %s set to %r (%s)", self.directory, spec, params or "default params")

    @_guarded
    def build_coarse_index(self) -> None:
        """Bring the derived coarse data (matrix, ANN index) up to date now and save it (writer)."""
        with self._mutex:
            self._check_writable()
            self._refresh()
            self._coarse.sync(self._cat.rowid)
            if not is_exact_spec(self.config.coarse_index):
                self._coarse.ann_ready()
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
        return _maintenance.verify(self, checksums)

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

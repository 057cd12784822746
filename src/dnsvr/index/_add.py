"""The add path of an index store: one :meth:`IndexStore.add` call's records, appended and committed.

Each record is checked (:func:`~dnsvr.index._validate.prepare_record`), its fine bytes appended past the
committed end of a shard, its row and coarse vector queued; a commit fsyncs the shards, then writes the
rows, the coarse vectors and the shards' new committed lengths in one SQLite transaction (the store's
module docstring: the commit protocol). After the commit the transaction's coarse vectors are appended
to the derived coarse files (derived data: a failure there only costs a rebuild).
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from dnsvr.index._schema import STATUS_REMOVED
from dnsvr.index._shards import crc32
from dnsvr.index._validate import PreparedRecord, prepare_record
from dnsvr.index.records import AddResult, DuplicateVideoError

if TYPE_CHECKING:
    from dnsvr.index.store import IndexStore

logger = logging.getLogger(__name__)

_DERIVED_APPEND_MAX = 32_768  # coarse vectors held per transaction for the derived files (128 MB at 1024-d)
_ROWS_PER_INSERT = 1000  # rows queued before one executemany


class AddTransaction:
    """The records of one add call in flight; the caller holds the store's mutex and has checked it writable.

    Args:
        store: the open, writable store.
        on_duplicate: ``"error"``, ``"replace"`` or ``"skip"`` (see :meth:`IndexStore.add`).
        batch_size: commit every this many added records (None: one transaction for the whole call).
    """

    def __init__(self, store: IndexStore, on_duplicate: str, batch_size: int | None) -> None:
        assert store._appender is not None
        self.store = store
        self.appender = store._appender
        self.db = store._db
        self.on_duplicate = on_duplicate
        self.batch_size = batch_size
        self.result = AddResult()
        self.now = time.time()
        self.seen: set[str] = set()
        self.rows: list[tuple] = []
        self.coarse_rows: list[tuple] = []
        self.replaced_rowids: list[int] = []
        self.in_txn = False
        self.n_in_batch = 0
        self.next_rowid = 0
        # vectors of this transaction, appended to the derived coarse files after the commit
        self.txn_rowids: list[int] = []
        self.txn_vectors: list[np.ndarray] = []

    def run(self, records: Iterable[Any]) -> AddResult:
        """Add every record; commit the last batch; on any failure roll the open transaction back."""
        try:
            for record in records:
                self._add(prepare_record(record, self.store.config))
            if self.in_txn:
                self._commit()
        except BaseException:
            if self.in_txn:
                try:
                    self.db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                self.appender.rollback()
            raise
        finally:
            self.store._refresh()
        return self.result

    def _add(self, p: PreparedRecord) -> None:
        store, result = self.store, self.result
        vid = p.video_id
        if vid in self.seen:
            raise DuplicateVideoError([vid], f"video id {vid!r} appears twice in one add call")
        self.seen.add(vid)
        old = store._cat.pos.get(vid)
        if old is not None:
            if self.on_duplicate == "error":
                raise DuplicateVideoError(
                    [vid], f"video id {vid!r} is already in the index "
                           f"(pass on_duplicate='replace' or 'skip', or remove it first)")
            if self.on_duplicate == "skip":
                result.already_indexed.append(vid)
                return
        if not self.in_txn:
            self._begin()
        if old is not None:  # replace: tombstone the old row in this transaction
            self._flush_rows()
            rid = int(store._cat.rowid[old])
            self.db.execute("UPDATE videos SET status = ?, removed = ? WHERE rowid = ?", (STATUS_REMOVED, self.now, rid))
            self.replaced_rowids.append(rid)
            result.replaced.append(vid)
        buf = memoryview(p.fine).cast("B")
        shard, offset = self.appender.append(buf)
        rowid = self.next_rowid
        self.rows.append((rowid, vid, p.fine.shape[0], shard, offset, buf.nbytes, crc32(buf), p.selector,
                          p.duration, p.source, p.ts_start, p.ts_step, p.ts_blob, self.now, p.meta_json))
        self.coarse_rows.append((rowid, p.coarse.tobytes()))
        if len(self.txn_rowids) < _DERIVED_APPEND_MAX:
            self.txn_rowids.append(rowid)
            self.txn_vectors.append(p.coarse)
        # else: a huge single transaction; its later rows are read from SQLite when
        # searched and written to the derived files at the writer's close
        self.next_rowid += 1
        result.added.append(vid)
        self.n_in_batch += 1
        if len(self.rows) >= _ROWS_PER_INSERT:
            self._flush_rows()
        if self.batch_size is not None and self.n_in_batch >= self.batch_size:
            self._commit()
            store._refresh()

    def _begin(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")
        self.in_txn = True
        # rowids are assigned here (AUTOINCREMENT semantics: never reused) so that the
        # coarse table can be filled by the same executemany batches
        seq = self.db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'videos'").fetchone()
        self.next_rowid = (int(seq[0]) if seq else 0) + 1

    def _flush_rows(self) -> None:
        if self.rows:
            self.db.executemany(
                "INSERT INTO videos(rowid, video_id, status, n_frames, shard, offset, nbytes, crc32, "
                "selector, duration, source, ts_start, ts_step, ts_blob, added, meta) "
                "VALUES (?, ?, 0, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", self.rows)
            self.db.executemany("INSERT INTO coarse(video_row, vector) VALUES (?, ?)", self.coarse_rows)
            self.rows.clear()
            self.coarse_rows.clear()

    def _commit(self) -> None:
        db, appender = self.db, self.appender
        self._flush_rows()
        appender.sync()
        for shard, (name, length) in appender.pending().items():
            db.execute("INSERT INTO shards(shard, file, committed) VALUES (?, ?, ?) "
                       "ON CONFLICT(shard) DO UPDATE SET committed = excluded.committed",
                       (shard, name, length))
        db.execute("UPDATE state SET value = value + 1 WHERE key = 'generation'")
        if self.replaced_rowids:
            db.execute("UPDATE state SET value = value + 1 WHERE key = 'epoch'")
            self.replaced_rowids.clear()
        db.execute("COMMIT")
        self.in_txn = False
        appender.committed()
        self.n_in_batch = 0
        if self.txn_rowids:
            store = self.store
            try:
                store._coarse.append(np.asarray(self.txn_rowids, dtype=np.int64), np.stack(self.txn_vectors),
                                     store._cat.generation + 1)
            except OSError as exc:  # derived data: searches read the rows from SQLite instead
                logger.warning("could not append to the derived coarse files of %s: %s", store.directory, exc)
        self.txn_rowids.clear()
        self.txn_vectors.clear()

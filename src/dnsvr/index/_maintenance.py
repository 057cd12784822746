"""Maintenance of an index store: :func:`compact` (reclaim removed videos' bytes) and :func:`verify` (check all).

Both run under the store's mutex, as :meth:`IndexStore.compact` and :meth:`IndexStore.verify` call them;
compaction writes new shards and swaps them in with one SQLite commit, verification never modifies.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from dnsvr._fsutil import fsync_dir
from dnsvr.index._catalog import CATALOG_NAME, _Catalog, _is_int
from dnsvr.index._paths import inside
from dnsvr.index._schema import (
    DB_NAME,
    SHARD_DIR,
    STATUS_ACTIVE,
    DamagedIndexError,
    IndexFormatError,
    read_manifest,
)
from dnsvr.index._shards import ShardAppender, crc32
from dnsvr.index.records import _MAX_BYTES, _MAX_SHARD_ID, CompactReport, IndexStoreError, VerifyReport

if TYPE_CHECKING:
    from dnsvr.index.store import IndexStore

logger = logging.getLogger(__name__)


def compact(store: IndexStore) -> CompactReport:
    """:meth:`IndexStore.compact` (its docstring says what it does and raises)."""
    t0 = time.perf_counter()
    with store._mutex:
        store._check_writable()
        store._refresh()
        db = store._db
        assert store._appender is not None
        old_shards = dict(store._cat.shard_files)
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
        new = ShardAppender(store.directory / SHARD_DIR, {}, store.config.shard_bytes, first_shard=first)
        updates = []
        for rowid, vid, shard, offset, nbytes, crc in rows:
            entry = old_shards.get(shard)
            if not (_is_int(offset, 0, _MAX_BYTES) and _is_int(nbytes, 0, _MAX_BYTES)) or entry is None \
                    or offset + nbytes > entry[1]:
                raise DamagedIndexError(f"{DB_NAME} videos", f"compaction aborted: video {vid!r} lies outside "
                                        f"the committed bytes of shard {shard!r}; run verify()")
        try:
            for rowid, vid, shard, offset, nbytes, crc in rows:
                buf = store._reader.raw(shard, offset, nbytes)
                if crc32(buf) != crc:
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
        store._appender.close()
        for name, _ in old_shards.values():
            try:
                (store.directory / SHARD_DIR / name).unlink()
            except FileNotFoundError:
                pass
        fsync_dir(store.directory / SHARD_DIR)
        try:
            db.execute("PRAGMA incremental_vacuum")
        except sqlite3.Error as exc:
            logger.debug("incremental_vacuum failed: %s", exc)
        store._refresh(force=True)
        store._appender = ShardAppender(store.directory / SHARD_DIR, store._cat.shard_files,
                                       store.config.shard_bytes)
        store._coarse.persist(store._cat.rowid, store._cat.generation, force_rewrite=True)
        bytes_after = sum(n for _, n in store._cat.shard_files.values())
        report = CompactReport(int(n_removed), bytes_before, bytes_after, len(old_shards),
                               len(store._cat.shard_files), time.perf_counter() - t0)
        logger.info("compacted %s: purged %d videos, %d -> %d shard bytes", store.directory, n_removed,
                    bytes_before, bytes_after)
        return report


def verify(store: IndexStore, checksums: bool = True) -> VerifyReport:
    """:meth:`IndexStore.verify` (its docstring lists the checks)."""
    t0 = time.perf_counter()
    problems: list[dict[str, Any]] = []
    notes: list[str] = []

    def bad(kind: str, message: str, video_id: str | None = None) -> None:
        problems.append({"kind": kind, "message": message, "video_id": video_id})

    with store._mutex:
        store._check_open()
        if store._pins:
            raise IndexStoreError("verify() reloads the catalog: call it outside snapshot()")
        store._refresh(force=True)
        db = store._db
        try:
            read_manifest(store.directory)
        except IndexFormatError as exc:
            bad("manifest", str(exc))
        integrity = [r[0] for r in db.execute("PRAGMA quick_check").fetchall()]
        if integrity != ["ok"]:
            bad("sqlite", f"SQLite quick_check: {'; '.join(integrity[:5])}")
        shards = dict(store._cat.shard_files)
        for shard, (name, committed) in shards.items():
            try:
                path = inside(store.directory / SHARD_DIR, name, where=f"{SHARD_DIR}/{name}")
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
        dim = store.config.coarse_dim
        fb = store._frame_bytes
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
                             f"({store.config.fine_dtype} {store.config.fine_shape})", vid)
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
                    got = crc32(store._reader.raw(shard, offset, nbytes))
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
        saved = _Catalog.load(store.directory / CATALOG_NAME) if (store.directory / CATALOG_NAME).is_file() else None
        if saved is not None and saved.generation == store._cat.generation:
            same = saved.ids.tolist() == store._cat.ids.tolist() and all(
                np.array_equal(getattr(saved, k), getattr(store._cat, k), equal_nan=(k == "selector"))
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
        _verify_coarse(store, np.asarray(sorted(all_rowids), dtype=np.int64), bad, notes)
    report = VerifyReport(ok=not problems, n_videos=n_active, n_removed=n_removed, n_checked=n_checked,
                          checksums=checksums, problems=problems, notes=notes,
                          seconds=time.perf_counter() - t0)
    if problems:
        logger.warning("verify %s: %d problem(s), first: %s", store.directory, len(problems), problems[0]["message"])
    return report


def _verify_coarse(store: IndexStore, all_rowids: np.ndarray, bad: Any, notes: list[str]) -> None:
    try:
        problems, more = store._coarse.check(all_rowids, store._load_coarse_rows)
    except DamagedIndexError as exc:  # a coarse blob in SQLite itself (reported per video above)
        notes.append(f"derived coarse files not compared with SQLite: {exc}")
        return
    for message in problems:
        bad("derived", message)
    notes.extend(more)

"""On-disk format of an index directory: ``manifest.json`` and the SQLite schema.

Layout (format version 1)::

    DIR/
      manifest.json        format name + version, the index config, versions that wrote it
      meta.sqlite          SQLite in WAL mode: the source of truth (+ meta.sqlite-wal/-shm)
      shards/fine-NNNNNN.bin   append-only fine-grained representations (raw C-order bytes)
      coarse/              derived: appended copy of the coarse vectors (+ ANN index), rebuilt when stale
      catalog.npz          derived: the active rows' ids and locations, saved by the writer at close
      write.lock           single-writer fcntl lock (holds the writer's pid)
"""

from __future__ import annotations

import json
import logging
import os
import platform
import sqlite3
import time
from pathlib import Path
from typing import Any


logger = logging.getLogger(__name__)

FORMAT_NAME = "dnsvr-index"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
DB_NAME = "meta.sqlite"
SHARD_DIR = "shards"
COARSE_DIR = "coarse"

STATUS_ACTIVE = 0
STATUS_REMOVED = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS videos (
    rowid      INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: the id of derived coarse/ANN data
    video_id   TEXT    NOT NULL,
    status     INTEGER NOT NULL DEFAULT 0,         -- 0 active, 1 removed (tombstone until compact)
    n_frames   INTEGER NOT NULL,
    shard      INTEGER NOT NULL,
    offset     INTEGER NOT NULL,                   -- byte offset in the shard file
    nbytes     INTEGER NOT NULL,
    crc32      INTEGER NOT NULL,                   -- zlib.crc32 of the fine bytes
    selector   REAL,                               -- selector self-similarity, NULL if none
    duration   REAL,
    source     TEXT,
    ts_start   REAL,                               -- timestamps = ts_start + i * ts_step when ts_blob is NULL
    ts_step    REAL,
    ts_blob    BLOB,                               -- float64 [n_frames] when not uniform
    added      REAL    NOT NULL,                   -- unix time of the commit
    removed    REAL,
    meta       TEXT                                -- JSON object, NULL if empty
);
CREATE UNIQUE INDEX IF NOT EXISTS videos_active_id ON videos(video_id) WHERE status = 0;
-- Coarse vectors live in their own table so that the videos table stays small: opening an index
-- reads every active row of `videos`, and 4 KiB blobs between them would make that a full scan.
CREATE TABLE IF NOT EXISTS coarse (
    video_row  INTEGER PRIMARY KEY,                -- videos.rowid
    vector     BLOB    NOT NULL                    -- float32 [coarse_dim], little endian
);
CREATE TABLE IF NOT EXISTS shards (
    shard      INTEGER PRIMARY KEY,
    file       TEXT    NOT NULL,
    committed  INTEGER NOT NULL                    -- bytes of the file that belong to committed rows
);
CREATE TABLE IF NOT EXISTS state (
    key        TEXT PRIMARY KEY,
    value      INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS attrs (
    key        TEXT PRIMARY KEY,
    value      TEXT NOT NULL                       -- JSON
);
INSERT OR IGNORE INTO state(key, value) VALUES ('generation', 0);  -- bumped by every commit that changes the set
INSERT OR IGNORE INTO state(key, value) VALUES ('epoch', 0);       -- bumped by remove/compact (not by add)
"""


class IndexFormatError(ValueError):
    """A directory is not a dnsvr index, or was written by an unsupported format version."""


class DamagedIndexError(IndexFormatError):
    """An index file or a value in its metadata is damaged: ``damaged index: <file>: <what>``.

    Attributes:
        file: the file (relative to the index folder) or metadata field at fault.
        what: what is wrong with it.
    """

    def __init__(self, file: str, what: str) -> None:
        self.file = file
        self.what = what
        super().__init__(f"damaged index: {file}: {what}")


def versions() -> dict[str, str]:
    """Versions of the software writing an index (recorded in the manifest)."""
    import faiss  # noqa: PLC0415 - heavy import, only needed here
    import numpy as np  # noqa: PLC0415

    from dnsvr import __version__  # noqa: PLC0415

    return {
        "dnsvr": __version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "faiss": getattr(faiss, "__version__", "unknown"),
        "sqlite": sqlite3.sqlite_version,
    }


def make_manifest(config: dict[str, Any]) -> dict[str, Any]:
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "written_by": versions(),
        "config": config,
    }


def read_manifest(directory: Path) -> dict[str, Any]:
    """Read and check ``manifest.json``.

    Raises:
        IndexFormatError: missing/unreadable manifest, wrong format name, newer format version.
    """
    from dnsvr.index._paths import read_json  # noqa: PLC0415 - _paths imports this module

    path = directory / MANIFEST_NAME
    if not os.path.lexists(path):
        raise IndexFormatError(f"{directory} is not a dnsvr index: {MANIFEST_NAME} not found")
    try:
        manifest = read_json(directory, MANIFEST_NAME)
    except FileNotFoundError:
        raise IndexFormatError(f"{directory} is not a dnsvr index: {MANIFEST_NAME} not found") from None
    except OSError as exc:
        raise DamagedIndexError(MANIFEST_NAME, f"unreadable ({exc.strerror or exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        what = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise IndexFormatError(f"{path}: not a dnsvr index manifest (format={what!r})")
    version = manifest.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise DamagedIndexError(MANIFEST_NAME, f"bad format_version {version!r}")
    if version > FORMAT_VERSION:
        raise IndexFormatError(
            f"{path}: format version {version} is newer than this dnsvr supports ({FORMAT_VERSION}); "
            f"written by {manifest.get('written_by')}; upgrade dnsvr"
        )
    return manifest


def connect(db_path: Path, readonly: bool) -> sqlite3.Connection:
    """Open the metadata database in WAL mode (synchronous=FULL: a returned commit is durable)."""
    conn = sqlite3.connect(str(db_path), timeout=30.0, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout = 30000")
    if not readonly:
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise IndexFormatError(f"{db_path}: could not switch SQLite to WAL mode (got {mode!r})")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA journal_size_limit = 67108864")  # the WAL shrinks back to 64 MiB after checkpoints
    conn.execute("PRAGMA foreign_keys = ON")
    if readonly:
        conn.execute("PRAGMA query_only = 1")
    return conn


def init_schema(conn: sqlite3.Connection) -> None:
    conn.executescript("BEGIN;" + SCHEMA + "COMMIT;")



"""Reviewer verdicts per (query, result), kept durably beside the index: :class:`VerdictStore`.

The verdicts live in their own SQLite file, ``review.sqlite`` in the index folder, not in the
store's ``meta.sqlite``: they are the reviewers' data, not the index's — a rebuilt, compacted or
re-attached store must not touch them, the store's single-writer lock must not stop a reviewer
while a job adds videos, and an index written before this file existed opens unchanged (older
dnsvr versions ignore the file). WAL mode with ``synchronous=FULL``: a verdict whose request
returned survives a crash.

Export: ``{query_id: {video_id: verdict}}``, the ground-truth file of
``dnsvr evaluate --benchmark custom --ground-truth FILE --positive-labels copy,partial``.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

VERDICTS = ("copy", "partial", "related", "not_related")
REVIEW_DB = "review.sqlite"
SCHEMA_VERSION = 1
MAX_NOTE = 2000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS verdicts (
    query      TEXT NOT NULL,   -- the query's name as search reports it (an indexed id, or a file's id)
    video_id   TEXT NOT NULL,   -- the result's video id
    verdict    TEXT NOT NULL CHECK (verdict IN ('copy', 'partial', 'related', 'not_related')),
    note       TEXT NOT NULL DEFAULT '',
    query_ref  TEXT NOT NULL DEFAULT '',  -- media reference of the query (video:, upload:, path:)
    score      REAL,                      -- the result's score when the verdict was given
    updated    REAL NOT NULL,
    PRIMARY KEY (query, video_id)
);
CREATE TABLE IF NOT EXISTS review_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT OR IGNORE INTO review_meta(key, value) VALUES ('schema_version', '1');
"""


@dataclass(frozen=True)
class Verdict:
    """One reviewer decision on one (query, result) pair."""

    query: str
    video_id: str
    verdict: str
    note: str = ""
    query_ref: str = ""
    score: float | None = None
    updated: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class VerdictStore:
    """The verdicts of one index (``DIR/review.sqlite``). Thread-safe.

    Raises:
        ValueError: from :meth:`put` on an unknown verdict, an empty id or an over-long note;
            from the constructor when the file was written by a newer schema.
    """

    def __init__(self, index_dir: str | Path) -> None:
        self.path = Path(index_dir) / REVIEW_DB
        self._mutex = threading.Lock()
        self._db = sqlite3.connect(str(self.path), timeout=30.0, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = FULL")
        self._db.executescript("BEGIN;" + _SCHEMA + "COMMIT;")
        version = int(self._db.execute("SELECT value FROM review_meta WHERE key = 'schema_version'").fetchone()[0])
        if version > SCHEMA_VERSION:
            self._db.close()
            raise ValueError(f"{self.path}: review schema {version} is newer than this dnsvr supports "
                             f"({SCHEMA_VERSION}); upgrade dnsvr")

    def close(self) -> None:
        with self._mutex:
            self._db.close()

    def put(self, query: str, video_id: str, verdict: str, note: str = "", query_ref: str = "",
            score: float | None = None) -> Verdict:
        """Record (or replace) the verdict on ``(query, video_id)``; durable when it returns."""
        if verdict not in VERDICTS:
            raise ValueError(f"unknown verdict {verdict!r}; expected one of {', '.join(VERDICTS)}")
        if not query or not video_id or len(query) > 1024 or len(video_id) > 1024:
            raise ValueError("query and video_id must be non-empty (at most 1024 characters)")
        if len(note) > MAX_NOTE:
            raise ValueError(f"note longer than {MAX_NOTE} characters")
        v = Verdict(query, video_id, verdict, note, query_ref, score, time.time())
        with self._mutex:
            self._db.execute(
                "INSERT INTO verdicts(query, video_id, verdict, note, query_ref, score, updated) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(query, video_id) DO UPDATE SET verdict = excluded.verdict, "
                "note = excluded.note, query_ref = excluded.query_ref, score = excluded.score, "
                "updated = excluded.updated",
                (v.query, v.video_id, v.verdict, v.note, v.query_ref, v.score, v.updated))
        return v

    def delete(self, query: str, video_id: str) -> bool:
        """Forget the verdict on ``(query, video_id)``; False when there was none."""
        with self._mutex:
            cur = self._db.execute("DELETE FROM verdicts WHERE query = ? AND video_id = ?", (query, video_id))
            return cur.rowcount > 0

    def list(self, query: str | None = None) -> list[Verdict]:
        """All verdicts (of one query), oldest first."""
        sql = "SELECT query, video_id, verdict, note, query_ref, score, updated FROM verdicts"
        args: tuple[Any, ...] = ()
        if query is not None:
            sql += " WHERE query = ?"
            args = (query,)
        with self._mutex:
            rows = self._db.execute(sql + " ORDER BY updated, query, video_id", args).fetchall()
        return [Verdict(*row) for row in rows]

    def __len__(self) -> int:
        with self._mutex:
            return int(self._db.execute("SELECT COUNT(*) FROM verdicts").fetchone()[0])

    def ground_truth(self) -> dict[str, dict[str, str]]:
        """``{query: {video_id: verdict}}`` — the custom benchmark's ground-truth format."""
        out: dict[str, dict[str, str]] = {}
        for v in self.list():
            out.setdefault(v.query, {})[v.video_id] = v.verdict
        return out

"""The persistent video index: the numpy-level store (:mod:`dnsvr.index.store`) and the facade over it.

``IndexStore`` keeps metadata in SQLite (WAL), fine representations in append-only
memory-mapped shards and coarse vectors for exact or ANN search (derived, rebuildable).
Its records, config, reports and errors live in :mod:`dnsvr.index.records`; the store's
private parts by concept: ``_catalog`` (the active rows), ``_validate`` (a record checked),
``_add`` (the add transaction), ``_maintenance`` (compact, verify), ``_shards``, ``_coarse``,
``_schema``, ``_paths``, ``_lock``.
"""

from __future__ import annotations

from typing import Any

from dnsvr.index.records import (
    AddResult,
    CoarseHits,
    CompactReport,
    DuplicateVideoError,
    FineBlock,
    IndexConfig,
    IndexRecord,
    IndexStoreError,
    ReadOnlyIndexError,
    RecordError,
    UnknownVideoError,
    VerifyReport,
    VideoEntry,
)
from dnsvr.index.store import IndexFormatError, IndexLockedError, IndexStore

# The facade pulls in torch and the networks; import it on first use so that store-only
# users (readers, benchmarks, subprocess workers) start fast.
_FACADE = {"AddReport", "VideoIndex", "VideoIndexError", "open_index"}
_SHARDED = {"ShardedIndex", "open_any"}


def __getattr__(name: str) -> Any:
    if name in _FACADE:
        from dnsvr.index import video_index  # noqa: PLC0415

        return getattr(video_index, name)
    if name in _SHARDED:
        from dnsvr.index import sharded  # noqa: PLC0415

        return getattr(sharded, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AddReport",
    "ShardedIndex",
    "open_any",
    "VideoIndex",
    "VideoIndexError",
    "open_index",
    "AddResult",
    "CoarseHits",
    "CompactReport",
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
]

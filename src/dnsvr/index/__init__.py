"""The persistent video index: the numpy-level store (:mod:`dnsvr.index.store`).

``IndexStore`` keeps metadata in SQLite (WAL), fine representations in append-only
memory-mapped shards and coarse vectors for exact or ANN search (derived, rebuildable).
"""

from __future__ import annotations

from dnsvr.index.store import (
    AddResult,
    CoarseHits,
    CompactReport,
    DuplicateVideoError,
    FineBlock,
    IndexConfig,
    IndexFormatError,
    IndexLockedError,
    IndexRecord,
    IndexStore,
    IndexStoreError,
    ReadOnlyIndexError,
    RecordError,
    UnknownVideoError,
    VerifyReport,
    VideoEntry,
)
from dnsvr.index.video_index import AddReport, VideoIndex, VideoIndexError, open_index

__all__ = [
    "AddReport",
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

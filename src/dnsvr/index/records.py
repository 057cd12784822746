"""What an index stores and reports: its config, the records and entries of videos, the reports of its
operations, and the errors of the store.

:class:`IndexConfig` is fixed at creation (``manifest.json``); :class:`IndexRecord` is one video to add;
:class:`VideoEntry` is one stored video's metadata; :class:`CoarseHits`, :class:`FineBlock`,
:class:`AddResult`, :class:`CompactReport` and :class:`VerifyReport` are what the store's calls return.
:func:`check_video_id` is the one rule for video ids (extraction and index).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "AddResult",
    "CoarseHits",
    "CompactReport",
    "DuplicateVideoError",
    "FineBlock",
    "IndexConfig",
    "IndexRecord",
    "IndexStoreError",
    "ReadOnlyIndexError",
    "RecordError",
    "UnknownVideoError",
    "VerifyReport",
    "VideoEntry",
    "check_video_id",
]

_FINE_DTYPES = ("uint8", "float16", "float32", "int8")
_MAX_ID_LEN = 1024
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
        coarse_chunks: a coarse vector is this many unit chunk vectors side by side (the ``lite``
            bundle's, one per stretch of the video), scored by the smaller direction of the chunks'
            Chamfer similarity; 1 (the default): one vector, scored by inner product.
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
    coarse_chunks: int = 1
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
        for name in ("coarse_dim", "coarse_chunks", "shard_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ValueError(f"{name} must be an int, got {value!r}")
        if not 0 < int(self.coarse_dim) <= _MAX_COARSE_DIM:
            raise ValueError(f"coarse_dim must be in 1..{_MAX_COARSE_DIM}, got {self.coarse_dim}")
        if not 0 < int(self.coarse_chunks) <= int(self.coarse_dim) or self.coarse_dim % self.coarse_chunks:
            raise ValueError(f"coarse_chunks must be a positive divisor of coarse_dim {self.coarse_dim}, "
                             f"got {self.coarse_chunks}")
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

    def record_meta(self) -> dict[str, Any]:
        """The ``meta`` of an :class:`IndexRecord` that stores this video again (timestamps, source and duration
        back beside the free metadata)."""
        meta = dict(self.meta)
        if self.timestamps is not None:
            meta["timestamps"] = self.timestamps
        if self.source is not None:
            meta["source"] = self.source
        if self.duration is not None:
            meta["duration"] = self.duration
        return meta


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
    """What an :meth:`IndexStore.add` call committed, by id.

    Attributes:
        added: ids added (replacements included).
        replaced: ids whose old video was removed in the same commit (``on_duplicate="replace"``).
        already_indexed: ids already in the index and left as they were (``on_duplicate="skip"``).
    """

    added: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    already_indexed: list[str] = field(default_factory=list)

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

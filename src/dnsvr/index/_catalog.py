"""The catalog: the in-memory view of an index's active rows (rowid order) that every read uses.

Loaded from SQLite (all rows, or the rows added since the last look), checked for types and ranges
before numpy sees them, and saved by the writer at close as ``catalog.npz`` (derived data: a reader
opening a large index reads a few arrays instead of 100k SQLite rows; checked, and ignored when
stale or damaged).
"""

from __future__ import annotations

import io
import logging
import math
import os
import zipfile
from pathlib import Path

import numpy as np

from dnsvr.index._paths import open_nofollow, replace_file
from dnsvr.index._schema import DB_NAME, SHARD_DIR, DamagedIndexError
from dnsvr.index._shards import SHARD_RE
from dnsvr.index.records import _MAX_BYTES, _MAX_SHARD_ID

logger = logging.getLogger(__name__)

CATALOG_NAME = "catalog.npz"
#: The columns of a catalog row, in :meth:`_Catalog.set_rows` order.
_ROW_COLS = "rowid, video_id, shard, offset, n_frames, selector, crc32"


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
        replace_file(path, lambda fh: np.savez(fh, generation=np.int64(self.generation), epoch=np.int64(self.epoch),
                                               ids=blob, n=np.int64(len(ids)),
                                               **{k: getattr(self, k) for k in self._ARRAYS}), durable=False)

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


def _is_int(v: object, lo: int, hi: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


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

"""Append-only shard files holding the fine-grained representations.

A shard is a flat file of raw C-order bytes; a video occupies one contiguous
byte range ``[offset, offset + nbytes)`` recorded in SQLite together with the
shard's committed length. Bytes past the committed length belong to an add
that did not commit (a crash between the shard write and the SQLite commit);
readers never look at them and the next writer truncates them away.
"""

from __future__ import annotations

import logging
import mmap
import os
import re
from pathlib import Path

import numpy as np

from dnsvr.index._paths import DamagedIndexError, inside, open_nofollow

logger = logging.getLogger(__name__)

try:  # ISA-L's CRC32 gives zlib's values about 4x faster (the read checks of every search use it)
    from isal.isal_zlib import crc32
except ImportError:  # pragma: no cover - isal is optional
    from zlib import crc32

SHARD_RE = re.compile(r"^fine-(\d{6})\.bin$")


def shard_file_name(shard: int) -> str:
    return f"fine-{shard:06d}.bin"


def _shard_path(directory: Path, name: str) -> Path:
    """The shard file ``name`` inside ``directory`` (a shard name, resolving inside the folder), or damage."""
    if not isinstance(name, str) or not SHARD_RE.match(name):
        raise DamagedIndexError(f"{directory.name}/{name}", "not a shard file name (fine-NNNNNN.bin)")
    return inside(directory, name, where=f"{directory.name}/{name}")


class ShardReader:
    """Read-only memory maps of the shard files, re-mapped when a shard grows.

    Args:
        directory: the ``shards/`` folder.
        dtype: element dtype of the fine representation.
        frame_shape: per-frame shape (e.g. ``(9, 64)``).
    """

    def __init__(self, directory: Path, dtype: np.dtype, frame_shape: tuple[int, ...]) -> None:
        self.directory = Path(directory)
        self.dtype = np.dtype(dtype)
        self.frame_shape = tuple(frame_shape)
        self.frame_items = int(np.prod(self.frame_shape)) if self.frame_shape else 1
        self.frame_bytes = self.frame_items * self.dtype.itemsize
        self._maps: dict[int, tuple[mmap.mmap, int]] = {}
        self._files: dict[int, str] = {}

    def set_files(self, files: dict[int, str]) -> None:
        """Tell the reader which file holds each shard id (after a catalog reload)."""
        for shard in list(self._maps):
            if files.get(shard) != self._files.get(shard):
                self._maps.pop(shard, None)  # views keep their own reference to the old map
        self._files = dict(files)

    def _map(self, shard: int, end: int) -> mmap.mmap:
        entry = self._maps.get(shard)
        if entry is not None and entry[1] >= end:
            return entry[0]
        name = self._files.get(shard)
        if name is None:
            raise KeyError(f"unknown shard {shard}")
        path = _shard_path(self.directory, name)
        with os.fdopen(open_nofollow(path, os.O_RDONLY), "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size < end:
                raise DamagedIndexError(f"{self.directory.name}/{name}",
                                        f"has {size} bytes, the index needs {end}: truncated or damaged")
            mm = mmap.mmap(fh.fileno(), size, access=mmap.ACCESS_READ)
        try:
            mm.madvise(mmap.MADV_RANDOM)
        except (AttributeError, OSError):
            pass
        self._maps[shard] = (mm, size)
        return mm

    def map_all(self, lengths: dict[int, int]) -> bool:
        """Map every shard up to its committed length now (files deleted later stay readable).

        Returns False when a shard file is gone (a compaction committed since the catalog was read).
        """
        ok = True
        for shard, end in lengths.items():
            if end:
                try:
                    self._map(shard, end)
                except FileNotFoundError:
                    ok = False
                except (OSError, KeyError) as exc:
                    logger.warning("cannot map shard %d: %s", shard, exc)
        return ok

    def view(self, shard: int, offset: int, n_frames: int) -> np.ndarray:
        """A read-only array ``[n_frames, *frame_shape]`` over the mapped bytes (no copy)."""
        nbytes = n_frames * self.frame_bytes
        mm = self._map(shard, offset + nbytes)
        arr = np.frombuffer(mm, dtype=self.dtype, count=n_frames * self.frame_items, offset=offset)
        return arr.reshape((n_frames, *self.frame_shape))

    def will_need(self, shards: np.ndarray, offsets: np.ndarray, nbytes: np.ndarray) -> list[tuple[int, int, int]]:
        """Ask the kernel to read byte ranges into the page cache now, asynchronously (``MADV_WILLNEED``).

        The ranges (one per video) are sorted, widened to whole pages and merged where they touch, so
        that a block of videos stored back to back costs one system call. Ranges of shards that are not
        mapped yet are skipped (:meth:`view` maps them); advice the kernel refuses is ignored: it only
        changes when the reads happen, never what they return.

        Args:
            shards, offsets, nbytes: int arrays of equal length, one range each.

        Returns:
            The advised ranges ``(shard, start, length)``, one per ``madvise`` call.
        """
        calls: list[tuple[int, int, int]] = []
        page = mmap.PAGESIZE
        order = np.lexsort((offsets, shards))
        shards, offsets, nbytes = shards[order], offsets[order], nbytes[order]
        starts = offsets // page * page
        ends = -(-(offsets + nbytes) // page) * page
        k, n = 0, len(order)
        while k < n:
            shard, start, end = int(shards[k]), int(starts[k]), int(ends[k])
            k += 1
            while k < n and shards[k] == shard and starts[k] <= end:
                end = max(end, int(ends[k]))
                k += 1
            entry = self._maps.get(shard)
            if entry is None:
                continue
            mm, size = entry
            end = min(end, size)
            if end <= start:
                continue
            try:
                mm.madvise(mmap.MADV_WILLNEED, start, end - start)
                calls.append((shard, start, end - start))
            except (AttributeError, OSError, ValueError):
                return calls
        return calls

    def raw(self, shard: int, offset: int, nbytes: int) -> memoryview:
        """The raw bytes of a range (for checksums)."""
        mm = self._map(shard, offset + nbytes)
        return memoryview(mm)[offset : offset + nbytes]

    def close(self) -> None:
        maps, self._maps = self._maps, {}
        for mm, _ in maps.values():
            try:
                mm.close()
            except BufferError:
                pass  # arrays handed out still view it; it closes when they are gone


class ShardAppender:
    """Appends fine representations to the shard files of a writer.

    ``append`` writes bytes past the committed end; ``sync`` makes them durable;
    after the SQLite commit the caller calls :meth:`committed`; on failure
    :meth:`rollback` truncates the files back to their committed lengths.

    Args:
        directory: the ``shards/`` folder.
        committed: ``{shard: (file name, committed bytes)}`` from SQLite.
        shard_bytes: size at which a new shard file is started.
        first_shard: id of the first new shard when ``committed`` is empty.
    """

    def __init__(
        self, directory: Path, committed: dict[int, tuple[str, int]], shard_bytes: int, first_shard: int = 0
    ) -> None:
        self.directory = Path(directory)
        self.first_shard = int(first_shard)
        self.shard_bytes = int(shard_bytes)
        self.committed_len: dict[int, int] = {s: n for s, (_, n) in committed.items()}
        self.files: dict[int, str] = {s: f for s, (f, _) in committed.items()}
        self.current: int | None = max(committed) if committed else None
        self.pos: dict[int, int] = dict(self.committed_len)
        self._fds: dict[int, int] = {}
        self._dirty: set[int] = set()
        self._new: set[int] = set()

    # -- recovery -----------------------------------------------------------------
    def recover(self) -> list[str]:
        """Truncate uncommitted tails and delete orphan files; returns what was done (for the log)."""
        actions: list[str] = []
        known = set(self.files.values())
        for shard, name in self.files.items():
            path = _shard_path(self.directory, name)
            want = self.committed_len[shard]
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                size = -1
            if size > want:
                fd = open_nofollow(path, os.O_RDWR)
                try:
                    os.ftruncate(fd, want)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                actions.append(f"truncated {name} from {size} to {want} bytes (uncommitted add)")
            elif size < want:
                # Damage, not a crash artefact: leave it for verify() and never append to it again.
                actions.append(f"{name} is shorter ({size} bytes) than its committed length {want}")
                if shard == self.current:
                    self.current = None
        for path in self.directory.iterdir():
            if path.name in known:
                continue
            if (SHARD_RE.match(path.name) or ".tmp" in path.name) and (path.is_symlink() or path.is_file()):
                path.unlink()  # a link is removed itself, never its target
                actions.append(f"deleted orphan {path.name} (uncommitted add or compaction)")
        return actions

    # -- writing ------------------------------------------------------------------
    def _fd(self, shard: int) -> int:
        fd = self._fds.get(shard)
        if fd is None:
            fd = open_nofollow(_shard_path(self.directory, self.files[shard]), os.O_WRONLY | os.O_CREAT, 0o644)
            self._fds[shard] = fd
        return fd

    def _new_shard(self) -> int:
        shard = (max(self.files) + 1) if self.files else self.first_shard
        self.files[shard] = shard_file_name(shard)
        self.pos[shard] = 0
        self._new.add(shard)
        self.current = shard
        return shard

    def append(self, data: memoryview) -> tuple[int, int]:
        """Append bytes; returns (shard, offset). Not durable until :meth:`sync`."""
        n = data.nbytes
        shard = self.current
        if shard is None or (self.pos[shard] > 0 and self.pos[shard] + n > self.shard_bytes):
            shard = self._new_shard()
        offset = self.pos[shard]
        fd = self._fd(shard)
        written = 0
        while written < n:
            written += os.pwrite(fd, data[written:], offset + written)
        self.pos[shard] = offset + n
        self._dirty.add(shard)
        return shard, offset

    def pending(self) -> dict[int, tuple[str, int]]:
        """Shards touched since the last commit: ``{shard: (file, new committed length)}``."""
        return {s: (self.files[s], self.pos[s]) for s in self._dirty}

    def sync(self) -> None:
        """fsync every touched shard (and the folder when files were created)."""
        for shard in self._dirty:
            os.fsync(self._fd(shard))
        if self._new:
            from dnsvr._fsutil import fsync_dir  # noqa: PLC0415

            fsync_dir(self.directory)

    def committed(self) -> None:
        """The SQLite transaction covering the pending bytes committed."""
        for shard in self._dirty:
            self.committed_len[shard] = self.pos[shard]
        self._dirty.clear()
        self._new.clear()

    def rollback(self) -> None:
        """Forget pending bytes: truncate touched shards, delete shards created since the last commit."""
        for shard in list(self._dirty | self._new):
            if shard in self._new:
                fd = self._fds.pop(shard, None)
                if fd is not None:
                    os.close(fd)
                try:
                    _shard_path(self.directory, self.files[shard]).unlink()
                except FileNotFoundError:
                    pass
                del self.files[shard]
                del self.pos[shard]
            else:
                os.ftruncate(self._fd(shard), self.committed_len[shard])
                self.pos[shard] = self.committed_len[shard]
        self._dirty.clear()
        self._new.clear()
        self.current = max(self.committed_len) if self.committed_len else None

    def close(self) -> None:
        fds, self._fds = self._fds, {}
        for fd in fds.values():
            os.close(fd)

"""``ShardedIndex``: N ordinary indexes and a manifest, searched as one.

Directory layout::

    DIR/
      index.json   manifest: format "dnsvr-sharded-index", the shards' names (names, never paths: each is
                   a folder inside DIR), the id → shard assignment, the bundle identity
      bundle/      the model bundle every shard was built with (one bundle: the lite whitening is
                   fitted once, on the first add, and copied into every shard)
      shard-000/   an ordinary index directory (dnsvr.index.VideoIndex)
      shard-001/   ...

A video lives in shard ``blake2b-64(id) mod N`` — stable across machines and Python versions,
so an id is always looked up, added, replaced and removed in one place. A query fans out to the
shards (:mod:`dnsvr.index.query`: in process, shard after shard, or one Ray actor per shard, see
:mod:`dnsvr.cluster.search`) and returns what one index holding every video returns.

Example:
    >>> index = ShardedIndex.create("big.index", shards=4)        # doctest: +SKIP
    >>> index.add(["videos/"])                                     # doctest: +SKIP
    >>> index.search(["query.mp4"], budget="5%")[0].results[:3]    # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import re
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dnsvr import __version__
from dnsvr.bundle import Bundle, load_bundle
from dnsvr.index._paths import DamagedIndexError, inside, read_json, write_json_atomic
from dnsvr.index.records import AddResult, CompactReport, IndexRecord, UnknownVideoError, VerifyReport, VideoEntry
from dnsvr.index.video_index import (
    BUNDLE_DIR,
    MANIFEST,
    VideoIndex,
    VideoIndexError,
    _Query,
)

logger = logging.getLogger(__name__)

SHARDED_FORMAT = "dnsvr-sharded-index"
SHARDED_FORMAT_VERSION = 1
#: The id → shard rule recorded in the manifest.
ASSIGNMENT = "blake2b-64-mod"
MAX_SHARDS = 4096
_SHARD_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def shard_for(video_id: str, n_shards: int) -> int:
    """The shard of a video id: ``blake2b(id, 8 bytes) mod n_shards`` (stable everywhere)."""
    digest = hashlib.blake2b(video_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % n_shards


def is_sharded(directory: str | Path) -> bool:
    """Whether ``directory`` holds a sharded index (its manifest says so)."""
    try:  # confined, regular files only, size-limited: a FIFO or a link named index.json never hangs or escapes
        manifest = read_json(Path(directory), MANIFEST)
    except (OSError, DamagedIndexError):
        return False
    return isinstance(manifest, dict) and manifest.get("format") == SHARDED_FORMAT


def _check_names(names: Any, where: Path) -> list[str]:
    if not isinstance(names, list) or not names or len(names) > MAX_SHARDS:
        raise VideoIndexError(f"{where}: 'shards' must list 1 to {MAX_SHARDS} shard names")
    for name in names:
        if not isinstance(name, str) or not _SHARD_NAME.fullmatch(name) or name in (BUNDLE_DIR, MANIFEST):
            raise VideoIndexError(f"{where}: invalid shard name {name!r} (a plain folder name inside the index)")
    if len(set(names)) != len(names):
        raise VideoIndexError(f"{where}: shard names repeat")
    return list(names)


class ShardedIndex(VideoIndex):
    """An index split over N ordinary indexes (shards) by a stable hash of the video id.

    Created, added to, searched, verified like :class:`~dnsvr.index.VideoIndex`; use :meth:`create`
    or :meth:`open` (or :func:`open_any`, which opens either kind).
    """

    def __init__(self, directory: Path, bundle: Bundle, shards: list[VideoIndex], names: list[str],
                 readonly: bool, ray: str | None = None) -> None:
        super().__init__(directory, bundle, None, readonly)
        self.shards = shards
        self.shard_names = names
        self.ray = ray
        self._ray_group: Any = None
        self._ray_group_lock = threading.Lock()  # concurrent searches (the service) start the actors once

    # -- lifecycle -------------------------------------------------------------------------
    @classmethod
    def create(cls, directory: str | Path, bundle: str | Path | Bundle = "lite", *,  # type: ignore[override]
               shards: int = 2, coarse_index: str = "Flat", offline: bool | None = None) -> ShardedIndex:
        """Create an empty sharded index of ``shards`` shards.

        Raises:
            FileExistsError: the directory is not empty.
            ValueError: ``shards`` outside 1..4096.
        """
        if not 1 <= int(shards) <= MAX_SHARDS:
            raise ValueError(f"shards must lie in 1..{MAX_SHARDS}, got {shards}")
        directory = Path(directory)
        if directory.exists() and any(directory.iterdir()):
            raise FileExistsError(f"cannot create an index at {directory}: the directory is not empty")
        b = load_bundle(bundle, offline=offline)
        directory.mkdir(parents=True, exist_ok=True)
        b.save(directory / BUNDLE_DIR)
        names = [f"shard-{i:03d}" for i in range(int(shards))]
        for name in names:
            VideoIndex.create(directory / name, b, coarse_index=coarse_index).close()
        # the manifest last: a directory without it is an interrupted create, not an index
        write_json_atomic(directory / MANIFEST, {
            "format": SHARDED_FORMAT, "format_version": SHARDED_FORMAT_VERSION, "written_by": {"dnsvr": __version__},
            "created": time.time(), "bundle": b.identity(), "coarse_index": coarse_index, "shards": names,
            "assignment": {"rule": ASSIGNMENT, "shards": len(names)}})
        logger.info("created sharded index %s (%d shards) with bundle %s", directory, len(names), b)
        return cls.open(directory)

    @classmethod
    def open(cls, directory: str | Path, readonly: bool = False,  # type: ignore[override]
             ray: str | None = None) -> ShardedIndex:
        """Open a sharded index.

        Args:
            directory: the index.
            readonly: open every shard read-only (searches never write).
            ray: search on a Ray cluster, one actor per shard (``"auto"``, an address, or ``"local"``).

        Raises:
            VideoIndexError: not a sharded index, a newer format, a missing shard, or a shard built with
                another bundle.
        """
        directory = Path(directory)
        path = directory / MANIFEST
        try:
            manifest = read_json(directory, MANIFEST)
        except FileNotFoundError:
            raise VideoIndexError(f"not a dnsvr index (no {MANIFEST}): {directory}") from None
        if not isinstance(manifest, dict) or manifest.get("format") != SHARDED_FORMAT:
            fmt = manifest.get("format") if isinstance(manifest, dict) else None
            raise VideoIndexError(f"{path}: not a sharded dnsvr index (format {fmt!r})")
        version = manifest.get("format_version", 0)
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise DamagedIndexError(MANIFEST, f"format_version {version!r} is not a positive integer")
        if version > SHARDED_FORMAT_VERSION:
            raise VideoIndexError(f"{path}: sharded index format {manifest['format_version']} is newer than this "
                                  f"dnsvr supports ({SHARDED_FORMAT_VERSION}); written by {manifest.get('written_by')}")
        names = _check_names(manifest.get("shards"), path)
        rule = manifest.get("assignment", {})
        if not isinstance(rule, dict) or rule.get("rule") != ASSIGNMENT or rule.get("shards") != len(names):
            raise VideoIndexError(f"{path}: unknown id assignment {rule!r} (expected {ASSIGNMENT} over "
                                  f"{len(names)} shards)")
        bundle = Bundle.load(directory / BUNDLE_DIR)
        shards: list[VideoIndex] = []
        try:
            for name in names:
                folder = inside(directory, name, kind="dir", where=f"{MANIFEST} shard {name!r}")
                if not (folder / MANIFEST).is_file():
                    raise VideoIndexError(f"shard {name!r} of {directory} is missing (no {folder / MANIFEST})")
                shard = VideoIndex.open(folder, readonly=readonly)
                shards.append(shard)
                cls._adopt_bundle(shard, bundle, readonly)
        except BaseException:
            for shard in shards:
                shard.close()
            raise
        return cls(directory, bundle, shards, names, readonly, ray)

    @staticmethod
    def _adopt_bundle(shard: VideoIndex, bundle: Bundle, readonly: bool) -> None:
        """Share the index's bundle with a shard; a shard must not have been built with another one."""
        mine, theirs = bundle.identity(), shard.bundle.identity()
        if mine != theirs:
            if shard.store is None and bundle.whitened and not shard.bundle.whitened:
                # the whitening was fitted and saved at the top, the copy into this shard interrupted
                if not readonly:
                    bundle.save(shard.directory / BUNDLE_DIR)
            else:
                raise VideoIndexError(f"shard {shard.directory.name!r} was built with bundle {theirs}, the index "
                                      f"with {mine}")
        shard.bundle = bundle

    def close(self) -> None:
        """Close every shard (and stop the shard actors of a Ray search)."""
        if self._ray_group is not None:
            self._ray_group.shutdown()
            self._ray_group = None
        for shard in self.shards:
            shard.close()

    def __len__(self) -> int:
        return sum(len(s) for s in self.shards)

    def __contains__(self, video_id: object) -> bool:
        return isinstance(video_id, str) and video_id in self.shards[self.shard_of(video_id)]

    def __repr__(self) -> str:
        return (f"ShardedIndex({str(self.directory)!r}, shards={len(self.shards)}, bundle={self.bundle.name!r}, "
                f"videos={len(self)})")

    @property
    def store(self) -> None:  # type: ignore[override]
        """A sharded index has no single store: see :attr:`shards`."""
        return None

    def shard_of(self, video_id: str) -> int:
        """The position in :attr:`shards` of the shard that holds (or would hold) ``video_id``."""
        return shard_for(video_id, len(self.shards))

    # -- writing ---------------------------------------------------------------------------
    def _writable_store(self) -> Any:
        raise VideoIndexError(f"{self.directory} is a sharded index: this operation runs on its shards")

    def _bundle_saved(self) -> None:
        for shard in self.shards:
            self.bundle.save(shard.directory / BUNDLE_DIR)
            shard.bundle = self.bundle

    def _commit(self, records: list[IndexRecord], on_duplicate: str) -> AddResult:
        by_shard: dict[int, list[IndexRecord]] = {}
        for r in records:
            by_shard.setdefault(self.shard_of(r.video_id), []).append(r)
        result = AddResult()
        for i, recs in sorted(by_shard.items()):
            r = self.shards[i]._commit(recs, on_duplicate)
            result.added.extend(r.added)
            result.replaced.extend(r.replaced)
            result.already_indexed.extend(r.already_indexed)
        return result

    def remove(self, video_ids: Iterable[str] | str, *, missing: str = "error") -> int:
        """Remove videos from their shards (all known, or nothing is removed, with ``missing="error"``)."""
        if self.readonly:
            raise VideoIndexError(f"index {self.directory} was opened read-only")
        ids = [video_ids] if isinstance(video_ids, str) else list(dict.fromkeys(video_ids))
        unknown = [v for v in ids if v not in self]
        if unknown and missing == "error":
            raise UnknownVideoError(unknown)
        removed = 0
        for i, shard in enumerate(self.shards):
            mine = [v for v in ids if self.shard_of(v) == i and v not in unknown]
            if mine:
                removed += shard.remove(mine)
        return removed

    def compact(self) -> CompactReport:
        """Compact every shard; one report summed over the shards."""
        if self.readonly:
            raise VideoIndexError(f"index {self.directory} was opened read-only")
        reports = [s.compact() for s in self.shards if s.store is not None]
        return CompactReport(*(sum(getattr(r, f.name) for r in reports) for f in dataclasses.fields(CompactReport)))

    def attach(self, bundle: str | Path | Bundle, output: str | Path, *, batch_size: int = 256) -> VideoIndex:
        raise VideoIndexError("attach works on an ordinary index: attach the bundle before sharding "
                              "(dnsvr index shard)")

    # -- reading ---------------------------------------------------------------------------
    def ids(self) -> list[str]:
        """Ids of the indexed videos: shard after shard, each in the order they were added."""
        return [v for s in self.shards for v in s.ids()]

    def frames(self) -> list[int]:
        """Frame counts, in :meth:`ids` order."""
        return [f for s in self.shards for f in s.frames()]

    def sources(self) -> list[str | None]:
        """The files the videos were added from, in :meth:`ids` order."""
        return [v for s in self.shards for v in s.sources()]

    def _source_of(self, video_id: str) -> str | None:
        return self.shards[self.shard_of(video_id)]._source_of(video_id)

    def entry(self, video_id: str) -> VideoEntry:
        """Metadata of one indexed video, from its shard (``UnknownVideoError`` when not indexed)."""
        return self.shards[self.shard_of(video_id)].entry(video_id)

    def refresh(self) -> None:
        """Take in what other processes committed to any shard (and the lite whitening a first add fitted)."""
        if not self.bundle.whitened:
            on_disk = Bundle.load(inside(self.directory, BUNDLE_DIR, kind="dir"))
            if on_disk.whitened:
                self.bundle = on_disk
        for shard in self.shards:
            shard.refresh()
            if shard.store is not None:
                self._adopt_bundle(shard, self.bundle, readonly=True)

    def start(self) -> None:
        """Start the shard actors now (with ``ray``; otherwise nothing to do): a service fails at start,
        not at its first query, when the cluster cannot be reached."""
        if self.ray is not None:
            self._shard_group()

    def info(self) -> dict[str, Any]:
        """Bundle, counts, storage, and the same per shard (JSON-ready)."""
        per = [s.info() for s in self.shards]
        out: dict[str, Any] = {"directory": str(self.directory), "format_version": SHARDED_FORMAT_VERSION,
                               "bundle": self.bundle.identity(), "videos": len(self),
                               "assignment": {"rule": ASSIGNMENT, "shards": len(self.shards)},
                               "shards": [{"name": n, "videos": p["videos"]} for n, p in zip(self.shard_names, per)]}
        out.update(self._whitening_info())
        stores = [p["store"] for p in per if "store" in p]
        if stores:
            videos = max(sum(s["videos"] for s in stores), 1)
            keys = stores[0]["bytes_per_video"].keys()
            out["store"] = {
                "videos": sum(s["videos"] for s in stores), "frames": sum(s["frames"] for s in stores),
                "removed_pending_compact": sum(s["removed_pending_compact"] for s in stores),
                "bytes": {k: sum(s["bytes"][k] for s in stores) for k in stores[0]["bytes"]},
                "bytes_per_video": {k: sum(s["bytes_per_video"][k] * s["videos"] for s in stores) / videos
                                    for k in keys}}
        return out

    def verify(self, checksums: bool = True) -> VerifyReport:
        """Verify every shard, that they share the index's bundle, and that each video is in its shard.

        Returns:
            One :class:`~dnsvr.index.VerifyReport` for the whole index (problems name their shard).
        """
        t0 = time.perf_counter()
        problems: list[dict[str, Any]] = []
        notes: list[str] = []
        n_videos = n_removed = n_checked = 0
        mine = self.bundle.identity()
        for i, (name, shard) in enumerate(zip(self.shard_names, self.shards)):
            shard_manifest = read_json(shard.directory, MANIFEST, where=f"{name}/{MANIFEST}")
            stored = shard_manifest.get("bundle") if isinstance(shard_manifest, dict) else None
            if shard.store is not None and stored != mine:
                problems.append({"kind": "bundle", "video_id": None, "shard": name,
                                 "message": f"{name}: built with bundle {stored}, the index with {mine}"})
            if shard.store is None:
                notes.append(f"{name}: empty")
                continue
            rep = shard.verify(checksums=checksums)
            n_videos += rep.n_videos
            n_removed += rep.n_removed
            n_checked += rep.n_checked
            problems += [{**p, "shard": name, "message": f"{name}: {p.get('message')}"} for p in rep.problems]
            notes += [f"{name}: {n}" for n in rep.notes]
            for vid in shard.ids():
                if self.shard_of(vid) != i:
                    problems.append({"kind": "assignment", "video_id": vid, "shard": name,
                                     "message": f"{name}: {vid!r} belongs in {self.shard_names[self.shard_of(vid)]}"})
        return VerifyReport(ok=not problems, n_videos=n_videos, n_removed=n_removed, n_checked=n_checked,
                            checksums=checksums, problems=problems, notes=notes, seconds=time.perf_counter() - t0)

    # -- searching -------------------------------------------------------------------------
    def _indexed_query(self, video_id: str) -> _Query | None:
        return self.shards[self.shard_of(video_id)]._indexed_query(video_id)

    def _snapshot(self) -> Any:
        """Every local shard's committed state pinned for the whole search (Ray actors read their own)."""
        stack = contextlib.ExitStack()
        if self.ray is None:
            for shard in self.shards:
                stack.enter_context(shard._snapshot())
        return stack

    def _shard_group(self) -> Any:
        if self.ray is not None:
            with self._ray_group_lock:
                if self._ray_group is None:
                    from dnsvr.cluster.search import RayShardGroup

                    self._ray_group = RayShardGroup(self.directory, self.shard_names, address=self.ray)
                return self._ray_group
        from dnsvr.index.query import LocalGroup, LocalShard

        return LocalGroup([LocalShard(n, s.store, self.bundle) for n, s in zip(self.shard_names, self.shards)])

    # -- splitting -------------------------------------------------------------------------
    @classmethod
    def split(cls, source: str | Path, output: str | Path, shards: int, *, batch_size: int = 256) -> ShardedIndex:
        """Split an ordinary index into a new sharded index, copying its stored representations (no decoding).

        Args:
            source: an ordinary index.
            output: a new (or empty) directory.
            shards: the number of shards.
            batch_size: videos per commit.

        Returns:
            The new sharded index, open for writing.
        """
        src = VideoIndex.open(source, readonly=True)
        try:
            store = src.store
            manifest = read_json(src.directory, MANIFEST)
            if not isinstance(manifest, dict):
                raise DamagedIndexError(MANIFEST, "is not a JSON object")
            out = cls.create(output, src.bundle, shards=shards, coarse_index=manifest.get("coarse_index", "Flat"))
            if store is None:
                return out
            ids = store.ids()
            for start in range(0, len(ids), batch_size):
                chunk = ids[start:start + batch_size]
                coarse = store.coarse_vectors(chunk)
                records = []
                for vid, fine, vec in zip(chunk, store.fine(chunk), coarse):
                    entry = store.get(vid)
                    records.append(IndexRecord(vid, vec, np.asarray(fine), entry.selector, entry.record_meta()))
                out._commit(records, "error")
            return out
        finally:
            src.close()


def open_any(directory: str | Path, readonly: bool = False, ray: str | None = None) -> VideoIndex:
    """Open an ordinary or a sharded index, whichever ``directory`` holds.

    Args:
        directory: the index.
        readonly: open for reading only.
        ray: (sharded index) search on a Ray cluster, one actor per shard.
    """
    if is_sharded(directory):
        return ShardedIndex.open(directory, readonly=readonly, ray=ray)
    if ray is not None:
        logger.info("%s is not sharded: searched in process", directory)
    return VideoIndex.open(directory, readonly=readonly)


__all__: Sequence[str] = ["ShardedIndex", "open_any", "shard_for", "is_sharded", "SHARDED_FORMAT"]

"""What one ``dnsvr serve`` process is allowed to do: :class:`ServeConfig`."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from dnsvr.video import VIDEO_EXTENSIONS

#: Upload suffixes accepted by default: the decoder's video extensions minus still-image formats.
DEFAULT_UPLOAD_SUFFIXES = frozenset(VIDEO_EXTENSIONS - {".gif"})


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ServeConfig:
    """Limits and access rules of the service.

    Attributes:
        index_path: the index directory: an ordinary index (:class:`dnsvr.index.VideoIndex`) or a
            sharded one (:class:`dnsvr.index.ShardedIndex`), served alike.
        media_roots: folders whose files may be searched, added and played by path; nothing
            outside them (after resolving symlinks) is reachable by path.
        token: the secret a client sends as ``Authorization: Bearer <token>``; required for every
            write (jobs, verdicts), and for every request when ``public``. ``None``: writes refused.
        public: the service is bound beyond loopback (every API request needs the token).
        max_upload_bytes: largest uploaded query file.
        upload_suffixes: accepted upload file name suffixes (the content is probed as well).
        max_query_seconds: longest query video (uploaded or by path) a search decodes.
        max_concurrent_searches: searches running at once (threads); more wait in a queue.
        max_queued_searches: searches waiting beyond those; more are refused with 503.
        search_timeout_s: a search not finished by then answers 504.
        uploads_kept: uploaded queries kept for review (the oldest are deleted beyond it).
        ray: (sharded index) search with one Ray actor per shard: ``"auto"``, ``"local"`` or an
            address (see :func:`dnsvr.cluster.connect`); None: the shards in process.
        allow_partial: (sharded index) a shard that cannot answer is left out of a search's results
            and named in its ``missing_shards``, instead of the search failing with 503.
    """

    index_path: Path
    media_roots: tuple[Path, ...] = ()
    token: str | None = None
    public: bool = False
    max_upload_bytes: int = 200 * 1024 * 1024
    upload_suffixes: frozenset[str] = field(default_factory=lambda: DEFAULT_UPLOAD_SUFFIXES)
    max_query_seconds: float = 3600.0
    max_concurrent_searches: int = 2
    max_queued_searches: int = 32
    search_timeout_s: float = 120.0
    uploads_kept: int = 200
    ray: str | None = None
    allow_partial: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "index_path", Path(self.index_path))
        object.__setattr__(self, "media_roots", tuple(Path(r) for r in self.media_roots))
        if self.public and not self.token:
            raise ValueError("a service bound beyond loopback needs a token (--token or --token-file)")
        if self.token is not None and len(self.token) < 8:
            raise ValueError("the token must have at least 8 characters")
        for name in ("max_upload_bytes", "max_concurrent_searches", "uploads_kept"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.max_queued_searches < 0 or self.search_timeout_s <= 0 or self.max_query_seconds <= 0:
            raise ValueError("max_queued_searches must be >= 0, search_timeout_s and max_query_seconds > 0")
        from dnsvr.index.video_index import MANIFEST

        if not (self.index_path / MANIFEST).is_file():
            raise ValueError(f"not a dnsvr index (no {MANIFEST}): {self.index_path}")
        for root in self.media_roots:
            if not root.is_dir():
                raise ValueError(f"media root is not a folder: {root}")

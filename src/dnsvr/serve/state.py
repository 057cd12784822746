"""What the service holds while it runs: the opened index, verdicts, jobs, limits, metrics."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from dnsvr.serve.config import ServeConfig
from dnsvr.serve.errors import ApiError
from dnsvr.serve.jobs import JobRunner
from dnsvr.serve.media import MediaResolver
from dnsvr.serve.metrics import Metrics
from dnsvr.serve.verdicts import VerdictStore

logger = logging.getLogger(__name__)

T = TypeVar("T")
UPLOADS_DIR = "review-uploads"
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


class ServiceState:
    """The service's resources, created once per app (see :func:`dnsvr.serve.create_app`)."""

    def __init__(self, config: ServeConfig) -> None:
        from dnsvr.index.sharded import open_any

        self.config = config
        # an ordinary or a sharded index; review.sqlite and the uploads live at its top folder either way
        self.index = open_any(config.index_path, readonly=True, ray=config.ray)
        start = getattr(self.index, "start", None)  # a sharded index on Ray: its shard actors, now
        if start is not None:
            try:
                start()
            except BaseException:
                self.index.close()
                raise
        self.verdicts = VerdictStore(config.index_path)
        self.uploads_dir = config.index_path / UPLOADS_DIR
        self.resolver = MediaResolver(self.index, config.media_roots, self.uploads_dir)
        self.jobs = JobRunner(config.index_path, self.index)
        self.metrics = Metrics()
        self._pool = ThreadPoolExecutor(max_workers=config.max_concurrent_searches,
                                        thread_name_prefix="dnsvr-serve-search")
        self._inflight = 0
        self._inflight_lock = threading.Lock()
        self._upload_lock = threading.Lock()

    def close(self) -> None:
        self.jobs.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.verdicts.close()
        self.index.close()

    # -- bounded searches --------------------------------------------------------------------
    async def run_bounded(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on a search thread: 503 when the queue is full, 504 past the time limit.

        A search past its time limit keeps its thread until it ends (Python threads cannot be
        killed) but holds a slot of the pool meanwhile, so the number running stays bounded.
        """
        cfg = self.config
        with self._inflight_lock:
            if self._inflight >= cfg.max_concurrent_searches + cfg.max_queued_searches:
                raise ApiError(503, "too many searches in progress; retry shortly", headers={"Retry-After": "1"})
            self._inflight += 1
        future = self._pool.submit(fn)

        def release(_: Any) -> None:
            with self._inflight_lock:
                self._inflight -= 1

        future.add_done_callback(release)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), cfg.search_timeout_s)
        except asyncio.TimeoutError:
            future.cancel()
            raise ApiError(504, f"the search did not finish within {cfg.search_timeout_s:g} s") from None

    # -- uploads -----------------------------------------------------------------------------
    def keep_upload(self, tmp: Path, filename: str) -> tuple[str, Path]:
        """Move a received file into the uploads folder under its content hash; prune old uploads.

        Returns:
            ``(upload id, path)``; the file keeps a sanitised form of the client's file name (the
            query's name in results and verdicts).
        """
        digest = hashlib.sha256()
        with open(tmp, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        upload_id = digest.hexdigest()[:32]
        stem = _SAFE_NAME.sub("_", Path(filename).stem).strip("._")[:64] or "upload"
        suffix = Path(filename).suffix.lower()
        with self._upload_lock:
            folder = self.uploads_dir / upload_id
            if folder.is_dir() and any(folder.iterdir()):
                tmp.unlink(missing_ok=True)
                return upload_id, self.resolver.upload(upload_id)
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{stem}{suffix}"
            shutil.move(str(tmp), path)
            self._prune_uploads()
        return upload_id, path

    def _prune_uploads(self) -> None:
        folders = sorted((p for p in self.uploads_dir.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
        for old in folders[: max(0, len(folders) - self.config.uploads_kept)]:
            shutil.rmtree(old, ignore_errors=True)

    def uptime(self) -> float:
        return time.time() - self.metrics.started

"""Background writes (add, remove) run one at a time under the index's single-writer lock.

A job opens the index for writing (taking the store's ``fcntl`` lock: another writer process
makes the job fail with a clear message), runs, and closes it. Searches go on meanwhile through
the service's read-only handle, which picks up every commit. ``add`` commits every few videos,
so a job's progress is the number of its videos already committed; a process killed mid-job
keeps every committed video (the store's commit protocol) and loses only the uncommitted batch.
"""

from __future__ import annotations

import logging
import queue
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

#: Videos per commit in an add job (progress moves at this granularity).
ADD_BATCH = 8
MAX_JOBS_KEPT = 500


@dataclass
class Job:
    """One background write and where it stands."""

    id: str
    kind: str                       # "add" | "remove"
    inputs: list[str]
    state: str = "queued"           # queued | running | done | failed
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    total: int = 0
    done: int = 0
    added: list[str] = field(default_factory=list)
    removed: int = 0
    failures: list[dict[str, str]] = field(default_factory=list)
    error: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    _start_count: int = 0
    _videos: list[tuple[str, Path]] = field(default_factory=list)
    _features: list[Path] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "state": self.state, "created": self.created,
                "started": self.started, "finished": self.finished, "total": self.total, "done": self.done,
                "added": len(self.added), "removed": self.removed, "failures": self.failures,
                "error": self.error, "inputs": self.inputs[:50]}


def _count_features(paths: Sequence[Path]) -> int:
    """How many videos the feature files hold (1 for an unreadable one: it is reported)."""
    from dnsvr.features import FeatureFile

    n = 0
    for p in paths:
        try:
            with FeatureFile(p) as ff:
                n += len(ff.ids())
        except (OSError, ValueError):
            n += 1
    return n


class JobRunner:
    """A queue of write jobs and the one thread that runs them.

    Args:
        index_dir: the index directory.
        reader: the service's read-only :class:`~dnsvr.index.VideoIndex` or
            :class:`~dnsvr.index.ShardedIndex` (for progress counts; refreshed after each job).
    """

    def __init__(self, index_dir: Path, reader: Any) -> None:
        self.index_dir = index_dir
        self.reader = reader
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="dnsvr-serve-jobs", daemon=True)
        self._thread.start()

    # -- submitting ------------------------------------------------------------------------
    def _submit(self, job: Job) -> Job:
        with self._lock:
            self._jobs[job.id] = job
            finished = [j for j in self._jobs.values() if j.state in ("done", "failed")]
            for old in finished[: max(0, len(self._jobs) - MAX_JOBS_KEPT)]:
                del self._jobs[old.id]
        self._queue.put(job)
        logger.info("job %s queued: %s %d input(s)", job.id, job.kind, len(job.inputs))
        return job

    def submit_add(self, videos: Sequence[tuple[str, Path]], features: Sequence[Path] = (), *,
                   refused: Sequence[dict[str, str]] = (), on_duplicate: str = "skip") -> Job:
        """Queue an add of ``(video_id, path)`` videos and feature files (confined by the caller).

        ``refused`` inputs are reported among the job's failures.
        """
        job = Job(uuid.uuid4().hex[:16], "add", [str(p) for p in features] + [str(p) for _, p in videos],
                  options={"on_duplicate": on_duplicate}, failures=list(refused), total=len(videos))
        job._videos = list(videos)
        job._features = list(features)
        return self._submit(job)

    def submit_remove(self, video_ids: Sequence[str], missing: str = "ignore") -> Job:
        """Queue a removal of indexed videos."""
        return self._submit(Job(uuid.uuid4().hex[:16], "remove", list(video_ids), total=len(video_ids),
                                options={"missing": missing}))

    # -- reading ---------------------------------------------------------------------------
    def get(self, job_id: str) -> Job | None:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is not None:
            self._update_progress(job)
        return job

    def list(self) -> list[Job]:
        with self._lock:
            jobs = list(self._jobs.values())
        for job in jobs:
            self._update_progress(job)
        return jobs

    def _update_progress(self, job: Job) -> None:
        if job.kind == "add" and job.state == "running":
            try:
                now = len(self.reader)
            except Exception:  # noqa: BLE001 - progress is best effort while the writer works
                return
            job.done = max(job.done, min(job.total, now - job._start_count))

    def active(self) -> int:
        with self._lock:
            return sum(j.state in ("queued", "running") for j in self._jobs.values())

    # -- running ---------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            self._run(job)

    def _run(self, job: Job) -> None:
        from dnsvr.index.sharded import open_any

        job.state = "running"
        job.started = time.time()
        try:
            if job.kind == "add":
                job.total = len(job._videos) + _count_features(job._features)
                job._start_count = len(self.reader)
                with tempfile.TemporaryDirectory(prefix="dnsvr-job-") as tmp:
                    inputs: list[Path] = list(job._features)
                    if job._videos:  # a list file keeps the ids the caller resolved (folder-relative)
                        listing = Path(tmp) / "videos.tsv"
                        listing.write_text("".join(f"{vid}\t{path}\n" for vid, path in job._videos), encoding="utf-8")
                        inputs.append(listing)
                    with open_any(self.index_dir, readonly=False) as writer:
                        report = writer.add(inputs, on_duplicate=job.options.get("on_duplicate", "skip"),
                                            progress=False, batch_size=ADD_BATCH)
                job.added = list(report.added)
                job.failures += [{"input": i, "reason": r} for i, r in report.skipped]
                job.done = job.total
            else:
                with open_any(self.index_dir, readonly=False) as writer:
                    job.removed = writer.remove(job.inputs, missing=job.options.get("missing", "ignore"))
                job.done = job.total
            job.state = "done"
        except Exception as exc:  # noqa: BLE001 - a failed job reports why; the service goes on
            logger.warning("job %s failed: %s", job.id, exc)
            job.state = "failed"
            job.error = str(exc) or type(exc).__name__
        finally:
            job.finished = time.time()
            try:
                self.reader.refresh()
            except Exception:  # noqa: BLE001
                pass
        logger.info("job %s %s", job.id, job.state)

    def close(self, timeout: float = 30.0) -> None:
        """Stop after the running job (queued jobs are dropped); wait up to ``timeout`` seconds."""
        with self._lock:
            for job in self._jobs.values():
                if job.state == "queued":
                    job.state, job.error = "failed", "the service stopped before the job ran"
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._queue.put(None)
        self._thread.join(timeout)

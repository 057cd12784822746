"""The single-writer lock of an index directory (``fcntl.flock`` on ``write.lock``).

The lock file is never deleted; the lock is the kernel's advisory lock on it, so
it is released when the holder exits for any reason, ``kill -9`` included.
The holder writes its pid (and host) into the file so that a refused writer can
say who holds it.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path

logger = logging.getLogger(__name__)

LOCK_NAME = "write.lock"


class IndexLockedError(RuntimeError):
    """Another process (or another open handle) holds the index's write lock.

    Attributes:
        path: the lock file.
        holder_pid: the pid recorded by the holder, or None if unreadable.
    """

    def __init__(self, path: Path, holder_pid: int | None, holder: dict | None = None) -> None:
        self.path = path
        self.holder_pid = holder_pid
        who = f"pid {holder_pid}" if holder_pid is not None else "an unknown process"
        if holder and holder.get("host") and holder.get("host") != socket.gethostname():
            who += f" on host {holder['host']}"
        since = ""
        if holder and isinstance(holder.get("since"), (int, float)):
            since = time.strftime(" since %Y-%m-%d %H:%M:%S UTC", time.gmtime(holder["since"]))
        super().__init__(
            f"index {path.parent} is open for writing by {who}{since}; only one writer at a time "
            f"(searches, which open it read-only, still work)"
        )


def _read_holder(path: Path) -> dict | None:
    try:
        with open(path, "rb") as fh:
            text = fh.read(4096).decode("utf-8").strip()
        holder = json.loads(text) if text else None
    except (OSError, ValueError, RecursionError):
        return None
    return holder if isinstance(holder, dict) else None


class WriterLock:
    """An exclusive, non-blocking writer lock on ``directory / write.lock``.

    Args:
        directory: the index directory.

    Raises:
        IndexLockedError: from :meth:`acquire` when another holder has it.
    """

    def __init__(self, directory: Path) -> None:
        self.path = Path(directory) / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock or raise :class:`IndexLockedError` naming the holder's pid."""
        if self._fd is not None:
            return
        from dnsvr.index._paths import inside, open_nofollow  # noqa: PLC0415

        # never through a link or onto a FIFO: a received index could name anything here
        fd = open_nofollow(inside(self.path.parent, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = _read_holder(self.path)
            pid = holder.get("pid") if holder else None
            raise IndexLockedError(self.path, pid if isinstance(pid, int) else None, holder) from None
        except BaseException:
            os.close(fd)
            raise
        info = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()})
        os.ftruncate(fd, 0)
        os.pwrite(fd, info.encode("utf-8"), 0)
        self._fd = fd
        logger.debug("write lock %s taken by pid %d", self.path, os.getpid())

    def release(self) -> None:
        """Release the lock (idempotent)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

"""Durable file-system operations: the one atomic replace of a file (and of a JSON file) and fsync of a folder.

Every file that must be either the old or the new version after a crash (index manifests, ``coarse/current.json``,
bundle files, the derived coarse and catalog files) is written by :func:`replace_file`: a fresh temporary
regular file beside it (created with ``O_EXCL | O_NOFOLLOW``, so a link left at that name is never written
through), fsynced, renamed over the target, and the folder fsynced so that the rename itself survives.
Derived data (rebuilt when missing) skips the fsyncs (``durable=False``). The index wraps :func:`create_new`
to report a folder standing at a file's name as damage (:func:`dnsvr.index._paths.create_new`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO


def fsync_dir(path: Path) -> None:
    """fsync a directory so that renames and creations inside it survive a crash (best effort)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def create_new(path: Path) -> int:
    """A new, empty regular file at ``path`` for writing (a file descriptor), whatever was there.

    Whatever had that name (a link left by someone else included) is unlinked first and the file
    is created with ``O_EXCL | O_NOFOLLOW``: writing a temporary file can never follow a link.

    Raises:
        IsADirectoryError: a folder has that name.
    """
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o644)


def replace_file(path: Path, write: Callable[[BinaryIO], Any], *, durable: bool = True,
                 create: Callable[[Path], int] = create_new) -> None:
    """Replace ``path`` atomically: ``write(fh)`` fills a fresh temporary file beside it, renamed over ``path``.

    Args:
        path: the file to replace (or create).
        write: writes the new content into a binary file object.
        durable: fsync the file before the rename and the folder after it (False for derived data).
        create: opens the temporary file (default :func:`create_new`).

    On any failure the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        with os.fdopen(create(tmp), "wb") as fh:
            write(fh)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if durable:
        fsync_dir(path.parent)


def write_json_atomic(path: Path, payload: Any, *, create: Callable[[Path], int] = create_new) -> None:
    """Write ``payload`` as JSON (indent 2, sorted keys, a final newline) to ``path`` with :func:`replace_file`."""
    data = (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode("utf-8")
    replace_file(path, lambda fh: fh.write(data), create=create)

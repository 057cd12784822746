"""Confinement of an index folder: every file an index names is resolved inside the folder.

An index stores *names*, never paths (``shards.file`` in SQLite, the files of ``coarse/current.json``,
the bundle's files). A name is a single path component (no ``/``, no ``..``, no control characters)
and the resolved path (symlinks followed) must stay inside the folder and be a regular file (or a
directory where one is expected). Anything else is a :class:`DamagedIndexError` naming the file:
whatever the metadata says, no command reads, writes, truncates or deletes outside the folder.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from dnsvr import _fsutil
from dnsvr.index._schema import DamagedIndexError

__all__ = ["DamagedIndexError", "check_entries", "check_name", "create_new", "inside", "open_nofollow", "read_json",
           "read_limited", "replace_file", "write_json_atomic"]

_MAX_NAME = 255


def check_name(name: object, where: str) -> str:
    """``name`` if it is a plain file name (one path component), else :class:`DamagedIndexError`.

    Args:
        name: the value read from the index's metadata.
        where: what named it (for the message), e.g. ``"meta.sqlite shards.file"``.
    """
    if not isinstance(name, str) or not name:
        raise DamagedIndexError(where, f"file name {name!r} is not a non-empty string")
    if len(name) > _MAX_NAME or name in (".", "..") or "/" in name or "\\" in name or any(
            ord(c) < 32 or ord(c) == 127 for c in name):
        raise DamagedIndexError(where, f"file name {name!r} is not a plain name inside the index folder")
    return name


def inside(root: Path, *names: str, kind: str = "file", where: str | None = None) -> Path:
    """The path ``root/names...``, checked to resolve inside ``root``.

    Each name must be plain (:func:`check_name`); the path with symlinks resolved must lie inside
    ``root`` (itself resolved) and, if it exists, be a regular file (``kind="file"``) or a
    directory (``kind="dir"``).

    Returns:
        The resolved path (open that, not a path that could be swapped for a link later).

    Raises:
        DamagedIndexError: a bad name, a link leading outside, or the wrong kind of file.
    """
    label = where or "/".join(names)
    for name in names:
        check_name(name, label)
    base = os.path.realpath(root)
    real = os.path.realpath(os.path.join(base, *names))
    if real != base and not real.startswith(base.rstrip(os.sep) + os.sep):
        raise DamagedIndexError(label, "resolves outside the index folder (a symlink or bad name)")
    try:
        st = os.stat(real)
    except FileNotFoundError:
        return Path(real)
    except OSError as exc:
        raise DamagedIndexError(label, f"cannot be examined ({exc.strerror or exc})") from None
    if kind == "file" and not stat.S_ISREG(st.st_mode):
        raise DamagedIndexError(label, "is not a regular file")
    if kind == "dir" and not stat.S_ISDIR(st.st_mode):
        raise DamagedIndexError(label, "is not a directory")
    return Path(real)


def check_entries(root: Path, files: tuple[str, ...] = (), dirs: tuple[str, ...] = ()) -> None:
    """Check the fixed entries of a folder (those that exist) with :func:`inside`.

    Files created by other software next to ours (SQLite's ``-wal``/``-shm``) count: a link named
    like them would make SQLite write through it.
    """
    for name in files:
        inside(root, name, kind="file")
    for name in dirs:
        inside(root, name, kind="dir")


def open_nofollow(path: Path, flags: int, mode: int = 0o644) -> int:
    """``os.open`` that refuses a symlink as the last component and anything but a regular file.

    Raises:
        DamagedIndexError: the path is a link, a FIFO, a device, a socket or a folder.
    """
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0), mode)
    except OSError as exc:
        if exc.errno in (getattr(os, "ELOOP", 40), getattr(os, "ENXIO", 6)):
            raise DamagedIndexError(path.name, "is a symlink or a special file, not a regular file") from None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise DamagedIndexError(path.name, "is not a regular file")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_limited(root: Path, name: str, max_bytes: int, where: str | None = None) -> bytes:
    """The bytes of the regular file ``root/name`` (checked with :func:`inside`), at most ``max_bytes``.

    Raises:
        FileNotFoundError: it does not exist.
        DamagedIndexError: a bad name or kind of file, or larger than ``max_bytes``.
    """
    label = where or name
    path = inside(root, name, kind="file", where=label)
    fd = open_nofollow(path, os.O_RDONLY)
    with os.fdopen(fd, "rb") as fh:
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise DamagedIndexError(label, f"larger than the {max_bytes:,} bytes such a file may have")
    return data


def read_json(root: Path, name: str, max_bytes: int = 1 << 20, where: str | None = None) -> object:
    """Parse the JSON file ``root/name`` (see :func:`read_limited`); damage is a :class:`DamagedIndexError`."""
    label = where or name
    data = read_limited(root, name, max_bytes, where=label)
    try:
        return json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise DamagedIndexError(label, f"not valid JSON ({str(exc)[:120]})") from None


def create_new(path: Path) -> int:
    """:func:`dnsvr._fsutil.create_new` (a fresh regular file, never through a link); a folder there is damage."""
    try:
        return _fsutil.create_new(path)
    except IsADirectoryError:
        raise DamagedIndexError(path.name, "is a directory where a file is written") from None


def replace_file(path: Path, write: Callable[[BinaryIO], Any], *, durable: bool = True) -> None:
    """:func:`dnsvr._fsutil.replace_file` for a file of an index (its temporary file made by :func:`create_new`)."""
    _fsutil.replace_file(path, write, durable=durable, create=create_new)


def write_json_atomic(path: Path, payload: Any) -> None:
    """:func:`dnsvr._fsutil.write_json_atomic` for a file of an index (temporary file by :func:`create_new`)."""
    _fsutil.write_json_atomic(path, payload, create=create_new)

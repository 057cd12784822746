"""Files the service may read, and pictures made from them.

:class:`MediaResolver` turns a *media reference* into a file, and is the only way a request
reaches the file system:

- ``video:<id>`` — the source file of a video the index holds (the path the index recorded);
- ``upload:<hash>`` — a query file uploaded to this service (kept under the review folder);
- ``path:<relative path>`` — a file under one of the configured media roots: no ``..``, no
  absolute path outside a root, symlinks resolved before the check (no escape through a link).

:func:`frame_jpeg` and :func:`contact_sheet_jpeg` decode with PyAV (seek, then the first frame
at or after the asked time) and encode JPEG with Pillow; results are cached in memory.
"""

from __future__ import annotations

import functools
import io
import logging
import re
from pathlib import Path, PurePosixPath
from typing import Any

import av
import av.error
import numpy as np

from dnsvr.index.video_index import FEATURE_SUFFIXES
from dnsvr.serve.errors import ApiError

logger = logging.getLogger(__name__)

UPLOAD_ID = re.compile(r"[0-9a-f]{32}")
REF_KINDS = ("video", "upload", "path")
MAX_SHEET_FRAMES = 24
MAX_FRAME_WIDTH = 1280


class MediaResolver:
    """Resolves media references to real files, confined to what the service may serve.

    Args:
        index: the open :class:`dnsvr.index.VideoIndex` (``video:`` references).
        roots: media roots (``path:`` references).
        uploads_dir: where uploaded queries are kept (``upload:`` references).
    """

    def __init__(self, index: Any, roots: tuple[Path, ...], uploads_dir: Path) -> None:
        self.index = index
        self.roots = tuple(r.resolve(strict=True) for r in roots)
        self.uploads_dir = uploads_dir

    def under_roots(self, text: str, allow_dir: bool = False) -> Path:
        """The file (or, with ``allow_dir``, folder) a client names by ``text``: relative to a media
        root, or absolute inside one.

        Raises:
            ApiError: 400 for ``..``/NUL/empty, 403 outside every root (symlinks included), 404 missing.
        """
        if not self.roots:
            raise ApiError(403, "this service has no media roots: start it with --media-root to allow paths")
        if not text or "\x00" in text or len(text) > 4096:
            raise ApiError(400, "invalid path")
        pure = PurePosixPath(text.replace("\\", "/"))
        if ".." in pure.parts:
            raise ApiError(400, f"'..' is not allowed in a path: {text!r}")
        candidates = [Path(pure)] if pure.is_absolute() else [root / pure for root in self.roots]
        outside = False
        for cand in candidates:
            try:
                real = cand.resolve(strict=True)
            except (OSError, RuntimeError):
                continue
            if any(real.is_relative_to(root) for root in self.roots):
                if not (real.is_file() or (allow_dir and real.is_dir())):
                    raise ApiError(400, f"not a file: {text!r}")
                return real
            outside = True
        if outside or pure.is_absolute():
            raise ApiError(403, f"path outside the media roots: {text!r}")
        raise ApiError(404, f"no such file under the media roots: {text!r}")

    def confined(self, path: Path) -> bool:
        """Whether ``path`` (symlinks resolved) lies inside a media root."""
        try:
            real = path.resolve(strict=True)
        except (OSError, RuntimeError):
            return False
        return any(real.is_relative_to(root) for root in self.roots)

    def relative(self, path: Path) -> str:
        """``path`` relative to the first media root holding it (for ``path:`` references)."""
        real = path.resolve()
        for root in self.roots:
            if real.is_relative_to(root):
                return real.relative_to(root).as_posix()
        raise ApiError(403, "path outside the media roots")

    def upload(self, upload_id: str) -> Path:
        """The kept upload ``upload_id`` (404 when unknown or deleted)."""
        if not UPLOAD_ID.fullmatch(upload_id):
            raise ApiError(400, f"invalid upload id {upload_id!r}")
        folder = self.uploads_dir / upload_id
        files = sorted(p for p in folder.glob("*") if p.is_file() and not p.name.startswith(".")) \
            if folder.is_dir() else []
        if not files:
            raise ApiError(404, f"unknown upload {upload_id!r}")
        return files[0]

    def video_source(self, video_id: str) -> Path:
        """The source file of an indexed video (404 unknown id or missing file)."""
        from dnsvr.index.records import UnknownVideoError

        try:
            source = self.index.entry(video_id).source
        except UnknownVideoError:
            raise ApiError(404, f"unknown video id {video_id!r}") from None
        if not source:
            raise ApiError(404, f"the index records no source file for {video_id!r}")
        if source.endswith(f":{video_id}") or Path(source).suffix.lower() in FEATURE_SUFFIXES:
            raise ApiError(404, f"{video_id!r} was indexed from a feature file: there is no video to show")
        path = Path(source)
        # a relative source was recorded against the working directory of the add; try the
        # service's, then the media roots
        for cand in [path] if path.is_absolute() else [path, *(root / path for root in self.roots)]:
            try:
                real = cand.resolve(strict=True)
            except (OSError, RuntimeError):
                continue
            if real.is_file():
                return real
        raise ApiError(404, f"the source file of {video_id!r} is not available on this server")

    def resolve(self, ref: str) -> Path:
        """The file of a media reference ``kind:value`` (see the module docstring)."""
        kind, sep, value = ref.partition(":")
        if not sep or kind not in REF_KINDS or not value:
            raise ApiError(400, f"invalid media reference {ref!r}: use video:<id>, upload:<id> or path:<path>")
        if kind == "video":
            return self.video_source(value)
        if kind == "upload":
            return self.upload(value)
        return self.under_roots(value)


# -- pictures ---------------------------------------------------------------------------------
def _open(path: Path) -> Any:
    try:
        container = av.open(str(path), mode="r", metadata_errors="ignore")
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as exc:
        raise ApiError(415, f"not a readable video ({type(exc).__name__})") from None
    if not container.streams.video:
        container.close()
        raise ApiError(415, "the file has no video stream")
    return container


def _frames_at(path: Path, times: list[float]) -> list[Any]:
    """One PIL image per time (sorted ascending): the first frame at or after it (the last frame past the end)."""
    container = _open(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        first = times[0]
        if first > 0 and stream.time_base:
            offset = stream.start_time or 0
            try:
                container.seek(int(first / stream.time_base) + offset, stream=stream, backward=True)
            except av.error.FFmpegError:
                container.seek(0)
        out: list[Any] = []
        last = None
        i = 0
        try:
            for frame in container.decode(stream):
                t = frame.time
                if t is None:
                    continue
                last = frame
                while i < len(times) and t + 1e-6 >= times[i]:
                    out.append(frame.to_image())
                    i += 1
                if i == len(times):
                    break
        except av.error.FFmpegError as exc:
            logger.debug("%s: decoding stopped: %s", path, exc)
        if last is None:
            raise ApiError(415, "no decodable frame")
        while len(out) < len(times):
            out.append(last.to_image())
        return out
    finally:
        container.close()


def _jpeg(image: Any, quality: int = 82) -> bytes:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


@functools.lru_cache(maxsize=1024)
def _frame_cached(path: str, mtime_ns: int, t: float, width: int) -> bytes:
    image = _frames_at(Path(path), [t])[0]
    if image.width > width:
        image = image.resize((width, max(1, round(image.height * width / image.width))))
    return _jpeg(image)


def frame_jpeg(path: Path, t: float, width: int = 320) -> bytes:
    """A JPEG of the frame shown at ``t`` seconds, at most ``width`` pixels wide.

    Raises:
        ApiError: 400 for a negative time or bad width, 415 for an undecodable file.
    """
    if not (t >= 0) or t > 1e7:
        raise ApiError(400, f"invalid time {t!r}")
    if not (16 <= width <= MAX_FRAME_WIDTH):
        raise ApiError(400, f"width must lie in [16, {MAX_FRAME_WIDTH}]")
    return _frame_cached(str(path), path.stat().st_mtime_ns, round(float(t), 2), int(width))


@functools.lru_cache(maxsize=256)
def _sheet_cached(path: str, mtime_ns: int, start: float, end: float, n: int, width: int) -> bytes:
    from PIL import Image

    times = [start] if n == 1 else [start + (end - start) * i / (n - 1) for i in range(n)]
    images = _frames_at(Path(path), times)
    tiles = [im.resize((width, max(1, round(im.height * width / im.width)))) for im in images]
    height = max(t.height for t in tiles)
    sheet = Image.new("RGB", (width * len(tiles) + 2 * (len(tiles) - 1), height), (20, 20, 20))
    for k, tile in enumerate(tiles):
        sheet.paste(tile, (k * (width + 2), 0))
    return _jpeg(sheet)


def contact_sheet_jpeg(path: Path, start: float, end: float, n: int = 6, width: int = 160) -> bytes:
    """A JPEG strip of ``n`` frames evenly spaced over ``[start, end]`` seconds (each ``width`` wide).

    Raises:
        ApiError: 400 for a bad range, count or width; 415 for an undecodable file.
    """
    if not (0 <= start <= end) or end > 1e7 or not np.isfinite(end):
        raise ApiError(400, f"invalid segment [{start}, {end}]")
    if not (1 <= n <= MAX_SHEET_FRAMES):
        raise ApiError(400, f"n must lie in [1, {MAX_SHEET_FRAMES}]")
    if not (16 <= width <= 640):
        raise ApiError(400, "width must lie in [16, 640]")
    return _sheet_cached(str(path), path.stat().st_mtime_ns, round(start, 2), round(end, 2), int(n), int(width))

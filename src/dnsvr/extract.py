"""Videos → region features: batched, overlapped with decoding, resumable, robust to bad files.

The one way to turn video files into ``[T, 9, D]`` region features:

* :func:`resolve_inputs` — files, folders (recursive, by extension), glob patterns,
  and list files of ``video_id<TAB>path`` lines (the ViSiL reference's input
  format) → ``[(video_id, path)]``.
* :func:`iter_video_features` — yields a :class:`~dnsvr.features.VideoFeatures` record
  per video, for in-process consumers (``VideoIndex.add``).
* :func:`extract_videos` — writes an HDF5 feature file in the layout of the
  published files (one ``[T, 9, D]`` dataset per id), crash-safe and resumable
  (:class:`dnsvr.features.FeatureWriter`), with a whitening that is published,
  fitted on these videos, or none.

Decoding runs in worker threads (PyAV releases the GIL while it decodes) that
feed a bounded queue; the network runs on batches that may span videos. Memory
is bounded by the queue and one batch, whatever the videos' lengths (the writer
streams each video's features to disk as they come).

A bad input never stops the batch: each problem becomes a :class:`VideoFailure`
(id, path, reason) in the :class:`ExtractionReport`; a damaged file keeps the
frames decoded before the damage and is reported too.

Example:
    >>> from dnsvr.backbones import FeatureExtractor                     # doctest: +SKIP
    >>> report = extract_videos(["videos/"], "feats.h5", FeatureExtractor("efficientnet_lite0"))
    >>> print(report.summary())
"""

from __future__ import annotations

import glob
import json
import logging
import math
import os
import queue
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from dnsvr import __version__
from dnsvr._progress import progress_bar
from dnsvr.features import FeatureFile, FeatureWriter, VideoFeatures, validate_video_id
from dnsvr.video import VIDEO_EXTENSIONS, DecodeLimits, VideoError, VideoReader, check_decode

logger = logging.getLogger(__name__)

#: Suffixes of list files (``video_id<TAB>path`` per line) among the inputs.
LIST_SUFFIXES = frozenset({".txt", ".tsv", ".lst", ".list"})
_GLOB_CHARS = set("*?[")


# ---------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------

class Extractor(Protocol):
    """What extraction needs from a network (:class:`dnsvr.backbones.FeatureExtractor` is one)."""

    backbone_name: str
    dims: int

    def __call__(self, frames: np.ndarray) -> Any: ...


@dataclass
class VideoFailure:
    """One video that could not be (fully) extracted.

    Attributes:
        video_id: the id it would have had.
        path: the input path.
        code: a short machine-readable reason (``not_found``, ``no_video_stream``, ``truncated``, ...).
        reason: one human line.
        extracted: True when features were still written (a damaged file's frames before the damage).
    """

    video_id: str
    path: str
    code: str
    reason: str
    extracted: bool = False

    def line(self) -> str:
        """``id<TAB>path<TAB>reason`` — one line of the failure summary."""
        return f"{self.video_id}\t{self.path}\t{self.reason}"


@dataclass
class VideoResult:
    """One video extracted: id, source, number of frames, duration, damage note (or None)."""

    video_id: str
    path: str
    frames: int
    duration: float
    damage: str | None = None


@dataclass
class ExtractionReport:
    """What a run did.

    Attributes:
        output: the feature file (None for in-process extraction).
        extracted: the videos extracted in this run.
        already_extracted: ids already complete in the output (a resumed run); not extracted again.
        failures: the videos not extracted, and the damaged ones (``extracted=True``).
        seconds: wall-clock time of the run.
        whitening: the whitening identity used ("none" when none).
        whitening_file: where a fitted whitening was saved (None otherwise).
    """

    output: Path | None = None
    extracted: list[VideoResult] = field(default_factory=list)
    already_extracted: list[str] = field(default_factory=list)
    failures: list[VideoFailure] = field(default_factory=list)
    seconds: float = 0.0
    whitening: str = "none"
    whitening_file: Path | None = None

    @property
    def frames(self) -> int:
        """Frames extracted in this run."""
        return sum(r.frames for r in self.extracted)

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    @property
    def ok(self) -> bool:
        """True when nothing failed and nothing was damaged."""
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (the ``--json`` output)."""
        return {
            "output": str(self.output) if self.output else None,
            "extracted": len(self.extracted), "already_extracted": len(self.already_extracted), "failed": sum(
                1 for f in self.failures if not f.extracted),
            "damaged": sum(1 for f in self.failures if f.extracted), "frames": self.frames,
            "seconds": round(self.seconds, 3), "frames_per_second": round(self.frames_per_second, 2),
            "whitening": self.whitening,
            "whitening_file": str(self.whitening_file) if self.whitening_file else None,
            "failures": [asdict(f) for f in self.failures],
        }

    def write_failures_json(self, path: str | Path) -> Path:
        """Write the failures as a JSON list of ``{video_id, path, code, reason, extracted}``."""
        path = Path(path)
        path.write_text(json.dumps([asdict(f) for f in self.failures], indent=1))
        return path

    def summary(self) -> str:
        """A few human lines: counts, then one line per failure (``id<TAB>path<TAB>reason``)."""
        d = self.to_dict()
        n = d["extracted"]
        lines = [f"extracted {n} video{'' if n == 1 else 's'} ({d['frames']} frame{'' if d['frames'] == 1 else 's'}, "
                 f"{d['frames_per_second']:.1f} frames/s), "
                 f"{d['already_extracted']} already extracted, {d['failed']} failed, {d['damaged']} damaged"]
        if self.failures:
            lines.append("failures (id, path, reason):")
            lines.extend("  " + f.line() for f in self.failures)
        return "\n".join(lines)


# ---------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------

def _id_from(path: Path, base: Path | None) -> str:
    if base is not None:
        try:
            rel = path.relative_to(base)
            return rel.with_suffix("").as_posix() if rel.suffix else rel.as_posix()
        except ValueError:
            pass
    return path.stem or path.name


def not_regular(path: str | Path) -> str | None:
    """Why ``path`` must not be opened as an input (None for a regular file or a missing path).

    Only regular files are read: a FIFO would block forever, a device could be endless, a
    symlink loop never resolves. A missing path is left to the reader to report as not found.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None if not os.path.islink(path) else "a dangling symlink"
    except OSError as exc:
        return f"cannot be examined ({exc.strerror or exc}; a symlink loop?)"
    if stat.S_ISREG(st.st_mode):
        return None
    if stat.S_ISDIR(st.st_mode):
        return "a folder, not a file"
    kind = ("a FIFO" if stat.S_ISFIFO(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode)
            else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "not a regular file")
    return f"{kind}, not a regular file: refused"


def _tail_id(path: Path, n: int, extension: bool) -> str:
    """The last ``n`` components of ``path`` (absolute), the file's extension kept or not."""
    p = Path(path).absolute()
    parts = [*p.parent.parts[1:], p.name if extension or not p.suffix else p.stem]
    return "/".join(parts[-n:])


def unique_ids(pairs: Sequence[tuple[str, Path]], given: Sequence[bool] | None = None) -> list[tuple[str, Path]]:
    """Give different files that got the same id different ids (the documented rule).

    A folder's videos are named by their path under the folder without the extension
    (``sub/clip``), a single file by its name without the extension (``clip``). When inputs of
    one call give the same id to *different* files (``a/clip.mp4`` and ``b/clip.mp4``, or
    ``clip.mp4`` and ``clip.avi``), each of those files is named instead by as many of its parent
    folders as make the names differ (``a/clip``, ``b/clip``), and failing that by its name with the
    extension (``clip.mp4``, ``clip.avi``). Ids the user gave (``given``: list files, pairs) are
    never changed (a clash between them is the caller's to report). Order is kept; a file given
    twice keeps one id.
    """
    given = [False] * len(pairs) if given is None else list(given)
    groups: dict[str, list[Path]] = {}
    fixed = {vid for (vid, _), g in zip(pairs, given) if g}
    for (vid, path), g in zip(pairs, given):
        if g or vid in fixed:
            continue
        paths = groups.setdefault(vid, [])
        if path not in paths:
            paths.append(path)
    taken = set(groups) | fixed
    renamed: dict[tuple[str, Path], str] = {}
    for vid, paths in groups.items():
        if len(paths) < 2:
            continue
        depth = vid.count("/") + 1
        longest = max(len(Path(p).absolute().parts) - 1 for p in paths)
        choice: list[str] | None = None
        for extension in (False, True):
            for n in range(depth + (0 if extension else 1), longest + 1):
                names = [_tail_id(p, n, extension) for p in paths]
                if len(set(names)) == len(names) and not (set(names) & (taken - {vid})):
                    choice = names
                    break
            if choice is not None:
                break
        if choice is None:  # left to the caller's duplicate check
            continue
        for p, name in zip(paths, choice):
            renamed[(vid, p)] = name
        taken |= set(choice)
    return [(vid if g else renamed.get((vid, p), vid), p) for (vid, p), g in zip(pairs, given)]


def _scan(directory: Path, extensions: frozenset[str], problems: list[VideoFailure] | None = None,
          base: Path | None = None) -> list[Path]:
    """Files with a video extension under ``directory`` (hidden entries skipped); every other entry
    with a video extension (FIFO, socket, device, dangling link, symlink loop) goes to ``problems``."""
    found = []
    base = directory if base is None else base

    def onerror(exc: OSError) -> None:
        if problems is not None:
            where = getattr(exc, "filename", None) or str(directory)
            problems.append(VideoFailure(str(where), str(where), "unreadable", f"folder entry skipped: {exc.strerror or exc}"))

    for root, dirs, files in os.walk(directory, onerror=onerror):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files + [d for d in dirs if os.path.islink(os.path.join(root, d))]):
            if name.startswith("."):
                continue
            p = Path(root) / name
            if p.suffix.lower() not in extensions:
                continue
            why = not_regular(p)
            if why is None and p.exists():
                found.append(p)
            elif problems is not None:
                problems.append(VideoFailure(_id_from(p, base), str(p), "not_a_file",
                                             f"folder entry skipped: {why or 'missing'}"))
    return sorted(found)


def _glob_base(pattern: str) -> Path:
    parts = Path(pattern).parts
    base: list[str] = []
    for part in parts:
        if _GLOB_CHARS & set(part):
            break
        base.append(part)
    return Path(*base) if base else Path(".")


def _read_list(list_file: Path, failures: list[VideoFailure]) -> list[tuple[str, Path]]:
    out = []
    try:
        text = list_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        failures.append(VideoFailure(list_file.stem, str(list_file), "bad_list", f"cannot read list file ({exc})"))
        return out
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = [f.strip() for f in line.split("\t") if f.strip()]
        if len(fields) == 1:
            path = Path(fields[0])
            vid = path.stem
        elif len(fields) == 2:
            vid, path = fields[0], Path(fields[1])
        else:
            failures.append(VideoFailure(f"{list_file.name}:{n}", str(list_file), "bad_list",
                                         f"line {n}: expected 'video_id<TAB>path', got {len(fields)} fields"))
            continue
        if not path.is_absolute() and not path.exists() and (list_file.parent / path).exists():
            path = list_file.parent / path      # relative to the list file when not to the working directory
        out.append((vid, path))
    return out


def resolve_inputs(inputs: str | Path | Iterable[str | Path | tuple[str, str | Path]] | Mapping[str, str | Path],
                   failures: list[VideoFailure] | None = None,
                   extensions: Iterable[str] = VIDEO_EXTENSIONS) -> list[tuple[str, Path]]:
    """Expand inputs into ``(video_id, path)`` pairs, in a stable order.

    * a folder: every file under it with a video extension (recursively; hidden entries skipped);
      the id is the path relative to the folder without its extension (``sub/clip``);
    * a glob pattern (``videos/**/*.mp4``): the matches, ids relative to the pattern's fixed prefix;
    * a list file (``.txt``, ``.tsv``, ``.lst``, ``.list``): ``video_id<TAB>path`` lines (or a path per line,
      id = file name stem; ``#`` comments); relative paths are tried against the working directory,
      then the list file's folder;
    * a ``(video_id, path)`` pair or a ``{video_id: path}`` mapping: as given;
    * any other path: one video, id = its file name stem. A missing path is kept (the decoder then
      reports it as ``not_found``), so every input shows up in the report.

    Args:
        inputs: one input or a sequence/mapping of them.
        failures: where problems found here are appended (duplicate ids, unreadable list files,
            patterns matching nothing, invalid ids); when None they are logged as warnings.
        extensions: suffixes treated as videos when scanning folders.

    Returns:
        ``[(video_id, path)]`` with unique ids.
    """
    exts = frozenset(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
    problems: list[VideoFailure] = []
    if isinstance(inputs, (str, Path)):
        items: list[Any] = [inputs]
    elif isinstance(inputs, Mapping):
        items = list(inputs.items())
    else:
        items = list(inputs)
    pairs: list[tuple[str, Path]] = []
    explicit: set[int] = set()  # positions of ids given by the user (pairs, mappings, list files)
    for item in items:
        if isinstance(item, Mapping):
            explicit.update(range(len(pairs), len(pairs) + len(item)))
            pairs.extend((str(k), Path(v)) for k, v in item.items())
            continue
        if isinstance(item, tuple):
            if len(item) != 2:
                raise ValueError(f"an input pair must be (video_id, path), got {item!r}")
            explicit.add(len(pairs))
            pairs.append((str(item[0]), Path(item[1])))
            continue
        text = str(item)
        path = Path(text)
        if path.is_dir():
            found = _scan(path, exts, problems)
            if not found:
                problems.append(VideoFailure(path.name or text, text, "empty_folder",
                                             f"folder has no files with a video extension ({', '.join(sorted(exts)[:6])}, ...)"))
            pairs.extend((_id_from(p, path), p) for p in found)
        elif path.is_file() and path.suffix.lower() in LIST_SUFFIXES:
            listed = _read_list(path, problems)
            explicit.update(range(len(pairs), len(pairs) + len(listed)))
            pairs.extend(listed)
        elif not path.exists() and _GLOB_CHARS & set(text):
            matches = sorted(glob.glob(text, recursive=True))
            base = _glob_base(text)
            if not matches:
                problems.append(VideoFailure(text, text, "no_match", "pattern matched no files"))
            for m in matches:
                mp = Path(m)
                if mp.is_dir():
                    pairs.extend((_id_from(p, base), p) for p in _scan(mp, exts, problems, base))
                else:
                    pairs.append((_id_from(mp, base), mp))
        else:
            pairs.append((_id_from(path, None), path))
    valid: list[tuple[str, Path]] = []
    given: list[bool] = []
    for i, (vid, path) in enumerate(pairs):
        try:
            valid.append((validate_video_id(vid), path))
            given.append(i in explicit)
        except ValueError as exc:
            problems.append(VideoFailure(str(vid), str(path), "bad_id", str(exc)))
    out: list[tuple[str, Path]] = []
    seen: dict[str, Path] = {}
    for vid, path in unique_ids(valid, given):
        why = not_regular(path)
        if why is not None:
            problems.append(VideoFailure(vid, str(path), "not_a_file", why))
            continue
        if vid in seen:
            if seen[vid] != path:
                problems.append(VideoFailure(vid, str(path), "duplicate_id",
                                             f"duplicate video id (already used for {seen[vid]})"))
            continue
        seen[vid] = path
        out.append((vid, path))
    if failures is not None:
        failures.extend(problems)
    else:
        for p in problems:
            logger.warning("input %s: %s", p.path, p.reason)
    return out


# ---------------------------------------------------------------------------
# The pipeline: decoder threads → bounded queue → batched network
# ---------------------------------------------------------------------------

@dataclass
class _Options:
    fps: float | None = 1.0
    short_side: int | None = 256
    crop: int | None = 224
    batch_size: int = 32
    chunk_size: int = 16
    decode_workers: int = 1
    decode_threads: int = 1
    queue_chunks: int = 8
    limits: DecodeLimits | None = None
    skip_unneeded: bool = True
    interpolation: str = "BILINEAR"
    decode: str = "exact"


@dataclass
class _Video:
    idx: int
    video_id: str
    path: Path
    timestamps: list[np.ndarray] = field(default_factory=list)
    queued: int = 0          # frames handed to the network queue, not yet computed
    ended: dict[str, Any] | None = None
    closed: bool = False     # done or failed: nothing more is emitted for it


class _Stop(Exception):
    pass


def _put(q: queue.Queue, item: Any, stop: threading.Event) -> None:
    while True:
        if stop.is_set():
            raise _Stop
        try:
            q.put(item, timeout=0.1)
            return
        except queue.Full:
            continue


def _decode_worker(jobs: queue.Queue, out: queue.Queue, opts: _Options, stop: threading.Event) -> None:
    try:
        while not stop.is_set():
            try:
                video: _Video = jobs.get_nowait()
            except queue.Empty:
                break
            try:
                reader = VideoReader(video.path, fps=opts.fps, short_side=opts.short_side, crop=opts.crop,
                                     chunk_size=opts.chunk_size, threads=opts.decode_threads, limits=opts.limits,
                                     skip_unneeded=opts.skip_unneeded, interpolation=opts.interpolation,
                                     decode=opts.decode)
                with reader:
                    for chunk in reader:
                        _put(out, ("chunk", video.idx, chunk), stop)
                    meta = {"info": reader.info, "duration": reader.duration, "truncated": reader.truncated,
                            "damage": reader.damage_summary, "decoded": reader.n_decoded,
                            "sampling_error": reader.max_sampling_error, "decode": reader.decode}
                _put(out, ("end", video.idx, meta), stop)
            except _Stop:
                return
            except VideoError as exc:
                _put(out, ("fail", video.idx, (exc.code, exc.reason)), stop)
            except MemoryError:
                _put(out, ("fail", video.idx, ("out_of_memory", "out of memory while decoding")), stop)
            except Exception as exc:  # noqa: BLE001 - one strange file must not stop the batch
                logger.debug("unexpected error decoding %s", video.path, exc_info=True)
                _put(out, ("fail", video.idx, ("error", f"decoding failed: {type(exc).__name__}: {exc}")), stop)
    except _Stop:
        return
    finally:
        try:
            _put(out, ("worker_done", -1, None), stop)
        except _Stop:
            pass


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


def _pipeline(entries: Sequence[tuple[str, Path]], extractor: Extractor, opts: _Options,
              post: Callable[[Any], Any] | None = None) -> Iterator[tuple[str, _Video, Any]]:
    """Events, in order per video: ``("start", v, None)``, ``("features", v, array [n, 9, D])`` ...,
    then ``("done", v, meta)`` or ``("fail", v, (code, reason))``."""
    videos = [_Video(i, vid, Path(p)) for i, (vid, p) in enumerate(entries)]
    if not videos:
        return
    jobs: queue.Queue = queue.Queue()
    for v in videos:
        jobs.put(v)
    out: queue.Queue = queue.Queue(maxsize=max(2, opts.queue_chunks))
    stop = threading.Event()
    n_workers = max(1, min(opts.decode_workers, len(videos)))
    workers = [threading.Thread(target=_decode_worker, args=(jobs, out, opts, stop), daemon=True,
                                name=f"dnsvr-decode-{i}") for i in range(n_workers)]
    for w in workers:
        w.start()
    pending: list[tuple[_Video, np.ndarray]] = []
    pending_n = 0
    started: set[int] = set()

    def run_batch(limit: int) -> Iterator[tuple[str, _Video, Any]]:
        nonlocal pending, pending_n
        take: list[tuple[_Video, np.ndarray]] = []
        n = 0
        while pending and n < limit:
            v, frames = pending[0]
            room = limit - n
            if len(frames) <= room:
                take.append(pending.pop(0))
                n += len(frames)
            else:
                take.append((v, frames[:room]))
                pending[0] = (v, frames[room:])
                n += room
        pending_n -= n
        if not take:
            return
        batch = take[0][1] if len(take) == 1 else np.concatenate([f for _, f in take])
        try:
            feats = extractor(batch)
            if post is not None:
                feats = post(feats)
            feats = _to_numpy(feats)
            if feats.ndim != 3 or feats.shape[0] != n:
                raise ValueError(f"extractor returned shape {feats.shape} for {n} frames; expected [{n}, 9, D]")
        except Exception as exc:  # noqa: BLE001 - report the videos of this batch, keep going
            logger.debug("feature extraction failed", exc_info=True)
            reason = f"feature extraction failed: {type(exc).__name__}: {exc}"
            for v, frames in take:
                v.queued -= len(frames)
                if not v.closed:
                    v.closed = True
                    yield "fail", v, ("network_error", reason)
            return
        pos = 0
        for v, frames in take:
            k = len(frames)
            v.queued -= k
            if not v.closed:
                yield "features", v, feats[pos:pos + k]
            pos += k

    def finished() -> Iterator[tuple[str, _Video, Any]]:
        for v in videos:
            if v.ended is not None and v.queued == 0 and not v.closed:
                meta, v.ended = v.ended, None
                v.closed = True
                yield "done", v, meta

    done_workers = 0
    try:
        while done_workers < n_workers:
            kind, idx, payload = out.get()
            if kind == "worker_done":
                done_workers += 1
                continue
            v = videos[idx]
            if v.closed:
                continue
            if kind == "chunk" and idx not in started:
                started.add(idx)
                yield "start", v, None
            if kind == "chunk":
                v.timestamps.append(payload.timestamps)
                pending.append((v, payload.frames))
                pending_n += len(payload.frames)
                v.queued += len(payload.frames)
                while pending_n >= opts.batch_size:
                    yield from run_batch(opts.batch_size)
                    yield from finished()
            elif kind == "end":
                v.ended = payload
                yield from finished()
            elif kind == "fail":
                v.closed = True
                pending = [(pv, f) for pv, f in pending if pv is not v]
                pending_n = sum(len(f) for _, f in pending)
                yield "fail", v, payload
        while pending_n:
            yield from run_batch(opts.batch_size)
            yield from finished()
        yield from finished()
    finally:
        stop.set()
        while True:     # unblock workers waiting on a full queue
            try:
                out.get_nowait()
            except queue.Empty:
                break
        for w in workers:
            w.join(timeout=5.0)


def _video_meta(v: _Video, meta: dict[str, Any], fps: float | None, extractor: Extractor,
                whitening: str) -> dict[str, Any]:
    info = meta["info"]
    timestamps = np.concatenate(v.timestamps) if v.timestamps else np.zeros(0)
    return {
        "source": str(v.path), "fps": float(fps) if fps else 0.0, "backbone": extractor.backbone_name,
        "whitening": whitening, "duration": float(meta["duration"] or 0.0), "timestamps": timestamps,
        "frames": int(len(timestamps)), "width": int(info.display_width or info.width),
        "height": int(info.display_height or info.height), "rotation": int(info.rotation),
        "truncated": bool(meta["truncated"]), "damage": meta["damage"] or "",
        "decode": str(meta.get("decode", "exact")), "max_sampling_error": round(float(meta.get("sampling_error", 0.0)), 6),
    }


# ---------------------------------------------------------------------------
# Progress
# ---------------------------------------------------------------------------

class _NoProgress:
    def advance_video(self, video_id: str = "", frames: int | None = None) -> None: ...
    def add_frames(self, n: int) -> None: ...
    def set_current(self, text: str) -> None: ...


class _VideoProgress(_NoProgress):
    """Videos done, frames per second and the video being decoded, on :func:`dnsvr._progress.progress_bar`."""

    def __init__(self, progress: Any, task: Any) -> None:
        self._p, self._task = progress, task
        self._frames = 0
        self._t0 = time.monotonic()

    def advance_video(self, video_id: str = "", frames: int | None = None) -> None:
        item = video_id if frames is None else f"{video_id} ({frames} frames)"
        self._p.update(self._task, advance=1, item=item)

    def add_frames(self, n: int) -> None:
        self._frames += n
        rate = self._frames / max(time.monotonic() - self._t0, 1e-6)
        self._p.update(self._task, fps=f"{rate:.1f} frames/s")

    def set_current(self, text: str) -> None:
        self._p.update(self._task, description=text[-40:])


@contextmanager
def _progress(enabled: bool | None, total: int, label: str) -> Iterator[_NoProgress]:
    if enabled is False or total == 0:
        yield _NoProgress()
        return
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("videos"),
               TextColumn("{task.fields[fps]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
    with progress_bar(enabled, columns=columns, min_interval=0.0) as progress:
        task = progress.add_task(label, total=total, fps="", item="")
        yield _VideoProgress(progress, task)


# ---------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------

def _options(extractor: Extractor, fps: float | None, short_side: int | None, crop: int | None, batch_size: int,
             decode_workers: int, decode_threads: int, limits: DecodeLimits | None, skip_unneeded: bool,
             decode: str = "exact") -> _Options:
    pre = getattr(extractor, "preprocessing", None) or {}
    if short_side is None:
        short_side = pre.get("resize_short_side", 256)
    if crop is None:
        crop = pre.get("crop", 224)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if fps is not None and fps < 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    check_decode(decode, fps)
    return _Options(fps=fps, short_side=int(short_side) if short_side else None, crop=int(crop) if crop else None,
                    batch_size=int(batch_size), chunk_size=max(1, min(16, int(batch_size))),
                    decode_workers=int(decode_workers), decode_threads=int(decode_threads), limits=limits,
                    skip_unneeded=skip_unneeded, interpolation=str(pre.get("interpolation", "bilinear")).upper(),
                    decode=decode)


def _whitening_identity(white: Any, extractor: Extractor) -> str:
    if white is not None:
        return str(white.identity)
    inner = getattr(extractor, "whitening", None)
    return str(inner.identity) if inner is not None else "none"


def iter_video_features(inputs: Any, extractor: Extractor, fps: float | None = 1.0, *,
                        short_side: int | None = None, crop: int | None = None, batch_size: int = 32,
                        skip: Iterable[str] = (), failures: list[VideoFailure] | None = None,
                        whitening: Any = None, decode_workers: int = 1, decode_threads: int = 1,
                        limits: DecodeLimits | None = None, skip_unneeded: bool = True, decode: str = "exact",
                        progress: bool | None = False) -> Iterator[VideoFeatures]:
    """Extract features video by video, in process (nothing written to disk).

    Args:
        inputs: anything :func:`resolve_inputs` accepts.
        extractor: the network (e.g. :class:`dnsvr.backbones.FeatureExtractor`).
        fps: frames sampled per second.
        short_side: the short side frames are resized to (default: the extractor's ``preprocessing``, else 256).
        crop: the centre crop (default: the extractor's ``preprocessing``, else 224).
        batch_size: frames per network call (batches span videos).
        skip: ids to leave out (already done).
        failures: a list receiving a :class:`VideoFailure` per unusable or damaged video; when None,
            failures are logged as warnings.
        whitening: a fitted :class:`dnsvr.backbones.PCAWhitening` applied after the extractor, or None.
        decode_workers: decoder threads (each decodes different videos).
        decode_threads: FFmpeg threads per decoder (0: FFmpeg's choice; 1, the default, costs the least CPU,
            which the network needs).
        limits: accepted frame sizes.
        skip_unneeded: skip decoding frames that cannot be sampled (exact; see :class:`dnsvr.video.VideoReader`).
        decode: ``"exact"`` (each tick takes the first frame at or after it) or ``"keyframes"`` (opt-in,
            approximate: only keyframes are decoded, each tick takes the latest keyframe at or before it; the
            per-video ``max_sampling_error`` says how stale a frame got, in seconds).
        progress: show a progress bar (None: when stderr is a terminal).

    Yields:
        :class:`~dnsvr.features.VideoFeatures`: ``features`` float32 [T, 9, D], ``timestamps`` float64 [T],
        ``source``, and ``info`` with ``fps``, ``backbone``, ``whitening``, ``duration``, ``frames``, ``width``,
        ``height``, ``rotation``, ``truncated``, ``damage``, ``decode``, ``max_sampling_error`` (seconds; 0 when
        exact).
    """
    opts = _options(extractor, fps, short_side, crop, batch_size, decode_workers, decode_threads, limits, skip_unneeded,
                    decode)
    if whitening is not None and getattr(extractor, "whitening", None) is not None:
        raise ValueError("the extractor already whitens its output; pass whitening=None or an extractor without one")
    sink: list[VideoFailure] = failures if failures is not None else []
    n_before = len(sink)
    entries = resolve_inputs(inputs, sink)
    skip_set = set(skip)
    entries = [e for e in entries if e[0] not in skip_set]
    post = _whitener(whitening)
    white_id = _whitening_identity(whitening, extractor)
    buffers: dict[int, list[np.ndarray]] = {}
    with _progress(progress, len(entries), "extracting") as bar:
        for kind, v, payload in _pipeline(entries, extractor, opts, post):
            if kind == "start":
                buffers[v.idx] = []
                bar.set_current(v.video_id)
            elif kind == "features":
                buffers[v.idx].append(payload)
                bar.add_frames(len(payload))
            elif kind == "fail":
                buffers.pop(v.idx, None)
                sink.append(VideoFailure(v.video_id, str(v.path), *payload))
                bar.advance_video(f"{v.video_id} failed: {payload[0]}")
            elif kind == "done":
                feats = np.concatenate(buffers.pop(v.idx))
                meta = _video_meta(v, payload, opts.fps, extractor, white_id)
                if meta["damage"]:
                    sink.append(VideoFailure(v.video_id, str(v.path), "damaged", meta["damage"], extracted=True))
                bar.advance_video(v.video_id, meta["frames"])
                yield VideoFeatures.from_attrs(v.video_id, feats, meta)
    if failures is None:
        for f in sink[n_before:]:
            logger.warning("%s", f.line())


def _whitener(whitening: Any) -> Callable[[Any], Any] | None:
    """The whitening's :meth:`~dnsvr.backbones.PCAWhitening.apply` (None without a whitening)."""
    return None if whitening is None else whitening.apply


def _load_whitening(spec: Any, extractor: Extractor, dims: int) -> tuple[Any, bool]:
    """``(whitening module or None, fit?)`` from the user's choice."""
    if spec is None or (isinstance(spec, str) and spec.lower() == "none"):
        return None, False
    if isinstance(spec, str) and spec.lower() == "fit":
        return None, True
    from dnsvr.backbones import PCAWhitening

    if isinstance(spec, PCAWhitening):
        white = spec
    elif isinstance(spec, str) and spec.lower() == "published":
        from dnsvr.weights import resolve_weights

        if extractor.backbone_name != "resnet50":
            raise ValueError(f"the published whitening is for resnet50 regions, not {extractor.backbone_name}; "
                             "use whitening='fit' or 'none'")
        white = PCAWhitening.from_file(resolve_weights("pca_resnet50_vcdb_1M"), dims=dims)
    else:
        path = Path(spec)
        if not path.is_file():
            raise FileNotFoundError(f"whitening file not found: {path} (or use 'none', 'fit', 'published')")
        white = PCAWhitening.from_file(path, dims=dims)
    region_dims = getattr(extractor, "region_dims", None)
    if region_dims is not None and white.input_dims != region_dims:
        raise ValueError(f"whitening {white.identity} takes {white.input_dims}-d vectors; "
                         f"{extractor.backbone_name} regions are {region_dims}-d")
    return white, False


def extract_videos(inputs: Any, output_h5: str | Path, extractor: Extractor, fps: float | None = 1.0, *,
                   whitening: Any = None, dims: int = 512, fit_videos: int | None = None,
                   fit_frames: int = 20000, whitening_file: str | Path | None = None,
                   dtype: str | np.dtype | type = "float32", short_side: int | None = None,
                   crop: int | None = None, batch_size: int = 32, decode_workers: int = 1,
                   decode_threads: int = 1, limits: DecodeLimits | None = None, skip_unneeded: bool = True,
                   decode: str = "exact",
                   checkpoint_interval: float = 30.0, fsync: bool = True, progress: bool | None = None,
                   failures_json: str | Path | None = None, ray: str | None = None) -> ExtractionReport:
    """Extract videos into an HDF5 feature file (one ``[T, 9, D]`` dataset per video id).

    Re-running with the same output skips the ids already complete; a crash or Ctrl-C
    leaves a valid file with every finished video (see :class:`dnsvr.features.FeatureWriter`).

    Args:
        inputs: anything :func:`resolve_inputs` accepts (files, folders, globs, list files).
        output_h5: the feature file.
        extractor: the network (e.g. ``FeatureExtractor("efficientnet_lite0")``), without whitening
            when ``whitening`` is given here.
        fps: frames sampled per second.
        whitening: ``None``/``"none"``; a :class:`dnsvr.backbones.PCAWhitening`; a whitening file path;
            ``"published"`` (the paper's ResNet-50 PCA, from the weights registry); or ``"fit"``: fit a
            PCA whitening on these videos' regions (two passes over features, videos decoded once:
            raw regions go to ``<output>.raw.h5``, which is removed at the end), saved to
            ``whitening_file`` (default ``<output stem>.whitening.npz``) and reused by later runs.
        dims: output size of a published/fitted whitening.
        fit_videos: with ``"fit"``, fit on the first N videos only (the others are whitened
            directly, in one pass).
        fit_frames: at most this many frames (evenly spread) feed the fit.
        whitening_file: where the fitted whitening is saved / looked up.
        dtype: ``"float32"`` or ``"float16"`` storage.
        short_side: decoding geometry: the short side (default: the extractor's preprocessing).
        crop: decoding geometry: the centre crop (default: the extractor's preprocessing).
        batch_size: frames per network call.
        decode_workers: decoder threads; decode_threads: FFmpeg threads per decoder (1, the default, costs the
            least CPU, which the network needs).
        limits: accepted frame sizes.
        skip_unneeded: skip decoding frames that cannot be sampled (exact; see :class:`dnsvr.video.VideoReader`).
        decode: ``"exact"`` (each tick takes the first frame at or after it) or ``"keyframes"`` (opt-in,
            approximate: only keyframes are decoded, each tick takes the latest keyframe at or before it; the
            per-video ``max_sampling_error`` says how stale a frame got, in seconds).
        checkpoint_interval: seconds between checkpoints of the feature file.
        fsync: make every finished video durable on disk.
        progress: progress bar (None: when stderr is a terminal).
        failures_json: also write the failures there as JSON.
        ray: decode and run the backbone on a Ray cluster (``"auto"``, an address, or ``"local"``; see
            :mod:`dnsvr.cluster.extract`), one video per task; this process writes the file, in order of
            completion. Not with ``whitening="fit"`` (fit once, then pass the whitening file).

    Returns:
        The :class:`ExtractionReport` (``report.ok`` is False when anything failed or was damaged).

    Raises:
        FeatureFileError: when the output exists with other settings (backbone, whitening, fps, ...).
        ValueError, FileNotFoundError: for an invalid whitening choice.
    """
    started = time.monotonic()
    output_h5 = Path(output_h5)
    opts = _options(extractor, fps, short_side, crop, batch_size, decode_workers, decode_threads, limits, skip_unneeded,
                    decode)
    if whitening is not None and not (isinstance(whitening, str) and whitening.lower() == "none") \
            and getattr(extractor, "whitening", None) is not None:
        raise ValueError("the extractor already whitens its output; pass whitening=None or an extractor without one")
    report = ExtractionReport(output=output_h5)
    entries = resolve_inputs(inputs, report.failures)
    white, fit = _load_whitening(whitening, extractor, dims)
    if fit and ray is not None:
        raise ValueError("whitening 'fit' is not offered with ray: fit it once (dnsvr extract --whitening fit on a "
                         "sample), then pass the whitening file")
    wfile = Path(whitening_file) if whitening_file else output_h5.with_name(output_h5.stem + ".whitening.npz")
    raw_path = output_h5.with_name(output_h5.stem + ".raw.h5")
    if fit:
        from dnsvr.backbones import PCAWhitening

        if wfile.is_file():
            white = PCAWhitening.from_file(wfile, dims=dims)
            logger.info("reusing the whitening fitted earlier: %s (%s)", wfile, white.identity)
        report.whitening_file = wfile

    base_attrs = {"backbone": extractor.backbone_name, "fps": float(fps) if fps else 0.0,
                  "short_side": opts.short_side or 0, "crop": opts.crop or 0, "dnsvr_version": __version__,
                  "weights": _weights_name(extractor), "decode": opts.decode,
                  "precision": str(getattr(extractor, "precision", "fp32"))}
    done_ids = _complete_ids(output_h5)
    report.already_extracted = [vid for vid, _ in entries if vid in done_ids]
    todo = [(vid, p) for vid, p in entries if vid not in done_ids]

    if fit and white is None:
        # pass 1: raw regions of (a sample of) the videos, decoded once
        sample = todo if fit_videos is None else todo[:max(1, int(fit_videos))]
        raw_attrs = dict(base_attrs, whitening="none", dims=int(getattr(extractor, "region_dims", extractor.dims)))
        raw_report = ExtractionReport(output=raw_path)
        with FeatureWriter(raw_path, raw_attrs, dtype=dtype, checkpoint_interval=checkpoint_interval,
                           fsync=fsync) as raw:
            raw_todo = [e for e in sample if e[0] not in raw.completed_ids()]
            _extract_into(raw, raw_todo, extractor, opts, None, "none", raw_report, progress, "pass 1/2 (raw)")
        # real failures are final; damaged-but-extracted videos are reported when they are whitened
        failed = [f for f in raw_report.failures if not f.extracted]
        report.failures.extend(failed)
        failed_ids = {f.video_id for f in failed}
        todo = [e for e in todo if e[0] not in failed_ids]
        white = _fit_whitening(raw_path, dims, fit_frames)
        wfile.parent.mkdir(parents=True, exist_ok=True)
        white.save(wfile)
        logger.info("fitted whitening %s saved to %s", white.identity, wfile)

    white_id = _whitening_identity(white, extractor)
    report.whitening = white_id
    out_dims = white.dims if white is not None else extractor.dims
    attrs = dict(base_attrs, whitening=white_id, dims=int(out_dims))
    with FeatureWriter(output_h5, attrs, dtype=dtype, checkpoint_interval=checkpoint_interval, fsync=fsync) as writer:
        if raw_path.exists() and white is not None:
            _whiten_raw(raw_path, writer, white, white_id, {vid for vid, _ in todo}, report)
        rest = [e for e in todo if e[0] not in writer.completed_ids()]
        if ray is not None:
            _extract_into_ray(writer, rest, extractor, opts, _whitener(white), white_id, report, progress, ray)
        else:
            _extract_into(writer, rest, extractor, opts, _whitener(white), white_id, report, progress,
                          "extracting" if not fit else "pass 2/2")
    if raw_path.exists() and white is not None:
        with FeatureFile(raw_path) as ff:
            leftover = set(ff.ids()) - _complete_ids(output_h5)
        if not leftover:
            raw_path.unlink()
    report.seconds = time.monotonic() - started
    if failures_json is not None:
        report.write_failures_json(failures_json)
    return report


def _weights_name(extractor: Extractor) -> str:
    """The backbone weights as a file name (``random``, ``efficientnet-lite0-57934424.pth``, ...): the same
    weights give the same name on every machine, wherever they are installed."""
    source = str(getattr(extractor, "identity", {}).get("weights", "") or "")
    return source.replace("\\", "/").rsplit("/", 1)[-1]


def _complete_ids(path: Path) -> set[str]:
    """Ids complete in a feature file and in its journal (without merging it)."""
    ids: set[str] = set()
    if path.exists():
        with FeatureFile(path) as ff:
            ids |= set(ff.ids())
    journal = path.with_name(path.name + ".parts")
    if journal.is_dir():
        for part in journal.glob("*.h5"):
            vid = FeatureWriter._part_id(part)
            if vid is not None:
                ids.add(vid)
    return ids


def _extract_into(writer: FeatureWriter, entries: list[tuple[str, Path]], extractor: Extractor, opts: _Options,
                  post: Callable[[Any], Any] | None, white_id: str, report: ExtractionReport,
                  progress: bool | None, label: str) -> None:
    parts: dict[int, Any] = {}
    try:
        with _progress(progress, len(entries), label) as bar:
            for kind, v, payload in _pipeline(entries, extractor, opts, post):
                if kind == "start":
                    parts[v.idx] = writer.begin(v.video_id)
                    bar.set_current(v.video_id)
                elif kind == "features":
                    try:
                        parts[v.idx].append(payload)
                    except (OSError, ValueError) as exc:
                        parts.pop(v.idx).abort()
                        v.closed = True
                        report.failures.append(VideoFailure(v.video_id, str(v.path), "write_error",
                                                            f"cannot write features: {exc}"))
                        bar.advance_video(f"{v.video_id} failed: write_error")
                        continue
                    bar.add_frames(len(payload))
                elif kind == "fail":
                    part = parts.pop(v.idx, None)
                    if part is not None:
                        part.abort()
                    report.failures.append(VideoFailure(v.video_id, str(v.path), *payload))
                    bar.advance_video(f"{v.video_id} failed: {payload[0]}")
                elif kind == "done":
                    meta = _video_meta(v, payload, opts.fps, extractor, white_id)
                    part = parts.pop(v.idx)
                    try:
                        part.commit(meta)
                    except (OSError, ValueError) as exc:
                        report.failures.append(VideoFailure(v.video_id, str(v.path), "write_error",
                                                            f"cannot write features: {exc}"))
                        bar.advance_video(f"{v.video_id} failed: write_error")
                        continue
                    report.extracted.append(VideoResult(v.video_id, str(v.path), meta["frames"], meta["duration"],
                                                        meta["damage"] or None))
                    if meta["damage"]:
                        report.failures.append(VideoFailure(v.video_id, str(v.path), "damaged", meta["damage"],
                                                            extracted=True))
                    bar.advance_video(v.video_id, meta["frames"])
    finally:
        for part in parts.values():
            part.abort()


def _extract_into_ray(writer: FeatureWriter, entries: list[tuple[str, Path]], extractor: Extractor, opts: _Options,
                      post: Callable[[Any], Any] | None, white_id: str, report: ExtractionReport,
                      progress: bool | None, address: str) -> None:
    """:func:`_extract_into` with the decoding and the backbone on a Ray cluster (whitening applied here)."""
    from dnsvr.cluster.extract import iter_video_features_ray

    weights = str(getattr(extractor, "weights_source", "") or "") or None
    for rec in iter_video_features_ray(
            entries, extractor.backbone_name, address=address, failures=report.failures, progress=progress,
            fps=opts.fps or 1.0, weights=weights, precision=str(getattr(extractor, "precision", "fp32")),
            batch_size=opts.batch_size, short_side=opts.short_side, crop=opts.crop, decode=opts.decode):
        vid, feats = rec.video_id, rec.features
        if post is not None:
            feats = _to_numpy(post(feats))
        meta = {**rec.attrs(), "whitening": white_id}
        try:
            writer.write(vid, feats, meta)
        except (OSError, ValueError) as exc:
            report.failures.append(VideoFailure(vid, str(rec.source or ""), "write_error",
                                                f"cannot write features: {exc}"))
            continue
        report.extracted.append(VideoResult(vid, str(rec.source), rec.frames, rec.info["duration"],
                                            rec.info["damage"] or None))


def _fit_whitening(raw_path: Path, dims: int, fit_frames: int) -> Any:
    from dnsvr.backbones import PCAWhitening

    white = PCAWhitening(dims=dims)
    with FeatureFile(raw_path) as ff:
        ids = ff.ids()
        if not ids:
            raise ValueError(f"cannot fit a whitening: no video was extracted into {raw_path}")
        total = sum(ff.shape(i)[0] for i in ids)
        step = max(1, math.ceil(total / max(1, fit_frames)))
        offset = 0
        for vid in ids:
            feats = ff.read(vid)
            pick = feats[(-offset) % step::step]
            offset = (offset + len(feats)) % step
            if len(pick):
                white.partial_fit(pick)
    return white.finalize()


def _whiten_raw(raw_path: Path, writer: FeatureWriter, white: Any, white_id: str, wanted: set[str],
                report: ExtractionReport) -> None:
    with FeatureFile(raw_path) as ff:
        for vid in ff.ids():
            if vid not in wanted or vid in writer.completed_ids():
                continue
            info = ff.info(vid)
            feats = white.apply(ff.read(vid))
            attrs = {k: v for k, v in info.items() if k not in ("dnsvr_complete", "video_id")}
            attrs["whitening"] = white_id
            writer.write(vid, feats, attrs)
            damage = str(info.get("damage") or "")
            report.extracted.append(VideoResult(vid, str(info.get("source", "")), int(len(feats)),
                                                float(info.get("duration", 0.0)), damage or None))
            if damage:
                report.failures.append(VideoFailure(vid, str(info.get("source", "")), "damaged", damage,
                                                    extracted=True))

"""Generated videos for tests, demos and benchmarks: moving shapes over panning textures.

Everything here is deterministic by seed and cheap: a clip is a sequence of
*scenes* (1.5–4 s each), each with its own smooth colour texture panning in a
random direction and a few coloured shapes bouncing around. A frame depends only
on ``(seed, time)``, never on the frame rate, so the same clip rendered at 25 and
30 fps shows the same content at the same instants (speed changes and frame-rate
changes are exact copies in content).

Transformed copies model what near-duplicate retrieval must survive:
re-encoding (:func:`write_video` with another codec/quality/size), crops,
flips, speed changes, overlays (logo box, caption bar, border), brightness and
contrast, grayscale, and a clip inserted into another video
(:func:`insert_clip`). :func:`make_collection` writes a small ground-truthed
collection (originals, transformed copies, distractors) for demos and tests.

Example:
    >>> frames = render_clip(seed=7, seconds=2.0, fps=10, size=(160, 90))
    >>> frames.shape
    (20, 90, 160, 3)
    >>> path = write_video("/tmp/clip.mp4", frames, fps=10)          # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

logger = logging.getLogger(__name__)

#: Names accepted by :func:`transform_clip` / :func:`make_copy`.
TRANSFORMS = ("reencode", "downscale", "crop", "hflip", "speed", "slow", "overlay", "caption", "border",
              "brightness", "grayscale", "insert")


# ---------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------

@dataclass
class _Shape:
    kind: str                  # "disc" | "box" | "ring"
    color: np.ndarray          # float32 [3], 0..255
    radius: float              # fraction of the frame height
    pos: np.ndarray            # float [2] (x, y) in [0, 1]
    vel: np.ndarray            # float [2] in frame fractions per second


@dataclass
class _Scene:
    start: float
    end: float
    canvas: np.ndarray         # uint8 [Hc, Wc, 3], larger than the frame
    pan: np.ndarray            # float [2] pixels per second (x, y) at the canvas scale
    shapes: list[_Shape] = field(default_factory=list)


def _smooth_canvas(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A smooth colour texture: bilinearly upsampled colour noise plus a coloured grating."""
    gh, gw = int(rng.integers(3, 7)), int(rng.integers(4, 9))
    grid = rng.uniform(0, 255, size=(gh, gw, 3)).astype(np.float32)

    def interp_matrix(n_out: int, n_in: int) -> np.ndarray:
        pos = np.linspace(0, n_in - 1, n_out, dtype=np.float32)
        lo = np.clip(np.floor(pos).astype(int), 0, n_in - 1)
        hi = np.clip(lo + 1, 0, n_in - 1)
        frac = pos - lo
        mat = np.zeros((n_out, n_in), np.float32)
        mat[np.arange(n_out), lo] += 1 - frac
        mat[np.arange(n_out), hi] += frac
        return mat

    ry, rx = interp_matrix(height, gh), interp_matrix(width, gw)
    canvas = np.einsum("yi,ijc,xj->yxc", ry, grid, rx, optimize=True)
    # A grating gives the texture some mid-frequency structure (edges for the CNN to see).
    theta = rng.uniform(0, math.pi)
    period = rng.uniform(12, 48)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    wave = np.sin((xx * math.cos(theta) + yy * math.sin(theta)) * (2 * math.pi / period))
    tint = rng.uniform(-60, 60, size=3).astype(np.float32)
    canvas += wave[..., None] * tint
    return np.clip(canvas, 0, 255).astype(np.uint8)


def _plan(seed: int, seconds: float, size: tuple[int, int]) -> list[_Scene]:
    width, height = size
    rng = np.random.default_rng(seed)
    scenes: list[_Scene] = []
    t = 0.0
    while t < seconds:
        length = float(rng.uniform(1.5, 4.0))
        pan = rng.uniform(-1, 1, size=2) * rng.uniform(5, 40)
        margin_x = int(math.ceil(abs(pan[0]) * length)) + 2
        margin_y = int(math.ceil(abs(pan[1]) * length)) + 2
        canvas = _smooth_canvas(rng, height + margin_y, width + margin_x)
        shapes = []
        for _ in range(int(rng.integers(2, 6))):
            shapes.append(_Shape(
                kind=str(rng.choice(["disc", "box", "ring"])),
                color=rng.uniform(0, 255, size=3).astype(np.float32),
                radius=float(rng.uniform(0.06, 0.2)),
                pos=rng.uniform(0.15, 0.85, size=2),
                vel=rng.uniform(-0.35, 0.35, size=2),
            ))
        scenes.append(_Scene(start=t, end=t + length, canvas=canvas, pan=pan, shapes=shapes))
        t += length
    return scenes


def _bounce(p: float) -> float:
    """Reflect a coordinate into [0, 1] (shapes bounce off the frame edges)."""
    p = p % 2.0
    return 2.0 - p if p > 1.0 else p


def _render(scenes: list[_Scene], t: float, size: tuple[int, int]) -> np.ndarray:
    width, height = size
    idx = 0
    while idx + 1 < len(scenes) and t >= scenes[idx].end:
        idx += 1
    scene = scenes[idx]
    dt = t - scene.start
    hc, wc = scene.canvas.shape[:2]
    ox = int(round((wc - width) / 2 + scene.pan[0] * (dt - (scene.end - scene.start) / 2)))
    oy = int(round((hc - height) / 2 + scene.pan[1] * (dt - (scene.end - scene.start) / 2)))
    ox = min(max(ox, 0), wc - width)
    oy = min(max(oy, 0), hc - height)
    frame = scene.canvas[oy:oy + height, ox:ox + width].copy()
    for shape in scene.shapes:
        r = max(shape.radius * height, 1.5)
        cx = _bounce(shape.pos[0] + shape.vel[0] * dt) * width
        cy = _bounce(shape.pos[1] + shape.vel[1] * dt) * height
        x0, x1 = max(int(cx - r), 0), min(int(cx + r) + 1, width)
        y0, y1 = max(int(cy - r), 0), min(int(cy + r) + 1, height)
        if x0 >= x1 or y0 >= y1:
            continue
        yy, xx = np.ogrid[y0:y1, x0:x1]
        if shape.kind == "box":
            mask = np.ones((y1 - y0, x1 - x0), bool)
        else:
            d2 = (xx - cx) ** 2 + (yy - cy) ** 2
            mask = d2 <= r * r
            if shape.kind == "ring":
                mask &= d2 >= (0.55 * r) ** 2
        frame[y0:y1, x0:x1][mask] = shape.color.astype(np.uint8)
    return frame


def _check_size(size: tuple[int, int]) -> tuple[int, int]:
    width, height = int(size[0]), int(size[1])
    if width < 2 or height < 2:
        raise ValueError(f"size must be (width, height) with both >= 2, got {size}")
    return width, height


def iter_clip(seed: int, seconds: float = 4.0, fps: float = 25.0, size: tuple[int, int] = (320, 180),
              timestamps: Sequence[float] | None = None) -> Iterator[np.ndarray]:
    """Yield the frames of a generated clip one at a time (bounded memory, any length).

    Args:
        seed: the clip's identity; the same seed always renders the same content.
        seconds: length of the clip.
        fps: frame rate (ignored when ``timestamps`` is given).
        size: ``(width, height)`` in pixels.
        timestamps: explicit frame times in seconds (variable frame rate).

    Yields:
        uint8 RGB frames ``[height, width, 3]``.
    """
    size = _check_size(size)
    if timestamps is None:
        if fps <= 0 or seconds <= 0:
            raise ValueError(f"need fps > 0 and seconds > 0, got fps={fps}, seconds={seconds}")
        n = int(math.ceil(seconds * fps - 1e-9))
        timestamps = [i / fps for i in range(n)]
        total = seconds
    else:
        total = max(float(max(timestamps, default=0.0)) + 1e-3, seconds)
    scenes = _plan(seed, total, size)
    for t in timestamps:
        yield _render(scenes, float(t), size)


def render_clip(seed: int, seconds: float = 4.0, fps: float = 25.0, size: tuple[int, int] = (320, 180),
                timestamps: Sequence[float] | None = None) -> np.ndarray:
    """Render a generated clip into memory.

    Args:
        seed: the clip's identity; the same seed always renders the same content.
        seconds: length of the clip.
        fps: frame rate (ignored when ``timestamps`` is given).
        size: ``(width, height)`` in pixels.
        timestamps: explicit frame times in seconds (variable frame rate).

    Returns:
        uint8 RGB frames ``[N, height, width, 3]``.
    """
    width, height = _check_size(size)
    frames = list(iter_clip(seed, seconds, fps, size, timestamps))
    if not frames:
        return np.zeros((0, height, width, 3), np.uint8)
    return np.stack(frames)


# ---------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------

_CODEC_BY_SUFFIX = {".mp4": "libx264", ".mkv": "libx264", ".mov": "libx264", ".m4v": "libx264",
                    ".ts": "libx264", ".avi": "mpeg4", ".webm": "libvpx-vp9", ".mpg": "mpeg1video"}


def write_video(path: str | Path, frames: np.ndarray | Iterable[np.ndarray], fps: float = 25.0, *,
                codec: str | None = None, crf: int | None = 23, bitrate: int | None = None,
                preset: str = "veryfast", pix_fmt: str | None = None, gop: int | None = None,
                rotation: int = 0, timestamps: Sequence[float] | None = None,
                size: tuple[int, int] | None = None, audio: bool = False) -> Path:
    """Encode frames into a video file with PyAV.

    Args:
        path: output file; the container follows the suffix (``.mp4``, ``.mkv``, ``.webm``, ``.avi``, ...).
        frames: uint8 RGB ``[N, H, W, 3]`` or an iterable of ``[H, W, 3]`` frames (streamed).
        fps: nominal frame rate (constant frame rate unless ``timestamps`` is given).
        codec: encoder name; default by suffix (H.264 for mp4/mkv/mov).
        crf: constant rate factor for x264/vp9 (quality; higher is worse); ignored with ``bitrate``.
        bitrate: target bit rate in bits/s.
        preset: x264 speed preset.
        pix_fmt: pixel format; default yuv420p, or yuv444p for x264 at odd sizes (4:2:0 needs even sizes).
        gop: keyframe interval in frames.
        rotation: display rotation metadata, counter-clockwise degrees (a multiple of 90); players
            (and :mod:`dnsvr.video`) rotate the stored frames by it for display.
        timestamps: explicit presentation times in seconds, one per frame (variable frame rate).
        size: ``(width, height)`` to rescale to while encoding (a re-encoded, downscaled copy).
        audio: add a sine-tone audio track (AAC), as most real files have one.

    Returns:
        The path written.

    Raises:
        ValueError: on empty input, bad sizes, or timestamps that do not increase.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    codec = codec or _CODEC_BY_SUFFIX.get(suffix, "libx264")
    it = iter(frames)
    try:
        first = next(it)
    except StopIteration:
        raise ValueError(f"{path}: no frames to write") from None
    first = np.asarray(first)
    if first.ndim != 3 or first.shape[2] != 3 or first.dtype != np.uint8:
        raise ValueError(f"{path}: frames must be uint8 [H, W, 3], got {first.dtype} {first.shape}")
    in_h, in_w = first.shape[:2]
    out_w, out_h = (int(size[0]), int(size[1])) if size is not None else (in_w, in_h)
    if pix_fmt is None:
        if codec == "mjpeg":
            pix_fmt = "yuvj420p"
        elif codec in ("libx264", "ffv1") and (out_w % 2 or out_h % 2):
            pix_fmt = "yuv444p"
        else:
            pix_fmt = "yuv420p"
    if pix_fmt == "yuv420p" and (out_w % 2 or out_h % 2) and codec not in ("mpeg4", "ffv1", "libvpx-vp9"):
        raise ValueError(f"{path}: codec {codec} with yuv420p needs even sizes, got {out_w}x{out_h}")

    container = av.open(str(path), mode="w")
    try:
        if timestamps is not None:
            tb = Fraction(1, 1000)
            stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
            stream.codec_context.time_base = tb
            stream.time_base = tb
        else:
            stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = out_w, out_h, pix_fmt
        if bitrate is not None:
            stream.bit_rate = int(bitrate)
        options: dict[str, str] = {}
        if codec == "libx264":
            options["preset"] = preset
            if crf is not None and bitrate is None:
                options["crf"] = str(crf)
        elif codec == "libvpx-vp9":
            options.update({"deadline": "realtime", "cpu-used": "8"})
            if crf is not None and bitrate is None:
                options.update({"crf": str(crf + 10), "b": "0"})
        if gop is not None:
            stream.codec_context.gop_size = int(gop)
        stream.options = options
        if rotation % 360:
            if rotation % 90:
                raise ValueError(f"{path}: rotation must be a multiple of 90, got {rotation}")
            stream.set_display_rotation(int(rotation) % 360)
        astream = None
        if audio:
            astream = container.add_stream("aac", rate=16000)
            astream.layout = "mono"
        times = list(timestamps) if timestamps is not None else None
        if times is not None and any(b <= a for a, b in zip(times, times[1:])):
            raise ValueError(f"{path}: timestamps must increase strictly")

        def frames_all() -> Iterator[np.ndarray]:
            yield first
            yield from it

        n = 0
        for arr in frames_all():
            arr = np.ascontiguousarray(arr)
            if arr.shape != (in_h, in_w, 3):
                raise ValueError(f"{path}: frame {n} has shape {arr.shape}, expected {(in_h, in_w, 3)}")
            vf = av.VideoFrame.from_ndarray(arr, format="rgb24")
            vf = vf.reformat(width=out_w, height=out_h, format=pix_fmt)
            if times is not None:
                if n >= len(times):
                    raise ValueError(f"{path}: more frames than timestamps ({len(times)})")
                vf.pts = int(round(times[n] * 1000))
                vf.time_base = Fraction(1, 1000)
            else:
                vf.pts = n
            for packet in stream.encode(vf):
                container.mux(packet)
            n += 1
        for packet in stream.encode():
            container.mux(packet)
        if astream is not None:
            duration = (times[-1] if times else n / fps)
            _encode_tone(container, astream, duration)
    finally:
        container.close()
    logger.debug("wrote %s: %d frames %dx%d %s", path, n, out_w, out_h, codec)
    return path


def _encode_tone(container: Any, astream: Any, seconds: float, rate: int = 16000) -> None:
    samples = int(seconds * rate)
    t = np.arange(samples, dtype=np.float32) / rate
    tone = (0.2 * np.sin(2 * math.pi * 440.0 * t)).astype(np.float32)
    step = 1024
    for i in range(0, samples, step):
        chunk = tone[i:i + step][None, :]
        af = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format="fltp", layout="mono")
        af.sample_rate = rate
        af.pts = i
        af.time_base = Fraction(1, rate)
        for packet in astream.encode(af):
            container.mux(packet)
    for packet in astream.encode():
        container.mux(packet)


def write_audio(path: str | Path, seconds: float = 2.0, rate: int = 16000) -> Path:
    """Write an audio-only file (AAC sine tone), e.g. ``.m4a`` — a file with no video stream."""
    path = Path(path)
    container = av.open(str(path), mode="w")
    try:
        astream = container.add_stream("aac", rate=rate)
        astream.layout = "mono"
        _encode_tone(container, astream, seconds, rate)
    finally:
        container.close()
    return path


def loop_video(src: str | Path, dst: str | Path, repeats: int) -> Path:
    """Write ``src`` played ``repeats`` times in a row, without re-encoding (packets are remuxed).

    A cheap way to make long videos (benchmarks of memory and speed on a 10-minute video):
    the cost is a file copy, not an encode. Decoding it costs what decoding any video of
    that length, size and codec costs.

    Raises:
        ValueError: if ``repeats < 1`` or ``src`` has no video packets with timestamps.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    src, dst = Path(src), Path(dst)
    with av.open(str(src)) as inp:
        ist = inp.streams.video[0]
        dts: list[int] = []
        pts: list[int] = []
        step = 0
        for pkt in inp.demux(ist):
            if pkt.dts is None or pkt.pts is None:
                continue
            dts.append(int(pkt.dts))
            pts.append(int(pkt.pts))
            step = max(step, int(pkt.duration or 0))
        if not dts:
            raise ValueError(f"{src}: no video packets with timestamps")
        # one segment's length, so that decode timestamps keep increasing across segments
        span = max(max(pts) + step - min(pts), max(dts) - min(dts) + step)
        with av.open(str(dst), "w") as out:
            ost = out.add_stream_from_template(ist)
            for k in range(repeats):
                inp.seek(0)
                for pkt in inp.demux(ist):
                    if pkt.dts is None or pkt.pts is None:
                        continue
                    pkt.pts += k * span
                    pkt.dts += k * span
                    pkt.stream = ost
                    out.mux(pkt)
    return dst


def write_undecodable_video(path: str | Path, packets: int = 20, seed: int = 0) -> Path:
    """Write a container with an H.264 video stream whose packets are random bytes: a file that opens
    as a video but yields no decodable frame (for tests of error handling)."""
    path = Path(path)
    rng = np.random.default_rng(seed)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("h264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for i in range(packets):
            packet = av.Packet(rng.integers(0, 256, 400, dtype=np.uint8).tobytes())
            packet.stream, packet.pts, packet.dts, packet.time_base = stream, i, i, Fraction(1, 25)
            container.mux(packet)
    return path


# ---------------------------------------------------------------------------
# Transformations (array level: they take and return uint8 [N, H, W, 3])
# ---------------------------------------------------------------------------

def resize_frames(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Rescale every frame to ``(width, height)`` (swscale bilinear)."""
    width, height = _check_size(size)
    out = np.empty((len(frames), height, width, 3), np.uint8)
    for i, frame in enumerate(frames):
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        out[i] = vf.reformat(width=width, height=height, format="rgb24").to_ndarray()
    return out


def crop(frames: np.ndarray, fraction: float = 0.75, anchor: tuple[float, float] = (0.5, 0.5),
         resize_back: bool = True) -> np.ndarray:
    """Crop a window of ``fraction`` of each side at ``anchor`` (0..1 in x, y), optionally rescaled back."""
    if not 0 < fraction <= 1:
        raise ValueError(f"crop fraction must be in (0, 1], got {fraction}")
    n, h, w, _ = frames.shape
    ch, cw = max(int(round(h * fraction)), 2), max(int(round(w * fraction)), 2)
    y0 = int(round((h - ch) * anchor[1]))
    x0 = int(round((w - cw) * anchor[0]))
    out = frames[:, y0:y0 + ch, x0:x0 + cw]
    return resize_frames(out, (w, h)) if resize_back else np.ascontiguousarray(out)


def hflip(frames: np.ndarray) -> np.ndarray:
    """Mirror left-right."""
    return np.ascontiguousarray(frames[:, :, ::-1])


def change_speed(frames: np.ndarray, factor: float) -> np.ndarray:
    """Play ``factor`` times faster (> 1 drops frames, < 1 repeats them) at the same frame rate."""
    if factor <= 0:
        raise ValueError(f"speed factor must be > 0, got {factor}")
    idx = np.floor(np.arange(0, len(frames), factor)).astype(int)
    return frames[idx[idx < len(frames)]]


def overlay(frames: np.ndarray, seed: int = 0, kind: str = "logo") -> np.ndarray:
    """Draw an overlay: ``"logo"`` (a semi-transparent box in a corner), ``"caption"`` (a text-like bar
    along the bottom), or ``"border"`` (a coloured frame around the picture, like a letterbox)."""
    rng = np.random.default_rng(seed)
    out = frames.copy()
    n, h, w, _ = out.shape
    color = rng.uniform(0, 255, size=3).astype(np.float32)
    if kind == "logo":
        bh, bw = max(h // 5, 2), max(w // 5, 2)
        corner = int(rng.integers(4))
        y0 = 4 if corner < 2 else h - bh - 4
        x0 = 4 if corner % 2 == 0 else w - bw - 4
        y0, x0 = max(y0, 0), max(x0, 0)
        region = out[:, y0:y0 + bh, x0:x0 + bw].astype(np.float32)
        out[:, y0:y0 + bh, x0:x0 + bw] = (0.4 * region + 0.6 * color).astype(np.uint8)
    elif kind == "caption":
        bh = max(h // 8, 2)
        out[:, h - bh:, :] = (0.3 * out[:, h - bh:, :].astype(np.float32) + 0.7 * color).astype(np.uint8)
        # "glyphs": a fixed pseudo-random pattern of light blocks, like text
        cols = rng.random(max(w // 6, 1)) < 0.6
        for j, on in enumerate(cols):
            if on:
                out[:, h - bh + bh // 4:h - bh // 4, j * 6 + 1:j * 6 + 4] = 235
    elif kind == "border":
        b = max(min(h, w) // 10, 1)
        out[:, :b], out[:, -b:], out[:, :, :b], out[:, :, -b:] = color.astype(np.uint8), color.astype(
            np.uint8), color.astype(np.uint8), color.astype(np.uint8)
    else:
        raise ValueError(f"overlay kind must be one of 'logo', 'caption', 'border', got {kind!r}")
    return out


def adjust(frames: np.ndarray, brightness: float = 0.0, contrast: float = 1.0, grayscale: bool = False) -> np.ndarray:
    """Photometric change: ``out = (x - 128) * contrast + 128 + brightness``, optionally grayscale."""
    x = frames.astype(np.float32)
    if grayscale:
        x = np.repeat((x @ np.array([0.299, 0.587, 0.114], np.float32))[..., None], 3, axis=-1)
    x = (x - 128.0) * contrast + 128.0 + brightness
    return np.clip(x, 0, 255).astype(np.uint8)


def insert_clip(host: np.ndarray, guest: np.ndarray, at: int) -> np.ndarray:
    """Insert ``guest`` frames into ``host`` at frame index ``at`` (a partial copy); the guest is
    rescaled to the host's size when they differ."""
    if host.shape[1:3] != guest.shape[1:3]:
        guest = resize_frames(guest, (host.shape[2], host.shape[1]))
    at = min(max(int(at), 0), len(host))
    return np.concatenate([host[:at], guest, host[at:]])


def transform_clip(frames: np.ndarray, transform: str, seed: int = 0) -> np.ndarray:
    """Apply one named transformation (see :data:`TRANSFORMS`) with seeded parameters.

    ``reencode`` and ``downscale`` return the frames unchanged here: their change happens when
    writing (:func:`make_copy` encodes them at low quality / a smaller size). ``insert`` puts the clip
    in the middle of a generated host clip (seed ``seed + 10_000``).

    Raises:
        ValueError: for an unknown transform name (the message lists the valid ones).
    """
    rng = np.random.default_rng(seed)
    if transform in ("reencode", "downscale"):
        return frames
    if transform == "crop":
        return crop(frames, float(rng.uniform(0.65, 0.85)), tuple(rng.uniform(0.2, 0.8, size=2)))
    if transform == "hflip":
        return hflip(frames)
    if transform == "speed":
        return change_speed(frames, float(rng.uniform(1.3, 2.0)))
    if transform == "slow":
        return change_speed(frames, float(rng.uniform(0.5, 0.8)))
    if transform in ("overlay", "caption", "border"):
        return overlay(frames, seed, {"overlay": "logo"}.get(transform, transform))
    if transform == "brightness":
        return adjust(frames, brightness=float(rng.uniform(-40, 40)), contrast=float(rng.uniform(0.7, 1.3)))
    if transform == "grayscale":
        return adjust(frames, grayscale=True)
    if transform == "insert":
        n, h, w, _ = frames.shape
        host = render_clip(seed + 10_000, seconds=max(n / 25.0, 1.0), fps=25.0, size=(w, h))
        return insert_clip(host, frames, len(host) // 2)
    raise ValueError(f"unknown transform {transform!r}; valid: {', '.join(TRANSFORMS)}")


def make_copy(frames: np.ndarray, path: str | Path, transform: str, fps: float = 25.0, seed: int = 0,
              **write_kwargs: Any) -> Path:
    """Write a transformed copy of ``frames`` to ``path``.

    ``reencode`` writes at low quality (crf 38) and ``downscale`` at half size; every other
    transform is re-encoded at the default quality, as real copies are.
    """
    out = transform_clip(frames, transform, seed)
    kwargs: dict[str, Any] = dict(write_kwargs)
    if transform == "reencode":
        kwargs.setdefault("crf", 38)
    if transform == "downscale":
        h, w = out.shape[1:3]
        kwargs.setdefault("size", (max(w // 4 * 2, 2), max(h // 4 * 2, 2)))
    return write_video(path, out, fps, **kwargs)


# ---------------------------------------------------------------------------
# A small ground-truthed collection
# ---------------------------------------------------------------------------

@dataclass
class SyntheticCollection:
    """A generated collection on disk.

    Attributes:
        root: the folder holding the videos and ``collection.json``.
        videos: ``{video_id: path}`` of every video (originals, copies, distractors).
        queries: the original videos' ids (use them as queries).
        positives: ``{query_id: [ids of its transformed copies]}``.
        transforms: ``{copy_id: transform name}``.
    """

    root: Path
    videos: dict[str, Path]
    queries: list[str]
    positives: dict[str, list[str]]
    transforms: dict[str, str]

    def list_file(self) -> Path:
        """Write ``videos.txt`` (``video_id<TAB>path`` lines, the ViSiL input format) and return it."""
        path = self.root / "videos.txt"
        path.write_text("".join(f"{vid}\t{p}\n" for vid, p in self.videos.items()))
        return path

    @classmethod
    def load(cls, root: str | Path) -> SyntheticCollection:
        """Read a collection written by :func:`make_collection`."""
        root = Path(root)
        data = json.loads((root / "collection.json").read_text())
        return cls(root=root, videos={k: root / v for k, v in data["videos"].items()},
                   queries=list(data["queries"]), positives={k: list(v) for k, v in data["positives"].items()},
                   transforms=dict(data["transforms"]))


def make_collection(root: str | Path, n_originals: int = 3, n_distractors: int = 3,
                    transforms: Sequence[str] = ("reencode", "crop", "hflip", "speed", "overlay"),
                    seconds: float = 4.0, fps: float = 10.0, size: tuple[int, int] = (160, 96), seed: int = 0,
                    progress: Callable[[str], None] | None = None) -> SyntheticCollection:
    """Write a small collection with known near-duplicates.

    Each original ``orig_<i>`` gets one copy per transform (``orig_<i>_<transform>``); distractors
    ``dist_<j>`` are unrelated clips. Video files are ``<id>.mp4``; ``collection.json`` records the
    ground truth (paths relative to ``root``).

    Args:
        root: output folder (created).
        n_originals: number of originals (queries).
        n_distractors: number of unrelated videos.
        transforms: the copies to make of every original (names from :data:`TRANSFORMS`).
        seconds, fps, size: clip length, frame rate and ``(width, height)``.
        seed: base seed; original ``i`` uses ``seed * 1000 + i``, distractor ``j`` uses ``seed * 1000 + 500 + j``.
        progress: optional callback called with each id as it is written.

    Returns:
        The :class:`SyntheticCollection`.
    """
    for t in transforms:
        if t not in TRANSFORMS:
            raise ValueError(f"unknown transform {t!r}; valid: {', '.join(TRANSFORMS)}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    videos: dict[str, Path] = {}
    positives: dict[str, list[str]] = {}
    kinds: dict[str, str] = {}

    def note(vid: str, path: Path) -> None:
        videos[vid] = path
        if progress is not None:
            progress(vid)

    for i in range(n_originals):
        vid = f"orig_{i}"
        clip_seed = seed * 1000 + i
        frames = render_clip(clip_seed, seconds, fps, size)
        note(vid, write_video(root / f"{vid}.mp4", frames, fps, crf=18))
        positives[vid] = []
        for k, t in enumerate(transforms):
            cid = f"{vid}_{t}"
            note(cid, make_copy(frames, root / f"{cid}.mp4", t, fps=fps, seed=clip_seed * 31 + k))
            positives[vid].append(cid)
            kinds[cid] = t
    for j in range(n_distractors):
        vid = f"dist_{j}"
        frames = render_clip(seed * 1000 + 500 + j, seconds, fps, size)
        note(vid, write_video(root / f"{vid}.mp4", frames, fps))
    manifest = {"videos": {k: v.name for k, v in videos.items()}, "queries": list(positives),
                "positives": positives, "transforms": kinds,
                "params": {"seconds": seconds, "fps": fps, "size": list(size), "seed": seed}}
    (root / "collection.json").write_text(json.dumps(manifest, indent=1))
    return SyntheticCollection(root=root, videos=videos, queries=list(positives), positives=positives,
                               transforms=kinds)

"""Pixel-level augmentations of decoded videos: the made positives of self-supervised training (S2VS).

A user's collection may hold no near-duplicates at all, so mining alone finds no true copies to learn
from. As in S2VS (Kordopatis-Zilos et al., "Self-Supervised Video Similarity Learning", CVPRW 2023), the
positives are made instead: each video is transformed into copies that must still match it. The
transformations are the four families of that recipe, applied to decoded ``uint8`` RGB frames
``[T, H, W, 3]`` (the sampled, centre-cropped frames the extractor takes) with numpy/PIL operations:

* **global** (each frame alike): random crop (resized back), horizontal flip, colour/contrast/brightness/
  saturation jitter, Gaussian blur, grayscale, low quality (downscaled and upscaled smoothly or as
  blocks of pixels, JPEG-compressed), pixel noise;
* **frame** (overlays): text in a random place and colour, logo/emoji-like shapes;
* **temporal**: speed change (0.5–0.8× or 1.25–2×), window drop, window shuffle, pause (a frame
  frozen), reverse — on the windows of :mod:`dnsvr.train.augment`, but each always changes the video;
* **video-in-video**: picture-in-picture — the video shrunk into another video of the collection, or
  another video shrunk into this one.

Everything is drawn from an explicit :class:`numpy.random.Generator`; :func:`copy_generator` keys it by
``(seed, video id, copy number)``, so a copy is a pure function of the video and those three values.

Example:
    >>> frames = np.zeros((12, 64, 64, 3), np.uint8)
    >>> out, applied = augment_frames(frames, np.random.default_rng(0))
    >>> out.dtype, out.shape[1:]
    (dtype('uint8'), (64, 64, 3))
"""

from __future__ import annotations

import io
import logging
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dnsvr.train.augment import DROP_PROBABILITY, _windows, reverse

logger = logging.getLogger(__name__)

#: The transformations of each family, by name (the order is part of the random stream).
GLOBAL_OPS = ("crop", "flip", "color", "blur", "grayscale", "low_quality", "noise")
FRAME_OPS = ("text", "shapes")
TEMPORAL_OPS = ("speed", "drop", "shuffle", "pause", "reverse")
FAMILIES = {"global": GLOBAL_OPS, "frame": FRAME_OPS, "temporal": TEMPORAL_OPS, "pip": ("pip",)}

_WORDS = ("NEWS", "live", "HD", "replay", "Top 10", "must see", "original", "2025", "FULL", "viral",
          "clip", "share", "omg", "LOL", "follow", "part 2")
_FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"


@dataclass(frozen=True)
class AugmentPolicy:
    """How strong the made copies are: how many global operations, and how often each other family.

    Attributes:
        global_ops: (min, max) global operations per copy (distinct, drawn uniformly).
        frame_probability: chance of an overlay (text or shapes).
        temporal_probability: chance of a temporal operation.
        pip_probability: chance of picture-in-picture (needs a host video).
    """

    global_ops: tuple[int, int] = (1, 3)
    frame_probability: float = 0.5
    temporal_probability: float = 0.5
    pip_probability: float = 0.3


def copy_generator(seed: int, video_id: str, copy: int) -> np.random.Generator:
    """The generator of copy ``copy`` of ``video_id`` (stable across runs and machines)."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(video_id.encode("utf-8")), int(copy), 7])


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------

def _resize(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Frames ``[T, h, w, 3]`` → ``[T, H, W, 3]`` for ``size = (W, H)`` (bilinear, PIL)."""
    from PIL import Image

    w, h = size
    if frames.shape[1:3] == (h, w):
        return frames
    return np.stack([np.asarray(Image.fromarray(f).resize((w, h), Image.BILINEAR)) for f in frames])


def _font(size: int) -> Any:
    from PIL import ImageFont

    if Path(_FONT).is_file():
        return ImageFont.truetype(_FONT, size)
    return ImageFont.load_default(size)


def _overlay(frames: np.ndarray, draw: Callable[[Any], None]) -> np.ndarray:
    """Alpha-blend one RGBA layer drawn by ``draw(ImageDraw)`` over every frame."""
    from PIL import Image, ImageDraw

    h, w = frames.shape[1:3]
    layer = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    draw(ImageDraw.Draw(layer))
    rgba = np.asarray(layer).astype(np.float32)
    alpha = rgba[..., 3:] / 255.0
    out = frames.astype(np.float32) * (1.0 - alpha) + rgba[..., :3] * alpha
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _colour(rng: np.random.Generator, alpha: int = 255) -> tuple[int, int, int, int]:
    return (*(int(v) for v in rng.integers(0, 256, size=3)), alpha)


# ---------------------------------------------------------------------------------------------
# global
# ---------------------------------------------------------------------------------------------

def random_crop(frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Keep a window of 50–90 % of each side (aspect jittered) and resize it back."""
    _, h, w, _ = frames.shape
    fy, fx = rng.uniform(0.5, 0.9), rng.uniform(0.5, 0.9)
    ch, cw = max(int(h * fy), 8), max(int(w * fx), 8)
    y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    return _resize(np.ascontiguousarray(frames[:, y0:y0 + ch, x0:x0 + cw]), (w, h))


def flip(frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mirror left-right."""
    return np.ascontiguousarray(frames[:, :, ::-1])


def colour_jitter(frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Colour cast, contrast, brightness and saturation drawn once for the whole video."""
    x = frames.astype(np.float32)
    gain = rng.uniform(0.7, 1.3, size=3).astype(np.float32)
    contrast, bright, sat = rng.uniform(0.5, 1.5), rng.uniform(-40, 40), rng.uniform(0.3, 1.7)
    gray = x.mean(-1, keepdims=True)
    x = gray + (x - gray) * np.float32(sat)
    x = (x * gain - 128.0) * np.float32(contrast) + 128.0 + np.float32(bright)
    return np.clip(x, 0, 255).astype(np.uint8)


def blur(frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Gaussian blur of radius 1–3 % of the frame width."""
    from PIL import Image, ImageFilter

    flt = ImageFilter.GaussianBlur(float(rng.uniform(0.01, 0.03)) * frames.shape[2])
    return np.stack([np.asarray(Image.fromarray(f).filter(flt)) for f in frames])


def grayscale(frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Luma only, kept as three channels."""
    y = frames.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return np.repeat(np.clip(y + 0.5, 0, 255).astype(np.uint8)[..., None], 3, axis=-1)


def _pixel_blocks(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Frames enlarged to ``size`` (w, h) by repeating each pixel (nearest neighbour): blocks."""
    w, h = size
    rows = np.minimum((np.arange(h) * frames.shape[1]) // h, frames.shape[1] - 1)
    cols = np.minimum((np.arange(w) * frames.shape[2]) // w, frames.shape[2] - 1)
    return frames[:, rows][:, :, cols]


def low_quality(frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Downscaled to 10–60 % and back up (smoothly, or as blocks of pixels half the time), then
    JPEG-compressed at quality 8–35 (blocking, ringing)."""
    from PIL import Image

    _, h, w, _ = frames.shape
    blocks = bool(rng.random() < 0.5)
    f = float(rng.uniform(0.1, 0.3) if blocks else rng.uniform(0.25, 0.6))
    small = _resize(frames, (max(int(w * f), 8), max(int(h * f), 8)))
    x = _pixel_blocks(small, (w, h)) if blocks else _resize(small, (w, h))
    quality = int(rng.integers(8, 36))
    out = []
    for frame in x:
        buf = io.BytesIO()
        Image.fromarray(frame).save(buf, format="JPEG", quality=quality)
        buf.seek(0)
        out.append(np.asarray(Image.open(buf).convert("RGB")))
    return np.stack(out)


def noise(frames: np.ndarray, rng: np.random.Generator, block: int = 64) -> np.ndarray:
    """Gaussian pixel noise of standard deviation 4–25 grey levels, new in every frame (``block`` frames
    at a time, so a long video needs no float copy of all its frames)."""
    sigma = float(rng.uniform(4.0, 25.0))
    out = np.empty_like(frames)
    for start in range(0, len(frames), block):
        part = frames[start:start + block]
        noisy = part.astype(np.float32) + rng.normal(0.0, sigma, part.shape).astype(np.float32)
        out[start:start + block] = np.clip(noisy + 0.5, 0, 255).astype(np.uint8)
    return out


# ---------------------------------------------------------------------------------------------
# frame (overlays)
# ---------------------------------------------------------------------------------------------

def overlay_text(frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One to three words in a random size (6–15 % of the height), colour and place, on a band or not."""
    h, w = frames.shape[1:3]
    words = " ".join(str(s) for s in rng.choice(_WORDS, size=int(rng.integers(1, 4)), replace=False))
    size = max(int(h * rng.uniform(0.06, 0.15)), 6)
    colour = _colour(rng)
    band = bool(rng.random() < 0.5)
    x, y = int(w * rng.uniform(0.0, 0.5)), int(h * rng.uniform(0.0, 0.85))

    def draw(d: Any) -> None:
        if band:
            d.rectangle((0, y - size // 4, w, y + size + size // 3), fill=(0, 0, 0, int(rng.integers(100, 220))))
        d.text((x, y), words, font=_font(size), fill=colour)

    return _overlay(frames, draw)


def overlay_shapes(frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One to three logo/emoji-like marks (a face, a star, a badge), 10–30 % of the short side each."""
    h, w = frames.shape[1:3]
    marks = []
    for _ in range(int(rng.integers(1, 4))):
        s = max(int(min(h, w) * rng.uniform(0.1, 0.3)), 6)
        marks.append((int(rng.integers(3)), int(rng.integers(0, w - s + 1)), int(rng.integers(0, h - s + 1)), s,
                      _colour(rng, int(rng.integers(160, 256))), _colour(rng)))

    def draw(d: Any) -> None:
        for kind, x, y, s, fill, ink in marks:
            if kind == 0:       # a face: disc, two eyes, a mouth
                d.ellipse((x, y, x + s, y + s), fill=fill)
                e = max(s // 8, 1)
                for ex in (x + s // 3, x + 2 * s // 3):
                    d.ellipse((ex - e, y + s // 3 - e, ex + e, y + s // 3 + e), fill=ink)
                d.arc((x + s // 4, y + s // 3, x + 3 * s // 4, y + 3 * s // 4), 20, 160, fill=ink,
                      width=max(s // 12, 1))
            elif kind == 1:     # a star
                cx, cy, r = x + s / 2, y + s / 2, s / 2
                pts = [(cx + (r if k % 2 == 0 else r / 2.5) * np.sin(k * np.pi / 5),
                        cy - (r if k % 2 == 0 else r / 2.5) * np.cos(k * np.pi / 5)) for k in range(10)]
                d.polygon(pts, fill=fill)
            else:               # a badge: rounded square with two letters
                d.rounded_rectangle((x, y, x + s, y + s), radius=max(s // 5, 1), fill=fill)
                d.text((x + s // 5, y + s // 4), "TV", font=_font(max(s // 2, 6)), fill=ink)

    return _overlay(frames, draw)


# ---------------------------------------------------------------------------------------------
# temporal (on the sampled frames; drop/shuffle/reverse are dnsvr.train.augment's)
# ---------------------------------------------------------------------------------------------

def speed(frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Play 0.5–0.8× or 1.25–2× as fast (frames repeated or dropped at the same sampling rate)."""
    factor = float(np.exp(rng.uniform(np.log(1.25), np.log(2.0))))
    if rng.random() < 0.5:
        factor = 1.0 / factor
    idx = np.floor(np.arange(0, len(frames), factor)).astype(np.int64)
    idx = idx[idx < len(frames)]
    return frames[idx] if len(idx) else frames[:1]


def pause(frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Freeze one frame for 2–6 extra frames, at 1–2 random places."""
    out = frames
    for _ in range(int(rng.integers(1, 3))):
        at = int(rng.integers(0, len(out)))
        out = np.concatenate([out[:at + 1], np.repeat(out[at:at + 1], int(rng.integers(2, 7)), 0), out[at + 1:]])
    return out


def drop(frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Windows of 4–16 frames each dropped with probability 0.3 (:mod:`dnsvr.train.augment`'s windows),
    at least one of them and never all; a video of one window loses a random stretch of it instead."""
    windows = _windows(len(frames), rng)
    keep = rng.random(len(windows)) > DROP_PROBABILITY
    victim = int(rng.integers(len(windows)))
    if len(windows) < 2:
        if len(frames) < 2:
            return frames
        cut = int(rng.integers(1, max(len(frames) // 2, 1) + 1))
        start = int(rng.integers(0, len(frames) - cut + 1))
        return np.concatenate([frames[:start], frames[start + cut:]])
    if keep.all():
        keep[victim] = False
    if not keep.any():
        keep[victim] = True
    return frames[np.concatenate([w for w, k in zip(windows, keep) if k])]


def shuffle(frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Windows of 4–16 frames played in a random order other than the original (a re-edit)."""
    windows = _windows(len(frames), rng)
    order = rng.permutation(len(windows))
    if len(windows) > 1 and (order == np.arange(len(windows))).all():
        order = np.roll(order, 1)
    return frames[np.concatenate([windows[i] for i in order])]


def play_reversed(frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """:func:`dnsvr.train.augment.reverse` on frames."""
    return np.ascontiguousarray(reverse(frames, rng))


# ---------------------------------------------------------------------------------------------
# video in video
# ---------------------------------------------------------------------------------------------

def picture_in_picture(frames: np.ndarray, host: np.ndarray, rng: np.random.Generator,
                       inset: str | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Put one video inside the other: the inset is shrunk to 35–65 % of each side at a random place.

    Args:
        frames: the video ``[T, H, W, 3]``.
        host: another video (any length; looped or cut to ``T``, resized to ``H×W``).
        rng: the randomness.
        inset: ``"self"`` (this video small over the host), ``"host"`` (the host small over this video);
            default: drawn (2 : 1 for ``"self"``).

    Returns:
        ``(frames [T, H, W, 3], {"inset": ..., "box": (x0, y0, w, h)})``.
    """
    n, h, w, _ = frames.shape
    host = _resize(np.ascontiguousarray(host[np.arange(n) % len(host)]), (w, h))
    if inset is None:
        inset = "self" if rng.random() < 2 / 3 else "host"
    if inset not in ("self", "host"):
        raise ValueError(f"inset must be 'self' or 'host', got {inset!r}")
    f = float(rng.uniform(0.35, 0.65))
    iw, ih = max(int(w * f), 4), max(int(h * f), 4)
    x0, y0 = int(rng.integers(0, w - iw + 1)), int(rng.integers(0, h - ih + 1))
    back, small = (host, frames) if inset == "self" else (frames, host)
    out = back.copy()
    out[:, y0:y0 + ih, x0:x0 + iw] = _resize(small, (iw, ih))
    return out, {"inset": inset, "box": (x0, y0, iw, ih)}


#: Every frame-level operation by name: ``f(frames, rng) -> frames``.
OPERATIONS: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    "crop": random_crop, "flip": flip, "color": colour_jitter, "blur": blur, "grayscale": grayscale,
    "low_quality": low_quality, "noise": noise, "text": overlay_text, "shapes": overlay_shapes, "speed": speed,
    "drop": drop, "shuffle": shuffle, "pause": pause, "reverse": play_reversed,
}


def augment_frames(frames: np.ndarray, rng: np.random.Generator, policy: AugmentPolicy | None = None,
                   host: np.ndarray | None = None, families: Sequence[str] | None = None
                   ) -> tuple[np.ndarray, list[str]]:
    """Make one augmented copy of a decoded video.

    The operations are drawn first (the same number of draws whatever is chosen), then applied in a
    fixed order: global, overlays, picture-in-picture, temporal.

    Args:
        frames: ``uint8`` RGB ``[T, H, W, 3]``, ``T >= 1``.
        rng: the randomness (see :func:`copy_generator`).
        policy: how strong (default :class:`AugmentPolicy`).
        host: another video for picture-in-picture (without one, no picture-in-picture).
        families: restrict to these of :data:`FAMILIES` (default all).

    Returns:
        ``(frames uint8 [T', H, W, 3], names of the operations applied)``.

    Raises:
        ValueError: on frames that are not ``uint8 [T, H, W, 3]`` or an unknown family.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
        raise ValueError(f"frames must be uint8 [T>0, H, W, 3], got {frames.dtype} {tuple(frames.shape)}")
    policy = policy or AugmentPolicy()
    fams = set(FAMILIES) if families is None else set(families)
    unknown = fams - set(FAMILIES)
    if unknown:
        raise ValueError(f"unknown augmentation famil{'ies' if len(unknown) > 1 else 'y'} {sorted(unknown)}; "
                         f"choose from {list(FAMILIES)}")
    lo, hi = policy.global_ops
    n_global = int(rng.integers(lo, hi + 1))
    global_pick = [GLOBAL_OPS[i] for i in sorted(rng.permutation(len(GLOBAL_OPS))[:n_global])]
    frame_on, frame_pick = rng.random() < policy.frame_probability, FRAME_OPS[int(rng.integers(len(FRAME_OPS)))]
    pip_on = rng.random() < policy.pip_probability
    temporal_on = rng.random() < policy.temporal_probability
    temporal_pick = TEMPORAL_OPS[int(rng.integers(len(TEMPORAL_OPS)))]
    plan: list[str] = []
    if "global" in fams:
        plan += global_pick
    if "frame" in fams and frame_on:
        plan.append(frame_pick)
    if "pip" in fams and pip_on and host is not None:
        plan.append("pip")
    if "temporal" in fams and temporal_on:
        plan.append(temporal_pick)
    out = np.ascontiguousarray(frames)
    for name in plan:
        if name == "pip":
            out, _ = picture_in_picture(out, host, rng)  # type: ignore[arg-type]
        else:
            out = OPERATIONS[name](out, rng)
    return np.ascontiguousarray(out, dtype=np.uint8), plan

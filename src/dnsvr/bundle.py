"""Model bundles: everything that turns region features into searchable representations.

A bundle is one backbone + whitening identity, a coarse stage, a fine stage and an
optional selector. Two built-in bundles:

* ``lite`` — the offline default: EfficientNet-Lite0 regions, PCA whitening fitted on the
  first videos added to an index (or on demand with :meth:`Bundle.fit_whitening`), a
  training-free coarse vector (mean of the L2-normalised region vectors, L2-normalised)
  and the training-free fine similarity (Chamfer over regions → frame-to-frame matrix →
  Chamfer over frames, :func:`dnsvr.nn.similarity.chamfer_video_similarity`). Without a
  selector the coarse order decides which pairs the fine stage re-scores.
* ``paper`` / ``paper-bin`` — ResNet-50 + the published PCA + the published students
  (S^f_A / S^f_B, S^c) and selector, via :mod:`dnsvr.weights` (downloaded once; offline
  raises :class:`dnsvr.weights.WeightsUnavailableError` naming the file, URL and target).

A saved bundle is a folder::

    bundle.json            format version, versions that wrote it, backbone + whitening identity,
                           fine type (att|bin|chamfer), coarse type (student|mean), network settings
    whitening.safetensors  the PCA whitening (if any)
    fine.safetensors       fine student weights (att|bin)
    coarse.safetensors     coarse student weights (student)
    selector.safetensors   selector weights (if any)

**Base features and attaching a trained bundle.** The input of every network is the
whitened region features ``[T, 9, D]`` (the *base features*). The ``lite`` bundle's fine
representation *is* the base features (float16), so an index built with ``lite`` keeps
everything a trained bundle needs: :meth:`dnsvr.index.VideoIndex.attach` recomputes all
representations from the stored fine arrays without decoding any video. Indexes built with
a student bundle store the student's representation only (attention-weighted features or
packed codes) and cannot be re-represented.

Example:
    >>> bundle = load_bundle("lite")                      # doctest: +SKIP
    >>> bundle.fit_whitening([raw_regions])               # doctest: +SKIP
    >>> rep = bundle.represent(bundle.whiten(raw_regions))  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
import os
import platform
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dnsvr import __version__
from dnsvr._fsutil import replace_file, write_json_atomic
from dnsvr.fine import DEFAULT_PRECISION, FINE_TYPES, FineComparator, fine_similarities, pack_codes
from dnsvr.stages import Stage

logger = logging.getLogger(__name__)

BUNDLE_FORMAT = "dnsvr-bundle"
BUNDLE_FORMAT_VERSION = 2
#: What a bundle without version-2 parts writes (a learned chunk map needs 2: a reader of version 1
#: would compute its coarse vectors without the map and rank wrongly).
BUNDLE_FORMAT_VERSION_BASE = 1
CONFIG_NAME = "bundle.json"
BUILTIN_BUNDLES = ("lite", "paper", "paper-bin")
COARSE_TYPES = ("mean", "chunks", "student")

#: Whitened dimensions of the ``lite`` bundle (fewer if the first videos give too few region vectors).
#: Chosen on the real-content benchmark's dev split (64 / 128 / 256 / 512 dims); see docs/evaluation.md.
LITE_DIMS = 128
#: Chunk vectors per video of the ``lite`` bundle's coarse stage (``coarse_type="chunks"``): the video's
#: frames cut into this many equal stretches, each described by the mean of its region vectors. Chosen on
#: the real-content benchmark's dev splits against one mean vector; see docs/evaluation.md.
LITE_COARSE_CHUNKS = 4
#: Most chunk vectors a ``chunks`` coarse stage may take.
MAX_COARSE_CHUNKS = 64
#: Fewest whitened dimensions ``fit_whitening`` accepts.
MIN_WHITENED_DIMS = 32
#: Region vectors needed per whitened dimension. A whitening fitted on too few vectors amplifies
#: noise in its weakest directions: on the demo's collection (3,132 vectors) the weakest transformed
#: copy beat the strongest unrelated video, under the training-free fine similarity, by 0.07 at 512
#: dims, 0.09 at 400, 0.15 at 256, 0.20 at 128 and 0.23 at 64 (``benchmarks/bench_lite_whitening.py``).
WHITENING_VECTORS_PER_DIM = 20
#: Region vectors a first add should bring for a good whitening: on the real-content benchmark's dev split,
#: fitting on 8 / 15 / 30 / 60 of its videos gave related mAP 0.83-0.87 / 0.91-0.92 / 0.93 / 0.95 (all 193: 0.95).
WHITENING_RECOMMENDED_VECTORS = 10_000
#: Candidates per block of the selector network (:meth:`Bundle.selector_scores`).
SELECTOR_BLOCK = 8192


class BundleError(ValueError):
    """A bundle folder is missing, malformed, or incompatible with the data given to it."""


@dataclass
class VideoRepresentation:
    """What an index stores for one video.

    Attributes:
        coarse: float32 ``[Dc]``, L2-normalised.
        fine: the fine representation: uint8 packed bits ``[T, 9, D/8]`` (S^f_B), float16
            ``[T, 9, D]`` otherwise (attention-weighted features for S^f_A; the base features
            themselves for the training-free ``chamfer`` stage).
        selector: the selector's self-similarity of the video, or None without a selector.
    """

    coarse: np.ndarray
    fine: np.ndarray
    selector: float | None


#: How a search ranks re-scored pairs (``dnsvr search --match``): ``related`` — everything that
#: shares content (the default); ``copy`` — whole copies above videos that merely contain some shots.
MATCH_MODES = ("related", "copy")
DEFAULT_MATCH = "related"


@dataclass(frozen=True)
class MatchScoring:
    """How a bundle turns the fine stage's frame-to-frame matrices into one score per pair.

    The fields were chosen on the development split of the real-content benchmark (see
    docs/evaluation.md, "Real-content benchmark"); a bundle without a ``scoring`` entry in its
    ``bundle.json`` (every bundle written before) keeps the identity: the fine similarity as the
    stage gives it, coverages reported but not used, raw coarse similarities.

    Attributes:
        direction: ``"query"`` — the Chamfer video similarity averages the query's frames (the
            reference's); ``"min"`` — the smaller of the query's and the candidate's averages, so a
            candidate that merely contains the query, or is contained in it, scores low (``chamfer``
            stage only; a network's own score stands otherwise).
        coverage_threshold: a frame counts as matched when its best match in the other video reaches
            this frame similarity; ``query_coverage``/``target_coverage`` are the matched shares.
        related_penalty: ``related`` mode subtracts this × (1 − the smaller coverage).
        copy_penalty: ``copy`` mode subtracts this × (1 − the smaller coverage) from the whole-frame similarity.
        inset_scale: query frames are also described at this scale, whole (one vector per frame), and
            matched against the candidate's regions: a copy shown as a picture-in-picture inset
            scores by that match when it is higher (None: no inset match).
        shared_shot_frames: ``related`` mode only: the best mean frame similarity along
            ``shared_shot_frames`` consecutive frames of both videos (a diagonal of the frame-to-frame
            matrix: a shot the two videos share, at the same speed) lifts a pair to
            ``shared_shot_score − shared_shot_slope × (1 − that mean)`` when that is higher — a video
            that shares one shot of the query ranks above videos that merely look alike, and below
            whole copies (None: no such term; ``chamfer`` stage only). Uniform query frames (black,
            grey, white, a solid colour: :meth:`Bundle.uniform_frames`) take no part.
        shared_shot_score, shared_shot_slope: see ``shared_shot_frames``.
        coarse_scale, coarse_offset: a coarse similarity ``c`` not re-scored by the fine stage is
            shown as the fine similarity ``coarse_scale × c + coarse_offset`` would be (a least-squares
            fit over benchmark pairs), so one score means the same for every row of a list
            (``coarse_scale`` None: the raw coarse similarity is the row's score, as the reference mixes them).
    """

    direction: str = "query"
    coverage_threshold: float = 0.25
    related_penalty: float = 0.0
    copy_penalty: float = 0.0
    inset_scale: float | None = None
    shared_shot_frames: int | None = None
    shared_shot_score: float = 0.4
    shared_shot_slope: float = 0.8
    coarse_scale: float | None = None
    coarse_offset: float = 0.0

    def __post_init__(self) -> None:
        if self.direction not in ("query", "min"):
            raise BundleError(f"scoring direction must be 'query' or 'min', got {self.direction!r}")
        if self.inset_scale is not None and not 0.1 <= float(self.inset_scale) <= 1.0:
            raise BundleError(f"scoring inset_scale must lie in [0.1, 1], got {self.inset_scale!r}")
        frames = self.shared_shot_frames
        if frames is not None and (isinstance(frames, bool) or not isinstance(frames, int) or not 1 <= frames <= 64):
            raise BundleError(f"scoring shared_shot_frames must be an integer in [1, 64] or null, got {frames!r}")
        for name in ("coverage_threshold", "related_penalty", "copy_penalty", "shared_shot_score",
                     "shared_shot_slope", "coarse_scale", "coarse_offset"):
            value = getattr(self, name)
            if value is None and name == "coarse_scale":
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise BundleError(f"scoring {name} must be a finite number, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any, where: str = "bundle") -> MatchScoring:
        if data is None:
            return cls()
        if not isinstance(data, dict) or set(data) - {f.name for f in fields(cls)}:
            raise BundleError(f"damaged bundle: {where}: scoring must be an object with the fields "
                              f"{[f.name for f in fields(cls)]}")
        return cls(**data)


#: The ``lite`` bundle's scoring (chosen on the real-content benchmark's dev split; see MatchScoring).
LITE_SCORING = MatchScoring(direction="min", coverage_threshold=0.25, related_penalty=0.05, copy_penalty=0.1,
                            inset_scale=0.4, shared_shot_frames=3, shared_shot_score=0.4, shared_shot_slope=0.8,
                            coarse_scale=0.765, coarse_offset=0.126)


#: A query frame whose regions match those of a uniform frame (black, white, a grey, a solid colour) this
#: well takes no part in a shared shot: two unrelated videos that both open on black would share one.
UNIFORM_FRAME_SIMILARITY = 0.85
#: The colours (RGB) of the uniform reference frames: greys, then saturated and dark colours.
UNIFORM_COLOURS = tuple((g, g, g) for g in (0, 32, 64, 96, 128, 160, 192, 224, 255)) + (
    (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255), (255, 0, 255), (255, 128, 0),
    (128, 0, 0), (0, 128, 0), (0, 0, 128))


@lru_cache(maxsize=4)
def uniform_frame_features(backbone: str) -> np.ndarray | None:
    """Raw region features ``[colours, 9, C]`` of uniform 224×224 frames (:data:`UNIFORM_COLOURS`) for a
    backbone's default weights (what the extractor gives a black, grey, white or solid-colour frame), or
    None when its extractor cannot be built here (the shared-shot term then keeps every frame)."""
    try:
        from dnsvr.backbones.extractor import FeatureExtractor

        extractor = FeatureExtractor(backbone)
        frames = np.zeros((len(UNIFORM_COLOURS), 224, 224, 3), dtype=np.uint8)
        for k, colour in enumerate(UNIFORM_COLOURS):
            frames[k] = colour
        return extractor.extract(frames).float().numpy()
    except Exception as exc:  # noqa: BLE001 - weights missing, unknown backbone: no mask, said once
        logger.warning("no uniform reference frames for backbone %r (%s); the shared-shot term keeps every frame",
                       backbone, exc)
        return None


def shared_shot(matrix: np.ndarray, frames: int, skip: np.ndarray | None = None) -> float:
    """The best mean similarity along ``frames`` consecutive frames of both videos: the diagonals of a
    frame-to-frame matrix ``[Tq, Tt]`` (query frames × candidate frames), a window of each; a video
    shorter than ``frames`` uses its length. Query frames flagged in ``skip`` count as −1 (a window
    holding one scores low).
    """
    m = np.asarray(matrix, dtype=np.float64)
    if skip is not None and np.any(skip):
        m = m.copy()
        m[np.asarray(skip, dtype=bool)] = -1.0
    k = max(1, min(int(frames), *m.shape))
    rows, cols = m.shape[0] - k + 1, m.shape[1] - k + 1
    window = sum(m[s:s + rows, s:s + cols] for s in range(k))
    return float(window.max()) / k


@dataclass
class FineMatches:
    """The fine stage's answer for some candidates of one query.

    Attributes:
        scores: float32 ``[n]``, the pairs' scores in the asked match mode (about [-1, 1]).
        coverage: float32 ``[n, 2]``, the shares of the query's and of the candidate's frames that match.
    """

    scores: np.ndarray
    coverage: np.ndarray


def _versions() -> dict[str, str]:
    return {"dnsvr": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


def _state_bytes(module: torch.nn.Module) -> bytes:
    """A module's weights as the bytes of a safetensors file."""
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    return save(state, metadata={"format": BUNDLE_FORMAT})


def _load_state(module: torch.nn.Module, path: Path) -> None:
    from safetensors.torch import load_file

    if not path.is_file():
        raise BundleError(f"bundle weights missing: {path}")
    try:
        module.load_state_dict(load_file(str(path)), strict=True)
    except Exception as exc:  # noqa: BLE001 - SafetensorError, shape mismatches: one line naming the file
        raise BundleError(f"damaged bundle: {path}: {_one_line(exc)}") from None


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[:limit] + "..."


#: Largest value a network argument in bundle.json may have (dims, sizes, layers): checked before anything is built.
_MAX_ARG = 1 << 16


def _check_args(args: Any, what: str, where: Path) -> dict[str, Any]:
    """A network's constructor arguments from bundle.json, with every number in range."""
    if args is None:
        return {}
    if not isinstance(args, dict) or not all(isinstance(k, str) for k in args):
        raise BundleError(f"damaged bundle: {where}: {what} args must be an object, got {type(args).__name__}")
    for key, value in args.items():
        if isinstance(value, bool) or value is None or isinstance(value, str):
            continue
        if not isinstance(value, (int, float)) or not np.isfinite(value) or not -_MAX_ARG <= value <= _MAX_ARG:
            raise BundleError(f"damaged bundle: {where}: {what} argument {key}={value!r} is out of range")
        if isinstance(value, int) and value < 0:
            raise BundleError(f"damaged bundle: {where}: {what} argument {key}={value!r} is negative")
    return args


def _build_net(factory: Any, args: dict[str, Any], what: str, folder: Path, file: str) -> torch.nn.Module:
    """Build a network from bundle.json arguments and load its weights, sized on the meta device first.

    The network is first built without memory (``torch.device("meta")``): its size must fit in its
    weights file, so absurd arguments are refused before a byte is allocated.
    """
    from dnsvr.index._paths import DamagedIndexError, inside  # noqa: PLC0415

    where = folder / CONFIG_NAME
    try:
        path = inside(folder, file, where=str(folder / file))
    except DamagedIndexError as exc:
        raise BundleError(str(exc)) from None
    if not path.is_file():
        raise BundleError(f"bundle weights missing: {folder / file}")
    try:
        with torch.device("meta"):
            probe = factory(**args)
    except Exception as exc:  # noqa: BLE001 - bad arguments of any kind: one line
        raise BundleError(f"damaged bundle: {where}: {what} args {args}: {_one_line(exc)}") from None
    need = sum(t.numel() * t.element_size() for t in probe.state_dict().values())
    have = path.stat().st_size
    if need > have:
        raise BundleError(f"damaged bundle: {folder / file}: holds {have:,} bytes, the {what} network of "
                          f"{CONFIG_NAME} needs {need:,}")
    try:
        net = factory(**args)
    except Exception as exc:  # noqa: BLE001
        raise BundleError(f"damaged bundle: {where}: {what} args {args}: {_one_line(exc)}") from None
    _load_state(net, path)
    return net


class ChunkMap(torch.nn.Module):
    """A learned linear map of coarse chunk vectors, ``normalise(chunk @ matrix)``.

    ``dnsvr train whitening`` fits it from the chunks of videos and their augmented copies
    (:func:`dnsvr.train.learned_whitening.fit_chunk_map`); a ``chunks`` coarse stage applies it to
    each chunk vector (``coarse_args["map_dims"]``, weights in ``coarse.safetensors``).

    Args:
        map_dims: the chunk vectors' size.
    """

    def __init__(self, map_dims: int) -> None:
        super().__init__()
        self.register_buffer("matrix", torch.eye(int(map_dims)))

    def apply(self, chunks: np.ndarray) -> np.ndarray:
        """``[k, D]`` chunk vectors → mapped, each row L2-normalised (float32)."""
        x = np.asarray(chunks, dtype=np.float32) @ self.matrix.numpy()
        return (x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)).astype(np.float32)


class Bundle:
    """A model bundle: whitening + coarse stage + fine stage + optional selector.

    Args:
        name: a label (``"lite"``, ``"paper"``, or the trainer's name for a trained bundle).
        backbone: the backbone whose regions the bundle takes (``"efficientnet_lite0"`` or ``"resnet50"``).
        whitening: a :class:`dnsvr.backbones.PCAWhitening` (fitted or not), or None when the inputs
            are already whitened.
        fine_type: ``"att"``, ``"bin"`` (a :class:`dnsvr.nn.FineGrainedStudent` in ``fine_net``) or
            ``"chamfer"`` (training-free).
        fine_net: the fine student for ``att``/``bin``.
        fine_args: constructor arguments of ``fine_net`` (recorded in the config).
        coarse_type: ``"mean"`` (training-free: one mean vector), ``"chunks"`` (training-free:
            ``coarse_args["chunks"]`` mean vectors, one per stretch of the video; see
            :func:`lite_chunk_vectors`) or ``"student"`` (a :class:`dnsvr.nn.CoarseGrainedStudent`).
        coarse_net: the coarse student.
        coarse_args: its constructor arguments (``{"chunks": k}`` for ``chunks``).
        selector_net: the :class:`dnsvr.nn.SelectorNetwork`, or None.
        selector_args: its constructor arguments.
        whitening_dims: the whitened size to fit (lite; when ``whitening`` is not fitted yet).
        extra: free-form JSON-able provenance (training data, run ids, ...).
        scoring: how fine matrices become scores (:class:`MatchScoring`; default: the identity).

    Raises:
        BundleError: an unknown fine/coarse type, or a missing network.
    """

    def __init__(self, name: str, backbone: str, *, whitening: Any = None, fine_type: str | Stage = "chamfer",
                 fine_net: torch.nn.Module | None = None, fine_args: dict[str, Any] | None = None,
                 coarse_type: str = "mean", coarse_net: torch.nn.Module | None = None,
                 coarse_args: dict[str, Any] | None = None, selector_net: torch.nn.Module | None = None,
                 selector_args: dict[str, Any] | None = None, whitening_dims: int | None = None,
                 extra: dict[str, Any] | None = None, scoring: MatchScoring | None = None) -> None:
        if isinstance(fine_type, Stage):  # dnsvr.stages: fg-att → "att", the name bundles store
            fine_type = fine_type.fine_type or fine_type.value
        if fine_type not in FINE_TYPES:
            raise BundleError(f"unknown fine type {fine_type!r}; expected one of {FINE_TYPES}")
        if coarse_type not in COARSE_TYPES:
            raise BundleError(f"unknown coarse type {coarse_type!r}; expected one of {COARSE_TYPES}")
        if fine_type != "chamfer" and fine_net is None:
            raise BundleError(f"fine type {fine_type!r} needs a fine student network")
        if coarse_type == "student" and coarse_net is None:
            raise BundleError("coarse type 'student' needs a coarse student network")
        if coarse_type == "chunks":
            k = (coarse_args or {}).get("chunks")
            if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_COARSE_CHUNKS:
                raise BundleError(f"coarse type 'chunks' needs coarse args {{'chunks': 1..{MAX_COARSE_CHUNKS}}}, "
                                  f"got {coarse_args!r}")
            if coarse_net is not None and (not isinstance(coarse_net, ChunkMap)
                                           or (coarse_args or {}).get("map_dims") != coarse_net.matrix.shape[0]):
                raise BundleError("a 'chunks' coarse stage takes only a ChunkMap as its network, with "
                                  "coarse args map_dims = its size")
        self.name = name
        self.backbone = backbone
        self.whitening = whitening
        self.whitening_dims = whitening_dims
        self.fine_type = fine_type
        self.fine_net = fine_net.eval() if fine_net is not None else None
        self.fine_args = dict(fine_args or {})
        self.coarse_type = coarse_type
        self.coarse_net = coarse_net.eval() if coarse_net is not None else None
        self.coarse_args = dict(coarse_args or {})
        self.selector_net = selector_net.eval() if selector_net is not None else None
        self.selector_args = dict(selector_args or {})
        self.extra = dict(extra or {})
        self.scoring = scoring if scoring is not None else MatchScoring()
        self._uniform_refs: dict[str | None, np.ndarray] = {}  # whitened uniform frames, by whitening
        if self.scoring.inset_scale is not None and fine_type != "chamfer":
            raise BundleError("an inset match needs the training-free chamfer stage (its stored fine "
                              "representation is the base features)")
        if self.scoring.shared_shot_frames is not None and fine_type != "chamfer":
            raise BundleError("a shared-shot term needs the training-free chamfer stage (its levels are "
                              "those of its frame similarities)")
        self._comparator = FineComparator(self.fine_net) if self.fine_net is not None else None

    # -- description ---------------------------------------------------------------------------
    @property
    def whitened(self) -> bool:
        """Whether the whitening is available (always true for bundles without whitening)."""
        return self.whitening is None or bool(getattr(self.whitening, "fitted", True))

    @property
    def input_dims(self) -> int | None:
        """Size D of the base features the networks take (None while the lite whitening is unfitted)."""
        if self.whitening is not None:
            return int(self.whitening.dims) if self.whitened else self.whitening_dims
        return int(self.fine_args.get("dims", self.coarse_args.get("dims", 512)))

    @property
    def has_selector(self) -> bool:
        return self.selector_net is not None

    def fine_layout(self, dims: int | None = None) -> tuple[str, tuple[int, int]]:
        """``(numpy dtype name, per-frame shape)`` of the stored fine representation."""
        d = dims or self.input_dims
        if d is None:
            raise BundleError(f"bundle {self.name!r}: the whitening is not fitted yet, the fine layout is unknown")
        if self.fine_type == "bin":
            layer = getattr(self.fine_net, "binarization", None)
            bits = int(layer.W.shape[1]) if layer is not None and hasattr(layer, "W") else int(d)
            return "uint8", (9, bits // 8)
        return "float16", (9, int(d))

    @property
    def chunk_map(self) -> ChunkMap | None:
        """The learned map of a ``chunks`` coarse stage's vectors, or None."""
        return self.coarse_net if isinstance(self.coarse_net, ChunkMap) else None

    @property
    def coarse_chunks(self) -> int:
        """Chunk vectors per coarse vector (1 for a single vector, scored by inner product)."""
        return int(self.coarse_args["chunks"]) if self.coarse_type == "chunks" else 1

    def coarse_dims(self) -> int:
        """Size of the coarse vector (all its chunks)."""
        if self.coarse_type == "student":
            return int(self.coarse_args.get("netvlad_outdims", 1024))
        d = self.input_dims
        if d is None:
            raise BundleError(f"bundle {self.name!r}: the whitening is not fitted yet, the coarse size is unknown")
        return int(d) * self.coarse_chunks

    def identity(self) -> dict[str, Any]:
        """Provenance: backbone, whitening identity, stage types."""
        white = None
        if self.whitening is not None and self.whitened:
            white = self.whitening.identity
        return {"name": self.name, "backbone": self.backbone, "whitening": white,
                "fine": self.fine_type, "coarse": self.coarse_type, "selector": self.has_selector}

    def config(self) -> dict[str, Any]:
        """The JSON config written as ``bundle.json``."""
        white: dict[str, Any] | None = None
        if self.whitening is not None:
            white = {"dims": self.input_dims, "fitted": self.whitened,
                     "identity": self.whitening.identity if self.whitened else None,
                     "input_dims": int(self.whitening.input_dims) if self.whitened else None}
        return {
            "format": BUNDLE_FORMAT,
            "format_version": BUNDLE_FORMAT_VERSION if self.chunk_map is not None else BUNDLE_FORMAT_VERSION_BASE,
            "written_by": _versions(),
            "name": self.name, "backbone": self.backbone, "whitening": white,
            "fine": {"type": self.fine_type, "args": self.fine_args},
            "coarse": {"type": self.coarse_type, "args": self.coarse_args},
            "selector": ({"type": "network", "args": self.selector_args} if self.has_selector
                         else {"type": "coarse-order"}),
            "extra": self.extra,
            "scoring": self.scoring.to_dict(),
        }

    def __repr__(self) -> str:
        return (f"Bundle(name={self.name!r}, backbone={self.backbone!r}, fine={self.fine_type!r}, "
                f"coarse={self.coarse_type!r}, selector={self.has_selector}, dims={self.input_dims})")

    # -- persistence -----------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write the bundle folder (JSON config + safetensors weights).

        Returns:
            The folder.
        """
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        # every file goes through a fresh temporary file and a rename: a link already standing at one
        # of these names (a received folder) is replaced, never written through
        if self.whitening is not None and self.whitened:
            white = self.whitening.to_safetensors()
            replace_file(out / "whitening.safetensors", lambda fh: fh.write(white))
        for net, name in ((self.fine_net, "fine"), (self.coarse_net, "coarse"), (self.selector_net, "selector")):
            if net is not None:
                data = _state_bytes(net)
                replace_file(out / f"{name}.safetensors", lambda fh, data=data: fh.write(data))
        write_json_atomic(out / CONFIG_NAME, self.config())
        logger.info("saved bundle %s to %s", self.name, out)
        return out

    @classmethod
    def load(cls, directory: str | Path) -> Bundle:
        """Read a bundle folder written by :meth:`save`.

        Raises:
            BundleError: missing/malformed config, unsupported format version, missing weights.
        """
        from dnsvr.index._paths import DamagedIndexError, inside, read_json  # noqa: PLC0415

        folder = Path(directory)
        path = folder / CONFIG_NAME
        if not os.path.lexists(path):
            raise BundleError(f"not a bundle folder (no {CONFIG_NAME}): {folder}")
        try:
            cfg = read_json(folder, CONFIG_NAME, where=str(path))
        except DamagedIndexError as exc:
            raise BundleError(f"damaged bundle: {path}: {exc.what}") from None
        except OSError as exc:
            raise BundleError(f"damaged bundle: {path}: unreadable ({exc.strerror or exc})") from None
        if not isinstance(cfg, dict) or cfg.get("format") != BUNDLE_FORMAT:
            fmt = cfg.get("format") if isinstance(cfg, dict) else type(cfg).__name__
            raise BundleError(f"{path}: not a dnsvr bundle (format {fmt!r})")
        version = cfg.get("format_version", 0)
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise BundleError(f"damaged bundle: {path}: bad format_version {version!r}")
        if version > BUNDLE_FORMAT_VERSION:
            raise BundleError(f"{path}: bundle format version {version} is newer than this dnsvr supports "
                              f"({BUNDLE_FORMAT_VERSION}); written by {cfg.get('written_by')}")
        for key in ("name", "backbone"):
            if not isinstance(cfg.get(key), str):
                raise BundleError(f"damaged bundle: {path}: {key} must be a string, got {cfg.get(key)!r}")
        for key in ("fine", "coarse"):
            if not isinstance(cfg.get(key), dict) or not isinstance(cfg[key].get("type"), str):
                raise BundleError(f"damaged bundle: {path}: {key} must be an object with a type")
        if not isinstance(cfg.get("selector") or {}, dict) or not isinstance(cfg.get("extra") or {}, dict):
            raise BundleError(f"damaged bundle: {path}: selector and extra must be objects")
        if cfg.get("whitening") is not None and not isinstance(cfg["whitening"], dict):
            raise BundleError(f"damaged bundle: {path}: whitening must be an object or null")
        whitening = None
        white_cfg = cfg.get("whitening")
        if white_cfg is not None:
            from dnsvr.backbones import PCAWhitening

            wname = "whitening.safetensors"
            dims = white_cfg.get("dims")
            if dims is None and not white_cfg.get("fitted"):
                dims = LITE_DIMS
            if isinstance(dims, bool) or not isinstance(dims, int) or not 1 <= dims <= _MAX_ARG:
                raise BundleError(f"damaged bundle: {path}: whitening dims {dims!r} out of range 1..{_MAX_ARG}")
            if white_cfg.get("fitted"):
                try:
                    wfile = inside(folder, wname, where=str(folder / wname))
                    whitening = PCAWhitening.from_file(wfile, dims=dims)
                except FileNotFoundError:
                    raise BundleError(f"bundle weights missing: {folder / wname}") from None
                except Exception as exc:  # noqa: BLE001 - SafetensorError, bad shapes: one line naming the file
                    raise BundleError(f"damaged bundle: {folder / wname}: {_one_line(exc)}") from None
                if white_cfg.get("identity") and whitening.identity != white_cfg["identity"]:
                    raise BundleError(f"{folder / wname}: whitening identity {whitening.identity} differs from the "
                                      f"config's {white_cfg['identity']}")
            else:
                whitening = PCAWhitening(dims=dims)
        fine_cfg, coarse_cfg, sel_cfg = cfg["fine"], cfg["coarse"], cfg.get("selector") or {}
        fine_cfg["args"] = _check_args(fine_cfg.get("args"), "fine", path)
        coarse_cfg["args"] = _check_args(coarse_cfg.get("args"), "coarse", path)
        sel_cfg["args"] = _check_args(sel_cfg.get("args"), "selector", path)
        fine_net = coarse_net = selector_net = None
        if fine_cfg["type"] in ("att", "bin"):
            from dnsvr.nn import FineGrainedStudent

            fine_net = _build_net(FineGrainedStudent, fine_cfg["args"], "fine", folder, "fine.safetensors")
        if coarse_cfg["type"] == "student":
            from dnsvr.nn import CoarseGrainedStudent

            coarse_net = _build_net(CoarseGrainedStudent, coarse_cfg["args"], "coarse", folder, "coarse.safetensors")
        elif coarse_cfg["type"] == "chunks" and coarse_cfg["args"].get("map_dims") is not None:
            map_args = {"map_dims": coarse_cfg["args"]["map_dims"]}
            coarse_net = _build_net(ChunkMap, map_args, "coarse", folder, "coarse.safetensors")
        if sel_cfg.get("type") == "network":
            from dnsvr.nn import SelectorNetwork

            selector_net = _build_net(SelectorNetwork, sel_cfg["args"], "selector", folder, "selector.safetensors")
        return cls(cfg["name"], cfg["backbone"], whitening=whitening, fine_type=fine_cfg["type"],
                   fine_net=fine_net, fine_args=fine_cfg.get("args"), coarse_type=coarse_cfg["type"],
                   coarse_net=coarse_net, coarse_args=coarse_cfg.get("args"), selector_net=selector_net,
                   selector_args=sel_cfg.get("args"),
                   whitening_dims=(white_cfg or {}).get("dims"), extra=cfg.get("extra"),
                   scoring=MatchScoring.from_dict(cfg.get("scoring"), str(path)))

    # -- whitening -------------------------------------------------------------------------------
    def fit_whitening(self, raw: Iterable[np.ndarray | torch.Tensor], dims: int | None = None) -> None:
        """Fit the PCA whitening on raw region features (the ``lite`` bundle, on the first videos added).

        With fewer region vectors than the requested dims allow, the whitened size shrinks (to a
        multiple of 8, at least 32) rather than whitening a rank-deficient covariance.

        Args:
            raw: raw region features ``[T, 9, C]`` of some videos.
            dims: whitened size (default: the bundle's, 128 for ``lite``).

        Raises:
            BundleError: the bundle has no whitening, or there are too few vectors (< 66).
        """
        from dnsvr.backbones import PCAWhitening

        arrays = [np.asarray(r.detach().cpu().numpy() if isinstance(r, torch.Tensor) else r, dtype=np.float32)
                  for r in raw]
        vectors = np.concatenate([a.reshape(-1, a.shape[-1]) for a in arrays], 0) if arrays else np.zeros((0, 0))
        n, c = vectors.shape
        want = int(dims or self.whitening_dims or LITE_DIMS)
        if n < 2 * MIN_WHITENED_DIMS + 2 or c < MIN_WHITENED_DIMS:
            raise BundleError(f"bundle {self.name!r}: {n} region vectors of {c} dims are too few to fit a "
                              f"whitening (need at least {2 * MIN_WHITENED_DIMS + 2}); add more videos at once")
        # as many dimensions as the vectors support, but never below the floor
        usable = min(want, c, max(n // WHITENING_VECTORS_PER_DIM // 8 * 8, MIN_WHITENED_DIMS))
        if usable < want:
            logger.warning("fitting a %d-d whitening (asked %d): only %d region vectors", usable, want, n)
        if n < WHITENING_RECOMMENDED_VECTORS:
            logger.warning("the whitening is fitted on %d region vectors of %d videos; an index searches best with "
                           "at least %d (about 60 videos of 20 s); refit it when the collection has grown "
                           "(dnsvr index refit, docs/search.md)", n, len(arrays), WHITENING_RECOMMENDED_VECTORS)
        white = PCAWhitening(dims=usable).fit(vectors)
        self.whitening = white
        self.whitening_dims = usable
        self.extra["whitening_fitted_on"] = {"videos": len(arrays), "region_vectors": int(n), "dims": int(usable)}
        logger.info("bundle %s: whitening %s fitted on %d vectors", self.name, white.identity, n)

    def refit_problem(self) -> str | None:
        """Why this bundle's whitening cannot be fitted again on a collection (None when it can).

        Only a whitening fitted on the collection itself (the ``lite`` bundle, by an index's first add
        or a refit) and read by no trained network may be replaced: a published PCA or one a student
        was trained on is part of the model (:meth:`dnsvr.index.VideoIndex.refit_whitening`).
        """
        if self.whitening is None or "whitening_fitted_on" not in self.extra:
            return (f"bundle {self.name!r} does not fit its whitening on the indexed videos (it is published "
                    "or trained with the model); only a lite index's whitening is refitted")
        if "learned_whitening" in self.extra:
            return (f"bundle {self.name!r} has a learned whitening (dnsvr train whitening); refit the index it was "
                    "attached from, then learn the whitening again")
        if self.fine_type != "chamfer" or self.coarse_type == "student" or self.has_selector or "trained" in self.extra:
            return (f"bundle {self.name!r} has trained networks that read its whitening; refitting it would "
                    "change the features they were trained on")
        return None

    def whiten(self, raw: np.ndarray | torch.Tensor) -> np.ndarray:
        """Raw region features ``[T, 9, C]`` → base features ``[T, 9, D]`` float32.

        Features that already have the whitened size pass through unchanged (published feature
        files are stored whitened).

        Raises:
            BundleError: the whitening is not fitted, or the size matches neither side.
        """
        x = raw.detach().cpu().float() if isinstance(raw, torch.Tensor) else torch.from_numpy(
            np.ascontiguousarray(raw, dtype=np.float32))
        if x.ndim != 3:
            raise BundleError(f"features must be [T, regions, D], got shape {tuple(x.shape)}")
        if self.whitening is None:
            return x.numpy()
        if not self.whitened:
            raise BundleError(f"bundle {self.name!r}: whitening not fitted; call fit_whitening first")
        if x.shape[-1] == self.whitening.dims and x.shape[-1] != self.whitening.input_dims:
            return x.numpy()
        if x.shape[-1] != self.whitening.input_dims:
            raise BundleError(f"bundle {self.name!r} takes {self.whitening.input_dims}-d raw regions "
                              f"({self.backbone}) or {self.whitening.dims}-d whitened ones; got shape {tuple(x.shape)}")
        return self.whitening.apply(x)

    # -- representations ------------------------------------------------------------------------
    def represent(self, features: np.ndarray | torch.Tensor) -> VideoRepresentation:
        """Base features ``[T, 9, D]`` → what the index stores (coarse, fine, selector).

        Raises:
            BundleError: on a wrong shape.
        """
        x = features.detach().cpu().float() if isinstance(features, torch.Tensor) else torch.from_numpy(
            np.ascontiguousarray(features, dtype=np.float32))
        d = self.input_dims
        if x.ndim != 3 or x.shape[0] == 0 or (d is not None and x.shape[-1] != d):
            raise BundleError(f"bundle {self.name!r} represents [T>0, regions, {d}] features, "
                              f"got shape {tuple(x.shape)}")
        with torch.inference_mode():
            if self.coarse_type == "student":
                coarse = self.coarse_net.index_video(x[None])  # type: ignore[union-attr]
                coarse = coarse.reshape(-1).float().numpy()
            elif self.coarse_type == "chunks":
                coarse = lite_chunk_vectors(x.numpy(), self.coarse_chunks)
                if self.chunk_map is not None:
                    coarse = self.chunk_map.apply(coarse)
                coarse = coarse.reshape(-1)
            else:
                coarse = lite_coarse_vector(x.numpy())
            if self.fine_type == "chamfer":
                fine = x.numpy().astype(np.float16)
            else:
                rep = self.fine_net.index_video(x)  # type: ignore[union-attr]
                rep = rep.reshape(x.shape[0], x.shape[1], -1)
                fine = pack_codes(rep) if self.fine_type == "bin" else rep.float().numpy().astype(np.float16)
            selector = None
            if self.selector_net is not None:
                selector = float(self.selector_net.index_video(x[None]).reshape(-1)[0])
        return VideoRepresentation(coarse=np.ascontiguousarray(coarse, dtype=np.float32), fine=fine,
                                   selector=selector)

    def base_features(self, fine: np.ndarray) -> np.ndarray:
        """The base features back from a stored fine representation (the ``chamfer`` stage only).

        Raises:
            BundleError: for student representations, which cannot be inverted.
        """
        if self.fine_type != "chamfer":
            raise BundleError(f"bundle {self.name!r} stores {self.fine_type!r} representations; the base features "
                              "cannot be recovered from them (re-add the videos or their feature files)")
        return np.asarray(fine, dtype=np.float32)

    # -- similarities ----------------------------------------------------------------------------
    def fine_similarities(self, query_fine: np.ndarray, candidates: Sequence[np.ndarray], *,
                          return_matrices: bool = False,
                          precision: str = DEFAULT_PRECISION) -> tuple[np.ndarray, list[np.ndarray] | None]:
        """Fine similarity of one query to many candidates (batched; see :mod:`dnsvr.fine`).

        ``precision``: ``"exact"`` or ``"int8"`` (quantised region products for the float stages).
        """
        return fine_similarities(query_fine, candidates, self.fine_type, self._comparator,
                                 return_matrices=return_matrices, precision=precision)

    def fine_match(self, query_fine: np.ndarray, candidates: Sequence[np.ndarray], *,
                   inset: np.ndarray | None = None, match: str = DEFAULT_MATCH,
                   precision: str = DEFAULT_PRECISION) -> FineMatches:
        """Scores and coverages of one query against many candidates, as a search ranks them.

        The fine stage's frame-to-frame matrices are read by :attr:`scoring`: the Chamfer direction,
        the shares of matched frames (coverages), the inset match and the match mode's penalty.

        Args:
            query_fine: the query's fine representation.
            candidates: the candidates' stored fine representations.
            inset: the query's whitened inset vectors ``[T, D]`` (:meth:`inset_vectors`), or None.
            match: ``"related"`` or ``"copy"`` (:data:`MATCH_MODES`).
            precision: ``"exact"`` or ``"int8"``.

        Raises:
            BundleError: an unknown match mode.
        """
        if match not in MATCH_MODES:
            raise BundleError(f"unknown match mode {match!r}; expected one of {list(MATCH_MODES)}")
        n = len(candidates)
        sims, mats = self.fine_similarities(query_fine, candidates, return_matrices=True, precision=precision)
        sc = self.scoring
        scores = np.asarray(sims, dtype=np.float64).copy()
        coverage = np.zeros((n, 2), dtype=np.float32)
        shots = np.full(n, -np.inf) if match == "related" and sc.shared_shot_frames else None
        uniform = self.uniform_frames(query_fine) if shots is not None else None
        for k, m in enumerate(mats or []):
            if m.size == 0:
                continue
            best_q, best_t = m.max(1), m.max(0)
            coverage[k] = ((best_q >= sc.coverage_threshold).mean(), (best_t >= sc.coverage_threshold).mean())
            if self.fine_type == "chamfer" and sc.direction == "min":
                scores[k] = min(float(best_q.mean()), float(best_t.mean()))
            if shots is not None:
                shots[k] = sc.shared_shot_score - sc.shared_shot_slope * (
                    1.0 - shared_shot(m, sc.shared_shot_frames, skip=uniform))
        uncovered = 1.0 - coverage.min(1).astype(np.float64)
        insets = self._inset_scores(inset, candidates) if inset is not None and sc.inset_scale else None
        if match == "copy":
            scores = scores - sc.copy_penalty * uncovered
            if insets is not None:
                scores = np.maximum(scores, insets)
        else:
            if insets is not None:
                scores = np.maximum(scores, insets)
            scores = scores - sc.related_penalty * uncovered
            if shots is not None:
                scores = np.maximum(scores, shots)
        return FineMatches(scores.astype(np.float32), coverage)

    def uniform_frames(self, query_fine: np.ndarray) -> np.ndarray | None:
        """Which of a query's frames are uniform (black, white, grey, a solid colour: their regions match a
        uniform frame's at :data:`UNIFORM_FRAME_SIMILARITY` or more, in this bundle's whitened space), ``[T]``
        bool; None where the reference frames are not available or not comparable (another size)."""
        q = np.asarray(query_fine)
        if self.fine_type != "chamfer" or q.ndim != 3 or not len(q):
            return None
        key = self.whitening.identity if self.whitening is not None and self.whitened else None
        refs = self._uniform_refs.get(key)
        if refs is None:
            raw = uniform_frame_features(self.backbone)
            if raw is None:
                return None
            try:
                refs = self.whiten(raw)
            except BundleError:
                return None
            self._uniform_refs = {key: refs}
        if refs.shape[-1] != q.shape[-1]:
            return None
        sims = np.einsum("trd,ksd->tkrs", q.astype(np.float32), refs.astype(np.float32))
        return sims.max(axis=3).mean(axis=2).max(axis=1) >= UNIFORM_FRAME_SIMILARITY

    @staticmethod
    def _inset_scores(inset: np.ndarray, candidates: Sequence[np.ndarray], block_regions: int = 1 << 16) -> np.ndarray:
        """Per candidate: the query's inset vectors against all of its regions — the best region of the
        best frame per query frame, averaged over the query's frames. Candidates go in blocks of about
        ``block_regions`` region vectors: one product per block, then a maximum per candidate."""
        q = torch.from_numpy(np.ascontiguousarray(inset, dtype=np.float32))
        out = np.zeros(len(candidates), dtype=np.float64)
        usable = [k for k, c in enumerate(candidates)
                  if np.ndim(c) == 3 and np.shape(c)[0] > 0 and np.shape(c)[-1] == q.shape[-1]]
        with torch.inference_mode():
            start = 0
            while start < len(usable):
                block, regions = [], 0
                while start < len(usable) and (not block or regions < block_regions):
                    k = usable[start]
                    block.append(k)
                    regions += int(np.prod(np.shape(candidates[k])[:2]))
                    start += 1
                arrays = [np.asarray(candidates[k]) for k in block]
                flat = np.concatenate([a.reshape(-1, a.shape[-1]) for a in arrays])
                sims = torch.from_numpy(flat).to(torch.float32) @ q.T      # [regions of the block, Tq]
                bounds = np.cumsum([0] + [a.shape[0] * a.shape[1] for a in arrays[:-1]])
                per = np.maximum.reduceat(sims.numpy(), bounds, axis=0)  # [candidates, Tq]: best region anywhere
                out[block] = per.mean(1)
        return out

    def inset_vectors(self, raw: np.ndarray | None) -> np.ndarray | None:
        """The query's whitened inset vectors from the raw ones ``[T, C]`` (None without an inset match)."""
        if self.scoring.inset_scale is None or raw is None or len(raw) == 0:
            return None
        return self.whiten(np.asarray(raw, dtype=np.float32)[:, None, :])[:, 0, :]

    @property
    def coarse_as_fine(self) -> Callable[[np.ndarray], np.ndarray] | None:
        """Puts coarse similarities on the fine scale (see :class:`MatchScoring`), for results not
        re-scored; None when the bundle has no such calibration (raw coarse scores)."""
        sc = self.scoring
        if sc.coarse_scale is None:
            return None
        scale, offset = float(sc.coarse_scale), float(sc.coarse_offset)
        return lambda coarse: (scale * np.asarray(coarse, dtype=np.float64) + offset).astype(np.float32)

    def selector_scores(self, query_selector: float | None, target_selectors: np.ndarray,
                        coarse_scores: np.ndarray) -> np.ndarray | None:
        """The selector's score per (query, candidate) pair, or None without a selector.

        Args:
            query_selector: the query's self-similarity.
            target_selectors: ``[N]`` the candidates' self-similarities.
            coarse_scores: ``[N]`` the coarse similarities.

        Raises:
            BundleError: a self-similarity is missing (index built without this selector).
        """
        if self.selector_net is None:
            return None
        t = np.asarray(target_selectors, dtype=np.float32)
        if query_selector is None or not np.all(np.isfinite(t)):
            raise BundleError(f"bundle {self.name!r}: selector self-similarities missing for the query or "
                              "some candidates (was the index built with this bundle?)")
        n = len(t)
        mlp_in = np.stack([np.full(n, query_selector, dtype=np.float32), t,
                           np.asarray(coarse_scores, dtype=np.float32)], 1)
        # in blocks of rows: each row's score depends on that row only, and the hidden activations of a
        # block stay in cache (one pass over 1 M candidates allocated 400 MB per layer: 2.5-5x slower)
        out = np.empty(n, dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, n, SELECTOR_BLOCK):
                block = torch.from_numpy(mlp_in[start:start + SELECTOR_BLOCK])
                out[start:start + len(block)] = self.selector_net(block).reshape(-1).float().numpy()
        return out


def lite_coarse_vector(features: np.ndarray) -> np.ndarray:
    """The training-free coarse vector: mean of the L2-normalised region vectors, L2-normalised.

    Args:
        features: ``[T, 9, D]`` base features.

    Returns:
        float32 ``[D]``.
    """
    x = np.asarray(features, dtype=np.float32)
    x = x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    v = x.reshape(-1, x.shape[-1]).mean(0)
    return (v / max(float(np.linalg.norm(v)), 1e-12)).astype(np.float32)


def lite_chunk_vectors(features: np.ndarray, chunks: int) -> np.ndarray:
    """The training-free chunked coarse vectors: the frames cut into ``chunks`` equal stretches.

    Each stretch is described as :func:`lite_coarse_vector` describes a whole video. Stretch ``i``
    spans frames ``floor(i·T/k)`` to ``ceil((i+1)·T/k)``, so a video of fewer than ``k`` frames
    repeats frames rather than leaving a chunk empty. Two videos are compared by the chunks'
    Chamfer similarity (the index's coarse search); a video that holds a query's shots among
    others keeps the chunks that show them instead of one diluted mean.

    Args:
        features: ``[T, 9, D]`` base features.
        chunks: stretches per video.

    Returns:
        float32 ``[chunks, D]``, each row L2-normalised.
    """
    x = np.asarray(features, dtype=np.float32)
    t = len(x)
    bounds = np.linspace(0.0, t, chunks + 1)
    rows = []
    for i in range(chunks):
        start = min(int(np.floor(bounds[i])), t - 1)
        stop = max(int(np.ceil(bounds[i + 1])), start + 1)
        rows.append(lite_coarse_vector(x[start:stop]))
    return np.stack(rows)


def lite_bundle(dims: int = LITE_DIMS) -> Bundle:
    """The offline default bundle (whitening unfitted until the first videos are added)."""
    from dnsvr.backbones import PCAWhitening

    return Bundle("lite", "efficientnet_lite0", whitening=PCAWhitening(dims=dims), fine_type="chamfer",
                  coarse_type="chunks", coarse_args={"chunks": LITE_COARSE_CHUNKS}, whitening_dims=dims,
                  scoring=LITE_SCORING)


def paper_bundle(fine: str = "att", offline: bool | None = None) -> Bundle:
    """The published networks: ResNet-50 + PCA (VCDB) + S^f_A or S^f_B + S^c + selector.

    Args:
        fine: ``"att"`` (S^f_A) or ``"bin"`` (S^f_B).
        offline: forbid downloads (default: the ``DNSVR_OFFLINE`` environment variable).

    Raises:
        dnsvr.weights.WeightsUnavailableError: a published file is not cached and cannot be downloaded.
    """
    from dnsvr.backbones import PCAWhitening
    from dnsvr.nn import CoarseGrainedStudent, FineGrainedStudent, SelectorNetwork
    from dnsvr.weights import resolve_weights

    if fine not in ("att", "bin"):
        raise BundleError(f"paper bundle fine student must be 'att' or 'bin', got {fine!r}")
    whitening = PCAWhitening.from_file(resolve_weights("pca_resnet50_vcdb_1M", offline=offline), dims=512)
    fine_args = {"dims": 512, "attention": fine == "att", "binarization": fine == "bin"}
    fine_net = FineGrainedStudent(**fine_args, weights_path=resolve_weights(f"dns_fg_{fine}_student",
                                                                            offline=offline))
    coarse_args: dict[str, Any] = {"dims": 512}
    coarse_net = CoarseGrainedStudent(**coarse_args, weights_path=resolve_weights("dns_cg_student",
                                                                                  offline=offline))
    selector_args = {"dims": 512, "hidden_size": 100, "num_layers": 1}
    selector_net = SelectorNetwork(**selector_args, weights_path=resolve_weights(f"dns_selector_cg-fg_{fine}",
                                                                                 offline=offline))
    return Bundle("paper" if fine == "att" else "paper-bin", "resnet50", whitening=whitening, fine_type=fine,
                  fine_net=fine_net, fine_args=fine_args, coarse_type="student", coarse_net=coarse_net,
                  coarse_args=coarse_args, selector_net=selector_net, selector_args=selector_args)


def load_bundle(spec: str | Path | Bundle = "lite", *, offline: bool | None = None) -> Bundle:
    """A bundle by name (``"lite"``, ``"paper"``, ``"paper-bin"``) or from a bundle folder.

    Raises:
        BundleError: unknown name and no such folder (the message lists the built-in names).
        dnsvr.weights.WeightsUnavailableError: ``paper`` weights not cached and offline.
    """
    if isinstance(spec, Bundle):
        return spec
    text = str(spec)
    if text == "lite":
        return lite_bundle()
    if text == "paper":
        return paper_bundle("att", offline=offline)
    if text == "paper-bin":
        return paper_bundle("bin", offline=offline)
    path = Path(text)
    if path.is_dir():
        return Bundle.load(path)
    raise BundleError(f"unknown bundle {text!r}: use one of {list(BUILTIN_BUNDLES)} or a bundle folder "
                      f"(containing {CONFIG_NAME})")

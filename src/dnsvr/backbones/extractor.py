"""FeatureExtractor: uint8 RGB frames → L3-iMAC region features [N, 9, D] (optionally PCA-whitened).

This is the one network path from frames to the region features every DnS
network consumes. It prepares the backbone once for inference: eval mode,
batch norm folded into the convolutions (exact), channels-last memory format
on the CPU (oneDNN's fast path), ``torch.inference_mode`` and, on CUDA,
float16 autocast for the convolutions (the pooling and whitening stay float32).

Frames arrive already resized and centre-cropped (``dnsvr.video.decode_frames``
does short side 256 → centre crop 224, the preprocessing both sets of weights
were evaluated with); the extractor only scales and normalises them.

Example:
    >>> ex = FeatureExtractor("efficientnet_lite0")               # offline, packaged weights
    >>> ex(np.zeros((4, 224, 224, 3), np.uint8)).shape          # doctest: +SKIP
    torch.Size([4, 9, 1456])
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dnsvr.backbones._int8 import INT8_BACKBONES, int8_available, plain_stages, quantize_stages, run_quantized
from dnsvr.backbones.efficientnet import EFFICIENTNET_LITE0_PREPROCESSING, EfficientNetLite0, default_lite0_weights
from dnsvr.backbones.regions import global_mac, l3_imac
from dnsvr.backbones.resnet import RESNET50_PREPROCESSING, ResNet50
from dnsvr.backbones.whitening import PCAWhitening

logger = logging.getLogger(__name__)

#: Backbone name → (network class, preprocessing of its weights, weights registry name).
BACKBONES: dict[str, tuple[type[nn.Module], dict, str]] = {
    "efficientnet_lite0": (EfficientNetLite0, EFFICIENTNET_LITE0_PREPROCESSING, "efficientnet_lite0_imagenet"),
    "resnet50": (ResNet50, RESNET50_PREPROCESSING, "resnet50_imagenet"),
}

#: Inference precisions: ``fp32`` (default, exact) and ``int8`` (opt-in, CPU: quantized x86 kernels).
#: ``"exact"`` — the word the command line and the fine stage use — is accepted for ``fp32``.
PRECISIONS = ("fp32", "int8")

#: ``weights=RANDOM`` builds the backbone with random initialisation (tests, throughput benchmarks).
RANDOM = "random"

WeightsArg = str | Path | Mapping[str, torch.Tensor] | None


def _resolve_default_weights(backbone: str, registry_name: str) -> Path:
    """The ImageNet weights of a backbone: the packaged file for Lite0, the weights registry for ResNet-50."""
    if backbone == "efficientnet_lite0":
        return default_lite0_weights()  # offline, shipped by a dependency
    try:
        from dnsvr.weights import resolve_weights  # owned by helper "nn"
    except ImportError as exc:
        raise FileNotFoundError(
            f"no weights given for {backbone} and the weights registry (dnsvr.weights) is unavailable: "
            "pass weights=PATH to resnet50-0676ba61.pth "
            "(https://download.pytorch.org/models/resnet50-0676ba61.pth) or weights='random'"
        ) from exc
    return Path(resolve_weights(registry_name))


class FeatureExtractor(nn.Module):
    """Frames → region features with the preprocessing the backbone's weights expect.

    Args:
        backbone: ``"efficientnet_lite0"`` (offline default; 1456-d regions) or ``"resnet50"``
            (the paper's; 3840-d regions).
        whitening: a fitted :class:`PCAWhitening` applied to the regions (its ``input_dims``
            must equal the backbone's region size), or None for the raw L2-normalised regions.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` … or a ``torch.device``.
        weights: None (ImageNet weights: the packaged file for Lite0, the weights registry's
            ``resnet50_imagenet`` for ResNet-50, which may download once), a checkpoint path,
            a state dict, or ``"random"`` (random initialisation; tests and benchmarks).
        fold_batchnorm: fold batch norm into the convolutions (exact up to float rounding).
        batch_size: frames per network call in :meth:`extract`. On the 2-core CPU, 32 measured
            clearly faster than 16, 8 or 4 (fewer thread synchronisations per frame).
        precision: ``"fp32"`` (default) or ``"int8"`` (opt-in; ResNet-50 on the CPU only): the convolutions
            run on PyTorch's quantized x86 kernels, about 2.8x less CPU time here, at a cost in fidelity
            (region vectors at cosine ≈ 0.97 to fp32; see docs/notes/extraction.md). The int8
            network is calibrated on the first frames it sees (:meth:`calibrate`).
        calibration_frames: frames observed to calibrate the int8 activation ranges (a one-off cost of about
            twice an fp32 pass over them, plus a few seconds to prepare the graph; 32 frames gave the same
            fidelity as 64 here).

    Raises:
        ValueError: for an unknown backbone or a whitening of the wrong input size.
        FileNotFoundError: when the weights cannot be found.

    Attributes:
        dims: size D of the output vectors.
        backbone_name: the backbone's name.
        preprocessing: dict with ``input_size``, ``resize_short_side``, ``crop``, ``interpolation``,
            ``scale`` (1/255), ``mean``, ``std`` and ``channel_order``: frames are converted as
            ``(x * scale - mean) / std`` per RGB channel.
        region_dims: size of the raw region vectors (sum of the four stage widths).
        identity: provenance dict (backbone, weights source, whitening identity, dims) to store with features.

    Example:
        >>> ex = FeatureExtractor("resnet50", weights="random")             # paper backbone, random weights
        >>> ex(np.zeros((2, 224, 224, 3), np.uint8)).shape                  # doctest: +SKIP
        torch.Size([2, 9, 3840])
    """

    def __init__(
        self,
        backbone: str = "efficientnet_lite0",
        whitening: PCAWhitening | None = None,
        device: str | torch.device = "cpu",
        weights: WeightsArg = None,
        fold_batchnorm: bool = True,
        batch_size: int = 32,
        precision: str = "fp32",
        calibration_frames: int = 32,
    ) -> None:
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {backbone!r}; choose one of {sorted(BACKBONES)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if precision == "exact":
            precision = "fp32"
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; choose exact (fp32) or int8")
        if precision == "int8" and (torch.device(device).type != "cpu" or not fold_batchnorm):
            raise ValueError("int8 precision runs on the CPU with batch norm folded")
        if precision == "int8" and backbone not in INT8_BACKBONES:
            raise ValueError(f"int8 precision is offered for {', '.join(INT8_BACKBONES)}, not {backbone}: "
                             "EfficientNet-Lite0 measured no faster in int8 on this CPU, and less faithful")
        if precision == "int8" and not int8_available():
            raise ValueError("int8 precision needs PyTorch's quantized x86 kernels, which this torch build lacks")
        if calibration_frames < 1:
            raise ValueError(f"calibration_frames must be positive, got {calibration_frames}")
        net_cls, preprocessing, registry_name = BACKBONES[backbone]
        self.backbone_name = backbone
        self.preprocessing: dict[str, Any] = dict(preprocessing)
        self.batch_size = int(batch_size)
        self.precision = precision
        self.calibration_frames = int(calibration_frames)
        self._int8: nn.Module | None = None
        self.device = torch.device(device)
        self.region_dims = int(sum(net_cls.stage_channels))
        if whitening is not None and whitening.input_dims != self.region_dims:
            raise ValueError(
                f"whitening {whitening.identity} takes {whitening.input_dims}-d vectors; "
                f"{backbone} regions are {self.region_dims}-d"
            )
        self.net = net_cls()
        if isinstance(weights, str) and weights == RANDOM:
            self.weights_source = RANDOM
        else:
            from dnsvr.backbones._checkpoint import load_state_dict

            source = _resolve_default_weights(backbone, registry_name) if weights is None else weights
            self.net.load_state_dict(load_state_dict(source), strict=True)
            self.weights_source = str(source) if not isinstance(source, Mapping) else "state_dict"
        self.net.eval()
        self.folded = bool(fold_batchnorm)
        if fold_batchnorm:
            n = self.net.fold_batchnorm()
            logger.debug("%s: folded %d batch norms", backbone, n)
        self.whitening = whitening
        mean = torch.tensor(self.preprocessing["mean"], dtype=torch.float32)
        std = torch.tensor(self.preprocessing["std"], dtype=torch.float32)
        scale = float(self.preprocessing["scale"])
        self.register_buffer("_gain", (scale / std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_offset", (mean / std).view(1, 3, 1, 1), persistent=False)
        self.to(self.device)
        self.eval()
        if self.device.type == "cpu":
            self.net.to(memory_format=torch.channels_last)
        for p in self.parameters():
            p.requires_grad_(False)

    # -- description --------------------------------------------------------------------------------
    @property
    def dims(self) -> int:
        """Output vector size: the whitening's dims, or the raw region size."""
        return self.whitening.dims if self.whitening is not None else self.region_dims

    @property
    def identity(self) -> dict[str, Any]:
        """Provenance: backbone, weights source, whitening identity (or None), output dims."""
        return {
            "backbone": self.backbone_name,
            "weights": self.weights_source,
            "whitening": self.whitening.identity if self.whitening is not None else None,
            "dims": self.dims,
            "region_dims": self.region_dims,
            "precision": self.precision,
        }

    def train(self, mode: bool = True) -> FeatureExtractor:
        """The extractor is inference-only (batch norm may be folded); training mode is refused."""
        if mode:
            raise RuntimeError("FeatureExtractor is inference-only; build the backbone class itself to train it")
        return super().train(False)

    # -- computation --------------------------------------------------------------------------------
    def normalize(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 RGB frames [N, H, W, 3] → normalised float32 [N, 3, H, W] on the device.

        On the CPU the result is a channels-last view of the NHWC input (no copy of layout).

        Raises:
            ValueError: if the frames are not [N, H, W, 3].
        """
        x = torch.from_numpy(np.ascontiguousarray(frames)) if isinstance(frames, np.ndarray) else frames
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"frames must be [N, H, W, 3] RGB, got shape {tuple(x.shape)}")
        if x.dtype != torch.uint8:
            logger.debug("frames of dtype %s treated as 0..255 values", x.dtype)
        # uint8 travels to the device (4x less than float); copy=True: never scale the caller's float tensor in place
        x = x.to(self.device, non_blocking=True).permute(0, 3, 1, 2).to(torch.float32, copy=True)
        # (x * scale - mean) / std as one multiply-add on the fresh float buffer (no temporaries)
        return x.mul_(self._gain).sub_(self._offset)

    def calibrate(self, frames: np.ndarray | torch.Tensor) -> None:
        """Build the int8 network, observing its activation ranges on these frames.

        With ``precision="int8"`` this happens by itself on the first frames extracted (up to
        ``calibration_frames`` of the first call); call it first to calibrate on frames of your choice
        (e.g. a sample of the collection) so that results do not depend on which video came first.

        Args:
            frames: uint8 RGB [N, H, W, 3]; the first ``calibration_frames`` are used.

        Raises:
            ValueError: if the extractor is not int8 or the frames are not [N, H, W, 3].
        """
        if self.precision != "int8":
            raise ValueError(f"calibrate() is for precision='int8'; this extractor is {self.precision}")
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
            raise ValueError(f"frames must be [N, H, W, 3] RGB with N >= 1, got shape {tuple(frames.shape)}")
        frames = frames[: self.calibration_frames]
        plain = plain_stages(self.backbone_name, self.net)

        with torch.no_grad():   # plain tensors (not inference tensors): FX preparation runs outside inference mode
            batches = [self.normalize(frames[start:start + 16]).contiguous(memory_format=torch.channels_last)
                       for start in range(0, len(frames), 16)]
        self._int8 = quantize_stages(plain, batches)
        logger.info("%s: int8 network calibrated on %d frames", self.backbone_name, len(frames))

    def _regions(self, x: torch.Tensor) -> torch.Tensor:
        if self.precision == "int8":
            return l3_imac(run_quantized(self._int8, x))
        if self.device.type == "cuda":
            autocast = torch.autocast("cuda", dtype=torch.float16)
        else:
            autocast = contextlib.nullcontext()
        with autocast:
            stages = self.net.forward_stages(x)
        return l3_imac([s.float() for s in stages])

    def forward(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        """One chunk: frames [N, H, W, 3] → float32 [N, 9, D] on the device (see :meth:`extract`)."""
        if self.precision == "int8" and self._int8 is None:
            self.calibrate(frames)
        regions = self._regions(self.normalize(frames))
        if self.whitening is not None:
            regions = self.whitening(regions)
        return regions

    def extract(self, frames: np.ndarray | torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
        """Region features of frames, in batches.

        Args:
            frames: uint8 RGB [N, H, W, 3] (numpy or tensor), normally 224×224 crops; N may be 0.
            batch_size: frames per network call (default: the extractor's).

        Returns:
            float32 CPU tensor [N, 9, D], each vector L2-normalised.

        Raises:
            ValueError: if the frames are not [N, H, W, 3].
        """
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"frames must be [N, H, W, 3] RGB, got shape {tuple(frames.shape)}")
        n = int(frames.shape[0])
        if n == 0:
            return torch.empty(0, 9, self.dims, dtype=torch.float32)
        bs = int(batch_size or self.batch_size)
        if self.precision == "int8" and self._int8 is None:
            self.calibrate(frames)       # the first frames, up to calibration_frames of them
        outs = []
        with torch.inference_mode():
            for start in range(0, n, bs):
                outs.append(self.forward(frames[start:start + bs]).float().cpu())
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    def inset_vectors(self, frames: np.ndarray | torch.Tensor, scale: float) -> torch.Tensor:
        """Each frame shrunk by ``scale`` and described whole (:func:`~dnsvr.backbones.regions.global_mac`).

        A frame shown as a picture-in-picture inset at about that scale inside another video looks,
        to one of that video's regions, like this vector (see :class:`dnsvr.bundle.MatchScoring`).

        Args:
            frames: uint8 RGB [N, H, W, 3], as :meth:`extract` takes them.
            scale: the shrink factor (0.1–1).

        Returns:
            float32 CPU tensor [N, region_dims] (raw, not whitened), L2-normalised.
        """
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"frames must be [N, H, W, 3] RGB, got shape {tuple(frames.shape)}")
        n = int(frames.shape[0])
        if n == 0:
            return torch.empty(0, self.region_dims, dtype=torch.float32)
        h, w = int(frames.shape[1]), int(frames.shape[2])
        size = (max(int(round(h * scale)), 32), max(int(round(w * scale)), 32))
        outs = []
        with torch.inference_mode():
            for start in range(0, n, self.batch_size):
                x = torch.from_numpy(np.ascontiguousarray(frames[start:start + self.batch_size])) \
                    if isinstance(frames, np.ndarray) else frames[start:start + self.batch_size]
                small = torch.nn.functional.interpolate(x.permute(0, 3, 1, 2).float(), size=size, mode="bicubic",
                                                        antialias=True, align_corners=False)
                small = small.clamp_(0, 255).round_().to(torch.uint8).permute(0, 2, 3, 1)
                y = self.normalize(small)
                if self.device.type == "cpu":
                    y = y.contiguous(memory_format=torch.channels_last)
                outs.append(global_mac(self.net.forward_stages(y)).cpu())
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    def __call__(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """Same as :meth:`extract`."""
        return self.extract(frames)

    def extra_repr(self) -> str:
        return f"backbone={self.backbone_name}, dims={self.dims}, device={self.device}, folded={self.folded}"


class InsetExtractor:
    """An extractor for query videos: each frame's regions plus its inset vector as one more row.

    Wraps a :class:`FeatureExtractor`; calls return ``[N, 10, C]``: the 9 regions, then
    :meth:`FeatureExtractor.inset_vectors` at ``scale``. Everything else is the wrapped extractor's.
    """

    def __init__(self, extractor: FeatureExtractor, scale: float) -> None:
        if extractor.whitening is not None:
            raise ValueError("InsetExtractor takes an extractor without whitening (raw regions)")
        self.extractor = extractor
        self.scale = float(scale)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.extractor, name)

    def __call__(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        regions = self.extractor.extract(frames)
        return torch.cat([regions, self.extractor.inset_vectors(frames, self.scale)[:, None, :]], dim=1)

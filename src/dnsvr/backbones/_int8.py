"""Opt-in int8 inference of ResNet-50: post-training static quantization with PyTorch's x86 kernels.

The folded fp32 network (batch norm already in the convolutions) is rebuilt as a plain
graph of standard modules and quantized with ``torch.ao.quantization``'s FX graph mode:
int8 per-channel weights, uint8 activations whose ranges are observed on calibration
frames (min/max), convolutions fused with their ReLU and residual additions with theirs.
The four stage outputs come back as float32; the region pooling stays float32.

About 2.8x less CPU per frame for ResNet-50; EfficientNet-Lite0 has no int8 path (no faster, less
faithful). Measurements: docs/notes/extraction.md and ``benchmarks/bench_backbones.py``.

Activations use the full 8-bit range (``reduce_range=False``), which is exact in
integer arithmetic on CPUs with AVX-512 VNNI (this project's machine has it); on older
x86 CPUs fbgemm's 16-bit intermediate sums may saturate, so ``reduce_range`` is turned
on there.

These are PyTorch's "quantized tensor" kernels, deprecated upstream (they still work in
torch 2.13, with a deprecation warning that is silenced here); :func:`int8_available`
says whether this torch build has them.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

logger = logging.getLogger(__name__)

#: Backbones with an int8 path.
INT8_BACKBONES = ("resnet50",)


def random_weights_scaled_on(frames: torch.Tensor | Sequence, backbone: str = "resnet50",
                             batch_size: int = 8) -> dict[str, torch.Tensor]:
    """Random weights whose batch-norm statistics are estimated on ``frames``, for int8 checks without
    the ImageNet weights (raw random weights make quantization meaningless: their activations are not
    scaled layer by layer as a trained network's are).

    Args:
        frames: uint8 RGB frames [N, H, W, 3] (numpy array or tensor).
        backbone: a name in :data:`dnsvr.backbones.BACKBONES`.
        batch_size: frames per forward pass while estimating the statistics.

    Returns:
        The state dict (unfolded batch norm), loadable by ``FeatureExtractor(backbone, weights=...)``.
    """
    from dnsvr.backbones.extractor import FeatureExtractor  # the extractor imports this module

    ex = FeatureExtractor(backbone, weights="random", fold_batchnorm=False)
    net = ex.net
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over every batch
    net.train()
    with torch.no_grad():
        for s in range(0, len(frames), batch_size):
            net.forward_stages(ex.normalize(frames[s:s + batch_size]))
    return net.state_dict()


@contextmanager
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*quantiz.*", category=UserWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        yield


def int8_available() -> bool:
    """Whether this torch build can run the int8 backbones (x86 quantized engine and FX quantization)."""
    try:
        with _quiet():
            from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx  # noqa: F401
        return "x86" in torch.backends.quantized.supported_engines or \
            "fbgemm" in torch.backends.quantized.supported_engines
    except ImportError:
        return False


def _has_vnni() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as fh:
            flags = fh.read()
        return "avx512_vnni" in flags or "avx_vnni" in flags
    except OSError:
        return False


def _plain_conv(conv: nn.Conv2d) -> nn.Conv2d:
    """A standard ``nn.Conv2d`` with the (folded) weights and bias of ``conv``."""
    plain = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                      dilation=conv.dilation, groups=conv.groups, bias=True)
    with torch.no_grad():
        plain.weight.copy_(conv.weight)
        if conv.bias is not None:
            plain.bias.copy_(conv.bias)
        else:
            plain.bias.zero_()
    return plain


class _DropLeading(nn.Module):
    """Drop the first ``rows`` rows and ``cols`` columns of an [N, C, H, W] map."""

    def __init__(self, rows: int, cols: int) -> None:
        super().__init__()
        self.rows, self.cols = rows, cols

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, self.rows:, self.cols:]


class _ResBlock(nn.Module):
    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(_plain_conv(block.conv1), nn.ReLU())
        self.conv2 = nn.Sequential(_plain_conv(block.conv2), nn.ReLU())
        self.conv3 = _plain_conv(block.conv3)
        self.downsample = _plain_conv(block.downsample[0]) if block.downsample is not None else nn.Identity()
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv3(self.conv2(self.conv1(x))) + self.downsample(x))


class _PlainResNet50(nn.Module):
    """ResNet-50's four stages as a traceable graph of standard modules (folded weights)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.stem = nn.Sequential(_plain_conv(net.conv1), nn.ReLU(), nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
        self.layers = nn.ModuleList(nn.Sequential(*[_ResBlock(b) for b in layer])
                                    for layer in (net.layer1, net.layer2, net.layer3, net.layer4))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        outs = []
        for layer in self.layers:
            x = layer(x)
            outs.append(x)
        return outs


def plain_stages(backbone: str, net: nn.Module) -> nn.Module:
    """The folded network's region stages as a traceable fp32 module of standard layers (the graph
    :func:`quantize_stages` quantizes).

    Raises:
        ValueError: for a backbone without an int8 path, or a network whose batch norm is not folded.
    """
    if backbone not in INT8_BACKBONES:
        raise ValueError(f"no int8 path for backbone {backbone!r} (int8 is offered for {', '.join(INT8_BACKBONES)}: "
                         "EfficientNet-Lite0 measured no faster in int8 here, and less faithful)")
    if not getattr(net, "folded", False):
        raise ValueError(f"{backbone}: int8 needs the batch norm folded into the convolutions")
    # channels-last like the fp32 path: observing the calibration frames in NCHW cost 14% more CPU
    return _PlainResNet50(net).eval().to(memory_format=torch.channels_last)


def quantize_stages(plain: nn.Module, calibration: Sequence[torch.Tensor]) -> nn.Module:
    """Post-training static quantization of a plain stages module.

    Args:
        plain: from :func:`plain_stages`.
        calibration: normalised float32 batches [n, 3, H, W] to observe the activation ranges on (at least one).

    Returns:
        The quantized module: normalised float32 input → list of float32 stage outputs.

    Raises:
        RuntimeError: when this torch build has no quantized x86 kernels.
    """
    if not int8_available():
        raise RuntimeError("int8 inference needs PyTorch's quantized x86 kernels (torch.ao.quantization), "
                           "which this torch build lacks; use precision='fp32'")
    with _quiet():
        from torch.ao.quantization import MinMaxObserver, PerChannelMinMaxObserver, QConfig, QConfigMapping
        from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

        engine = "x86" if "x86" in torch.backends.quantized.supported_engines else "fbgemm"
        torch.backends.quantized.engine = engine
        weight = PerChannelMinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_channel_symmetric)
        mapping = QConfigMapping().set_global(QConfig(
            activation=MinMaxObserver.with_args(dtype=torch.quint8, reduce_range=not _has_vnni()), weight=weight))
        if not calibration:
            raise ValueError("int8 calibration needs at least one batch of frames")
        prepared = prepare_fx(plain, mapping, example_inputs=(calibration[0],))
        with torch.inference_mode():
            for batch in calibration:
                prepared(batch)
        quantized = convert_fx(prepared)
    logger.debug("quantized %s (engine %s)", type(plain).__name__, engine)
    return quantized


def run_quantized(module: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Stage outputs (float32) of a module from :func:`quantize_stages`."""
    with _quiet():
        return [s.float() for s in module(x.contiguous(memory_format=torch.channels_last))]

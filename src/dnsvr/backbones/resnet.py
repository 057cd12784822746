"""ResNet-50 in plain PyTorch, with torchvision's parameter names.

torchvision cannot be installed beside the CPU torch used here, and the region
features need the four stage outputs anyway. The module tree mirrors
``torchvision.models.resnet50`` (v1.5: stride on the 3×3 convolution), so the
ImageNet checkpoint ``resnet50-0676ba61.pth`` loads with ``strict=True``.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from dnsvr.backbones._layers import fold_pairs, fused_conv

logger = logging.getLogger(__name__)

#: What the torchvision ImageNet weights expect: RGB in [0, 1], then ImageNet mean/std.
RESNET50_PREPROCESSING: dict = {
    "input_size": [224, 224],
    "resize_short_side": 256,
    "crop": 224,
    "interpolation": "bilinear",
    "scale": 1.0 / 255.0,
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
    "channel_order": "RGB",
}

#: Output channels of the four stages (layer1..layer4): 3840 region dimensions in all.
RESNET50_STAGE_CHANNELS = (256, 512, 1024, 2048)


class Bottleneck(nn.Module):
    """torchvision's Bottleneck block (1×1 → 3×3 (stride) → 1×1, expansion 4)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride
        self.folded = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.folded:
            identity = x if self.downsample is None else fused_conv(self.downsample[0], x)
            out = fused_conv(self.conv1, x, "relu")
            out = fused_conv(self.conv2, out, "relu")
            return fused_conv(self.conv3, out, "relu", residual=identity)
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)

    def fold_batchnorm(self) -> int:
        n = fold_pairs(self, [("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")])
        if isinstance(self.downsample, nn.Sequential):
            n += fold_pairs(self.downsample, [("0", "1")])
        self.folded = True
        return n


class ResNet50(nn.Module):
    """ResNet-50 (torchvision layout) returning the four stage outputs.

    Args:
        num_classes: size of the ``fc`` classifier (1000 for the ImageNet weights).

    Example:
        >>> net = ResNet50().eval()
        >>> [tuple(f.shape) for f in net.forward_stages(torch.rand(1, 3, 224, 224))]
        [(1, 256, 56, 56), (1, 512, 28, 28), (1, 1024, 14, 14), (1, 2048, 7, 7)]
    """

    stage_channels = RESNET50_STAGE_CHANNELS

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, 3)
        self.layer2 = self._make_layer(128, 4, stride=2)
        self.layer3 = self._make_layer(256, 6, stride=2)
        self.layer4 = self._make_layer(512, 3, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * Bottleneck.expansion, num_classes)
        self.folded = False
        self._init_weights()

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * Bottleneck.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * Bottleneck.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * Bottleneck.expansion),
            )
        layers = [Bottleneck(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Stage outputs ``[layer1, layer2, layer3, layer4]`` for normalised [N, 3, H, W] input."""
        if self.folded:
            x = self.maxpool(fused_conv(self.conv1, x, "relu"))
        else:
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        outs = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            outs.append(x)
        return outs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits [N, num_classes] for normalised [N, 3, H, W] input."""
        x = self.forward_stages(x)[-1]
        return self.fc(torch.flatten(self.avgpool(x), 1))

    def fold_batchnorm(self) -> int:
        """Fold every batch norm into its convolution (inference only; the state dict changes).

        Returns:
            The number of batch norms folded (53 for ResNet-50).
        """
        if self.training:
            raise RuntimeError("fold_batchnorm needs eval mode (running statistics), call .eval() first")
        n = fold_pairs(self, [("conv1", "bn1")])
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in layer:
                n += block.fold_batchnorm()
        self.folded = True
        return n


def resnet50(weights: str | dict | None = None) -> ResNet50:
    """Build ResNet-50, optionally loading a torchvision-layout state dict (``strict=True``).

    Args:
        weights: a checkpoint path (``torch.load(weights_only=True)``), a state dict, or None (random).

    Returns:
        The network in eval mode.

    Raises:
        RuntimeError: if the state dict's keys or shapes do not match.
    """
    from dnsvr.backbones._checkpoint import load_state_dict

    net = ResNet50()
    if weights is not None:
        net.load_state_dict(load_state_dict(weights), strict=True)
    return net.eval()

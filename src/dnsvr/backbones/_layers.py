"""Building blocks shared by the backbones: TF-style "same" convolution and batch-norm folding."""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)


class Conv2dSame(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow's "same" padding (extra row/column at the bottom/right).

    The padding depends on the input size, so it is computed per call; when it is
    symmetric (every stride-1 convolution with an odd kernel) the convolution's
    own zero padding is used instead of a separate pad. Parameter names are
    those of ``nn.Conv2d`` (``weight``, ``bias``).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 groups: int = 1, bias: bool = False) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0, groups=groups, bias=bias)
        self._pad_cache: dict[tuple[int, int], tuple[tuple[int, int, int, int], tuple[int, int]]] = {}

    def _padding_for(self, height: int, width: int) -> tuple[tuple[int, int, int, int], tuple[int, int]]:
        key = (height, width)
        cached = self._pad_cache.get(key)
        if cached is None:
            pads = []
            for size, k, s, d in zip((height, width), self.kernel_size, self.stride, self.dilation):
                total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
                pads.append((total // 2, total - total // 2))
            (top, bottom), (left, right) = pads
            if top == bottom and left == right:
                cached = ((0, 0, 0, 0), (top, left))
            else:
                cached = ((left, right, top, bottom), (0, 0))
            self._pad_cache[key] = cached
        return cached

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        explicit, implicit = self._padding_for(int(x.shape[-2]), int(x.shape[-1]))
        if any(explicit):
            x = F.pad(x, explicit)
        return F.conv2d(x, self.weight, self.bias, self.stride, implicit, self.dilation, self.groups)


def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Fold an eval-mode batch norm into the convolution that precedes it, in place.

    ``bn(conv(x)) == conv'(x)`` with ``W' = W * g / sqrt(v + eps)`` and
    ``b' = (b - m) * g / sqrt(v + eps) + beta``: exact up to float rounding,
    because nothing sits between the two. The caller replaces ``bn`` by
    ``nn.Identity``.

    Args:
        conv: the convolution (gains a bias if it had none).
        bn: the batch norm with running statistics.

    Raises:
        ValueError: if the channel counts differ or ``bn`` tracks no running statistics.
    """
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(f"cannot fold {bn}: no running statistics")
    if conv.out_channels != bn.num_features:
        raise ValueError(f"cannot fold {bn} into {conv}: {bn.num_features} != {conv.out_channels} channels")
    with torch.no_grad():
        w64 = conv.weight.double()
        scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps) if bn.affine \
            else 1.0 / torch.sqrt(bn.running_var.double() + bn.eps)
        shift = bn.bias.double() if bn.affine else torch.zeros_like(scale)
        bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
        new_w = w64 * scale.reshape(-1, 1, 1, 1)
        new_b = (bias - bn.running_mean.double()) * scale + shift
        conv.weight.copy_(new_w.to(conv.weight.dtype))
        if conv.bias is None:
            conv.bias = nn.Parameter(new_b.to(conv.weight.dtype), requires_grad=False)
        else:
            conv.bias.copy_(new_b.to(conv.bias.dtype))


def fold_pairs(module: nn.Module, pairs: list[tuple[str, str]]) -> int:
    """Fold each named (conv, bn) pair of ``module`` and replace the bn by ``nn.Identity``.

    Args:
        module: the parent module.
        pairs: ``(conv_attr, bn_attr)`` attribute names; missing attributes are skipped.

    Returns:
        The number of batch norms folded.
    """
    folded = 0
    for conv_name, bn_name in pairs:
        conv, bn = getattr(module, conv_name, None), getattr(module, bn_name, None)
        if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
            fold_conv_bn(conv, bn)
            setattr(module, bn_name, nn.Identity())
            folded += 1
    return folded

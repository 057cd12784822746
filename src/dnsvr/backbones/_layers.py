"""Building blocks shared by the backbones: TF-style "same" convolution and batch-norm folding."""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)


class Conv2dSame(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow's "same" padding (the odd extra row/column at the bottom/right).

    TF splits the total padding ``p`` of a side as ``(p // 2, p - p // 2)``. A
    symmetric split is the convolution's own zero padding. An asymmetric one
    (bottom = top + 1, e.g. every stride-2 layer on an even-sized map) is computed
    without materialising a padded copy of the input, which on the CPU costs far
    more than the convolution itself: the kernel gets one leading zero tap on
    that axis and the padding becomes the larger (bottom) amount on both sides.
    The window then starts one row earlier but that row meets the zero tap, so
    every output is the same sum of the same products (exact). Parameter names
    are those of ``nn.Conv2d`` (``weight``, ``bias``); the enlarged kernel is
    derived from ``weight`` and cached until ``weight`` changes.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 groups: int = 1, bias: bool = False) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0, groups=groups, bias=bias)
        self._plan_cache: dict[tuple[int, int], tuple[tuple[int, int], tuple[int, int]]] = {}
        self._shifted: dict[tuple[int, int], tuple[tuple[int, int, int], torch.Tensor]] = {}

    def _plan(self, height: int, width: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """(symmetric padding per axis, leading zero taps per axis) for an input size."""
        key = (height, width)
        plan = self._plan_cache.get(key)
        if plan is None:
            pads, shifts = [], []
            for size, k, s, d in zip((height, width), self.kernel_size, self.stride, self.dilation):
                total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
                before, after = total // 2, total - total // 2
                pads.append(after)
                shifts.append(after - before)  # 0 or 1
            plan = ((pads[0], pads[1]), (shifts[0], shifts[1]))
            self._plan_cache[key] = plan
        return plan

    def _weight_for(self, shifts: tuple[int, int]) -> torch.Tensor:
        if shifts == (0, 0):
            return self.weight
        if self.dilation != (1, 1):
            raise NotImplementedError("Conv2dSame: asymmetric padding with dilation is not supported")
        w = self.weight
        stamp = (w.data_ptr(), w._version, int(w.device.index or 0))
        cached = self._shifted.get(shifts)
        if cached is None or cached[0] != stamp or torch.is_grad_enabled():
            shifted = F.pad(w, (shifts[1], 0, shifts[0], 0))  # leading zero taps (top/left)
            if torch.is_grad_enabled():
                return shifted
            cached = (stamp, shifted)
            self._shifted[shifts] = cached
        return cached[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        padding, shifts = self._plan(int(x.shape[-2]), int(x.shape[-1]))
        return F.conv2d(x, self._weight_for(shifts), self.bias, self.stride, padding, self.dilation, self.groups)

    def _apply(self, fn, recurse=True):  # noqa: ANN001, ANN202 (nn.Module signature)
        self._shifted.clear()  # device/dtype/memory-format moves invalidate the derived kernels
        return super()._apply(fn, recurse)


def _find_fused_op():  # noqa: ANN202
    try:
        op = torch.ops.mkldnn._convolution_pointwise
        _ = op.binary
    except (AttributeError, RuntimeError):  # pragma: no cover - builds without oneDNN
        return None
    return op if torch.backends.mkldnn.is_available() else None


#: oneDNN convolution with a fused element-wise epilogue (the CPU kernel torch.compile uses), or None.
_FUSED_CONV = _find_fused_op()

#: Activations the fused path knows: name → (oneDNN post-op, scalars, eager fallback).
_ACTIVATIONS = {
    "relu": ("relu", [], F.relu),
    "relu6": ("hardtanh", [0.0, 6.0], F.relu6),
    None: ("none", [], None),
}


def fused_conv(conv: nn.Conv2d, x: torch.Tensor, activation: str | None = None,
               residual: torch.Tensor | None = None) -> torch.Tensor:
    """``activation(conv(x) + residual)`` in one oneDNN call on the CPU at inference, eager elsewhere.

    Only valid after batch-norm folding (nothing may sit between the convolution and
    the epilogue). The result equals the eager sequence up to float rounding (the
    same oneDNN convolution; the epilogue runs in registers instead of extra passes
    over memory, which is what the CPU time of these small networks is spent on).

    Args:
        conv: ``nn.Conv2d`` or :class:`Conv2dSame`.
        x: [N, C, H, W] input.
        activation: ``"relu"``, ``"relu6"`` or None.
        residual: tensor added before the activation, shaped like the output.

    Returns:
        The output tensor.
    """
    if isinstance(conv, Conv2dSame):
        padding, shifts = conv._plan(int(x.shape[-2]), int(x.shape[-1]))
        weight = conv._weight_for(shifts)
    else:
        padding, weight = conv.padding, conv.weight
        if isinstance(padding, str):  # pragma: no cover - our networks use explicit padding
            raise ValueError(f"fused_conv needs numeric padding, got {padding!r}")
    global _FUSED_CONV
    name, scalars, eager_act = _ACTIVATIONS[activation]
    if (_FUSED_CONV is not None and x.device.type == "cpu" and x.dtype == torch.float32
            and weight.dtype == torch.float32 and not torch.is_grad_enabled()):
        args = (list(padding), list(conv.stride), list(conv.dilation), conv.groups)
        try:
            if residual is None:
                return _FUSED_CONV(x, weight, conv.bias, *args, name, scalars, "")
            unary = None if activation is None else name
            return _FUSED_CONV.binary(x, residual, weight, conv.bias, *args, "add", None, unary, scalars, "")
        except (RuntimeError, NotImplementedError) as exc:  # a private oneDNN op: fall back for good
            logger.warning("fused oneDNN convolution unavailable (%s); using eager convolutions", exc)
            _FUSED_CONV = None
    y = F.conv2d(x, weight, conv.bias, conv.stride, padding, conv.dilation, conv.groups)
    if residual is not None:
        y = y + residual
    return eager_act(y) if eager_act is not None else y


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

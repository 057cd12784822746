"""Region features: L3-iMAC (intermediate max-activation of convolutions over a 3×3 grid).

The region vectors of ViSiL/DnS: each of the four stage outputs of a backbone is
max-pooled into a 3×3 grid of overlapping regions, each region vector is
L2-normalised per stage, the stages are concatenated along channels and every
concatenated region vector is L2-normalised again. A frame becomes 9 vectors of
``sum(stage channels)`` dimensions (3840 for ResNet-50).

The reference pools with a fixed (kernel, stride) per ResNet stage at 224×224
input: 56×56 maps use kernel 28/stride 14, 28×28 → 14/7, 14×14 → 6/3 and 7×7 →
3/2 (stride = ceil(kernel / 2)). :func:`region_pooling_params` reproduces these
exactly and extends them to any map size: the largest kernel ``k ≤ size / 2``
whose stride ``ceil(k / 2)`` yields exactly three windows.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from functools import lru_cache

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

#: Regions per side of the grid (3×3 = 9 regions per frame).
GRID = 3


@lru_cache(maxsize=None)
def region_pooling_params(size: int) -> tuple[int, int] | None:
    """Max-pooling window for one spatial side of a feature map.

    Args:
        size: the map's height or width.

    Returns:
        ``(kernel, stride)`` giving exactly :data:`GRID` windows, as the reference
        chooses them (56 → (28, 14), 28 → (14, 7), 14 → (6, 3), 7 → (3, 2)); ``None``
        when no such window exists (sizes 1, 2, 5, 6 and 10), in which case the caller
        falls back to adaptive max pooling.
    """
    for kernel in range(size // 2, 0, -1):
        stride = math.ceil(kernel / 2)
        if (size - kernel) // stride + 1 == GRID:
            return kernel, stride
    return None


def _grid_max_pool(x: torch.Tensor) -> torch.Tensor:
    """Max-pool an [N, C, H, W] map into [N, C, 3, 3] with the reference windows."""
    height, width = x.shape[-2:]
    ph, pw = region_pooling_params(int(height)), region_pooling_params(int(width))
    if ph is None or pw is None:
        logger.debug("feature map %dx%d too small for the reference windows; adaptive max pooling", height, width)
        return F.adaptive_max_pool2d(x, GRID)
    return F.max_pool2d(x, kernel_size=(ph[0], pw[0]), stride=(ph[1], pw[1]))


def l3_imac(feature_maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """Turn a backbone's stage outputs into L3-iMAC region vectors.

    Args:
        feature_maps: the stage outputs, each [N, C_i, H_i, W_i] (any memory format,
            same N). For ResNet-50 at 224×224: [N,256,56,56], [N,512,28,28],
            [N,1024,14,14], [N,2048,7,7].

    Returns:
        [N, 9, sum(C_i)] region vectors (row-major over the 3×3 grid), L2-normalised,
        in the dtype of the inputs.

    Raises:
        ValueError: if no maps are given or their ranks/batch sizes disagree.

    Example:
        >>> maps = [torch.rand(2, c, s, s) for c, s in [(256, 56), (512, 28), (1024, 14), (2048, 7)]]
        >>> l3_imac(maps).shape
        torch.Size([2, 9, 3840])
    """
    if len(feature_maps) == 0:
        raise ValueError("l3_imac needs at least one feature map")
    shapes = [tuple(m.shape) for m in feature_maps]
    if any(len(s) != 4 for s in shapes) or len({s[0] for s in shapes}) != 1:
        raise ValueError(f"l3_imac expects [N, C, H, W] maps with one batch size; got shapes {shapes}")
    pooled = []
    for fmap in feature_maps:
        regions = _grid_max_pool(fmap)  # [N, C, 3, 3]
        pooled.append(F.normalize(regions, p=2, dim=1))
    x = torch.cat(pooled, dim=1)  # [N, sum C, 3, 3]
    x = x.flatten(2).transpose(1, 2)  # [N, 9, sum C]
    return F.normalize(x, p=2, dim=-1)


def global_mac(feature_maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """One vector per image: each stage max-pooled whole, L2-normalised per stage, concatenated, normalised.

    The same layout as a region of :func:`l3_imac` (so one whitening serves both), over the whole map.

    Args:
        feature_maps: the stage outputs, each [N, C_i, H_i, W_i].

    Returns:
        [N, sum(C_i)], L2-normalised.
    """
    if len(feature_maps) == 0:
        raise ValueError("global_mac needs at least one feature map")
    pooled = [F.normalize(torch.amax(fmap.float(), dim=(-2, -1)), p=2, dim=1) for fmap in feature_maps]
    return F.normalize(torch.cat(pooled, dim=1), p=2, dim=-1)

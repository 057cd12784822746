"""Private helpers shared by the networks: input conversion, batch dimensions, masks, device, pretrained loading."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

logger = logging.getLogger(__name__)


def as_tensor(x: Any, device: torch.device, dtype: torch.dtype | None = torch.float32) -> Tensor:
    """Convert a numpy array / tensor to a tensor on ``device`` (float32 unless ``dtype`` is None)."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    elif not isinstance(x, Tensor):
        x = torch.as_tensor(x)
    if dtype is not None and x.dtype != dtype:
        x = x.to(dtype)
    return x.to(device)


def as_mask(mask: Any, like: Tensor) -> Tensor | None:
    """Convert an optional padding mask (1 = valid frame, 0 = padding; bool or numeric) to ``like``'s dtype/device."""
    if mask is None:
        return None
    return as_tensor(mask, like.device, dtype=None).to(like.dtype)


def check_dims(features: Tensor, mask: Tensor | None = None, name: str = "video") -> tuple[Tensor, Tensor | None]:
    """Add the batch dimension to a single video [T, R, D] (and its mask [T]); pass batches [B, T, R, D] through.

    Raises:
        ValueError: when the tensor is neither 3- nor 4-dimensional, or the mask does not match it.
    """
    if features.ndim == 3:
        features = features.unsqueeze(0)
        if mask is not None and mask.ndim == 1:
            mask = mask.unsqueeze(0)
    elif features.ndim != 4:
        raise ValueError(
            f"{name} must have shape [B, T, R, D] or [T, R, D] (B videos, T frames, R regions, D dims); "
            f"got {tuple(features.shape)}"
        )
    if mask is not None and tuple(mask.shape) != tuple(features.shape[:2]):
        raise ValueError(
            f"{name} mask must have shape [B, T] = {tuple(features.shape[:2])}; got {tuple(mask.shape)}"
        )
    return features, mask


#: Shortest video the video comparator CNN accepts (its two 2×2 max-poolings).
MIN_COMPARATOR_FRAMES = 4


def pad_min_frames(x: Tensor, mask: Tensor | None, min_frames: int = MIN_COMPARATOR_FRAMES
                   ) -> tuple[Tensor, Tensor | None]:
    """Zero-pad videos [B, T, R, D] shorter than ``min_frames`` with *valid* zero frames (mask 1).

    The reference comparator fails on fewer than 4 frames; a zero frame has similarity 0 to everything, which is
    what the reference computes for zero padding it is not told about (and what ``dnsvr.fine`` does).
    """
    short = min_frames - x.shape[1]
    if short <= 0:
        return x, mask
    x = torch.cat([x, x.new_zeros(x.shape[0], short, *x.shape[2:])], 1)
    if mask is not None:
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], short)], 1)
    return x, mask


def module_device(module: nn.Module) -> torch.device:
    """The device of a module's first parameter (CPU for parameter-free modules)."""
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


def load_pretrained(module: nn.Module, name: str, weights_path: str | Path | None = None) -> None:
    """Load the registry weights ``name`` (or the explicit local file ``weights_path``) into ``module``, strictly.

    Raises:
        dnsvr.weights.WeightsUnavailableError: offline and not cached.
        RuntimeError: the checkpoint does not match the network (missing/unexpected keys, shapes).
    """
    from dnsvr.weights import load_checkpoint, resolve_weights  # local import: weights is optional at import time

    path = resolve_weights(name, path=weights_path)
    state = load_checkpoint(path)
    device = module_device(module)
    module.load_state_dict({k: v.to(device) for k, v in state.items()}, strict=True)
    logger.info("loaded %s weights from %s", name, path)


class Network(nn.Module):
    """Base of the dnsvr networks: a ``device`` property and the common end of construction."""

    @property
    def device(self) -> torch.device:
        """The device the network's parameters live on (inputs are moved there)."""
        return module_device(self)

    def _finish_init(
        self,
        device: str | torch.device | None,
        ignored: dict[str, Any],
        weights_name: str | None = None,
        weights_path: str | Path | None = None,
    ) -> None:
        """Log ignored reference arguments, move to ``device``, load ``weights_name`` strictly when given."""
        if ignored:
            logger.debug("%s ignores arguments %s", type(self).__name__, sorted(ignored))
        if device is not None:
            self.to(device)
        if weights_name is not None:
            load_pretrained(self, weights_name, weights_path)

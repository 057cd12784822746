"""Reading backbone checkpoints without unpickling arbitrary objects (via the weights registry's reader)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import torch

from dnsvr.weights import load_checkpoint

logger = logging.getLogger(__name__)


def load_state_dict(weights: str | Path | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict from a file (see :func:`dnsvr.weights.load_checkpoint`) or a mapping.

    Args:
        weights: the file (``.pth`` read with ``weights_only=True``, ``.safetensors``, ``.npz``) or the
            state dict itself (a checkpoint dict holding ``"model"``/``"state_dict"`` yields that entry).

    Returns:
        ``{name: tensor}``.

    Raises:
        FileNotFoundError: if the path does not exist.
        ValueError: if it holds no state dict.
    """
    if not isinstance(weights, Mapping):
        return load_checkpoint(weights)
    state = dict(weights)
    for key in ("model", "state_dict"):
        if isinstance(state.get(key), Mapping):
            state = dict(state[key])
            break
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"not a state dict of tensors (keys: {sorted(map(str, state))[:8]})")
    return state

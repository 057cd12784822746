"""Reading backbone checkpoints without unpickling arbitrary objects."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import torch

logger = logging.getLogger(__name__)


def load_state_dict(weights: str | Path | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict from a path (``.pth``/``.pt`` via ``torch.load(weights_only=True)``, ``.safetensors``) or a mapping.

    A checkpoint dict holding ``"model"`` or ``"state_dict"`` yields that entry.

    Args:
        weights: the file or the state dict itself.

    Returns:
        ``{name: tensor}`` on the CPU.

    Raises:
        FileNotFoundError: if the path does not exist.
        ValueError: if the file holds no state dict.
    """
    if isinstance(weights, Mapping):
        state = dict(weights)
    else:
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"weights file not found: {path}")
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
        logger.debug("read %s", path)
    for key in ("model", "state_dict"):
        if isinstance(state.get(key), Mapping):
            state = dict(state[key])
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{weights!s:.200}: not a state dict of tensors (keys: {sorted(state)[:8]})")
    return state

"""Training checkpoints without pickle: safetensors for tensors, JSON for everything else.

A checkpoint is a folder::

    model.safetensors       the network's state_dict
    optimizer.safetensors   the optimizer's per-parameter tensors (``state.<index>.<name>``)
    rng.safetensors         torch RNG states (CPU, and CUDA when used)
    state.json              epoch, global step, optimizer param groups, history, config

Folders are replaced atomically (written beside, then renamed), so a run killed
while saving leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "dnsvr-train-checkpoint"
CHECKPOINT_VERSION = 1


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


def optimizer_to_flat(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into tensors (for safetensors) and JSON-able metadata.

    Raises:
        TypeError: on a per-parameter state value that is neither a tensor nor a JSON scalar.
    """
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for name, value in st.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{idx}.{name}"] = value.detach().cpu().contiguous()
            elif isinstance(value, int | float | bool) or value is None:
                scalars.setdefault(str(idx), {})[name] = value
            else:
                raise TypeError(f"optimizer state {idx}.{name} has unsupported type {type(value).__name__}")
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def optimizer_from_flat(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    """Rebuild an optimizer ``state_dict`` from :func:`optimizer_to_flat`'s parts."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = value
    for idx, st in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(st)
    groups = []
    for g in meta["param_groups"]:
        g = dict(g)
        if "betas" in g and isinstance(g["betas"], list):
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    return {"state": state, "param_groups": groups}


def save_checkpoint(folder: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
                    state: dict[str, Any]) -> Path:
    """Write a checkpoint folder atomically.

    Args:
        folder: the checkpoint folder (replaced).
        model: its ``state_dict()`` goes to ``model.safetensors``.
        optimizer: its state goes to ``optimizer.safetensors`` + ``state.json``.
        state: JSON-able training state (epoch, step, history, config, ...).
    """
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    old = folder.with_name(folder.name + ".old")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_file(_contiguous(model.state_dict()), str(tmp / "model.safetensors"))
    meta: dict[str, Any] = {"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION, **state}
    if optimizer is not None:
        tensors, opt_meta = optimizer_to_flat(optimizer)
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        meta["optimizer"] = opt_meta
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["cuda"] = torch.cuda.get_rng_state()
    save_file(rng, str(tmp / "rng.safetensors"))
    (tmp / "state.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
    if folder.exists():
        if old.exists():
            shutil.rmtree(old)
        folder.rename(old)
    tmp.rename(folder)
    if old.exists():
        shutil.rmtree(old)
    return folder


def find_checkpoint(folder: str | Path) -> Path | None:
    """The usable checkpoint at ``folder`` (or its ``.old`` twin left by an interrupted save)."""
    folder = Path(folder)
    for cand in (folder, folder.with_name(folder.name + ".old")):
        if (cand / "state.json").is_file() and (cand / "model.safetensors").is_file():
            return cand
    return None


def load_checkpoint_folder(folder: str | Path, model: torch.nn.Module,
                           optimizer: torch.optim.Optimizer | None = None,
                           restore_rng: bool = True) -> dict[str, Any]:
    """Restore model (strict), optimizer and RNG from a checkpoint folder; return its ``state.json``.

    Raises:
        FileNotFoundError: when no checkpoint is there.
        ValueError: when it is not a dnsvr training checkpoint.
    """
    found = find_checkpoint(folder)
    if found is None:
        raise FileNotFoundError(f"no training checkpoint in {folder}")
    meta = json.loads((found / "state.json").read_text())
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{found}: not a dnsvr training checkpoint")
    model.load_state_dict(load_file(str(found / "model.safetensors")), strict=True)
    if optimizer is not None and (found / "optimizer.safetensors").is_file():
        optimizer.load_state_dict(optimizer_from_flat(load_file(str(found / "optimizer.safetensors")),
                                                      meta["optimizer"]))
    if restore_rng and (found / "rng.safetensors").is_file():
        rng = load_file(str(found / "rng.safetensors"))
        torch.set_rng_state(rng["cpu"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])
    return meta


def write_final(output_dir: str | Path, model: torch.nn.Module, config: dict[str, Any]) -> None:
    """Write a run's final ``model.safetensors`` and ``config.json`` (the files loaders read)."""
    output_dir = Path(output_dir)
    save_file(_contiguous(model.state_dict()), str(output_dir / "model.safetensors"))
    (output_dir / "config.json").write_text(json.dumps(config, indent=1, sort_keys=True))

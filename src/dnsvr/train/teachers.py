"""Teachers for distillation: what scores a (video, video) pair during mining.

A teacher turns a video's ``[T, 9, D]`` features into a prepared representation
once (:meth:`Teacher.prepare`) and then scores an anchor against many prepared
candidates (:meth:`Teacher.similarities`). Three kinds exist:

* ``"chamfer"`` — the training-free fine similarity of the ``lite`` profile
  (Chamfer over regions, then over frames; :func:`dnsvr.nn.similarity.chamfer_video_similarity`).
* ``"visil"`` / ``"visil_symmetric"`` — the published ViSiL teacher head
  (3840-d regions, resp. 512-d), weights resolved through :mod:`dnsvr.weights`.
* a path — a trained fine-grained attention student (our safetensors checkpoint,
  a bundle's fine stage, or a reference ``.pth``): the DnS "iterating" scheme, where
  a student of one round is the teacher of the next.

Every teacher has an ``identity`` dict that is stored with mined pairs, so the
provenance of every training target is known.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

logger = logging.getLogger(__name__)


class Teacher(Protocol):
    """What mining needs from a teacher."""

    identity: dict[str, Any]

    def prepare(self, features: np.ndarray) -> Any:
        """Per-video representation (computed once per video, cached by the miner)."""

    def similarities(self, query: Any, targets: list[Any]) -> np.ndarray:
        """Similarities ``[len(targets)]`` of one prepared query to prepared targets."""


class ChamferTeacher:
    """Training-free teacher: Chamfer over regions → frame-to-frame matrix → Chamfer over frames."""

    def __init__(self, device: str = "cpu") -> None:
        self.device = torch.device(device)
        self.identity = {"kind": "chamfer"}

    def prepare(self, features: np.ndarray) -> torch.Tensor:
        x = torch.as_tensor(np.ascontiguousarray(features), dtype=torch.float32, device=self.device)
        return torch.nn.functional.normalize(x, p=2, dim=-1)

    @torch.no_grad()
    def similarities(self, query: torch.Tensor, targets: list[torch.Tensor], batch_size: int = 32) -> np.ndarray:
        from dnsvr.nn.similarity import chamfer_video_similarity

        from dnsvr.train.data import pad_videos

        out: list[np.ndarray] = []
        for s in range(0, len(targets), batch_size):
            x, m = pad_videos([t.cpu() for t in targets[s:s + batch_size]])
            sims = chamfer_video_similarity(query, x.to(self.device), target_mask=m.to(self.device))
            out.append(sims.reshape(-1).float().cpu().numpy())
        return np.concatenate(out).astype(np.float32) if out else np.zeros(0, np.float32)


class NetworkTeacher:
    """A network with ``index_video`` and ``calculate_video_similarity`` (ViSiL head or fine student).

    Args:
        model: the network (put in ``eval()`` mode here).
        identity: provenance stored with mined pairs.
        device: where it runs.
    """

    def __init__(self, model: torch.nn.Module, identity: dict[str, Any], device: str = "cpu") -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.identity = identity

    @torch.no_grad()
    def prepare(self, features: np.ndarray) -> torch.Tensor:
        x = torch.as_tensor(np.ascontiguousarray(features), dtype=torch.float32, device=self.device)
        return self.model.index_video(x.unsqueeze(0)).squeeze(0)

    @torch.no_grad()
    def similarities(self, query: torch.Tensor, targets: list[torch.Tensor]) -> np.ndarray:
        out = [float(self.model.calculate_video_similarity(query, t).reshape(-1)[0]) for t in targets]
        return np.array(out, dtype=np.float32)


def state_dict_digest(state: dict[str, torch.Tensor]) -> str:
    """A short content hash of a state dict (provenance of a teacher or student)."""
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        h.update(key.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()[:16]


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load network weights from a ``.safetensors`` file, a checkpoint folder, or a reference ``.pth``.

    Raises:
        FileNotFoundError: when nothing loadable is at ``path``.
    """
    path = Path(path)
    if path.is_dir():
        for name in ("model.safetensors", "fine.safetensors", "fg_att_student.safetensors"):
            if (path / name).is_file():
                path = path / name
                break
        else:
            raise FileNotFoundError(f"no model.safetensors / fine.safetensors in folder {path}")
    if not path.is_file():
        raise FileNotFoundError(f"teacher/student weights not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        from dnsvr.weights import load_checkpoint
    except ImportError:  # the registry module is optional here: our own exports hold tensors only
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        return ckpt["model"] if isinstance(ckpt, dict) and "model" in ckpt else ckpt
    return load_checkpoint(path)


def load_teacher(spec: str | Path, dims: int | None = None, device: str = "cpu",
                 offline: bool | None = None) -> Teacher:
    """Build a teacher from a name or a weights path.

    Args:
        spec: ``"chamfer"``, ``"visil"`` (3840-d features), ``"visil_symmetric"`` (512-d), ``"auto"``
            (``visil`` for 3840-d features, else ``chamfer``), or a path to fine-grained attention student weights.
        dims: feature dimensionality (checked against the teacher's when known).
        device: ``"cpu"`` or ``"cuda"``.
        offline: passed to :func:`dnsvr.weights.resolve_weights` for published weights.

    Returns:
        A :class:`Teacher`.

    Raises:
        ValueError: on an unknown name or weights that do not fit ``dims``.
    """
    spec_s = str(spec)
    if spec_s == "auto":
        # raw ResNet-50 regions (the paper profile's teacher input) → the published ViSiL teacher
        spec_s = "visil" if dims == 3840 else "chamfer"
        logger.info("teacher 'auto' → %r for %s-d features", spec_s, dims)
    if spec_s == "chamfer":
        return ChamferTeacher(device)
    if spec_s in ("visil", "visil_symmetric"):
        from dnsvr.nn import ViSiLTeacher
        from dnsvr.weights import load_checkpoint, resolve_weights

        state = load_checkpoint(resolve_weights(spec_s, offline=offline))
        tdims = int(state["attention.context_vector.weight"].shape[1])
        if dims is not None and dims != tdims:
            raise ValueError(f"teacher {spec_s!r} expects {tdims}-d region features, the collection has {dims}-d")
        model = ViSiLTeacher(dims=tdims, attention=True, video_comperator=True,
                             symmetric=spec_s == "visil_symmetric")
        model.load_state_dict(state, strict=True)
        return NetworkTeacher(model, {"kind": spec_s, "digest": state_dict_digest(state)}, device)
    path = Path(spec_s)
    if not path.exists():
        raise ValueError(f"unknown teacher {spec_s!r}: use 'auto', 'chamfer', 'visil', 'visil_symmetric' "
                         f"or the path of a trained fine-grained attention student")
    from dnsvr.nn import FineGrainedStudent

    state = load_state_dict(path)
    if "attention.transform.weight" not in state:
        raise ValueError(f"{path}: not a fine-grained attention student (keys: {sorted(state)[:6]}...)")
    sdims = int(state["attention.transform.weight"].shape[0])
    if dims is not None and dims != sdims:
        raise ValueError(f"teacher {path} expects {sdims}-d features, the collection has {dims}-d")
    model = FineGrainedStudent(dims=sdims, attention=True)
    model.load_state_dict(state, strict=True)
    return NetworkTeacher(model, {"kind": "fg_att_student", "path": str(path),
                                  "digest": state_dict_digest(state)}, device)


def identity_json(identity: dict[str, Any]) -> str:
    return json.dumps(identity, sort_keys=True)

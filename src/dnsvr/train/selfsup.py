"""A self-supervised fine teacher: the S^f_A network trained on made positives, without labels (S2VS).

Each video of the collection comes with *views*: itself and its augmented copies
(:mod:`dnsvr.train.video_augment`, features cached once). Every step takes ``B`` videos, two different
views of each (windows of at most ``max_frames`` frames at one random relative position), and computes
the network's similarity of every view of the first set with every view of the second: a ``B × B`` matrix
whose diagonal holds the positive pairs and whose other entries are in-batch negatives. The loss is
InfoNCE in both directions (cross-entropy of ``S / temperature`` against the diagonal, rows and columns
averaged), plus
``r_parameter`` × ViSiL's similarity regulariser on the comparator outputs (the amount by which they leave
[-1, 1], summed over the matrices, divided by ``B``: the same scale per pair as the DnS students' loss).

The network is a :class:`dnsvr.nn.FineGrainedStudent` with attention — the S^f_A layout — so the run
folder (``model.safetensors`` + ``config.json``, as :func:`dnsvr.train.students.train_student` writes)
loads as a teacher (``dnsvr train mine --teacher RUN``), as a student (``init``), and in a bundle.

All randomness derives from ``(seed, epoch, video)``; with the per-epoch checkpoints of
:mod:`dnsvr.train.checkpoint` a resumed run ends with the same weights as an uninterrupted one.

Example:
    >>> views = views_of(FeatureFile("collection.h5").ids())          # doctest: +SKIP
    >>> train_teacher("collection.h5", views, "runs/teacher", TeacherTrainConfig(epochs=20))
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dnsvr._progress import progress_bar
from dnsvr.features import FeatureFile
from dnsvr.train.checkpoint import find_checkpoint, load_checkpoint_folder, save_checkpoint, write_final
from dnsvr.train.data import _rng, pad_videos

logger = logging.getLogger(__name__)

#: Separates a video id from its copy number in a collection file: ``"clip7#copy1"``.
COPY_SEPARATOR = "#copy"


def copy_id(video_id: str, copy: int) -> str:
    """The id of augmented copy ``copy`` of ``video_id``."""
    return f"{video_id}{COPY_SEPARATOR}{int(copy)}"


def views_of(ids: Sequence[str]) -> dict[str, list[str]]:
    """Group a collection's ids into views: ``{original: [original, copies...]}`` (originals in file order).

    Copies whose original is not in ``ids`` are left out.
    """
    present = set(ids)
    out: dict[str, list[str]] = {v: [v] for v in ids if COPY_SEPARATOR not in v}
    for v in ids:
        if COPY_SEPARATOR in v:
            orig = v.rsplit(COPY_SEPARATOR, 1)[0]
            if orig in present and orig in out:
                out[orig].append(v)
    return out


@dataclass
class TeacherTrainConfig:
    """How to train the self-supervised teacher (stored in ``config.json`` and checkpoints).

    Attributes:
        epochs: passes over the videos (each video once per epoch, with two of its views).
        batch_size: videos per step (``B``: ``B - 1`` in-batch negatives per positive pair).
        learning_rate: Adam lr.
        weight_decay: Adam weight decay.
        temperature: InfoNCE temperature.
        r_parameter: weight of the similarity regulariser.
        max_frames: a view is a window of at most this many frames (at one random relative position in
            both views of a pair); the step's cost grows with ``(batch_size · max_frames)²``.
        seed: seeds the initial weights and every draw.
        amp: bfloat16 autocast on CUDA.
        network: extra constructor arguments of the network.
        start: ``"chamfer"`` — the network starts as (about) the training-free Chamfer similarity
            (:func:`chamfer_start`); ``"random"`` — the reference's random initialisation.
        start_noise: scale of the random weights left around the Chamfer start (times their Xavier init).
    """

    epochs: int = 10
    batch_size: int = 16
    learning_rate: float = 1e-4
    weight_decay: float = 0.0
    temperature: float = 0.07
    r_parameter: float = 1e-3
    max_frames: int = 16
    seed: int = 0
    amp: bool = True
    network: dict[str, Any] = field(default_factory=dict)
    start: str = "chamfer"
    start_noise: float = 0.05


@torch.no_grad()
def chamfer_start(model: torch.nn.Module, noise: float = 0.05) -> None:
    """Set an S^f_A network (fresh, Xavier-initialised) to compute about the training-free similarity.

    The attention starts uniform (context vector 0: every region weighted 0.5, so region products are a
    quarter of the cosines); the comparator passes the frame-to-frame matrix through one channel of each
    layer (the 3×3 convolutions' centre taps, gain 4 in the first to undo the quarter, the 1×1 convolution's
    weight 1) and its two 2×2 max-poolings: the output is the matrix's positive part max-pooled over 4×4
    frame blocks, and the network's similarity the Chamfer similarity of that — the training-free fine
    similarity at a quarter of the time resolution (1 for a video and itself). Every other weight keeps
    ``noise`` × its random init, so training can use all channels. On a small collection the teacher then
    starts where the training-free default is, instead of from a random comparator, and InfoNCE moves it
    from there.
    """
    model.attention.context_vector.weight.zero_()
    head = model.visil_head
    for conv in (head.conv1, head.conv2, head.conv3, head.fconv):
        conv.weight.mul_(noise)
        conv.bias.zero_()
    head.conv1.weight[0, 0, 1, 1] = 4.0
    head.conv2.weight[0, 0, 1, 1] = 1.0
    head.conv3.weight[0, 0, 1, 1] = 1.0
    head.fconv.weight[0, 0, 0, 0] = 1.0


@dataclass
class TeacherResult:
    """What :func:`train_teacher` returns: the network (eval, CPU), ``config.json``, history, folder."""

    model: torch.nn.Module
    config: dict[str, Any]
    history: list[dict[str, Any]]
    output_dir: Path


def all_pairs_similarity(model: torch.nn.Module, a: torch.Tensor, b: torch.Tensor, a_mask: torch.Tensor,
                         b_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Similarity of every indexed video of ``a`` with every one of ``b``, and the regulariser.

    Args:
        model: a :class:`dnsvr.nn.FineGrainedStudent`.
        a, b: ``[A, T, R, D]`` / ``[B, T', R, D]`` outputs of ``index_video``.
        a_mask, b_mask: ``[A, T]`` / ``[B, T']``.

    Returns:
        ``(S [A, B], regulariser)`` — the regulariser as ``model.sim_criterion`` sums it over all ``A·B``
        comparator outputs.
    """
    q, t, qm, tm = model._prepare_pair(a, b, a_mask, b_mask)
    sim, sim_mask = model.frame_to_frame_similarity(q, t, qm, tm)
    out, out_mask = model.visil_head(sim, sim_mask)
    reg = model.sim_criterion(out)
    s = model.v2v_sim(model.htanh(out), out_mask)
    return s.view(q.shape[0], t.shape[0]), reg


def info_nce(similarity: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE of a ``[B, B]`` similarity matrix whose diagonal holds the positive pairs."""
    logits = similarity.float() / temperature
    target = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


class _Views:
    """The views of every video, in memory, cut to ``max_frames`` at random per epoch."""

    def __init__(self, features: str | Path, views: Mapping[str, Sequence[str]], max_frames: int) -> None:
        self.names = [v for v in views if len(views[v]) >= 2]
        if len(self.names) < 2:
            raise ValueError(f"{features}: need at least 2 videos with an augmented copy to train the teacher, "
                             f"found {len(self.names)}")
        with FeatureFile(features) as ff:
            self.data = [[np.asarray(ff.read(v), dtype=np.float32) for v in views[n]] for n in self.names]
        self.max_frames = max_frames

    def __len__(self) -> int:
        return len(self.names)

    @property
    def dims(self) -> int:
        return int(self.data[0][0].shape[-1])

    def pair(self, seed: int, epoch: int, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Two different views of video ``i``, each cut to a window of at most ``max_frames`` frames that
        starts at the same relative position in both (so the windows show about the same content)."""
        rng = _rng(seed, 21, epoch, i)
        k = len(self.data[i])
        first = int(rng.integers(k))
        second = (first + 1 + int(rng.integers(k - 1))) % k
        where = float(rng.random())

        def window(x: np.ndarray) -> np.ndarray:
            start = int(where * max(len(x) - self.max_frames, 0) + 0.5)
            return x[start:start + self.max_frames]

        return window(self.data[i][first]), window(self.data[i][second])


def _batches(n: int, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    order = _rng(seed, 20, epoch).permutation(n)
    out = [order[s:s + batch_size] for s in range(0, n, batch_size)]
    if len(out) > 1 and len(out[-1]) < 2:  # InfoNCE needs a negative: fold a lone video into the batch before
        out[-2] = np.concatenate([out[-2], out.pop()])
    return out


def train_teacher(features: str | Path, views: Mapping[str, Sequence[str]], output_dir: str | Path,
                  config: TeacherTrainConfig | None = None, resume: bool = False, device: str = "cpu",
                  progress: bool | None = None, stop_after_epochs: int | None = None) -> TeacherResult:
    """Train the self-supervised fine teacher on a collection with augmented copies.

    Args:
        features: feature file holding every video and its copies (see :func:`views_of`).
        views: video → its views' ids (the video itself and its copies); videos with one view are skipped.
        output_dir: run folder (``last/`` checkpoint, ``model.safetensors``, ``config.json``).
        config: the training configuration.
        resume: continue from ``output_dir/last`` (same configuration required).
        device: ``"cpu"`` or ``"cuda"``.
        progress: progress on stderr (default: a bar on a terminal).
        stop_after_epochs: stop after this many epochs of this call (checkpointed; ``resume`` continues).

    Returns:
        A :class:`TeacherResult`.

    Raises:
        ValueError: fewer than 2 videos with copies, or a checkpoint of another configuration.
    """
    from dnsvr.train.students import build_student, network_config

    config = config or TeacherTrainConfig()
    if config.start not in ("chamfer", "random"):
        raise ValueError(f"teacher start must be 'chamfer' or 'random', got {config.start!r}")
    output_dir, dev = Path(output_dir), torch.device(device)
    data = _Views(features, views, config.max_frames)
    torch.manual_seed(config.seed)
    model = build_student("fg-att", data.dims, **config.network)
    if config.start == "chamfer":
        chamfer_start(model, config.start_noise)
    model = model.to(dev).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    cfg_json: dict[str, Any] = {"network": network_config("fg-att", data.dims, config.network),
                                "training": asdict(config), "features": str(features), "videos": len(data),
                                "teacher": {"kind": "selfsup", "loss": "info_nce+similarity_regularisation"}}
    start, step, history = 0, 0, []
    output_dir.mkdir(parents=True, exist_ok=True)
    if resume and find_checkpoint(output_dir / "last") is not None:
        meta = load_checkpoint_folder(output_dir / "last", model, optimizer)
        if meta["config"]["training"] != cfg_json["training"] or meta["config"]["network"] != cfg_json["network"]:
            raise ValueError(f"{output_dir}/last was trained with another config; use another folder or the same "
                             "options")
        start, step, history = meta["epoch"] + 1, meta["global_step"], meta["history"]
        logger.info("resuming the teacher in %s at epoch %d", output_dir, start)
    autocast = (torch.autocast(device_type="cuda", dtype=torch.bfloat16) if config.amp and dev.type == "cuda"
                else torch.autocast(device_type="cpu", enabled=False))
    runs = 0
    with progress_bar(progress) as bar:
        for epoch in range(start, config.epochs):
            if stop_after_epochs is not None and runs >= stop_after_epochs:
                break
            batches = _batches(len(data), config.batch_size, config.seed, epoch)
            task = bar.add_task(f"teacher epoch {epoch + 1}/{config.epochs}", total=len(batches))
            sums = {"loss": 0.0, "info_nce": 0.0, "regularization_loss": 0.0, "positive": 0.0, "negative": 0.0}
            t0 = time.perf_counter()
            for idx in batches:
                pairs = [data.pair(config.seed, epoch, int(i)) for i in idx]
                xa, ma = pad_videos([p[0] for p in pairs])
                xb, mb = pad_videos([p[1] for p in pairs])
                xa, ma, xb, mb = xa.to(dev), ma.to(dev), xb.to(dev), mb.to(dev)
                optimizer.zero_grad(set_to_none=True)
                with autocast:
                    s, reg = all_pairs_similarity(model, model.index_video(xa, ma), model.index_video(xb, mb),
                                                  ma, mb)
                    nce = info_nce(s, config.temperature)
                    reg = reg.float() / len(idx)
                    loss = nce + config.r_parameter * reg
                loss.backward()
                optimizer.step()
                step += 1
                with torch.no_grad():
                    eye = torch.eye(len(idx), dtype=torch.bool, device=s.device)
                    sums["positive"] += float(s[eye].mean())
                    sums["negative"] += float(s[~eye].mean())
                sums["loss"] += float(loss.detach())
                sums["info_nce"] += float(nce.detach())
                sums["regularization_loss"] += float(reg.detach())
                bar.update(task, advance=1, info=f"loss {float(loss.detach()):.4f}")
            record: dict[str, Any] = {k: v / len(batches) for k, v in sums.items()}
            record.update(epoch=epoch, global_step=step,
                          videos_per_second=len(data) / max(time.perf_counter() - t0, 1e-9))
            history.append(record)
            logger.info("teacher epoch %d: loss %.4f, positives %.3f, negatives %.3f", epoch, record["loss"],
                        record["positive"], record["negative"])
            save_checkpoint(output_dir / "last", model, optimizer,
                            {"epoch": epoch, "global_step": step, "history": history, "config": cfg_json,
                             "best_score": None})
            runs += 1
    model = model.cpu().eval()
    cfg_json.update(history=history, finished=bool(history) and history[-1]["epoch"] == config.epochs - 1,
                    final_weights="last")
    write_final(output_dir, model, cfg_json)
    return TeacherResult(model, cfg_json, history, output_dir)

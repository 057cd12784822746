"""Distillation of the students: fine-grained attention (fg-att), fine-grained binarization (fg-bin),
coarse-grained (cg).

The recipe of DnS: every step takes a batch of (anchor, positive, negative)
triplets; the student indexes the padded videos (``index_video`` with masks),
computes its similarity of (anchor, positive) and (anchor, negative), and the
loss is the L1 distance to the teacher's similarities, plus
``r_parameter`` (1e-3) × the similarity regularisation for fine students.
Adam, lr 1e-4 for fine students and 1e-5 for the coarse one (the paper reports
the coarse student is sensitive to it); the coarse student's targets are mapped
from [-1, 1] to [0, 1] (``s/2 + 0.5``). The binarization student starts from an
ITQ projection.

One deliberate difference from the reference's initialisation: the coarse student's final
LayerNorm bias starts at ``coarse_bias_init`` (1.0) instead of 0. The LayerNorm output has zero
mean over its dimensions, so a constant bias ``b`` turns the student's cosine ``s`` of the centred
vectors into ``(s + b²) / (1 + b²)``; with ``b = 1`` that is ``s/2 + 0.5`` — exactly the mapping of
its targets. An untrained student then already speaks in the targets' range (same ranking, lower L1)
and training spends its steps on the ranking instead of first learning a large shared offset; in
short runs that offset phase scrambled the untrained ranking (see docs/notes/training.md).
``coarse_bias_init=None`` keeps the reference's zero bias. A second one: its NetVLAD clusters start from
k-means of the collection's frame vectors (:func:`init_netvlad`; ``netvlad_init="random"`` keeps the
reference's random clusters), as the binarization student's projection starts from ITQ. A third: after the
clusters, that bias is set in closed form so that the start's similarities match the teacher's on the
mined training pairs (:func:`fit_coarse_bias`; ``fit_coarse_bias=False`` keeps ``coarse_bias_init``): the
map ``(s + b²) / (1 + b²)`` is affine in ``s``, so the fit changes no ranking, only the scale, which the first
steps would otherwise have to learn.

Output folder of :func:`train_student`::

    last/              checkpoint after the latest epoch (model, optimizer, RNG, state.json)
    best/              checkpoint with the best validation score (when validating)
    model.safetensors  the final weights (best when validating, else last)
    config.json        network type and constructor arguments, training config, history, teacher

Example:
    >>> cfg = StudentTrainConfig(type="fg-att", epochs=5)          # doctest: +SKIP
    >>> result = train_student("pairs.h5", "features.h5", "runs/fg_att", cfg)
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dnsvr._progress import progress_bar
from dnsvr.stages import STUDENTS, Stage
from dnsvr.train.checkpoint import find_checkpoint, load_checkpoint_folder, save_checkpoint, write_final
from dnsvr.train.data import (TripletDataset, VideoStore, coarse_target, num_batches, pad_videos,
                              split_anchors)
from dnsvr.train.mining import MinedPairs

logger = logging.getLogger(__name__)

#: Student types (:data:`dnsvr.stages.STUDENTS`) → (network class name, constructor defaults besides dims).
STUDENT_TYPES: dict[str, tuple[str, dict[str, Any]]] = {
    Stage.FG_ATT.value: ("FineGrainedStudent", {"attention": True, "binarization": False}),
    Stage.FG_BIN.value: ("FineGrainedStudent", {"attention": False, "binarization": True}),
    Stage.CG.value: ("CoarseGrainedStudent", {}),
}
DEFAULT_LR = {Stage.FG_ATT.value: 1e-4, Stage.FG_BIN.value: 1e-4, Stage.CG.value: 1e-5}


def _check_type(kind: str) -> None:
    if kind not in STUDENT_TYPES:
        raise ValueError(f"unknown student type {kind!r}; choose one of {', '.join(s.value for s in STUDENTS)}")


def student_type(kind: str | Stage) -> str:
    """The canonical name of a student type (``fg_att`` / ``att`` / :attr:`Stage.FG_ATT` → ``"fg-att"``).

    Unknown names come back unchanged (:func:`_check_type` reports them where they are used).
    """
    try:
        return Stage.parse(kind, STUDENTS).value
    except ValueError:
        return str(kind)


def is_fine(kind: str) -> bool:
    return kind.startswith("fg")


def build_student(kind: str, dims: int, **kwargs: Any) -> torch.nn.Module:
    """Construct an untrained student of ``kind`` for ``dims``-d region features.

    Args:
        kind: ``"fg-att"``, ``"fg-bin"`` or ``"cg"``.
        dims: feature dimensionality.
        **kwargs: further constructor arguments (e.g. ``netvlad_clusters`` for ``cg``).

    Raises:
        ValueError: on an unknown type.
    """
    _check_type(kind)
    import dnsvr.nn as nn_mod

    cls_name, defaults = STUDENT_TYPES[kind]
    return getattr(nn_mod, cls_name)(dims=dims, **{**defaults, **kwargs})


def network_config(kind: str, dims: int, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The JSON description of a student network (class and constructor arguments)."""
    cls_name, defaults = STUDENT_TYPES[kind]
    return {"type": kind, "class": cls_name, "kwargs": {"dims": dims, **defaults, **kwargs}}


def network_from_config(config: dict[str, Any]) -> torch.nn.Module:
    """Rebuild an (untrained) network from :func:`network_config`'s dict."""
    import dnsvr.nn as nn_mod

    return getattr(nn_mod, config["class"])(**config["kwargs"])


@dataclass
class StudentTrainConfig:
    """How to train a student (stored in ``config.json`` and checkpoints).

    Attributes:
        type: ``"fg-att"``, ``"fg-bin"`` or ``"cg"``.
        epochs: passes over the anchors (one triplet per anchor and epoch).
        batch_size: triplets per optimisation step.
        learning_rate: Adam lr; default 1e-4 for fine students, 1e-5 for the coarse one.
        weight_decay: Adam weight decay.
        r_parameter: weight of the similarity regularisation (fine students).
        augmentation: temporal augmentation of positives and negatives.
        seed: seeds the initial weights and every random draw of the data pipeline.
        max_frames: videos are cut to this many frames.
        validation_fraction: share of anchors held out for validation (0: none); the best epoch is kept.
        amp: bfloat16 autocast when training on CUDA.
        in_memory: load the whole feature file into memory (default: when smaller than 4 GiB).
        itq: fg-bin initialisation: ``"fit"`` (on the collection), ``"published"``, a ``.npz`` path, or ``"none"``.
        network: extra constructor arguments of the student network.
        coarse_bias_init: initial value of the coarse student's final LayerNorm bias (1.0 maps its
            untrained cosine ``s`` to ``s/2 + 0.5``, the range of its targets); ``None``: the reference's 0.
        netvlad_init: the coarse student's NetVLAD clusters: ``"kmeans"`` fits them on the collection's
            frame vectors (see :func:`init_netvlad`), ``"random"`` keeps the reference's random ones.
        fit_coarse_bias: fit the coarse student's output bias to the teacher's similarities of the mined
            training pairs before the first step (see :func:`fit_coarse_bias`).
    """

    type: str = "fg-att"
    epochs: int = 10
    batch_size: int = 32
    learning_rate: float | None = None
    weight_decay: float = 0.0
    r_parameter: float = 1e-3
    augmentation: bool = True
    seed: int = 0
    max_frames: int = 300
    validation_fraction: float = 0.0
    amp: bool = True
    in_memory: bool | None = None
    itq: str = "fit"
    network: dict[str, Any] = field(default_factory=dict)
    coarse_bias_init: float | None = 1.0
    netvlad_init: str = "kmeans"
    fit_coarse_bias: bool = True

    def __post_init__(self) -> None:
        self.type = student_type(self.type)

    def lr(self) -> float:
        return float(self.learning_rate if self.learning_rate is not None else DEFAULT_LR[self.type])


def initial_student(config: StudentTrainConfig, dims: int) -> torch.nn.Module:
    """The student a training run starts from (seeded by ``config.seed``): :func:`build_student`, plus the
    coarse student's output offset (``config.coarse_bias_init``, see the module docstring).

    Also the fair "untrained" baseline of a run: the same weights training begins with.
    """
    torch.manual_seed(config.seed)
    model = build_student(config.type, dims, **config.network)
    if not is_fine(config.type) and config.coarse_bias_init is not None:
        netvlad = getattr(model, "netvlad", None)
        if netvlad is None:
            logger.info("coarse student without NetVLAD: no output LayerNorm, coarse_bias_init is not applied")
        else:
            with torch.no_grad():
                netvlad.norm.bias.fill_(float(config.coarse_bias_init))
    return model


@dataclass
class StudentResult:
    """What :func:`train_student` returns.

    Attributes:
        model: the trained network (final weights, ``eval()`` mode, on CPU).
        config: the contents of ``config.json``.
        history: per-epoch dicts (``epoch``, ``loss``, ``distillation_loss``, ``regularization_loss``,
            ``triplets_per_second``, and ``val_*`` when validating).
        output_dir: the run folder.
    """

    model: torch.nn.Module
    config: dict[str, Any]
    history: list[dict[str, Any]]
    output_dir: Path


def _autocast(device: torch.device, enabled: bool):
    if enabled and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return torch.autocast(device_type="cpu", enabled=False)


def triplet_step(model: torch.nn.Module, kind: str, videos: torch.Tensor, masks: torch.Tensor,
                 similarities: torch.Tensor, r_parameter: float = 1e-3
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The DnS distillation loss of one padded triplet batch.

    Args:
        model: a student.
        kind: its type.
        videos: ``[3B, T, R, D]`` anchors, positives, negatives.
        masks: ``[3B, T]``.
        similarities: ``[B, 2]`` teacher targets (already in the student's range).
        r_parameter: regularisation weight (fine students).

    Returns:
        ``(loss, distillation_loss, regularization_loss or None)``.
    """
    feats = model.index_video(videos, masks)
    a, p, n = torch.chunk(feats, 3, dim=0)
    am, pm, nm = torch.chunk(masks, 3, dim=0)
    pos, neg, reg = model(a, p, n, am, pm, nm)
    student = torch.cat([pos.reshape(-1, 1), neg.reshape(-1, 1)], 1).reshape(-1).float()
    distil = torch.nn.functional.l1_loss(student, similarities.reshape(-1).float())
    loss = distil
    if reg is not None and is_fine(kind):
        loss = loss + r_parameter * reg.float()
    return loss, distil, reg


def _init_itq(model: torch.nn.Module, cfg: StudentTrainConfig, features: Path, dims: int) -> dict[str, Any]:
    from dnsvr.train.itq import fit_itq, load_itq, published_itq, sample_regions

    layer = getattr(model, "binarization", None)
    if layer is None or cfg.itq == "none":
        return {"itq": "none"}
    bits = int(layer.W.shape[1])
    if cfg.itq == "fit":
        w = fit_itq(sample_regions(features, seed=cfg.seed), bits=bits, seed=cfg.seed)
    elif cfg.itq == "published":
        w = published_itq()
    else:
        w = load_itq(cfg.itq)
    if tuple(w.shape) != tuple(layer.W.shape):
        raise ValueError(f"ITQ projection {cfg.itq!r} has shape {tuple(w.shape)}, "
                         f"the binarization layer needs {tuple(layer.W.shape)}")
    with torch.no_grad():
        layer.W.copy_(torch.from_numpy(w))
    return {"itq": cfg.itq}


def fit_initialisation(model: torch.nn.Module, config: StudentTrainConfig, features: str | Path,
                       store: VideoStore, pairs: MinedPairs | None = None,
                       anchors: Sequence[int] | None = None) -> dict[str, Any]:
    """Fit the parts of a fresh student that start from the collection rather than at random: the
    binarization student's ITQ projection (``config.itq``), the coarse student's NetVLAD clusters
    (``config.netvlad_init``) and, given the mined ``pairs``, its output bias (``config.fit_coarse_bias``;
    the only part that sees the teacher). :func:`train_student` calls it before the first step, with the
    training anchors' pairs; it is deterministic for a given seed and collection.

    Args:
        model: a fresh student (:func:`initial_student`), changed in place.
        config: its training config.
        features: the feature file (ITQ reads it).
        store: the collection's videos, in the order of ``pairs.video_ids`` when pairs are given.
        pairs: the mined pairs; without them the coarse student's bias stays ``config.coarse_bias_init``.
        anchors: use only these anchors' pairs (default: all).

    Returns:
        What was done, for ``config.json`` (e.g. ``{"itq": "fit"}``).
    """
    if config.netvlad_init not in ("kmeans", "random"):
        raise ValueError(f"netvlad_init must be 'kmeans' or 'random'; got {config.netvlad_init!r}")
    if config.type == "fg-bin":
        return _init_itq(model, config, Path(features), store.dims)
    info: dict[str, Any] = {}
    if config.type == "cg" and hasattr(model, "netvlad"):
        if config.netvlad_init == "kmeans":
            info.update(init_netvlad(model, store, seed=config.seed))
        if config.fit_coarse_bias and pairs is not None:
            info.update(fit_coarse_bias(model, store, pairs, anchors, seed=config.seed))
    return info


#: Mean ratio of the nearest cluster's assignment weight to the second nearest's after :func:`init_netvlad`.
NETVLAD_ASSIGNMENT_RATIO = 100.0


@torch.no_grad()
def init_netvlad(model: torch.nn.Module, store: VideoStore, max_videos: int = 1000, max_vectors: int = 100_000,
                 seed: int = 0) -> dict[str, Any]:
    """Start the coarse student's NetVLAD from k-means clusters of the collection's frame vectors.

    The reference draws the clusters at random and assigns with ``softmax(x · c_k)``; with unit-scale random
    centroids that assignment is almost uniform, so the pooled vector is close to the mean frame, which
    tells same-topic videos apart from copies poorly and takes many steps to sharpen. Here, as in NetVLAD's
    own recipe (Arandjelović et al., 2016), the centroids are k-means centres of the vectors NetVLAD pools
    (:meth:`CoarseGrainedStudent.frame_vectors` of the initial network, on up to ``max_videos`` videos), and
    the assignment weights are the unit centres scaled by ``α``, chosen so that on average the nearest
    cluster gets :data:`NETVLAD_ASSIGNMENT_RATIO` times the weight of the second nearest. The layer keeps
    the reference's parameters (no assignment bias), so checkpoints stay loadable by the reference code.

    Returns:
        ``{"netvlad_init": "kmeans", "netvlad_alpha": α, "netvlad_vectors": n}``; ``{"netvlad_init":
        "random"}`` (with a warning) when the collection has fewer than two frames per cluster.
    """
    import faiss

    netvlad = model.netvlad
    k = netvlad.num_clusters
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(store))[:max_videos]
    logger.info("NetVLAD: fitting %d clusters on the frame vectors of %d videos", k, len(order))
    was_training = model.training
    model.eval()
    chunks = []
    for i in order:
        vectors, _ = model.frame_vectors(torch.from_numpy(np.ascontiguousarray(store[int(i)])))
        chunks.append(vectors[0].float().cpu().numpy())
    model.train(was_training)
    x = np.concatenate(chunks).astype(np.float32)
    if len(x) > max_vectors:
        x = x[rng.choice(len(x), max_vectors, replace=False)]
    if len(x) < 2 * k:
        logger.warning("%d frame vectors for %d NetVLAD clusters: keeping the random clusters", len(x), k)
        return {"netvlad_init": "random"}
    kmeans = faiss.Kmeans(x.shape[1], k, niter=25, seed=seed, verbose=False)
    kmeans.train(x)
    centres = kmeans.centroids.astype(np.float32)
    units = centres / np.maximum(np.linalg.norm(centres, axis=1, keepdims=True), 1e-12)
    top2 = -np.sort(-(x @ units.T), axis=1)[:, :2]
    gap = float(np.mean(top2[:, 0] - top2[:, 1]))
    alpha = math.log(NETVLAD_ASSIGNMENT_RATIO) / max(gap, 1e-6)
    netvlad.centroids.copy_(torch.from_numpy(centres))
    netvlad.conv.weight.copy_(torch.from_numpy(alpha * units).view(k, -1, 1, 1))
    logger.info("NetVLAD: %d clusters fitted on %d frame vectors, assignment scale %.3g", k, len(x), alpha)
    return {"netvlad_init": "kmeans", "netvlad_alpha": alpha, "netvlad_vectors": int(len(x))}


@torch.no_grad()
def fit_coarse_bias(model: torch.nn.Module, store: VideoStore, pairs: MinedPairs,
                    anchors: Sequence[int] | None = None, max_pairs: int = 4096, seed: int = 0) -> dict[str, Any]:
    """Set the coarse student's output bias so its similarities match the teacher's on mined pairs.

    The final LayerNorm's output has zero mean and norm √D; with its weight at 1 and its bias at ``b`` in every
    dimension, the student's similarity of two videos is ``(s + b²) / (1 + b²) = s + u (1 − s)``, where ``s``
    is the cosine of the centred vectors (the similarity at ``b = 0``) and ``u = b² / (1 + b²)``. The L1 distance
    to the targets ``t`` (:func:`~dnsvr.train.data.coarse_target` of the teacher's) is then
    ``Σ (1 − s) |u − (t − s) / (1 − s)|``, minimised by the weighted median of ``(t − s) / (1 − s)`` with
    weights ``1 − s``: a closed form, on up to ``max_pairs`` pairs of ``anchors`` (drawn with ``seed``).
    The map is affine in ``s``: it changes the scale of the start's similarities, not their order.

    Args:
        model: a coarse student with NetVLAD and its LayerNorm weight at 1 (a fresh one), changed in place.
        store: the videos, in the order of ``pairs.video_ids``.
        pairs: the mined pairs and their teacher similarities.
        anchors: use only these anchors' pairs (default: all).
        max_pairs: at most this many pairs (a random draw).
        seed: seeds the draw.

    Returns:
        ``{"coarse_bias": b, "coarse_bias_pairs": n, "coarse_bias_l1": L1 at b}``; ``{}`` (with a warning)
        when no pair is usable.
    """
    norm = model.netvlad.norm
    rows = np.arange(len(pairs)) if anchors is None else np.flatnonzero(np.isin(pairs.anchor, list(anchors)))
    if len(rows) > max_pairs:
        rows = np.sort(np.random.default_rng(seed).choice(rows, max_pairs, replace=False))
    idx = np.stack([pairs.anchor[rows], pairs.other[rows]], 1)
    was_training = model.training
    saved = norm.bias.detach().clone()
    norm.bias.zero_()
    s = pair_similarities(model, "cg", store, idx).astype(np.float64)
    model.train(was_training)
    t = coarse_target(np.asarray(pairs.similarity[rows], dtype=np.float64))
    weight = 1.0 - s
    usable = weight > 1e-6  # identical vectors: their similarity is 1 whatever the bias
    if not usable.any():
        norm.bias.copy_(saved)
        logger.warning("no pair to fit the coarse student's output bias on: keeping it at %.3g", float(saved[0]))
        return {}
    ratio, weight = (t - s)[usable] / weight[usable], weight[usable]
    order = np.argsort(ratio)
    cumulative = np.cumsum(weight[order])
    u = float(ratio[order][np.searchsorted(cumulative, 0.5 * cumulative[-1])])
    u = min(max(u, 0.0), 0.99)  # b from 0 (the reference's) to ~10
    b = math.sqrt(u / (1.0 - u))
    norm.bias.fill_(b)
    l1 = float(np.abs(s + u * (1.0 - s) - t).mean())
    logger.info("coarse output bias fitted on %d pairs: %.3g (L1 to the teacher %.4f)", len(rows), b, l1)
    return {"coarse_bias": b, "coarse_bias_pairs": int(len(rows)), "coarse_bias_l1": l1}


@torch.no_grad()
def evaluate_triplets(model: torch.nn.Module, kind: str, dataset: TripletDataset, batch_size: int,
                      device: torch.device, amp: bool = True) -> dict[str, float]:
    """L1 to the teacher and Pearson correlation on a fixed (unaugmented) triplet set."""
    was_training = model.training
    model.eval()
    dataset.set_epoch(0)
    student, teacher = [], []
    for batch in dataset.batches(batch_size, shuffle=False):
        b = batch.to(device)
        with _autocast(device, amp):
            feats = model.index_video(b.videos, b.masks)
            a, p, n = torch.chunk(feats, 3, dim=0)
            am, pm, nm = torch.chunk(b.masks, 3, dim=0)
            pos, neg, _ = model(a, p, n, am, pm, nm)
        student.append(torch.cat([pos.reshape(-1, 1), neg.reshape(-1, 1)], 1).float().cpu().numpy().ravel())
        teacher.append(b.similarities.cpu().numpy().ravel())
    model.train(was_training)
    s, t = np.concatenate(student), np.concatenate(teacher)
    return {"l1": float(np.abs(s - t).mean()), "pearson": pearson(s, t)}


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation (0 when either side is constant)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    a, b = a - a.mean(), b - b.mean()
    den = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else 0.0


def ranking_agreement(student: np.ndarray, teacher: np.ndarray, groups: np.ndarray) -> float:
    """Mean Spearman rank correlation between student and teacher similarities within each group.

    With ``groups`` = the anchor of each pair this measures what retrieval needs: does the student
    rank each anchor's videos like the teacher (irrespective of offsets between anchors)?
    Groups of fewer than 3 pairs are skipped.
    """
    student, teacher, groups = np.asarray(student), np.asarray(teacher), np.asarray(groups)
    out = []
    for g in np.unique(groups):
        m = groups == g
        if m.sum() >= 3:
            out.append(pearson(np.argsort(np.argsort(student[m], kind="stable"), kind="stable"),
                               np.argsort(np.argsort(teacher[m], kind="stable"), kind="stable")))
    return float(np.mean(out)) if out else 0.0


def train_student(pairs: str | Path | MinedPairs, features: str | Path, output_dir: str | Path,
                  config: StudentTrainConfig | None = None, resume: bool = False, device: str = "cpu",
                  progress: bool | None = None,
                  validator: Callable[[torch.nn.Module], dict[str, float]] | None = None,
                  init_state: dict[str, torch.Tensor] | None = None,
                  stop_after_epochs: int | None = None) -> StudentResult:
    """Distil a student from mined teacher similarities.

    Args:
        pairs: a mined-pairs file (:func:`dnsvr.train.mining.mine`) or its loaded :class:`MinedPairs`.
        features: the students' feature file: the one the pairs were mined on, or another one with the
            same video ids (e.g. whitened 512-d features when the teacher scored raw 3840-d regions).
        output_dir: run folder (checkpoints, final weights, ``config.json``).
        config: training configuration (default :class:`StudentTrainConfig`).
        resume: continue from ``output_dir/last`` (same config required); the result is the same as an
            uninterrupted run with the same seed.
        device: ``"cpu"`` or ``"cuda"``.
        progress: progress bar with loss figures (default: when stderr is a terminal).
        validator: optional ``model -> {"score": float, ...}`` (higher is better, e.g. mAP on a benchmark);
            without it and with ``validation_fraction > 0`` the score is minus the held-out L1.
        init_state: start from these weights (e.g. a published student) instead of random ones.
        stop_after_epochs: stop (with a checkpoint) after this many epochs of *this call* — for tests and
            time-sliced runs; ``resume=True`` continues.

    Returns:
        A :class:`StudentResult`.

    Raises:
        ValueError: on an unknown type, a config that differs from the one being resumed, or no usable anchor.
    """
    config = config or StudentTrainConfig()
    _check_type(config.type)
    pairs = pairs if isinstance(pairs, MinedPairs) else MinedPairs(pairs)
    features, output_dir = Path(features), Path(output_dir)
    dev = torch.device(device)
    # The students' features may differ from the ones the teacher scored (e.g. 3840-d regions for ViSiL,
    # 512-d whitened ones for the students), as long as the video ids match.
    store = VideoStore(features, pairs.video_ids, in_memory=config.in_memory, max_frames=config.max_frames)
    dims = store.dims
    train_anchors, val_anchors = split_anchors(pairs, config.validation_fraction, config.seed)
    coarse = not is_fine(config.type)
    train_set = TripletDataset(pairs, store, coarse_targets=coarse, augmentation=config.augmentation,
                               seed=config.seed, anchors=train_anchors)
    if not len(train_set):
        raise ValueError(f"{pairs.path}: no anchor has both a positive and a negative; mine with more candidates")
    val_set = TripletDataset(pairs, store, coarse_targets=coarse, augmentation=False, seed=config.seed,
                             anchors=val_anchors) if val_anchors else None

    model = initial_student(config, dims)
    resuming = resume and find_checkpoint(output_dir / "last") is not None
    init_info: dict[str, Any] = {}
    if init_state is not None:
        model.load_state_dict(init_state, strict=True)
        init_info = {"init": "given state"}
    elif not resuming:  # a resumed run takes its weights, and what its start was, from the checkpoint
        init_info = fit_initialisation(model, config, features, store, pairs, train_anchors)
    model.to(dev).train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=config.lr(),
                                 weight_decay=config.weight_decay)

    cfg_json = {"network": network_config(config.type, dims, config.network), "training": asdict(config),
                "teacher": pairs.params.get("teacher"), "pairs": str(pairs.path), "features": str(features),
                **init_info}
    start_epoch, global_step, history = 0, 0, []
    best_score: float | None = None
    output_dir.mkdir(parents=True, exist_ok=True)
    if resuming:
        meta = load_checkpoint_folder(output_dir / "last", model, optimizer)
        if meta["config"]["training"] != cfg_json["training"] or meta["config"]["network"] != cfg_json["network"]:
            raise ValueError(f"{output_dir}/last was trained with another config; "
                             f"use another output folder or the same options")
        cfg_json = {**meta["config"], **cfg_json}  # keeps the start's record (e.g. netvlad_alpha, itq)
        start_epoch, global_step, history = meta["epoch"] + 1, meta["global_step"], meta["history"]
        best_score = meta.get("best_score")
        logger.info("resuming %s at epoch %d", output_dir, start_epoch)
    elif resume:
        logger.info("nothing to resume in %s; starting fresh", output_dir)

    epochs_run = 0
    with progress_bar(progress) as bar:
        for epoch in range(start_epoch, config.epochs):
            if stop_after_epochs is not None and epochs_run >= stop_after_epochs:
                break
            train_set.set_epoch(epoch)
            nb = num_batches(len(train_set), config.batch_size)
            task = bar.add_task(f"{config.type} epoch {epoch + 1}/{config.epochs}", total=nb)
            sums = {"loss": 0.0, "distillation_loss": 0.0, "regularization_loss": 0.0}
            t0, seen, steps = time.perf_counter(), 0, 0
            model.train()
            for batch in train_set.batches(config.batch_size):
                b = batch.to(dev)
                optimizer.zero_grad(set_to_none=True)
                with _autocast(dev, config.amp):
                    loss, distil, reg = triplet_step(model, config.type, b.videos, b.masks, b.similarities,
                                                     config.r_parameter)
                loss.backward()
                optimizer.step()
                global_step += 1
                seen += b.similarities.shape[0]
                sums["loss"] += float(loss.detach())
                sums["distillation_loss"] += float(distil.detach())
                sums["regularization_loss"] += float(reg.detach()) if reg is not None else 0.0
                steps += 1
                bar.update(task, advance=1, info=f"loss {float(loss.detach()):.4f} (avg {sums['loss'] / steps:.4f})")
            record: dict[str, Any] = {k: v / nb for k, v in sums.items()}
            record.update(epoch=epoch, global_step=global_step,
                          triplets_per_second=seen / max(time.perf_counter() - t0, 1e-9))
            score = None
            if validator is not None:
                model.eval()
                val = validator(model)
                model.train()
                record.update({f"val_{k}": v for k, v in val.items()})
                score = float(val["score"])
            elif val_set is not None:
                val = evaluate_triplets(model, config.type, val_set, config.batch_size, dev, config.amp)
                record.update({f"val_{k}": v for k, v in val.items()})
                score = -val["l1"]
            history.append(record)
            logger.info("%s epoch %d: %s", config.type, epoch,
                        ", ".join(f"{k} {v:.4f}" for k, v in record.items() if isinstance(v, float)))
            improved = score is not None and (best_score is None or score > best_score)
            if improved:
                best_score = score
            state = {"epoch": epoch, "global_step": global_step, "history": history, "config": cfg_json,
                     "best_score": best_score}
            save_checkpoint(output_dir / "last", model, optimizer, state)
            if improved:
                save_checkpoint(output_dir / "best", model, None, state)
            epochs_run += 1

    finished = bool(history) and history[-1]["epoch"] == config.epochs - 1
    final_from = output_dir / ("best" if best_score is not None and find_checkpoint(output_dir / "best")
                               else "last")
    if find_checkpoint(final_from) is not None and final_from.name == "best":
        load_checkpoint_folder(final_from, model, None, restore_rng=False)
    model = model.cpu().eval()
    cfg_json.update(history=history, finished=finished, final_weights=final_from.name, best_score=best_score)
    write_final(output_dir, model, cfg_json)
    store.close()
    return StudentResult(model, cfg_json, history, output_dir)


def load_student(run_dir: str | Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Load a trained student from a :func:`train_student` folder (``model.safetensors`` + ``config.json``).

    Raises:
        FileNotFoundError: when either file is missing.
    """
    from safetensors.torch import load_file

    run_dir = Path(run_dir)
    cfg_path, w_path = run_dir / "config.json", run_dir / "model.safetensors"
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise FileNotFoundError(f"{p} not found (is {run_dir} a student training folder?)")
    cfg = json.loads(cfg_path.read_text())
    model = network_from_config(cfg["network"])
    model.load_state_dict(load_file(str(w_path)), strict=True)
    return model.eval(), cfg


@torch.no_grad()
def pair_similarities(model: torch.nn.Module, kind: str, videos: Callable[[int], np.ndarray] | Sequence,
                      pairs: np.ndarray, batch_size: int = 16, device: str = "cpu") -> np.ndarray:
    """Similarities of a student for many (i, j) video pairs.

    Args:
        model: a student (put in eval mode here).
        kind: its type (``fg-*``: ``calculate_video_similarity`` per pair; ``cg``: dot products
            of per-video ``index_video`` vectors).
        videos: index → ``[T, R, D]`` features (a :class:`~dnsvr.train.data.VideoStore` or a list).
        pairs: ``[P, 2]`` int video indices.
        batch_size: videos per ``index_video`` call.
        device: where to run.

    Returns:
        float32 ``[P]`` similarities in the student's own range.
    """
    _check_type(kind)
    dev = torch.device(device)
    model = model.to(dev).eval()
    get = videos if callable(videos) and not isinstance(videos, Sequence) else videos.__getitem__
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    needed = np.unique(pairs)
    reps: dict[int, torch.Tensor] = {}
    for s in range(0, len(needed), batch_size):
        idx = [int(i) for i in needed[s:s + batch_size]]
        vids = [get(i) for i in idx]
        x, m = pad_videos(vids)
        out = model.index_video(x.to(dev), m.to(dev))
        for k, i in enumerate(idx):
            reps[i] = out[k] if not is_fine(kind) else out[k, :len(vids[k])]
    sims = np.zeros(len(pairs), dtype=np.float32)
    if not is_fine(kind):
        for r, (i, j) in enumerate(pairs):
            sims[r] = float((reps[int(i)] * reps[int(j)]).sum())
        return sims
    # The batched fine path of the search (same results as calculate_video_similarity per pair).
    from dnsvr.fine import FineComparator, fine_similarities

    comparator = FineComparator(model)
    fine_type = Stage.parse(kind, STUDENTS).fine_type
    for i in np.unique(pairs[:, 0]):
        rows = np.flatnonzero(pairs[:, 0] == i)
        query = reps[int(i)].float().cpu()
        cands = [reps[int(j)].float().cpu() for j in pairs[rows, 1]]
        sims[rows], _ = fine_similarities(query, cands, fine_type, comparator)
    return sims

"""Selector training: learn which (query, candidate) pairs deserve the fine-grained student.

For every mined pair the trained fine student's similarity ``s_f`` (in [-1, 1])
and the coarse student's ``s_c`` (in [0, 1]) are computed; the pair's label is 1
when they disagree, ``|s_f/2 + 0.5 − s_c| > threshold`` (default 0.2): re-ranking
it with the fine student changes its score a lot. The recipe's 0.2 fits the published
teacher's spread; ``positive_share`` instead sets the threshold from the data (the
given share of pairs with the largest disagreement is labelled 1), for teachers and
students whose similarities lie closer together. The selector (per-video
self-similarity from an attention + comparator head, and an MLP over
``[query self-sim, candidate self-sim, s_c]``) is trained with binary
cross-entropy and Adam (lr 1e-4) on class-balanced samples drawn afresh each epoch.

Output folder of :func:`train_selector`: ``last/`` (and ``best/`` when validating)
checkpoints, ``model.safetensors`` and ``config.json`` (label statistics, history).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dnsvr._progress import progress_bar
from dnsvr.train.checkpoint import find_checkpoint, load_checkpoint_folder, save_checkpoint, write_final
from dnsvr.train.data import VideoStore, _rng, pad_videos
from dnsvr.train.mining import MinedPairs
from dnsvr.train.students import load_student, pair_similarities

logger = logging.getLogger(__name__)

#: Fewer optimisation steps than this in a whole run draw a warning (the selector barely leaves its init).
MIN_SELECTOR_STEPS = 100


@dataclass
class SelectorTrainConfig:
    """How to train the selector (stored in ``config.json``).

    Attributes:
        epochs: passes of balanced samples.
        batch_size: pairs per step.
        learning_rate: Adam lr.
        weight_decay: Adam weight decay.
        threshold: label 1 when the fine and coarse similarities differ by more than this.
        positive_share: when given (0 < share < 1), the threshold is instead the disagreement exceeded by
            this share of the pairs (:func:`share_threshold`); ``threshold`` is then ignored.
        pairs_per_class: pairs drawn per class and epoch. Default: the size of the smaller class — the
            reference's balanced sampling (the larger class is subsampled afresh each epoch, no pair
            repeats); a larger value oversamples the smaller class with replacement.
        seed: seeds the initial weights and the sampling.
        max_frames: videos are cut to this many frames.
        validation_fraction: share of pairs held out (accuracy / F1 per epoch; best F1 kept).
        hidden_size: MLP width.
        num_layers: MLP hidden layers.
        in_memory: load the whole feature file into memory (default: when smaller than 4 GiB).
    """

    epochs: int = 10
    batch_size: int = 64
    learning_rate: float = 1e-4
    weight_decay: float = 0.0
    threshold: float = 0.2
    positive_share: float | None = None
    pairs_per_class: int | None = None
    seed: int = 0
    max_frames: int = 300
    validation_fraction: float = 0.0
    hidden_size: int = 100
    num_layers: int = 1
    in_memory: bool | None = None


@dataclass
class SelectorResult:
    """What :func:`train_selector` returns: the network (eval mode, CPU), ``config.json``, history, folder."""

    model: torch.nn.Module
    config: dict[str, Any]
    history: list[dict[str, Any]]
    output_dir: Path


def selector_labels(fine: np.ndarray, coarse: np.ndarray, threshold: float = 0.2) -> np.ndarray:
    """Binary labels ``|fine/2 + 0.5 − coarse| > threshold`` (fine in [-1, 1], coarse in [0, 1])."""
    return (np.abs(np.asarray(fine) / 2.0 + 0.5 - np.asarray(coarse)) > threshold).astype(np.float32)


def share_threshold(fine: np.ndarray, coarse: np.ndarray, share: float) -> float:
    """The label threshold at which about ``share`` of the pairs are positives (their disagreement
    ``|fine/2 + 0.5 − coarse|`` exceeds it): the ``1 − share`` quantile of the disagreements.

    Raises:
        ValueError: unless ``0 < share < 1``, or with no pairs.
    """
    if not 0.0 < share < 1.0:
        raise ValueError(f"positive_share must lie strictly between 0 and 1; got {share}")
    gap = np.abs(np.asarray(fine, dtype=np.float64) / 2.0 + 0.5 - np.asarray(coarse, dtype=np.float64))
    if gap.size == 0:
        raise ValueError("no pairs to set a selector threshold on")
    return float(np.quantile(gap, 1.0 - share, method="lower"))


def _student(spec: str | Path | tuple[torch.nn.Module, str]) -> tuple[torch.nn.Module, str, str, str | None]:
    """``(model, type, source, the pairs file it was trained on or None)``."""
    if isinstance(spec, tuple):
        return spec[0], spec[1], "in-memory", None
    model, cfg = load_student(spec)
    return model, cfg["network"]["type"], str(spec), cfg.get("pairs")


def _same_file(a: str | Path, b: str | Path | None) -> bool:
    return b is not None and Path(a).resolve() == Path(b).resolve()


def _scores(model: torch.nn.Module, store: VideoStore, pairs: np.ndarray, coarse: np.ndarray,
            batch_size: int, device: torch.device) -> torch.Tensor:
    vids = [store[int(i)] for i in pairs[:, 0]] + [store[int(j)] for j in pairs[:, 1]]
    x, m = pad_videos(vids)
    selfsim = model.index_video(x.to(device), m.to(device))
    q, t = torch.chunk(selfsim, 2, dim=0)
    c = torch.as_tensor(coarse, dtype=torch.float32, device=device).reshape(-1, 1)
    return model(torch.cat([q, t, c], 1))


def train_selector(pairs: str | Path | MinedPairs, features: str | Path, output_dir: str | Path,
                   fine_student: str | Path | tuple[torch.nn.Module, str],
                   coarse_student: str | Path | tuple[torch.nn.Module, str],
                   config: SelectorTrainConfig | None = None, resume: bool = False, device: str = "cpu",
                   progress: bool | None = None, stop_after_epochs: int | None = None) -> SelectorResult:
    """Train a selector network for a (coarse, fine) student pair on the mined pairs.

    Args:
        pairs: mined pairs (file or loaded); every pair (positives and negatives) is a training sample.
            Best mined on videos the students were not trained on (a warning says when they were).
        features: the feature file.
        output_dir: run folder.
        fine_student: a :func:`~dnsvr.train.students.train_student` folder, or ``(model, "fg-att"|"fg-bin")``.
        coarse_student: a folder, or ``(model, "cg")``.
        config: training configuration.
        resume: continue from ``output_dir/last``.
        device: ``"cpu"`` or ``"cuda"``.
        progress: progress bar with loss figures.
        stop_after_epochs: stop after this many epochs of this call (checkpointed; ``resume`` continues).

    Returns:
        A :class:`SelectorResult`.

    Raises:
        ValueError: when one label class is empty (the message gives the counts; change ``threshold``)
            or the students are of the wrong kind.
    """
    from dnsvr.nn import SelectorNetwork

    config = config or SelectorTrainConfig()
    if config.positive_share is not None and not 0.0 < config.positive_share < 1.0:
        raise ValueError(f"positive_share must lie strictly between 0 and 1; got {config.positive_share}")
    pairs = pairs if isinstance(pairs, MinedPairs) else MinedPairs(pairs)
    output_dir, dev = Path(output_dir), torch.device(device)
    fine, fine_kind, fine_src, fine_pairs = _student(fine_student)
    coarse, coarse_kind, coarse_src, coarse_pairs = _student(coarse_student)
    if not fine_kind.startswith("fg") or coarse_kind != "cg":
        raise ValueError(f"selector needs a fine (fg-*) and a coarse (cg) student; got {fine_kind!r}, {coarse_kind!r}")
    if _same_file(pairs.path, fine_pairs) or _same_file(pairs.path, coarse_pairs):
        logger.warning("selector: %s is the students' own training pairs. Training shrinks their disagreement "
                       "on exactly these pairs, so the labels understate where they disagree on new videos; "
                       "mine a separate set of videos for the selector (dnsvr train mine) where you can",
                       pairs.path)
    store = VideoStore(features, pairs.video_ids, in_memory=config.in_memory, max_frames=config.max_frames)
    pair_idx = np.stack([pairs.anchor, pairs.other], 1).astype(np.int64)
    fine_s = pair_similarities(fine, fine_kind, store, pair_idx, device=device)
    coarse_s = pair_similarities(coarse, coarse_kind, store, pair_idx, device=device)
    threshold = (config.threshold if config.positive_share is None
                 else share_threshold(fine_s, coarse_s, config.positive_share))
    labels = selector_labels(fine_s, coarse_s, threshold)
    n_pos, n_neg = int(labels.sum()), int(len(labels) - labels.sum())
    logger.info("selector labels: %d positive, %d negative (threshold %.3f)", n_pos, n_neg, threshold)
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"selector labels are all one class ({n_pos} positive, {n_neg} negative at threshold "
                         f"{threshold:.4g}); choose another --threshold, or --positive-share")

    order = _rng(config.seed, 5).permutation(len(labels))
    n_val = int(round(len(labels) * config.validation_fraction)) if config.validation_fraction > 0 else 0
    val_idx, train_idx = np.sort(order[:n_val]), np.sort(order[n_val:])
    cls = [train_idx[labels[train_idx] == c] for c in (0, 1)]
    if any(len(c) == 0 for c in cls):
        raise ValueError("selector: a label class has no training pair after the validation split")
    per_class = config.pairs_per_class or min(len(c) for c in cls)
    steps_per_epoch = (2 * per_class) // config.batch_size + int((2 * per_class) % config.batch_size > 1)
    if steps_per_epoch * config.epochs < MIN_SELECTOR_STEPS:
        # With the reference's balanced subsampling a rare class starves the selector: e.g. 8 positive
        # pairs give one step per epoch, and the "trained" selector is its random initialisation.
        logger.warning("selector: only %d positive / %d negative pairs at threshold %.3f give %d training steps "
                       "in %d epochs; the selector will stay close to its random initialisation. Lower "
                       "--threshold, set --positive-share (e.g. 0.1), or mine more pairs",
                       n_pos, n_neg, threshold, steps_per_epoch * config.epochs, config.epochs)

    torch.manual_seed(config.seed)
    dims = store.dims
    model = SelectorNetwork(dims=dims, hidden_size=config.hidden_size, num_layers=config.num_layers).to(dev)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    criterion = torch.nn.BCELoss()
    cfg_json: dict[str, Any] = {
        "network": {"class": "SelectorNetwork",
                    "kwargs": {"dims": dims, "hidden_size": config.hidden_size, "num_layers": config.num_layers}},
        "training": asdict(config), "fine_student": fine_src, "fine_type": fine_kind,
        "coarse_student": coarse_src, "labels": {"positive": n_pos, "negative": n_neg, "threshold": threshold},
        "pairs_per_class": int(per_class), "steps_per_epoch": int(steps_per_epoch),
        "pairs": str(pairs.path), "features": str(features)}
    start_epoch, step, history, best = 0, 0, [], None
    output_dir.mkdir(parents=True, exist_ok=True)
    if resume and find_checkpoint(output_dir / "last") is not None:
        meta = load_checkpoint_folder(output_dir / "last", model, optimizer)
        if meta["config"]["training"] != cfg_json["training"]:
            raise ValueError(f"{output_dir}/last was trained with another config")
        start_epoch, step, history, best = meta["epoch"] + 1, meta["global_step"], meta["history"], meta["best_score"]

    runs = 0
    with progress_bar(progress) as bar:
        for epoch in range(start_epoch, config.epochs):
            if stop_after_epochs is not None and runs >= stop_after_epochs:
                break
            rng = _rng(config.seed, 6, epoch)
            chosen = np.concatenate([rng.choice(c, size=per_class, replace=len(c) < per_class) for c in cls])
            chosen = chosen[rng.permutation(len(chosen))]
            batches = [chosen[s:s + config.batch_size] for s in range(0, len(chosen), config.batch_size)]
            batches = [b for b in batches if len(b) > 1]  # batch norm needs two samples
            task = bar.add_task(f"selector epoch {epoch + 1}/{config.epochs}", total=len(batches))
            model.train()
            losses, t0 = [], time.perf_counter()
            for b in batches:
                optimizer.zero_grad(set_to_none=True)
                pred = _scores(model, store, pair_idx[b], coarse_s[b], config.batch_size, dev)
                loss = criterion(pred, torch.as_tensor(labels[b], device=dev).reshape(-1, 1))
                loss.backward()
                optimizer.step()
                step += 1
                losses.append(float(loss.detach()))
                bar.update(task, advance=1, info=f"loss {losses[-1]:.4f} (avg {np.mean(losses):.4f})")
            record: dict[str, Any] = {"epoch": epoch, "global_step": step, "loss": float(np.mean(losses)),
                                      "pairs_per_second": len(chosen) / max(time.perf_counter() - t0, 1e-9)}
            score = None
            if len(val_idx):
                val = evaluate_selector(model, store, pair_idx[val_idx], coarse_s[val_idx], labels[val_idx],
                                        config.batch_size, dev)
                record.update({f"val_{k}": v for k, v in val.items()})
                score = val["f1"]
            history.append(record)
            logger.info("selector epoch %d: loss %.4f", epoch, record["loss"])
            improved = score is not None and (best is None or score > best)
            best = score if improved else best
            state = {"epoch": epoch, "global_step": step, "history": history, "config": cfg_json, "best_score": best}
            save_checkpoint(output_dir / "last", model, optimizer, state)
            if improved:
                save_checkpoint(output_dir / "best", model, None, state)
            runs += 1

    if best is not None and find_checkpoint(output_dir / "best") is not None:
        load_checkpoint_folder(output_dir / "best", model, None, restore_rng=False)
    model = model.cpu().eval()
    cfg_json.update(history=history, best_score=best,
                    finished=bool(history) and history[-1]["epoch"] == config.epochs - 1)
    write_final(output_dir, model, cfg_json)
    store.close()
    return SelectorResult(model, cfg_json, history, output_dir)


@torch.no_grad()
def evaluate_selector(model: torch.nn.Module, store: VideoStore, pairs: np.ndarray, coarse: np.ndarray,
                      labels: np.ndarray, batch_size: int, device: torch.device) -> dict[str, float]:
    """Accuracy, precision, recall and F1 of the selector (score > 0.5) on labelled pairs."""
    was = model.training
    model.eval()
    preds = []
    for s in range(0, len(pairs), batch_size):
        preds.append(_scores(model, store, pairs[s:s + batch_size], coarse[s:s + batch_size], batch_size,
                             device).reshape(-1).cpu().numpy())
    model.train(was)
    p = np.concatenate(preds) > 0.5
    y = labels > 0.5
    tp, fp, fn = int((p & y).sum()), int((p & ~y).sum()), int((~p & y).sum())
    prec = tp / (tp + fp) if tp + fp else 0.0
    rec = tp / (tp + fn) if tp + fn else 0.0
    return {"accuracy": float((p == y).mean()), "precision": prec, "recall": rec,
            "f1": 2 * prec * rec / (prec + rec) if prec + rec else 0.0}


def load_selector(run_dir: str | Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Load a trained selector from a :func:`train_selector` folder.

    Raises:
        FileNotFoundError: when ``model.safetensors`` or ``config.json`` is missing.
    """
    from safetensors.torch import load_file

    from dnsvr.nn import SelectorNetwork

    run_dir = Path(run_dir)
    for p in (run_dir / "config.json", run_dir / "model.safetensors"):
        if not p.is_file():
            raise FileNotFoundError(f"{p} not found (is {run_dir} a selector training folder?)")
    cfg = json.loads((run_dir / "config.json").read_text())
    model = SelectorNetwork(**cfg["network"]["kwargs"])
    model.load_state_dict(load_file(str(run_dir / "model.safetensors")), strict=True)
    return model.eval(), cfg

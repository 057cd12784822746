"""Turn training runs into something usable: a model bundle for an index, or reference checkpoints.

* :func:`build_bundle` assembles trained students (and a selector) into a
  :class:`dnsvr.bundle.Bundle` — the backbone and whitening identity come from a
  *base* bundle (the ``lite`` bundle an index fitted its whitening with, a saved
  bundle folder) or are declared when the features were whitened elsewhere.
* :func:`export_reference_checkpoint` writes a student as the reference code's
  checkpoint layout ``{"model": state_dict}`` (``torch.save`` of tensors only, so
  ``torch.load(..., weights_only=True)`` reads it), for people running
  mever-team/distill-and-select.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from dnsvr.train.selector import load_selector
from dnsvr.train.students import load_student

logger = logging.getLogger(__name__)


def fit_coarse_calibration(fine: str | Path, coarse: str | Path, pairs: str | Path, features: str | Path,
                           device: str = "cpu") -> tuple[float, float] | None:
    """The affine map ``scale × coarse + offset`` of the coarse student's similarities onto the fine
    student's (least squares over mined pairs, best of videos neither trained on): a bundle's
    :class:`~dnsvr.bundle.MatchScoring` ``coarse_scale``/``coarse_offset``.

    Without it, a trained bundle ranks re-scored and coarse-only results on two scales: when the coarse
    student scores copies higher than the fine student does, a pair the budget re-scores sinks below pairs
    left at their coarse score.

    Returns:
        ``(scale, offset)``, or None when the fit is not increasing (the coarse scores then stay raw).
    """
    import numpy as np

    from dnsvr.train.data import VideoStore
    from dnsvr.train.mining import MinedPairs
    from dnsvr.train.students import pair_similarities

    fine_net, fine_cfg = load_student(fine)
    coarse_net, coarse_cfg = load_student(coarse)
    mined = MinedPairs(pairs)
    store = VideoStore(features, mined.video_ids)
    try:
        idx = np.stack([mined.anchor, mined.other], 1)
        c = pair_similarities(coarse_net, coarse_cfg["network"]["type"], store, idx, device=device).astype(np.float64)
        f = pair_similarities(fine_net, fine_cfg["network"]["type"], store, idx, device=device).astype(np.float64)
    finally:
        store.close()
    return calibration_fit(c, f)


def calibration_fit(coarse: Any, fine: Any) -> tuple[float, float] | None:
    """Least squares ``fine ≈ scale × coarse + offset``; None unless ``scale > 0`` (a calibration that
    does not increase would reverse the coarse order) or with fewer than two distinct coarse values."""
    import numpy as np

    c, f = np.asarray(coarse, dtype=np.float64), np.asarray(fine, dtype=np.float64)
    if len(c) < 2 or float(np.std(c)) == 0.0:
        return None
    scale, offset = np.polyfit(c, f, 1)
    if not scale > 0:
        logger.warning("coarse calibration: the fine similarities do not increase with the coarse ones "
                       "(slope %.3g); not calibrated", scale)
        return None
    logger.info("coarse calibration on %d pairs: fine ~ %.4f x coarse + %.4f", len(c), scale, offset)
    return float(scale), float(offset)


def build_bundle(fine: str | Path, coarse: str | Path | None = None, selector: str | Path | None = None,
                 base: str | Path | None = None, name: str = "trained", backbone: str | None = None,
                 coarse_calibration: tuple[float, float] | None = None) -> Any:
    """Assemble a bundle from training folders.

    Args:
        fine: a fine student run folder (``fg-att`` or ``fg-bin``).
        coarse: a coarse student run folder; without it the bundle keeps the training-free coarse vector.
        selector: a selector run folder; without it the coarse order picks the pairs to re-rank.
        base: bundle whose backbone and whitening the students were trained on (``"lite"`` is not useful
            here unless fitted: pass the index's bundle folder); ``None``: features were whitened elsewhere.
        name: the bundle's name.
        backbone: backbone name when ``base`` is None (default ``"resnet50"``, the published feature files').
        coarse_calibration: ``(scale, offset)`` of :func:`fit_coarse_calibration`: the bundle's scoring then
            shows coarse-only results on the fine scale (:class:`dnsvr.bundle.MatchScoring`).

    Returns:
        A :class:`dnsvr.bundle.Bundle` (call ``.save(folder)``).

    Raises:
        ValueError: when a run is of the wrong kind or its dimensions differ from the base bundle's.
    """
    from dnsvr.bundle import Bundle, load_bundle

    fine_net, fine_cfg = load_student(fine)
    fine_type = fine_cfg["network"]["type"]
    if fine_type not in ("fg-att", "fg-bin"):
        raise ValueError(f"{fine}: not a fine student run (type {fine_type!r})")
    whitening, bb = None, backbone or "resnet50"
    if base is not None:
        base_bundle = load_bundle(base)
        whitening, bb = base_bundle.whitening, base_bundle.backbone
        dims = base_bundle.input_dims
        if dims is not None and dims != fine_cfg["network"]["kwargs"]["dims"]:
            raise ValueError(f"base bundle {base} gives {dims}-d features, the fine student takes "
                             f"{fine_cfg['network']['kwargs']['dims']}-d")
    kwargs: dict[str, Any] = {"fine_type": fine_type[3:], "fine_net": fine_net,
                              "fine_args": fine_cfg["network"]["kwargs"]}
    extra: dict[str, Any] = {"trained": {"fine": {"run": str(fine), "teacher": fine_cfg.get("teacher")}}}
    if coarse is not None:
        coarse_net, coarse_cfg = load_student(coarse)
        if coarse_cfg["network"]["type"] != "cg":
            raise ValueError(f"{coarse}: not a coarse student run (type {coarse_cfg['network']['type']!r})")
        kwargs.update(coarse_type="student", coarse_net=coarse_net, coarse_args=coarse_cfg["network"]["kwargs"])
        extra["trained"]["coarse"] = {"run": str(coarse), "teacher": coarse_cfg.get("teacher")}
    if selector is not None:
        sel_net, sel_cfg = load_selector(selector)
        kwargs.update(selector_net=sel_net, selector_args=sel_cfg["network"]["kwargs"])
        extra["trained"]["selector"] = {"run": str(selector), "threshold": sel_cfg["training"]["threshold"]}
    scoring = None
    if coarse_calibration is not None:
        from dnsvr.bundle import MatchScoring

        scoring = MatchScoring(coarse_scale=float(coarse_calibration[0]), coarse_offset=float(coarse_calibration[1]))
    return Bundle(name, bb, whitening=whitening, extra=extra, scoring=scoring, **kwargs)


def export_reference_checkpoint(run_dir: str | Path, path: str | Path) -> Path:
    """Write a trained student or selector as ``{"model": state_dict}`` for the reference code.

    Args:
        run_dir: a student or selector training folder.
        path: the ``.pth`` file to write.

    Returns:
        ``path``.
    """
    run_dir, path = Path(run_dir), Path(path)
    try:
        model, _ = load_student(run_dir)
    except KeyError:
        model, _ = load_selector(run_dir)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": state}, path)
    logger.info("exported %s to %s (%d tensors)", run_dir, path, len(state))
    return path

"""Distributed extraction: decoding and the backbone fanned out over a Ray cluster, one video per task.

Each task runs the local pipeline (:func:`dnsvr.extract.iter_video_features`) on one video in a Ray
worker, which keeps one model loaded for all the videos it takes (GPU workers when the cluster has
GPUs, CPU otherwise). Features stream back to the caller in order of completion; the caller commits
them (the index's single writer, or the feature file's writer), so a cluster never writes to an index.

Faults: a video that cannot be decoded is a :class:`~dnsvr.extract.VideoFailure`, as locally; a worker
that dies mid-video (killed, out of memory, node lost) has its task retried by Ray on another worker
(``retries`` times), and only then becomes a failure of that video.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dnsvr.cluster._ray import connect
from dnsvr.extract import VideoFailure, _progress, resolve_inputs
from dnsvr.features import VideoFeatures

logger = logging.getLogger(__name__)

#: For tests only: a folder of ``<video id>.die`` files; the worker that takes such a video first renames the
#: file to ``.died`` and exits abruptly (as if killed) instead of extracting it, so the retry is exercised.
FAULT_ENV = "DNSVR_RAY_FAULT_DIR"


@dataclass(frozen=True)
class WorkerSpec:
    """What every extraction worker builds its model and decoder from (sent with each task)."""

    backbone: str = "efficientnet_lite0"
    weights: str | None = None
    precision: str = "fp32"
    batch_size: int = 32
    fps: float = 1.0
    short_side: int | None = None
    crop: int | None = None
    decode: str = "exact"
    device: str = "cpu"


_MODELS: dict[WorkerSpec, Any] = {}  # one model per worker process, built by its first task


def _model(spec: WorkerSpec) -> Any:
    if spec not in _MODELS:
        from dnsvr.backbones import FeatureExtractor

        _MODELS[spec] = FeatureExtractor(spec.backbone, device=spec.device, weights=spec.weights,
                                         batch_size=spec.batch_size, precision=spec.precision)
    return _MODELS[spec]


def _fault_hook(video_id: str) -> None:
    folder = os.environ.get(FAULT_ENV)
    if folder:
        try:
            os.rename(Path(folder) / f"{video_id}.die", Path(folder) / f"{video_id}.died")
        except OSError:
            return
        os._exit(1)


def extract_one(video_id: str, path: str, spec: WorkerSpec) -> tuple[str, np.ndarray | None, dict[str, Any] | None,
                                                                     list[dict[str, Any]]]:
    """Extract one video in this process (the body of a Ray task): ``(id, features, meta, failures)``."""
    from dnsvr.extract import iter_video_features

    _fault_hook(video_id)
    failures: list[VideoFailure] = []
    feats = meta = None
    for rec in iter_video_features([(video_id, path)], _model(spec), spec.fps, short_side=spec.short_side,
                                   crop=spec.crop, batch_size=spec.batch_size, failures=failures, decode=spec.decode):
        feats, meta = rec.features, rec.attrs()
    return video_id, feats, meta, [asdict(f) for f in failures]


def iter_video_features_ray(inputs: Any, backbone: str = "efficientnet_lite0", *, address: str | None = "auto",
                            failures: list[VideoFailure] | None = None, skip: Iterable[str] = (),
                            progress: bool | None = False, fps: float = 1.0, weights: str | None = None,
                            precision: str = "fp32", batch_size: int = 32, short_side: int | None = None,
                            crop: int | None = None, decode: str = "exact", max_in_flight: int | None = None,
                            retries: int = 3, gpus: float | None = None
                            ) -> Iterator[VideoFeatures]:
    """:func:`dnsvr.extract.iter_video_features` on a Ray cluster, yielding in order of completion.

    Args:
        inputs: anything :func:`dnsvr.extract.resolve_inputs` accepts (the paths must be readable by the
            workers: a shared file system on a multi-node cluster).
        backbone, weights, precision, batch_size, fps, short_side, crop, decode: as locally.
        address: the cluster (see :func:`dnsvr.cluster.connect`).
        failures: receives a :class:`~dnsvr.extract.VideoFailure` per unusable or damaged video.
        skip: ids not to extract (already committed).
        progress: a progress bar.
        max_in_flight: tasks submitted ahead (default: twice the cluster's CPUs or GPUs); bounds the
            features held in the object store.
        retries: times Ray runs a task again after its worker died.
        gpus: GPUs per task (default: 1 when the cluster has GPUs, else CPU workers).

    Yields:
        :class:`~dnsvr.features.VideoFeatures`, the local function's records.
    """
    ray = connect(address)
    sink: list[VideoFailure] = failures if failures is not None else []
    n_before = len(sink)
    skip_set = set(skip)
    entries = [e for e in resolve_inputs(inputs, sink) if e[0] not in skip_set]
    resources = ray.cluster_resources()
    n_gpus = float(resources.get("GPU", 0.0))
    per_task_gpus = (1.0 if n_gpus > 0 else 0.0) if gpus is None else float(gpus)
    spec = WorkerSpec(backbone, weights, precision, batch_size, fps, short_side, crop, decode,
                      "cuda" if per_task_gpus > 0 else "cpu")
    slots = int(n_gpus / per_task_gpus) if per_task_gpus > 0 else int(resources.get("CPU", 1.0))
    in_flight = max_in_flight or max(2, 2 * max(1, slots))
    task = ray.remote(extract_one).options(num_cpus=1, num_gpus=per_task_gpus, max_retries=retries)
    logger.info("extracting %d videos on Ray (%s; %d slots, %s)", len(entries), resources, slots, spec.device)
    pending: dict[Any, tuple[str, Path]] = {}
    queue = iter(entries)

    def submit() -> None:
        for vid, path in queue:
            pending[task.remote(vid, str(path), spec)] = (vid, path)
            if len(pending) >= in_flight:
                return

    with _progress(progress, len(entries), "extracting (ray)") as bar:
        submit()
        while pending:
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            vid, path = pending.pop(ref)
            submit()
            bar.advance_video()
            try:
                _, feats, meta, fails = ray.get(ref)
            except (ray.exceptions.RayError, OSError) as exc:
                sink.append(VideoFailure(vid, str(path), "worker_error",
                                         f"extraction failed on the cluster: {type(exc).__name__}: {exc}"))
                continue
            sink.extend(VideoFailure(**f) for f in fails)
            if feats is None or meta is None:
                continue
            bar.add_frames(len(feats))
            # arrays from the object store are read-only views of shared memory: hand out our own copy
            yield VideoFeatures.from_attrs(vid, np.array(feats, dtype=np.float32), meta)
    if failures is None:
        for f in sink[n_before:]:
            logger.warning("%s", f.line())

"""Small synthetic benchmarks at the feature level, with known near-duplicates and distractors.

A generated benchmark is an HDF5 feature file in the published layout (one ``[T, 9, D]``
float32 dataset per video id, L2-normalised region vectors, the layout
:class:`dnsvr.features.FeatureFile` reads) plus a ground-truth JSON ``{query_id: {video_id:
label}}`` for the ``custom`` benchmark. Each query is a random "video": a few scenes, each a
set of region vectors that drifts slowly from frame to frame. Its near-duplicates (label
``"ND"``) are copies transformed the way copies on the web are:

* ``noise`` — every region vector perturbed (re-encoding);
* ``crop`` — a temporal excerpt of the query;
* ``shift`` — the query embedded between frames of an unrelated video;
* ``speed`` — every other frame dropped;
* ``mix`` — a temporal excerpt, perturbed, then shifted.

Distractors are unrelated random videos. Retrieval with any sensible video similarity ranks
the near-duplicates first, so tests and demos know the answer.

Example:
    >>> bench = make_synthetic_benchmark("tmp/synth", n_queries=3, seed=0)   # doctest: +SKIP
    >>> dnsvr evaluate --benchmark custom --ground-truth tmp/synth/ground_truth.json \\
    ...     --features tmp/synth/features.hdf5 --model dns --bundle lite          # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

logger = logging.getLogger(__name__)

#: Transformations applied, in turn, to make each query's near-duplicates.
TRANSFORMS: tuple[str, ...] = ("noise", "crop", "shift", "speed", "mix")
#: Label of a near-duplicate in the generated ground truth.
ND_LABEL = "ND"


@dataclass
class SyntheticBenchmark:
    """A generated benchmark.

    Attributes:
        features: the HDF5 feature file.
        ground_truth_path: the ground-truth JSON ``{query_id: {video_id: "ND"}}``.
        queries: query ids.
        database: database ids (near-duplicates and distractors; the queries are not in it).
        ground_truth: the ground truth itself.
        transforms: near-duplicate id → the transformation that made it.
    """

    features: Path
    ground_truth_path: Path
    queries: list[str]
    database: list[str]
    ground_truth: dict[str, dict[str, str]]
    transforms: dict[str, str] = field(default_factory=dict)


def _normalise(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)).astype(np.float32)


def random_video(rng: np.random.Generator, frames: int, dims: int, regions: int = 9,
                 scenes: int | None = None, drift: float = 0.15) -> np.ndarray:
    """Region features of a random video: scenes of slowly drifting region vectors.

    Args:
        rng: random generator.
        frames: number of frames T.
        dims: region vector size D.
        regions: regions per frame (9 for L3-iMAC 3x3).
        scenes: number of scenes (default 1 per ~8 frames).
        drift: frame-to-frame change within a scene.

    Returns:
        float32 ``[T, regions, D]``, L2-normalised region vectors.

    Raises:
        ValueError: for non-positive sizes.
    """
    if frames < 1 or dims < 1 or regions < 1:
        raise ValueError(f"frames, dims and regions must be positive, got {frames}, {dims}, {regions}")
    n_scenes = scenes or max(1, frames // 8)
    bounds = np.sort(rng.choice(np.arange(1, frames), size=min(n_scenes - 1, frames - 1), replace=False)) \
        if frames > 1 else np.zeros(0, dtype=int)
    out = np.empty((frames, regions, dims), dtype=np.float32)
    for part in np.split(np.arange(frames), bounds):
        state = rng.normal(size=(regions, dims))
        for t in part:
            state = state + drift * rng.normal(size=(regions, dims))
            out[t] = state
    return _normalise(out)


def transform_video(video: np.ndarray, kind: str, rng: np.random.Generator, noise: float = 0.3) -> np.ndarray:
    """A near-duplicate of ``video`` made by one of :data:`TRANSFORMS`.

    Args:
        video: ``[T, regions, D]`` features.
        kind: the transformation.
        rng: random generator.
        noise: perturbation strength relative to a unit region vector (``noise``, ``mix``).

    Returns:
        float32 ``[T', regions, D]``, L2-normalised.

    Raises:
        ValueError: for an unknown ``kind`` (listing the valid ones).
    """
    frames, regions, dims = video.shape

    def perturb(x: np.ndarray) -> np.ndarray:
        return _normalise(x + noise / np.sqrt(dims) * rng.normal(size=x.shape))

    def excerpt(x: np.ndarray) -> np.ndarray:
        length = min(len(x), max(4, int(round(len(x) * rng.uniform(0.5, 0.8)))))
        start = int(rng.integers(0, max(1, len(x) - length + 1)))
        return x[start:start + length]

    def shift(x: np.ndarray) -> np.ndarray:
        before, after = (int(v) for v in rng.integers(1, max(2, frames // 2) + 1, size=2))
        other = random_video(rng, before + after, dims, regions)
        return np.concatenate([other[:before], x, other[before:]], 0)

    if kind == "noise":
        return perturb(video)
    if kind == "crop":
        return _normalise(excerpt(video))
    if kind == "shift":
        return _normalise(shift(video))
    if kind == "speed":
        return _normalise(video[::2] if frames > 1 else video)
    if kind == "mix":
        return _normalise(shift(perturb(excerpt(video))))
    raise ValueError(f"unknown transformation {kind!r}; choose one of {', '.join(TRANSFORMS)}")


def make_synthetic_benchmark(out_dir: str | Path, *, n_queries: int = 4, n_near_duplicates: int = 3,
                             n_distractors: int = 20, frames: tuple[int, int] = (8, 24), dims: int = 64,
                             regions: int = 9, noise: float = 0.3, seed: int = 0) -> SyntheticBenchmark:
    """Write a synthetic benchmark: ``features.hdf5`` and ``ground_truth.json`` in ``out_dir``.

    Args:
        out_dir: output folder (created).
        n_queries: number of queries.
        n_near_duplicates: near-duplicates per query (transformations taken in turn from
            :data:`TRANSFORMS`).
        n_distractors: unrelated database videos.
        frames: (min, max) frames per generated video; min >= 8 so that every near-duplicate
            keeps at least 4 frames (the networks' comparators pool the frame axis twice).
        dims: region vector size D (512 for the published networks).
        regions: regions per frame.
        noise: perturbation strength of the ``noise``/``mix`` copies.
        seed: random seed (same seed → same files).

    Returns:
        The :class:`SyntheticBenchmark`.

    Raises:
        ValueError: for non-positive counts or an empty frame range.
    """
    if n_queries < 1 or n_near_duplicates < 0 or n_distractors < 0:
        raise ValueError(f"need n_queries >= 1 and non-negative counts, got {n_queries}, "
                         f"{n_near_duplicates}, {n_distractors}")
    lo, hi = frames
    if not 8 <= lo <= hi:
        raise ValueError(f"frames must be (min, max) with 8 <= min <= max, got {frames}")
    rng = np.random.default_rng(seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    videos: dict[str, np.ndarray] = {}
    queries: list[str] = []
    ground_truth: dict[str, dict[str, str]] = {}
    transforms: dict[str, str] = {}
    for q in range(n_queries):
        qid = f"q{q:03d}"
        query = random_video(rng, int(rng.integers(lo, hi + 1)), dims, regions)
        videos[qid] = query
        queries.append(qid)
        ground_truth[qid] = {}
        for k in range(n_near_duplicates):
            kind = TRANSFORMS[k % len(TRANSFORMS)]
            vid = f"q{q:03d}_nd{k}_{kind}"
            videos[vid] = transform_video(query, kind, rng, noise=noise)
            ground_truth[qid][vid] = ND_LABEL
            transforms[vid] = kind
    for d in range(n_distractors):
        videos[f"d{d:04d}"] = random_video(rng, int(rng.integers(lo, hi + 1)), dims, regions)
    database = [v for v in videos if v not in ground_truth]
    # Shuffle the storage order so that no test can pass by reading the file order.
    order = list(videos)
    rng.shuffle(order)
    features = out / "features.hdf5"
    with h5py.File(features, "w") as h5:
        for vid in order:
            h5.create_dataset(vid, data=videos[vid])
    gt_path = out / "ground_truth.json"
    gt_path.write_text(json.dumps(ground_truth, indent=1, sort_keys=True))
    logger.info("synthetic benchmark: %d queries, %d database videos in %s", len(queries), len(database), out)
    return SyntheticBenchmark(features, gt_path, queries, database, ground_truth, transforms)

"""Synthetic feature collections for the training tests (features, not videos: fast on CPU).

A *source* video is a sequence of 2–4 scenes; a scene has base region vectors
``[9, D]`` and its frames are noisy copies of them. Near-duplicate *copies* of a
source keep a random contiguous part of it, may change speed (every second frame,
or each frame twice) and get frame noise plus a per-copy global shift of all
regions (a photometric edit). *Distractors* are unrelated sources. Every region
vector is L2-normalised, like PCA-whitened region features.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np


def _normalize(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _source(rng: np.random.Generator, dims: int, frames: tuple[int, int], topic: np.ndarray,
            topic_weight: float = 1.2) -> np.ndarray:
    n_scenes = int(rng.integers(2, 5))
    length = int(rng.integers(frames[0], frames[1] + 1))
    cuts = np.sort(rng.choice(np.arange(1, length), size=n_scenes - 1, replace=False))
    out = []
    for seg in np.split(np.arange(length), cuts):
        base = rng.standard_normal((9, dims)) + topic_weight * topic
        for _ in seg:
            out.append(base + 0.4 * rng.standard_normal((9, dims)))
    return _normalize(np.stack(out))


def _copy(rng: np.random.Generator, src: np.ndarray, shift: float = 0.5, noise: float = 0.6) -> np.ndarray:
    t = len(src)
    keep = int(rng.integers(max(3, int(0.6 * t)), t + 1))
    start = int(rng.integers(0, t - keep + 1))
    x = src[start:start + keep]
    speed = rng.random()
    if speed < 0.25 and len(x) >= 8:
        x = x[::2]
    elif speed < 0.5:
        x = np.repeat(x, 2, axis=0)
    # ``src`` regions are unit vectors (about 1/sqrt(D) per dimension): noise and shift are relative to that.
    scale = 1.0 / np.sqrt(src.shape[-1])
    offset = shift * scale * rng.standard_normal((1, 1, src.shape[-1]))
    return _normalize(x + noise * scale * rng.standard_normal(x.shape) + offset)


def _embed(rng: np.random.Generator, src: np.ndarray, host: np.ndarray, noise: float) -> np.ndarray:
    """A part (50–80 %) of ``src``, perturbed, inside a longer unrelated ``host`` video (a compilation)."""
    t = len(src)
    keep = int(rng.integers(max(4, int(0.5 * t)), max(5, int(0.8 * t)) + 1))
    start = int(rng.integers(0, t - keep + 1))
    part = src[start:start + keep] + noise / np.sqrt(src.shape[-1]) * rng.standard_normal((keep, *src.shape[1:]))
    cut = int(rng.integers(1, len(host)))
    return _normalize(np.concatenate([host[:cut], part, host[cut:]]))


def make_collection(path: str | Path, n_sources: int = 12, copies: int = 2, distractors: int = 12,
                    dims: int = 32, frames: tuple[int, int] = (8, 16), topics: int = 3,
                    seed: int = 0, topic_seed: int = 0, topic_weight: float = 1.2,
                    shift: float = 0.5, noise: float = 0.6,
                    copy_transforms: tuple[str, ...] | None = None) -> dict[str, list[str]]:
    """Write a feature file; return ``{source_id: [copy ids]}`` (the near-duplicate ground truth).

    Collections with the same ``topic_seed`` share their topics (the same "domain").

    Args:
        topic_weight: weight of the topic vector in every region of a source or distractor; it sets how
            similar same-topic videos are (the teacher's "related but not a copy" level).
        shift, noise: the default copies' per-copy global shift and frame noise (relative to a unit region).
        copy_transforms: when given, copies are made by :func:`dnsvr.eval.synthetic.transform_video`
            instead, cycling through these transformations (``noise``, ``crop``, ``shift`` — embedded
            between unrelated frames —, ``speed``, ``mix``), with ``noise`` as its perturbation strength.
    """
    rng = np.random.default_rng(seed)
    topic_vecs = np.random.default_rng([topic_seed, 99]).standard_normal((topics, dims))
    truth: dict[str, list[str]] = {}
    with h5py.File(path, "w") as h5:
        for s in range(n_sources):
            src = _source(rng, dims, frames, topic_vecs[s % topics], topic_weight)
            sid = f"src{s:03d}"
            h5.create_dataset(sid, data=src)
            truth[sid] = []
            for c in range(copies):
                cid = f"src{s:03d}_copy{c}"
                if copy_transforms:
                    from dnsvr.eval.synthetic import transform_video

                    kind = copy_transforms[(s * copies + c) % len(copy_transforms)]
                    if kind == "embed":
                        host = _source(rng, dims, (2 * frames[0], 2 * frames[1]), topic_vecs[(s + 1) % topics],
                                       topic_weight)
                        h5.create_dataset(cid, data=_embed(rng, src, host, noise))
                    else:
                        h5.create_dataset(cid, data=transform_video(src, kind, rng, noise=noise))
                else:
                    h5.create_dataset(cid, data=_copy(rng, src, shift, noise))
                truth[sid].append(cid)
        for d in range(distractors):
            h5.create_dataset(f"dis{d:03d}", data=_source(rng, dims, frames, topic_vecs[d % topics], topic_weight))
    return truth



def relation(a: str, b: str, topics: int = 3) -> str:
    """How two videos of :func:`make_collection` relate: ``"copy"`` (a source and its copy, or two copies of
    one source), ``"same topic"`` (related, not copies) or ``"other topic"``.

    The topic of ``srcNNN[_copyC]`` and ``disNNN`` is ``NNN % topics`` (an embedded copy also carries frames of
    its host, of the next topic: the relation names the copied source's topic).
    """
    if a.startswith("src") and b.startswith("src") and a[:6] == b[:6]:
        return "copy"
    return "same topic" if int(a[3:6]) % topics == int(b[3:6]) % topics else "other topic"

"""Training data: triplets (anchor, positive, negative) from mined pairs, padded batches with masks.

Each epoch every anchor with a non-empty positive and negative pool contributes
one triplet with a *fresh* positive and negative drawn from its pools; the
positive and negative are temporally augmented (:mod:`dnsvr.train.augment`).
All randomness derives from ``(seed, epoch)`` and the sample's position, never
from global state, so an epoch's batches are identical whether a run was
interrupted or not, and whatever order samples are loaded in.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dnsvr.features import FeatureFile
from dnsvr.train.augment import MAX_FRAMES, augment_video, clip_length
from dnsvr.train.mining import MinedPairs

logger = logging.getLogger(__name__)


@dataclass
class TripletBatch:
    """A padded batch of B triplets.

    Attributes:
        videos: ``[3B, T, R, D]`` float32 — anchors, then positives, then negatives.
        masks: ``[3B, T]`` float32, 1 on real frames.
        similarities: ``[B, 2]`` teacher similarity of (anchor, positive), (anchor, negative).
    """

    videos: torch.Tensor
    masks: torch.Tensor
    similarities: torch.Tensor

    def to(self, device: torch.device | str) -> TripletBatch:
        return TripletBatch(self.videos.to(device, non_blocking=True), self.masks.to(device, non_blocking=True),
                            self.similarities.to(device, non_blocking=True))


def pad_videos(videos: Sequence[np.ndarray | torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack ``[T_i, R, D]`` videos into a zero-padded ``[N, max T, R, D]`` tensor and a ``[N, max T]`` mask.

    Raises:
        ValueError: when the videos differ in region count or dimensionality.
    """
    if not videos:
        raise ValueError("pad_videos: no videos")
    shapes = {tuple(v.shape[1:]) for v in videos}
    if len(shapes) != 1:
        raise ValueError(f"pad_videos: videos have different [R, D] shapes {sorted(shapes)}")
    t_max = max(int(v.shape[0]) for v in videos)
    out = torch.zeros((len(videos), t_max, *next(iter(shapes))), dtype=torch.float32)
    mask = torch.zeros((len(videos), t_max), dtype=torch.float32)
    for i, v in enumerate(videos):
        out[i, :len(v)] = torch.as_tensor(np.asarray(v), dtype=torch.float32)
        mask[i, :len(v)] = 1.0
    return out, mask


#: Feature files smaller than this are loaded into memory by default (bytes).
IN_MEMORY_LIMIT = 4 << 30


class VideoStore:
    """Reads videos of a feature file by index; optionally keeps them all in memory.

    Args:
        features: the HDF5 feature file.
        video_ids: index → id (the mined-pairs order).
        in_memory: load every video once (fastest); ``False``: read on demand; ``None`` (default): in memory
            when the feature file is smaller than :data:`IN_MEMORY_LIMIT` bytes.
        max_frames: longer videos are cut to their first ``max_frames`` frames before anything else.

    Raises:
        KeyError: when a video id of the pairs file is not in the feature file.
    """

    def __init__(self, features: str | Path, video_ids: Sequence[str], in_memory: bool | None = None,
                 max_frames: int = MAX_FRAMES) -> None:
        self.path = Path(features)
        self.video_ids = list(video_ids)
        self.max_frames = max_frames
        self._ff = FeatureFile(self.path)
        present = set(self._ff.ids())
        missing = [v for v in self.video_ids if v not in present]
        if missing:
            raise KeyError(f"{len(missing)} video(s) of the pairs file are not in {self.path}: {missing[:5]}")
        self._mem: list[np.ndarray] | None = None
        if in_memory is None:
            in_memory = self.path.stat().st_size < IN_MEMORY_LIMIT
        if in_memory:
            self._mem = [clip_length(self._ff.read(v), max_frames) for v in self.video_ids]

    def __len__(self) -> int:
        return len(self.video_ids)

    @property
    def dims(self) -> int:
        """Feature dimensionality D (of the first video)."""
        return int(self._ff.shape(self.video_ids[0])[-1])

    def __getitem__(self, i: int) -> np.ndarray:
        if self._mem is not None:
            return self._mem[i]
        return clip_length(self._ff.read(self.video_ids[i]), self.max_frames)

    def close(self) -> None:
        self._ff.close()


def coarse_target(similarity: np.ndarray) -> np.ndarray:
    """The coarse student's target for teacher similarities in [-1, 1]: ``s/2 + 0.5``, in [0, 1]."""
    return similarity / 2.0 + 0.5


def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, *[int(k) for k in keys]])


class TripletDataset:
    """One triplet per anchor and epoch, with fresh positives/negatives and augmentation.

    Args:
        pairs: the mined pairs.
        store: the videos.
        coarse_targets: map teacher similarities ``s`` to ``s/2 + 0.5`` (the coarse student's [0, 1] range).
        augmentation: augment positives and negatives.
        seed: the run's seed.
        anchors: restrict to these anchor indices (a train/validation split).
    """

    def __init__(self, pairs: MinedPairs, store: VideoStore, coarse_targets: bool = False,
                 augmentation: bool = True, seed: int = 0, anchors: Sequence[int] | None = None) -> None:
        self.pairs = pairs
        self.store = store
        self.coarse_targets = coarse_targets
        self.augmentation = augmentation
        self.seed = seed
        pools = pairs.pools()
        keep = sorted(pools) if anchors is None else sorted(a for a in anchors if a in pools)
        self.pools = {a: pools[a] for a in keep}
        self.anchors = np.array(keep, dtype=np.int64)
        self.epoch = -1
        self._selected: np.ndarray = np.zeros((0, 3), dtype=np.int64)

    def __len__(self) -> int:
        return len(self.anchors)

    def set_epoch(self, epoch: int) -> None:
        """Draw this epoch's positive and negative per anchor (rows into the pair arrays)."""
        self.epoch = epoch
        sel = np.zeros((len(self.anchors), 3), dtype=np.int64)
        for i, a in enumerate(self.anchors):
            rng = _rng(self.seed, 1, epoch, int(a))
            pos, neg = self.pools[int(a)]
            sel[i] = (a, pos[rng.integers(len(pos))], neg[rng.integers(len(neg))])
        self._selected = sel

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        if self.epoch < 0:
            raise RuntimeError("TripletDataset: call set_epoch(epoch) before reading samples")
        a, prow, nrow = (int(v) for v in self._selected[i])
        p, n = int(self.pairs.other[prow]), int(self.pairs.other[nrow])
        sims = np.array([self.pairs.similarity[prow], self.pairs.similarity[nrow]], dtype=np.float32)
        if self.coarse_targets:
            sims = coarse_target(sims)
        anchor, positive, negative = self.store[a], self.store[p], self.store[n]
        if self.augmentation:
            rng = _rng(self.seed, 2, self.epoch, i)
            positive = augment_video(positive, rng)
            negative = augment_video(negative, rng)
        return anchor, positive, negative, sims

    def batches(self, batch_size: int, shuffle: bool = True, start_batch: int = 0,
                prefetch: int = 2) -> Iterator[TripletBatch]:
        """The epoch's batches (call :meth:`set_epoch` first); ``start_batch`` skips the first ones.

        ``prefetch`` batches are read and augmented ahead in a background thread while the caller
        trains (the content does not depend on it: every sample's randomness is keyed by its position).
        """
        order = _rng(self.seed, 3, self.epoch).permutation(len(self)) if shuffle else np.arange(len(self))

        def make(b: int) -> TripletBatch:
            idx = order[b * batch_size:(b + 1) * batch_size]
            return collate_triplets([self[int(i)] for i in idx])

        todo = range(start_batch, num_batches(len(self), batch_size))
        if prefetch <= 0:
            for b in todo:
                yield make(b)
            return
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="dnsvr-batches") as pool:
            pending = [pool.submit(make, b) for b in todo[:prefetch]]
            for k in range(len(todo)):
                if k + prefetch < len(todo):
                    pending.append(pool.submit(make, todo[k + prefetch]))
                yield pending.pop(0).result()


def num_batches(n: int, batch_size: int) -> int:
    return (n + batch_size - 1) // batch_size


def collate_triplets(samples: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]) -> TripletBatch:
    """Pad a list of (anchor, positive, negative, [2] similarities) into a :class:`TripletBatch`."""
    anchors, positives, negatives, sims = zip(*samples)
    videos, masks = pad_videos(list(anchors) + list(positives) + list(negatives))
    return TripletBatch(videos, masks, torch.as_tensor(np.stack(sims), dtype=torch.float32))


def split_anchors(pairs: MinedPairs, validation_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Split the usable anchors into (train, validation) lists, repeatably."""
    anchors = sorted(pairs.pools())
    if validation_fraction <= 0:
        return anchors, []
    order = _rng(seed, 4).permutation(len(anchors))
    n_val = max(1, int(round(len(anchors) * validation_fraction)))
    val = sorted(anchors[i] for i in order[:n_val])
    train = sorted(anchors[i] for i in order[n_val:])
    return train, val

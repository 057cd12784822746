"""Temporal augmentations of frame-level features for student training.

Positives and negatives of a training triplet are perturbed along time so that
the students learn similarities that survive frame drops, re-ordering, speed
changes and reversal — the kinds of edits near-duplicate copies carry. The
operations follow the reference recipe (each with probability 0.1 per sample):
drop windows (the video cut into windows of 4–16 frames, each dropped with
probability 0.3), shuffle windows (the windows played in a random order), keep
every second frame, duplicate every frame, reverse. Every
operation works on a ``[T, ...]`` array (features of any trailing shape) and
draws its randomness from an explicit :class:`numpy.random.Generator`, so an
augmentation is a pure function of (video, generator state): training is
repeatable and resumable.

Example:
    >>> rng = np.random.default_rng(0)
    >>> x = np.zeros((40, 9, 8), np.float32)
    >>> augment_video(x, rng).shape[1:]
    (9, 8)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np

logger = logging.getLogger(__name__)

#: The longest sequence a training sample may have (frames); longer ones are cut.
MAX_FRAMES = 300
#: Window sizes (inclusive) for the drop/shuffle operations.
WINDOW_MIN, WINDOW_MAX = 4, 16
#: Chance that each window is dropped by :func:`drop_windows` (the reference's 0.3).
DROP_PROBABILITY = 0.3
#: Videos of fewer frames are never augmented (the reference leaves videos of 8 frames or less alone).
MIN_AUGMENT_FRAMES = 9


def _windows(length: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Cut ``range(length)`` into consecutive windows of one random size in [4, 16] (the last may be shorter)."""
    size = int(rng.integers(WINDOW_MIN, WINDOW_MAX + 1))
    return [np.arange(s, min(s + size, length)) for s in range(0, length, size)]


def drop_windows(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Cut the video into windows of 4–16 frames and drop each with probability 0.3 (never all of them).

    As the reference's window drop: the video keeps its order, but whole stretches go missing.
    """
    if len(x) <= WINDOW_MIN:
        return x
    windows = _windows(len(x), rng)
    keep = rng.random(len(windows)) > DROP_PROBABILITY
    if not keep.any():
        return x
    return x[np.concatenate([w for w, k in zip(windows, keep) if k])]


def shuffle_windows(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Cut the video into windows of 4–16 frames and play the windows in a random order.

    As the reference's window shuffle: every frame stays, the order of the stretches changes (a re-edit).
    """
    if len(x) <= WINDOW_MIN:
        return x
    windows = _windows(len(x), rng)
    return x[np.concatenate([windows[i] for i in rng.permutation(len(windows))])]


def keep_every_second(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Keep frames 0, 2, 4, ... (a 2× speed-up); random offset 0 or 1."""
    if len(x) < 2 * WINDOW_MIN:
        return x
    return x[int(rng.integers(0, 2))::2]


def duplicate_frames(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Repeat every frame twice (a 2× slow-down), unless that exceeds :data:`MAX_FRAMES`."""
    if 2 * len(x) > MAX_FRAMES:
        return x
    return np.repeat(x, 2, axis=0)


def reverse(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Play the video backwards."""
    return x[::-1]


#: The operations by name, in a fixed order (the order matters for repeatability).
OPERATIONS: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    "drop_windows": drop_windows,
    "shuffle_windows": shuffle_windows,
    "keep_every_second": keep_every_second,
    "duplicate_frames": duplicate_frames,
    "reverse": reverse,
}


def clip_length(x: np.ndarray, max_frames: int = MAX_FRAMES,
                rng: np.random.Generator | None = None) -> np.ndarray:
    """Cut a sequence to at most ``max_frames`` frames.

    Args:
        x: ``[T, ...]`` features.
        max_frames: the limit.
        rng: when given, a random window of ``max_frames`` is kept; otherwise the first frames.
    """
    if len(x) <= max_frames:
        return x
    start = int(rng.integers(0, len(x) - max_frames + 1)) if rng is not None else 0
    return x[start:start + max_frames]


def augment_video(x: np.ndarray, rng: np.random.Generator, probability: float = 0.5,
                  operations: Sequence[str] | None = None, max_frames: int = MAX_FRAMES) -> np.ndarray:
    """Apply at most one random temporal augmentation, then cut to ``max_frames``.

    With ``probability`` one operation, chosen uniformly from ``operations``, is
    applied; otherwise the video only goes through the length limit. Videos of
    fewer than :data:`MIN_AUGMENT_FRAMES` (9) frames only go through the length limit, as in the
    reference (a short clip has little to re-time).

    Args:
        x: ``[T, ...]`` features of one video.
        rng: the source of randomness (the result is a function of its state).
        probability: chance that an operation is applied at all.
        operations: names from :data:`OPERATIONS`; default all of them.
        max_frames: the length limit.

    Returns:
        A contiguous array of the same dtype and trailing shape, ``1 <= T' <= max_frames``.

    Raises:
        ValueError: on an unknown operation name or a probability outside [0, 1].
    """
    names = list(OPERATIONS) if operations is None else list(operations)
    unknown = [n for n in names if n not in OPERATIONS]
    if unknown:
        raise ValueError(f"unknown augmentation(s) {unknown}; valid: {sorted(OPERATIONS)}")
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"augmentation probability must be in [0, 1], got {probability}")
    # Always draw the same number of values before the operation, so the stream stays aligned.
    apply = rng.random() < probability
    choice = int(rng.integers(0, len(names))) if names else 0
    if apply and names and len(x) >= MIN_AUGMENT_FRAMES:
        x = OPERATIONS[names[choice]](x, rng)
    return np.ascontiguousarray(clip_length(x, max_frames, rng))

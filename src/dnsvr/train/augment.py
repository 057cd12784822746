"""Temporal augmentations of frame-level features for student training.

Positives and negatives of a training triplet are perturbed along time so that
the students learn similarities that survive frame drops, re-ordering, speed
changes and reversal — the kinds of edits near-duplicate copies carry. Every
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


def _window(length: int, rng: np.random.Generator) -> tuple[int, int]:
    size = int(rng.integers(WINDOW_MIN, min(WINDOW_MAX, length - 1) + 1))
    start = int(rng.integers(0, length - size + 1))
    return start, size


def drop_window(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Remove one contiguous window of 4–16 frames (never the whole video)."""
    if len(x) <= WINDOW_MIN:
        return x
    start, size = _window(len(x), rng)
    return np.concatenate([x[:start], x[start + size:]], axis=0)


def shuffle_window(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Randomly permute the frames inside one window of 4–16 frames."""
    if len(x) <= WINDOW_MIN:
        return x
    start, size = _window(len(x), rng)
    order = np.arange(len(x))
    order[start:start + size] = start + rng.permutation(size)
    return x[order]


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
    "drop_window": drop_window,
    "shuffle_window": shuffle_window,
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
    fewer than 2 frames are returned unchanged (there is nothing to re-time).

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
    if apply and names and len(x) >= 2:
        x = OPERATIONS[names[choice]](x, rng)
    return np.ascontiguousarray(clip_length(x, max_frames, rng))

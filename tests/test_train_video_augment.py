"""Pixel-level augmentations (dnsvr.train.video_augment): determinism, shapes, every family and operation
changes the video, picture-in-picture puts the inset where it says."""

from __future__ import annotations

import numpy as np
import pytest

from dnsvr.train.video_augment import (FAMILIES, OPERATIONS, AugmentPolicy, augment_frames, copy_generator,
                                       low_quality, noise, picture_in_picture)

ALWAYS = AugmentPolicy(global_ops=(1, 3), frame_probability=1.0, temporal_probability=1.0, pip_probability=1.0)


def _video(seed: int = 0, t: int = 24, h: int = 48, w: int = 64) -> np.ndarray:
    """Smooth frames, each different from the others (a moving gradient plus noise)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    frames = []
    for i in range(t):
        base = 128 + 80 * np.sin((xx + 3 * i) / 9.0)[..., None] * np.array([1.0, 0.6, -0.4], np.float32)
        frames.append(base + 20 * np.cos(yy / 7.0 + i)[..., None] + rng.normal(0, 4, (h, w, 3)))
    return np.clip(np.stack(frames), 0, 255).astype(np.uint8)


def test_same_seed_same_copy_other_copy_differs():
    frames, host = _video(0), _video(1, t=10)
    a, ops_a = augment_frames(frames, copy_generator(3, "clip", 0), ALWAYS, host=host)
    b, ops_b = augment_frames(frames, copy_generator(3, "clip", 0), ALWAYS, host=host)
    assert ops_a == ops_b and np.array_equal(a, b)
    others = [augment_frames(frames, copy_generator(3, "clip", k), ALWAYS, host=host)[0] for k in (1, 2)]
    others.append(augment_frames(frames, copy_generator(4, "clip", 0), ALWAYS, host=host)[0])
    others.append(augment_frames(frames, copy_generator(3, "other", 0), ALWAYS, host=host)[0])
    assert all(o.shape != a.shape or not np.array_equal(o, a) for o in others)


@pytest.mark.parametrize("seed", range(4))
def test_shapes_and_type(seed):
    frames = _video(seed)
    out, ops = augment_frames(frames, copy_generator(seed, "v", 0), ALWAYS, host=_video(9, t=5))
    assert out.dtype == np.uint8 and out.ndim == 4 and out.shape[1:] == frames.shape[1:] and len(out) >= 1
    assert "pip" in ops and any(o in ops for o in ("text", "shapes"))


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("seed", range(3))
def test_each_family_changes_the_frames(family, seed):
    frames = _video(seed)
    out, ops = augment_frames(frames, copy_generator(seed, "v", 0), ALWAYS, host=_video(7, t=30),
                              families=[family])
    assert ops and all(op in FAMILIES[family] for op in ops)
    assert out.shape != frames.shape or not np.array_equal(out, frames)
    if family != "temporal":
        assert len(out) == len(frames)       # only the temporal family changes the length


@pytest.mark.parametrize("name", sorted(OPERATIONS))
@pytest.mark.parametrize("seed", range(3))
def test_each_operation_changes_the_frames(name, seed):
    frames = _video(seed)
    out = OPERATIONS[name](frames, np.random.default_rng(seed))
    assert out.dtype == np.uint8 and out.shape[1:] == frames.shape[1:]
    assert out.shape != frames.shape or not np.array_equal(out, frames), name


def test_noise_is_new_in_every_frame_and_of_the_drawn_strength():
    frames = np.full((6, 40, 50, 3), 128, np.uint8)
    out = noise(frames, np.random.default_rng(0))
    diff = out.astype(np.float32) - 128
    assert 4 * 0.9 <= diff.std() <= 25 * 1.1 and abs(diff.mean()) < 1.0
    assert not np.array_equal(out[0], out[1])           # not one pattern laid over every frame
    np.testing.assert_array_equal(noise(frames, np.random.default_rng(0), block=4), out)  # blocks: same copy


def test_low_quality_makes_blocks_of_pixels_half_the_time():
    from dnsvr.train.video_augment import _pixel_blocks

    small = np.arange(2 * 3 * 4 * 3, dtype=np.uint8).reshape(2, 3, 4, 3)
    big = _pixel_blocks(small, (8, 6))                  # every pixel becomes a 2×2 block
    assert big.shape == (2, 6, 8, 3)
    np.testing.assert_array_equal(big[:, ::2, ::2], small)
    np.testing.assert_array_equal(big[:, 1::2, 1::2], small)
    frames = _video(3, t=2, h=60, w=80)
    draws = [bool(np.random.default_rng(seed).random() < 0.5) for seed in range(20)]
    assert 0 < sum(draws) < 20                          # both kinds are drawn
    for seed in range(4):
        out = low_quality(frames, np.random.default_rng(seed))
        assert out.shape == frames.shape and out.dtype == np.uint8 and not np.array_equal(out, frames)


def test_picture_in_picture_places_the_inset():
    frames = np.full((6, 40, 60, 3), 200, np.uint8)
    host = np.full((3, 40, 60, 3), 10, np.uint8)
    out, info = picture_in_picture(frames, host, np.random.default_rng(0), inset="self")
    x0, y0, w, h = info["box"]
    assert 0.35 * 60 - 1 <= w <= 0.65 * 60 and 0.35 * 40 - 1 <= h <= 0.65 * 40
    inside = np.zeros(out.shape[1:3], bool)
    inside[y0:y0 + h, x0:x0 + w] = True
    assert (out[:, inside] == 200).all() and (out[:, ~inside] == 10).all()
    out, info = picture_in_picture(frames, host, np.random.default_rng(1), inset="host")
    x0, y0, w, h = info["box"]
    inside = np.zeros(out.shape[1:3], bool)
    inside[y0:y0 + h, x0:x0 + w] = True
    assert (out[:, inside] == 10).all() and (out[:, ~inside] == 200).all()
    assert out.shape == frames.shape      # the host is looped to the video's length


def test_no_host_no_pip_and_bad_input():
    _, ops = augment_frames(_video(), copy_generator(0, "v", 0), ALWAYS, host=None)
    assert "pip" not in ops
    with pytest.raises(ValueError, match="uint8"):
        augment_frames(np.zeros((3, 8, 8, 3), np.float32), np.random.default_rng(0))
    with pytest.raises(ValueError, match="famil"):
        augment_frames(_video(), np.random.default_rng(0), families=["colour"])

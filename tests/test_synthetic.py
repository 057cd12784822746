"""Generated videos: deterministic content, files PyAV can read back, transformed copies."""

from __future__ import annotations

import av
import numpy as np
import pytest

from dnsvr import synthetic as S


def test_render_is_deterministic_and_seed_dependent():
    a = S.render_clip(5, seconds=1.0, fps=10, size=(64, 48))
    b = S.render_clip(5, seconds=1.0, fps=10, size=(64, 48))
    c = S.render_clip(6, seconds=1.0, fps=10, size=(64, 48))
    assert a.shape == (10, 48, 64, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert np.abs(a.astype(int) - c.astype(int)).mean() > 10


def test_content_depends_on_time_not_frame_rate():
    slow = S.render_clip(3, seconds=2.0, fps=5, size=(80, 48))
    fast = S.render_clip(3, seconds=2.0, fps=10, size=(80, 48))
    np.testing.assert_array_equal(slow, fast[::2])
    # and it moves: consecutive frames differ
    assert np.abs(fast[1:].astype(int) - fast[:-1].astype(int)).mean() > 0.5


def test_clip_has_scene_changes():
    frames = S.render_clip(11, seconds=8.0, fps=10, size=(64, 48)).astype(np.float32)
    diffs = np.abs(frames[1:] - frames[:-1]).mean(axis=(1, 2, 3))
    assert diffs.max() > 4 * np.median(diffs)  # cuts between scenes stand out


def test_write_and_read_back(tmp_path):
    frames = S.render_clip(1, seconds=2.0, fps=10, size=(96, 64))
    path = S.write_video(tmp_path / "a.mp4", frames, fps=10, crf=12)
    with av.open(str(path)) as c:
        decoded = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    assert decoded.shape == frames.shape
    assert np.abs(decoded.astype(int) - frames.astype(int)).mean() < 6


def test_odd_size_rotation_vfr_audio(tmp_path):
    frames = S.render_clip(2, seconds=1.0, fps=10, size=(97, 61))
    p = S.write_video(tmp_path / "odd.mp4", frames, fps=10, rotation=90, audio=True)
    with av.open(str(p)) as c:
        assert (c.streams.video[0].width, c.streams.video[0].height) == (97, 61)
        assert len(c.streams.audio) == 1
        first = next(c.decode(video=0))
        assert first.rotation == 90
    times = [0.0, 0.2, 1.5, 1.6, 2.9]
    p = S.write_video(tmp_path / "vfr.mkv", S.render_clip(2, size=(64, 48), timestamps=times), timestamps=times)
    with av.open(str(p)) as c:
        got = [round(f.time, 3) for f in c.decode(video=0)]
    assert got == times


def test_write_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="no frames"):
        S.write_video(tmp_path / "x.mp4", np.zeros((0, 8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        S.write_video(tmp_path / "x.mp4", np.zeros((2, 8, 8, 3), np.float32))


def test_audio_only_file(tmp_path):
    p = S.write_audio(tmp_path / "a.m4a", seconds=0.5)
    with av.open(str(p)) as c:
        assert not c.streams.video and len(c.streams.audio) == 1


@pytest.mark.parametrize("name", S.TRANSFORMS)
def test_transforms(name):
    frames = S.render_clip(4, seconds=1.0, fps=10, size=(64, 48))
    out = S.transform_clip(frames, name, seed=1)
    assert out.dtype == np.uint8 and out.shape[1:] == frames.shape[1:]
    np.testing.assert_array_equal(out, S.transform_clip(frames, name, seed=1))  # deterministic
    if name == "speed":
        assert len(out) < len(frames)
    elif name in ("slow", "insert"):
        assert len(out) > len(frames)
    elif name in ("reencode", "downscale"):
        assert out is frames  # applied when writing
    else:
        assert len(out) == len(frames) and not np.array_equal(out, frames)


def test_exact_transforms():
    frames = S.render_clip(4, seconds=1.0, fps=10, size=(64, 48))
    np.testing.assert_array_equal(S.hflip(frames)[:, :, 0], frames[:, :, -1])
    assert len(S.change_speed(frames, 2.0)) == 5
    np.testing.assert_array_equal(S.change_speed(frames, 2.0), frames[::2])
    c = S.crop(frames, 0.5, resize_back=False)
    np.testing.assert_array_equal(c, frames[:, 12:36, 16:48])
    with pytest.raises(ValueError, match="valid: reencode"):
        S.transform_clip(frames, "teleport")


def test_make_collection(tmp_path):
    col = S.make_collection(tmp_path / "col", n_originals=2, n_distractors=1, transforms=("crop", "hflip"),
                            seconds=1.0, fps=5, size=(64, 48))
    assert sorted(col.videos) == ["dist_0", "orig_0", "orig_0_crop", "orig_0_hflip", "orig_1", "orig_1_crop",
                                  "orig_1_hflip"]
    assert col.positives == {"orig_0": ["orig_0_crop", "orig_0_hflip"], "orig_1": ["orig_1_crop", "orig_1_hflip"]}
    assert all(p.is_file() for p in col.videos.values())
    again = S.SyntheticCollection.load(col.root)
    assert again.videos == col.videos and again.positives == col.positives
    lines = col.list_file().read_text().splitlines()
    assert lines[0].split("\t") == ["orig_0", str(col.videos["orig_0"])]


def test_loop_video_remuxes(tmp_path):
    frames = S.render_clip(3, seconds=2.0, fps=10, size=(64, 48))
    src = S.write_video(tmp_path / "a.mp4", frames, fps=10)
    dst = S.loop_video(src, tmp_path / "b.mp4", 3)
    with av.open(str(dst)) as c:
        decoded = [(f.time, f.to_ndarray(format="rgb24")) for f in c.decode(video=0)]
    assert len(decoded) == 60
    times = [t for t, _ in decoded]
    assert all(b > a for a, b in zip(times, times[1:])) and 5.9 <= times[-1] < 6.5
    np.testing.assert_array_equal(decoded[0][1], decoded[20][1])     # the same packets again
    with pytest.raises(ValueError, match="repeats"):
        S.loop_video(src, tmp_path / "c.mp4", 0)

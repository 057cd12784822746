"""Decoding: sampling by timestamps, preprocessing geometry, rotation, typed errors, damage."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dnsvr import synthetic as S
from dnsvr import video as V


def _write(tmp_path: Path, name: str, seconds=3.0, fps=25.0, size=(128, 72), seed=0, **kw) -> Path:
    frames = S.render_clip(seed, seconds=seconds, fps=fps, size=size)
    return S.write_video(tmp_path / name, frames, fps=fps, **kw)


# -- sampling ----------------------------------------------------------------------------------

@pytest.mark.parametrize("fps,seconds,expected", [(25.0, 4.0, 4), (30000 / 1001, 5.0, 5), (10.0, 3.5, 4),
                                                  (24.0, 0.5, 1)])
def test_one_fps_frame_count_constant_rate(tmp_path, fps, seconds, expected):
    p = _write(tmp_path, "c.mp4", seconds=seconds, fps=fps, size=(64, 48))
    frames, times = V.read_frames(p, fps=1.0)
    assert frames.shape == (expected, 224, 224, 3) and frames.dtype == np.uint8
    # the first frame at or after each whole second
    np.testing.assert_allclose(times, [np.ceil(k * fps - 1e-9) / fps for k in range(expected)], atol=2e-3)


def test_other_rates_and_every_frame(tmp_path):
    p = _write(tmp_path, "c.mkv", seconds=2.0, fps=10.0, size=(64, 48))
    assert len(V.read_frames(p, fps=2.5)[0]) == 5
    frames, times = V.read_frames(p, fps=None)
    assert len(frames) == 20
    np.testing.assert_allclose(times, np.arange(20) / 10, atol=2e-3)


def test_variable_frame_rate(tmp_path):
    # a gap from 0.3 s to 2.6 s spans the ticks at 1 s and 2 s: the frame at 2.6 s serves both
    times = [0.0, 0.1, 0.3, 2.6, 2.65, 3.0, 3.05, 4.4]
    frames = S.render_clip(9, size=(64, 48), timestamps=times)
    p = S.write_video(tmp_path / "vfr.mkv", frames, timestamps=times)
    out, ts = V.read_frames(p, fps=1.0)
    np.testing.assert_allclose(ts, [0.0, 2.6, 2.6, 3.0, 4.4], atol=1e-3)
    assert len(out) == 5 == int(np.floor(4.4)) + 1
    np.testing.assert_array_equal(out[1], out[2])
    assert not np.array_equal(out[0], out[1])


def test_timestamps_relative_to_first_frame(tmp_path):
    # streams that start late (MPEG-TS style offsets) still tick from their first frame
    times = [1.5 + i / 10 for i in range(25)]
    p = S.write_video(tmp_path / "late.mkv", S.render_clip(2, size=(64, 48), timestamps=times), timestamps=times)
    _, ts = V.read_frames(p, fps=1.0)
    np.testing.assert_allclose(ts, [0.0, 1.0, 2.0], atol=2e-3)


def test_chunks_stream(tmp_path):
    p = _write(tmp_path, "c.mp4", seconds=10.0, fps=5.0, size=(64, 48))
    reader = V.decode_frames(p, fps=1.0, chunk_size=3)
    chunks = list(reader)
    assert [len(c) for c in chunks] == [3, 3, 3, 1]
    assert [c.start for c in chunks] == [0, 3, 6, 9]
    assert [c.last for c in chunks] == [False, False, False, True]
    assert not any(c.truncated for c in chunks)
    assert reader.n_frames == 10 and reader.n_decoded <= 50 and not reader.damaged
    assert reader.duration == pytest.approx(10.0, abs=1e-3)
    with pytest.raises(RuntimeError, match="only once"):
        list(reader)


# -- geometry ----------------------------------------------------------------------------------

def _reference_preprocess(frame: np.ndarray, short: int = 256, crop: int = 224) -> np.ndarray:
    """Independent implementation (scikit-image) of: short side -> 256, centre crop 224."""
    from skimage.transform import resize
    h, w = frame.shape[:2]
    s = short / min(h, w)
    nh, nw = round(h * s), round(w * s)
    big = resize(frame, (nh, nw), order=1, anti_aliasing=nh < h, preserve_range=True)
    y0, x0 = (nh - crop) // 2, (nw - crop) // 2
    return big[y0:y0 + crop, x0:x0 + crop]


@pytest.mark.parametrize("size", [(97, 61), (96, 160), (400, 300)])
def test_resize_and_centre_crop_match_reference(tmp_path, size):
    frames = S.render_clip(4, seconds=1.0, fps=5, size=size)
    p = S.write_video(tmp_path / "g.mkv", frames, fps=5, codec="ffv1", pix_fmt="yuv444p")  # near-lossless
    out, _ = V.read_frames(p, fps=None)
    assert out.shape == (5, 224, 224, 3)
    ref = _reference_preprocess(frames[0].astype(np.float64))
    err = np.abs(out[0].astype(np.float64) - ref)
    assert err.mean() < 4.0, err.mean()
    # a crop shifted by a few pixels would be much further away
    shifted = np.abs(out[0, :, 6:].astype(np.float64) - ref[:, :-6]).mean()
    assert shifted > err.mean() + 1.0


def test_no_crop_keeps_aspect(tmp_path):
    p = _write(tmp_path, "odd.mp4", seconds=1.0, fps=5, size=(97, 61))
    out, _ = V.read_frames(p, crop=None)
    assert out.shape == (1, 256, 407, 3)
    out, _ = V.read_frames(p, short_side=None, crop=None)
    assert out.shape == (1, 61, 97, 3)
    portrait = _write(tmp_path, "portrait.mp4", seconds=1.0, fps=5, size=(90, 160))
    out, _ = V.read_frames(portrait, crop=None)
    assert out.shape == (1, 455, 256, 3)


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_rotation_metadata_is_honoured(tmp_path, rotation):
    frames = S.render_clip(8, seconds=1.0, fps=5, size=(128, 72))
    plain = S.write_video(tmp_path / "plain.mp4", frames, fps=5, pix_fmt="yuv444p", crf=0)
    rotated = S.write_video(tmp_path / "rot.mp4", frames, fps=5, rotation=rotation, pix_fmt="yuv444p", crf=0)
    info = V.probe(rotated)
    assert info.rotation == rotation
    assert (info.display_width, info.display_height) == ((72, 128) if rotation % 180 else (128, 72))
    ref, _ = V.read_frames(plain, fps=None, short_side=None, crop=None)
    got, _ = V.read_frames(rotated, fps=None, short_side=None, crop=None)
    expected = np.rot90(ref, rotation // 90, axes=(1, 2))      # counter-clockwise, as players show it
    assert got.shape == expected.shape
    assert np.abs(got.astype(int) - expected.astype(int)).mean() < 2
    assert np.abs(got.astype(int) - np.rot90(expected, 2, axes=(1, 2)).astype(int)).mean() > 20
    # with the default preprocessing the rotated crop is the crop of the rotated frame
    got_c, _ = V.read_frames(rotated, fps=None)
    ref_c, _ = V.read_frames(plain, fps=None)
    assert np.abs(got_c.astype(int) - np.rot90(ref_c, rotation // 90, axes=(1, 2)).astype(int)).mean() < 2


def test_probe(tmp_path):
    p = _write(tmp_path, "a.mp4", seconds=2.0, fps=25.0, size=(128, 72), audio=True)
    info = V.probe(p)
    assert (info.width, info.height, info.rotation) == (128, 72, 0)
    assert info.fps == pytest.approx(25.0) and info.duration == pytest.approx(2.0, abs=0.05)
    assert info.has_audio and info.codec == "h264" and info.frames == 50


def test_invalid_parameters(tmp_path):
    p = _write(tmp_path, "a.mp4", seconds=1.0, fps=5, size=(64, 48))
    with pytest.raises(ValueError, match="crop"):
        V.decode_frames(p, short_side=128, crop=224)
    with pytest.raises(ValueError, match="fps"):
        V.decode_frames(p, fps=-1)


# -- bad input ---------------------------------------------------------------------------------

def test_missing_directory_and_non_video(tmp_path):
    with pytest.raises(V.VideoNotFoundError, match="no such file"):
        V.decode_frames(tmp_path / "nope.mp4")
    with pytest.raises(V.NotAFileError, match="directory"):
        V.decode_frames(tmp_path)
    (tmp_path / "notes.mp4").write_text("this is not a video\n" * 50)
    with pytest.raises(V.NotAVideoError):
        V.decode_frames(tmp_path / "notes.mp4")
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(V.NotAVideoError, match="empty"):
        V.decode_frames(tmp_path / "empty.mp4")


def test_audio_only(tmp_path):
    p = S.write_audio(tmp_path / "a.m4a", seconds=0.5)
    with pytest.raises(V.NoVideoStreamError, match="audio"):
        V.decode_frames(p)


def test_permission_denied(tmp_path, monkeypatch):
    p = _write(tmp_path, "a.mp4", seconds=1.0, fps=5, size=(64, 48))
    real_open = open

    def deny(file, *args, **kwargs):
        if str(file) == str(p):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", deny)
    with pytest.raises(V.VideoPermissionError, match="permission denied"):
        V.decode_frames(p)


def test_zero_decodable_frames(tmp_path):
    reader = V.decode_frames(S.write_undecodable_video(tmp_path / "garbage.mkv"))
    with pytest.raises((V.NoFramesError, V.CorruptVideoError)):
        list(reader)


@pytest.mark.parametrize("size,match", [((400, 16), "aspect"), ((8, 8), "too small")])
def test_absurd_resolution(tmp_path, size, match):
    p = _write(tmp_path, "weird.mkv", seconds=0.4, fps=5, size=size, codec="ffv1")
    with pytest.raises(V.UnsupportedResolutionError, match=match):
        V.decode_frames(p)
    with pytest.raises(V.UnsupportedResolutionError, match="too large"):
        V.decode_frames(_write(tmp_path, "a.mkv", seconds=0.4, fps=5, size=(64, 48)),
                        limits=V.DecodeLimits(max_pixels=1000))


def test_truncated_file_keeps_frames_before_damage(tmp_path):
    p = _write(tmp_path, "full.mkv", seconds=6.0, fps=25, size=(128, 72))
    data = p.read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: len(data) // 2])
    reader = V.decode_frames(cut)
    chunks = list(reader)
    n = sum(len(c) for c in chunks)
    assert 1 <= n < 6
    assert reader.truncated and chunks[-1].truncated and chunks[-1].last
    assert "truncated" in reader.damage_summary and "6.00 s" in reader.damage_summary
    # the kept frames are the same as the intact file's first frames
    full, _ = V.read_frames(p)
    got = np.concatenate([c.frames for c in chunks])
    np.testing.assert_array_equal(got, full[:n])


def test_truncated_mp4_without_index_is_an_error(tmp_path):
    p = _write(tmp_path, "full.mp4", seconds=3.0, fps=25, size=(64, 48))
    data = p.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])  # the index (moov) is at the end: nothing is readable
    with pytest.raises(V.NotAVideoError):
        list(V.decode_frames(cut))


def test_corrupted_middle_is_reported(tmp_path):
    p = _write(tmp_path, "full.mkv", seconds=6.0, fps=25, size=(128, 72))
    data = bytearray(p.read_bytes())
    rng = np.random.default_rng(1)
    for i in rng.integers(len(data) // 3, 2 * len(data) // 3, 3000):
        data[i] = int(rng.integers(256))
    bad = tmp_path / "bad.mkv"
    bad.write_bytes(bytes(data))
    reader = V.decode_frames(bad)
    n = sum(len(c) for c in reader)   # must not raise: what is decodable is kept
    assert n >= 2
    full, _ = V.read_frames(p)
    # the frames before the damage are intact
    first, _ = V.read_frames(bad, fps=1.0)
    np.testing.assert_array_equal(first[:1], full[:1])


@pytest.mark.parametrize("fps,gop,name", [(1.0, None, "b.mp4"), (2.5, None, "b.mp4"), (1.0, 12, "b.mp4"),
                                           (0.5, 20, "b.mkv"), (2.0, 7, "b.mp4"), (1.0, 15, "b.ts"),
                                           (1.0, 15, "b.webm"), (1.0, 15, "b.avi")])
def test_skipping_unneeded_frames_is_exact(tmp_path, fps, gop, name):
    # non-reference B-frames, and whole stretches before a keyframe, are what can be skipped;
    # the sampled frames must be exactly those of a full decode
    frames = S.render_clip(12, seconds=9.0, fps=25, size=(128, 72))
    p = S.write_video(tmp_path / name, frames, fps=25, preset="medium", gop=gop)
    fast = V.decode_frames(p, fps=fps)
    got = list(fast)
    full = V.decode_frames(p, fps=fps, skip_unneeded=False)
    ref = list(full)
    np.testing.assert_array_equal(np.concatenate([c.frames for c in got]), np.concatenate([c.frames for c in ref]))
    np.testing.assert_array_equal(np.concatenate([c.timestamps for c in got]),
                                  np.concatenate([c.timestamps for c in ref]))
    assert full.n_decoded == 225 and not fast.damaged
    assert fast.n_decoded < (0.8 if name.endswith((".mp4", ".mkv")) else 0.95) * full.n_decoded
    if gop is not None and gop <= 12 and fps <= 1.0:
        assert fast.n_dropped > 0


def test_skipping_is_exact_on_variable_frame_rate(tmp_path):
    rng = np.random.default_rng(3)
    times = np.cumsum(rng.uniform(0.01, 0.12, size=120)).round(3)
    times = np.unique(times)
    p = S.write_video(tmp_path / "vfr.mp4", S.render_clip(4, size=(96, 64), timestamps=times), timestamps=times,
                      preset="medium", gop=10)
    a, ta = V.read_frames(p, fps=1.0)
    b, tb = V.read_frames(p, fps=1.0, skip_unneeded=False)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ta, tb)


def test_timestamp_jump_is_not_filled_with_copies(tmp_path):
    times = [0.0, 0.5, 1.0, 400.0, 400.5, 401.0]           # a 399 s jump: broken timestamps, not a still
    p = S.write_video(tmp_path / "jump.mkv", S.render_clip(5, size=(64, 48), timestamps=times), timestamps=times)
    _, ts = V.read_frames(p, fps=1.0)
    np.testing.assert_allclose(ts, [0.0, 1.0, 400.0, 401.0], atol=1e-3)
    _, ts = V.read_frames(p, fps=1.0, max_repeat_seconds=1000)   # or a 399 s still image, if one says so
    assert len(ts) == 402


# -- approximate sampling: keyframes only ------------------------------------------------------------------

def _keyframe_times(path: Path) -> list[float]:
    import av

    with av.open(str(path)) as c:
        s = c.streams.video[0]
        kf = sorted(float(p.pts * s.time_base) for p in c.demux(s) if p.pts is not None and p.is_keyframe)
    return [t - kf[0] for t in kf]


@pytest.mark.parametrize("fps", [1.0, 2.0])
def test_keyframes_mode_takes_latest_keyframe_at_or_before_each_tick(tmp_path, fps):
    p = _write(tmp_path, "k.mp4", seconds=7.3, fps=10.0, size=(96, 64), seed=4, gop=17)
    keys = _keyframe_times(p)
    assert len(keys) >= 4                                       # gop 17 at 10 fps (+ scene cuts)
    every, every_t = V.read_frames(p, fps=None)                 # ground truth: every frame decoded
    exact_frames, _ = V.read_frames(p, fps=fps)
    reader = V.decode_frames(p, fps=fps, decode="keyframes")
    chunks = list(reader)
    frames = np.concatenate([c.frames for c in chunks])
    times = np.concatenate([c.timestamps for c in chunks])
    assert len(frames) == len(exact_frames)                     # same ticks as exact sampling
    assert reader.n_decoded == len(keys)                        # nothing but keyframes decoded
    errors = []
    for j, (frame, t) in enumerate(zip(frames, times)):
        tick = j / fps
        k = max(x for x in keys if x <= tick + 1e-6)
        assert t == pytest.approx(k, abs=2e-3)
        i = int(np.argmin(np.abs(every_t - k)))
        np.testing.assert_array_equal(frame, every[i])       # the keyframe itself, pixel for pixel
        errors.append(tick - k)
    assert reader.max_sampling_error == pytest.approx(max(errors), abs=2e-3)
    assert reader.mean_sampling_error == pytest.approx(float(np.mean(errors)), abs=2e-3)
    assert max(errors) > 0.5                                    # it is an approximation, and says so


def test_exact_mode_reports_no_sampling_error(tmp_path):
    p = _write(tmp_path, "e.mp4", seconds=3.0, fps=10.0, size=(64, 48), gop=12)
    reader = V.decode_frames(p, fps=1.0)
    list(reader)
    assert reader.max_sampling_error == 0.0 and reader.mean_sampling_error == 0.0
    with pytest.raises(ValueError, match="decode"):
        V.decode_frames(p, decode="nearest")
    with pytest.raises(ValueError, match="keyframes"):
        V.decode_frames(p, fps=None, decode="keyframes")


def test_keyframes_mode_on_variable_frame_rate_all_intra(tmp_path):
    # every frame a keyframe: each tick gets the latest frame at or before it; the count stays the exact mode's
    times = [0.0, 0.1, 0.3, 2.6, 2.65, 3.0, 3.05, 4.4]
    frames = S.render_clip(9, size=(64, 48), timestamps=times)
    p = S.write_video(tmp_path / "vfr_intra.mkv", frames, timestamps=times, gop=1)
    reader = V.decode_frames(p, fps=1.0, decode="keyframes")
    ts = np.concatenate([c.timestamps for c in reader])
    np.testing.assert_allclose(ts, [0.0, 0.3, 0.3, 3.0, 3.05], atol=1e-3)
    assert reader.max_sampling_error == pytest.approx(1.7, abs=1e-3)          # tick 2 s got the frame at 0.3 s


def test_check_decode_is_the_one_check() -> None:
    """One check of the decode mode (reader, extraction, CLI), naming the option it was given as."""
    from dnsvr.video import check_decode

    assert check_decode("exact", None) == "exact" and check_decode("keyframes", 1.0) == "keyframes"
    with pytest.raises(ValueError, match=r"^--decode must be one of exact, keyframes, got 'fastest'"):
        check_decode("fastest", 1.0, name="--decode")
    with pytest.raises(ValueError, match="needs a sampling rate"):
        check_decode("keyframes", None)

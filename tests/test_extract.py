"""Extraction: inputs, HDF5 layout, bad inputs in a batch, resume, crash safety, whitening.

Most tests use a tiny deterministic stand-in for the network (FakeExtractor: 3x3 grid colour
statistics through a fixed random projection) so that they run in seconds; one test runs the real
EfficientNet-Lite0 end to end through the CLI.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from dnsvr import synthetic as S
from dnsvr import video as V
from dnsvr.extract import ExtractionReport, extract_videos, iter_video_features, resolve_inputs
from dnsvr.features import COMPLETE_ATTR, FeatureFile, FeatureFileError

SRC = Path(__file__).resolve().parents[1] / "src"


class FakeExtractor:
    """Frames [N, H, W, 3] → [N, 9, 12]: per-region mean/std colour through a fixed projection, L2-normalised."""

    backbone_name = "fake"
    preprocessing = {"resize_short_side": 64, "crop": 48, "interpolation": "bilinear"}
    identity = {"weights": "fake-v1"}
    whitening = None

    def __init__(self, dims: int = 12, delay: float = 0.0, interrupt_after: int | None = None) -> None:
        self.dims = self.region_dims = dims
        self.proj = np.random.default_rng(0).standard_normal((6, dims)).astype(np.float32)
        self.calls = 0
        self.delay = delay
        self.interrupt_after = interrupt_after

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        self.calls += 1
        if self.interrupt_after is not None and self.calls > self.interrupt_after:
            raise KeyboardInterrupt
        if self.delay:
            time.sleep(self.delay)
        x = np.asarray(frames, np.float32) / 255.0
        n, h, w, _ = x.shape
        g = x[:, : h // 3 * 3, : w // 3 * 3].reshape(n, 3, h // 3, 3, w // 3, 3)
        stats = np.concatenate([g.mean(axis=(2, 4)), g.std(axis=(2, 4))], axis=-1).reshape(n, 9, 6)
        out = stats @ self.proj
        out /= np.linalg.norm(out, axis=-1, keepdims=True) + 1e-12
        return out.astype(np.float32)      # numpy: the subprocess of the crash test need not import torch


def expected_features(extractor: FakeExtractor, path: Path, fps: float = 1.0) -> np.ndarray:
    frames, _ = V.read_frames(path, fps=fps, short_side=64, crop=48)
    return extractor(frames)


def make_videos(root: Path, n: int = 3, seconds: float = 3.0, size=(96, 64)) -> dict[str, Path]:
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for i in range(n):
        frames = S.render_clip(100 + i, seconds=seconds + i, fps=10, size=size)
        out[f"v{i}"] = S.write_video(root / f"v{i}.mp4", frames, fps=10)
    return out


# -- inputs ------------------------------------------------------------------------------------

def test_resolve_inputs(tmp_path):
    (tmp_path / "dir" / "sub").mkdir(parents=True)
    (tmp_path / "dir" / ".hidden").mkdir()
    for p in ["dir/a.mp4", "dir/sub/b.MKV", "dir/notes.txt", "dir/.hidden/c.mp4", "dir/.d.mp4", "x/y/z.webm"]:
        (tmp_path / p).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / p).write_bytes(b"\0")
    got = resolve_inputs([tmp_path / "dir"])
    assert got == [("a", tmp_path / "dir/a.mp4"), ("sub/b", tmp_path / "dir/sub/b.MKV")]
    got = resolve_inputs([str(tmp_path / "x/**/*.webm")])
    assert got == [("y/z", tmp_path / "x/y/z.webm")]
    listing = tmp_path / "list.txt"
    listing.write_text(f"# id<TAB>path\nfirst\tdir/a.mp4\n\nsecond\t{tmp_path / 'x/y/z.webm'}\n"
                       f"{tmp_path / 'dir/sub/b.MKV'}\n")
    assert resolve_inputs(listing) == [("first", tmp_path / "dir/a.mp4"), ("second", tmp_path / "x/y/z.webm"),
                                       ("b", tmp_path / "dir/sub/b.MKV")]
    failures = []
    got = resolve_inputs([tmp_path / "dir/a.mp4", tmp_path / "missing.mp4", str(tmp_path / "*.nothing"),
                          ("a", tmp_path / "x/y/z.webm"), {"m": tmp_path / "dir/a.mp4"}], failures)
    assert got == [("a", tmp_path / "dir/a.mp4"), ("missing", tmp_path / "missing.mp4"),
                   ("m", tmp_path / "dir/a.mp4")]
    assert sorted(f.code for f in failures) == ["duplicate_id", "no_match"]


# -- layout and correctness --------------------------------------------------------------------

def test_extract_layout_and_values(tmp_path):
    videos = make_videos(tmp_path / "videos", n=3)
    ex = FakeExtractor()
    out = tmp_path / "f.h5"
    report = extract_videos([tmp_path / "videos"], out, ex, batch_size=5, progress=False)
    assert report.ok and len(report.extracted) == 3 and report.already_extracted == []
    with FeatureFile(out) as ff:
        assert ff.ids() == ["v0", "v1", "v2"]
        for i, (vid, path) in enumerate(videos.items()):
            feats = ff.read(vid)
            assert feats.shape == (3 + i, 9, 12)         # 1 fps over 3, 4, 5 seconds
            np.testing.assert_allclose(feats, expected_features(ex, path), atol=1e-6)
            info = ff.info(vid)
            assert info[COMPLETE_ATTR] is True or info[COMPLETE_ATTR] == 1
            assert info["fps"] == 1.0 and info["backbone"] == "fake" and info["whitening"] == "none"
            assert info["source"] == str(path) and info["frames"] == 3 + i
            np.testing.assert_allclose(info["timestamps"], np.arange(3 + i), atol=1e-3)
            assert info["duration"] == pytest.approx(3 + i, abs=0.01)
        root = ff.file_attrs()
        assert root["backbone"] == "fake" and root["dims"] == 12 and root["dtype"] == "float32"
    # the layout of the published files: plain [T, 9, D] float datasets at the root
    with h5py.File(out, "r") as h5:
        assert sorted(h5.keys()) == ["v0", "v1", "v2"]
        assert all(isinstance(h5[k], h5py.Dataset) and h5[k].ndim == 3 and h5[k].shape[1] == 9 for k in h5)
    assert not (tmp_path / "f.h5.parts").exists()


def test_iter_video_features_matches_file(tmp_path):
    videos = make_videos(tmp_path / "videos", n=2)
    ex = FakeExtractor()
    got = {r.video_id: (r.features, r.attrs()) for r in iter_video_features(list(videos.values()), ex, batch_size=4)}
    assert list(got) == ["v0", "v1"]
    for vid, path in videos.items():
        feats, meta = got[vid]
        np.testing.assert_allclose(feats, expected_features(ex, path), atol=1e-6)
        assert meta["frames"] == len(feats) and meta["source"] == str(path) and not meta["truncated"]
        assert meta["timestamps"].shape == (len(feats),)


def test_float16_and_other_fps(tmp_path):
    videos = make_videos(tmp_path / "videos", n=1, seconds=2.0)
    out = tmp_path / "f16.h5"
    extract_videos(videos["v0"], out, FakeExtractor(), fps=2.0, dtype="float16", progress=False)
    with h5py.File(out, "r") as h5:
        assert h5["v0"].dtype == np.float16 and h5["v0"].shape == (4, 9, 12)


# -- bad input never stops the batch ---------------------------------------------------------

def test_bad_inputs_are_reported_and_the_rest_extracted(tmp_path, monkeypatch):
    good = make_videos(tmp_path / "good", n=2)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "text.mp4").write_text("not a video at all\n" * 20)
    S.write_audio(bad / "audio.mp4", seconds=0.5)
    S.write_undecodable_video(bad / "noframes.mkv")
    full = S.write_video(bad / "full.mkv", S.render_clip(7, seconds=6.0, fps=25, size=(96, 64)), fps=25)
    data = full.read_bytes()
    (bad / "truncated.mkv").write_bytes(data[: len(data) // 2])
    full.unlink()
    mp4 = S.write_video(bad / "x.mp4", S.render_clip(8, seconds=2.0, fps=25, size=(64, 48)), fps=25)
    (bad / "noindex.mp4").write_bytes(mp4.read_bytes()[: mp4.stat().st_size // 2])
    mp4.unlink()
    S.write_video(bad / "banner.mkv", S.render_clip(9, seconds=0.4, fps=5, size=(640, 16)), fps=5, codec="ffv1")
    locked = S.write_video(bad / "locked.mp4", S.render_clip(10, seconds=1.0, fps=5, size=(64, 48)), fps=5)
    (bad / "folder.mp4").mkdir()                      # a directory named like a video, listed explicitly
    real_open = open

    def deny(file, *args, **kwargs):                  # works as root too (chmod would not)
        if str(file) == str(locked):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", deny)
    inputs = [good["v0"], bad, tmp_path / "missing.mp4", ("folder", bad / "folder.mp4"), good["v1"]]
    out = tmp_path / "f.h5"
    report = extract_videos(inputs, out, FakeExtractor(), batch_size=3, progress=False,
                            failures_json=tmp_path / "failures.json")
    codes = {f.video_id: f.code for f in report.failures}
    assert codes == {"text": "not_a_video", "audio": "no_video_stream", "noframes": "no_frames",
                     "truncated": "damaged", "noindex": "not_a_video", "banner": "bad_resolution",
                     "locked": "permission_denied", "missing": "not_found", "folder": "not_a_file"}
    assert not report.ok
    by_id = {f.video_id: f for f in report.failures}
    assert by_id["truncated"].extracted and "truncated: kept" in by_id["truncated"].reason
    assert by_id["audio"].reason.startswith("no video stream")
    with FeatureFile(out) as ff:
        assert sorted(ff.ids()) == ["truncated", "v0", "v1"]
        assert 1 <= ff.shape("truncated")[0] < 6
        assert ff.info("truncated")["truncated"]
    saved = json.loads((tmp_path / "failures.json").read_text())
    assert {d["video_id"] for d in saved} == set(codes) and all(set(d) == {"video_id", "path", "code", "reason",
                                                                         "extracted"} for d in saved)
    lines = report.summary().splitlines()
    assert any(line.strip().startswith("locked\t") and "permission denied" in line for line in lines)


def test_network_error_fails_only_its_batch(tmp_path):
    videos = make_videos(tmp_path / "videos", n=3, seconds=2.0)
    ex = FakeExtractor()
    real = ex.__call__

    class Flaky:
        backbone_name, dims, preprocessing = "fake", 12, FakeExtractor.preprocessing
        calls = 0

        def __call__(self, frames):
            Flaky.calls += 1
            if Flaky.calls == 1:
                raise RuntimeError("boom")
            return real(frames)

    report = extract_videos(list(videos.values()), tmp_path / "f.h5", Flaky(), batch_size=2, progress=False)
    failed = [f for f in report.failures if not f.extracted]
    assert [f.code for f in failed] == ["network_error"] and "boom" in failed[0].reason
    assert len(report.extracted) == 2


# -- resume and crash safety -------------------------------------------------------------------

def test_resume_skips_complete_and_refuses_other_settings(tmp_path):
    videos = make_videos(tmp_path / "videos", n=3, seconds=2.0)
    out = tmp_path / "f.h5"
    ex = FakeExtractor()
    r1 = extract_videos([videos["v0"], videos["v1"]], out, ex, progress=False)
    calls = ex.calls
    r2 = extract_videos(list(videos.values()), out, ex, progress=False)
    assert [r.video_id for r in r1.extracted] == ["v0", "v1"]
    assert r2.already_extracted == ["v0", "v1"] and [r.video_id for r in r2.extracted] == ["v2"]
    assert ex.calls == calls + 1                       # only v2's frames went through the network
    with FeatureFile(out) as ff:
        assert ff.ids() == ["v0", "v1", "v2"]
    with pytest.raises(FeatureFileError, match="fps"):
        extract_videos(list(videos.values()), out, ex, fps=2.0, progress=False)
    published = tmp_path / "published.h5"
    with h5py.File(published, "w") as h5:
        h5["x"] = np.zeros((2, 9, 12), np.float32)
    with pytest.raises(FeatureFileError, match="not written by dnsvr"):
        extract_videos(list(videos.values()), published, ex, progress=False)


def test_keyboard_interrupt_keeps_finished_videos(tmp_path):
    videos = make_videos(tmp_path / "videos", n=4, seconds=2.0)
    out = tmp_path / "f.h5"
    # videos of 2, 3, 4, 5 frames in batches of 2: call 1 = v0, call 2 = v1[:2], call 3 = v1[2:] + v2[:1]
    ex = FakeExtractor(interrupt_after=2)         # the 3rd call is interrupted
    with pytest.raises(KeyboardInterrupt):
        extract_videos(list(videos.values()), out, ex, batch_size=2, checkpoint_interval=3600, progress=False)
    with FeatureFile(out) as ff:
        assert ff.ids() == ["v0"]
    report = extract_videos(list(videos.values()), out, FakeExtractor(), batch_size=2, progress=False)
    assert report.already_extracted == ["v0"] and [r.video_id for r in report.extracted] == ["v1", "v2", "v3"]


_CRASH_SCRIPT = """
import sys
sys.path[:0] = [{src!r}, {tests!r}]
from test_extract import FakeExtractor
from dnsvr.extract import extract_videos
extract_videos({inputs!r}, {out!r}, FakeExtractor(delay=0.15), batch_size=2, checkpoint_interval={interval},
               progress=False)
"""


def _finished_ids(out: Path, journal: Path) -> set[str]:
    """Ids finished by a running extraction (file + journal), read without disturbing it."""
    ids: set[str] = set()
    for part in journal.glob("*.h5") if journal.exists() else []:
        try:
            with h5py.File(part, "r") as h5:
                ids.add(str(h5["features"].attrs["video_id"]))
        except (OSError, KeyError):
            pass                                        # merged and removed meanwhile
    try:
        with FeatureFile(out) as ff:
            ids |= set(ff.ids())
    except (FileNotFoundError, FeatureFileError):
        pass
    return ids


@pytest.mark.parametrize("interval", [0, 3600])
def test_sigkill_mid_run_then_resume(tmp_path, interval):
    videos = make_videos(tmp_path / "videos", n=8, seconds=2.0, size=(64, 48))
    out = tmp_path / "f.h5"
    journal = tmp_path / "f.h5.parts"
    script = _CRASH_SCRIPT.format(src=str(SRC), tests=str(Path(__file__).parent), inputs=[str(p) for p in
                                  videos.values()], out=str(out), interval=interval)
    proc = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    # wait until some (not all) videos are finished, then kill without warning
    while time.monotonic() < deadline:
        if len(_finished_ids(out, journal)) >= 3:
            break
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    # whatever the instant of the kill, the feature file (if any) is valid and holds only complete videos
    done_before: set[str] = set()
    ex = FakeExtractor()
    if out.exists():
        with FeatureFile(out) as ff:
            done_before = set(ff.ids())
            for vid in done_before:
                np.testing.assert_allclose(ff.read(vid), expected_features(ex, videos[vid]), atol=1e-6)
    if interval == 0:
        assert done_before, "with checkpoints after every video, finished videos are in the file itself"
    report = extract_videos(list(videos.values()), out, ex, batch_size=2, progress=False)
    assert report.ok
    assert set(report.already_extracted) >= done_before and len(report.already_extracted) >= 3     # journal parts were recovered
    assert len(report.already_extracted) + len(report.extracted) == 8
    with FeatureFile(out) as ff:
        assert sorted(ff.ids()) == sorted(videos)
        for vid, path in videos.items():
            np.testing.assert_allclose(ff.read(vid), expected_features(ex, path), atol=1e-6)
    assert not journal.exists() and not (tmp_path / "f.h5.tmp").exists()


# -- whitening ---------------------------------------------------------------------------------

def test_whitening_fit_two_passes(tmp_path):
    import torch

    from dnsvr.backbones import PCAWhitening

    videos = make_videos(tmp_path / "videos", n=3, seconds=3.0)
    out = tmp_path / "w.h5"
    ex = FakeExtractor(dims=12)
    report = extract_videos(list(videos.values()), out, ex, whitening="fit", dims=6, progress=False)
    assert report.ok and report.whitening_file == tmp_path / "w.whitening.npz"
    assert not (tmp_path / "w.raw.h5").exists()
    white = PCAWhitening.from_file(report.whitening_file, dims=6)
    raw = np.concatenate([expected_features(ex, p) for p in videos.values()])
    refit = PCAWhitening(dims=6).fit(raw)           # the fit used exactly these videos' regions
    a = white(torch.from_numpy(raw)).numpy().reshape(-1, 6)
    b = refit(torch.from_numpy(raw)).numpy().reshape(-1, 6)
    # the same whitening up to the signs of the components (raw regions were stored as float16)
    np.testing.assert_allclose(np.abs(a), np.abs(b), atol=5e-3)
    np.testing.assert_allclose(a @ a.T, b @ b.T, atol=5e-3)
    with FeatureFile(out) as ff:
        assert ff.file_attrs()["whitening"] == white.identity
        for vid, path in videos.items():
            feats = ff.read(vid)
            assert feats.shape[2] == 6 and ff.info(vid)["whitening"] == white.identity
            want = white(torch.from_numpy(expected_features(ex, path))).numpy()
            np.testing.assert_allclose(feats, want, atol=1e-3)
    # later runs reuse the saved whitening for new videos
    more = make_videos(tmp_path / "more", n=1, seconds=2.0)
    r2 = extract_videos([*videos.values(), ("extra", more["v0"])], out, ex, whitening="fit", dims=6,
                        progress=False)
    assert r2.already_extracted == ["v0", "v1", "v2"] and [r.video_id for r in r2.extracted] == ["extra"]
    # a whitening file given by path
    r3 = extract_videos(list(videos.values()), tmp_path / "p.h5", ex, whitening=report.whitening_file, dims=6,
                        progress=False)
    with FeatureFile(tmp_path / "p.h5") as a, FeatureFile(out) as b:
        np.testing.assert_allclose(a.read("v1"), b.read("v1"), atol=1e-3)
    assert r3.whitening == white.identity


def test_whitening_fit_on_a_sample(tmp_path):
    videos = make_videos(tmp_path / "videos", n=3, seconds=3.0)
    report = extract_videos(list(videos.values()), tmp_path / "s.h5", FakeExtractor(), whitening="fit", dims=4,
                            fit_videos=2, progress=False)
    assert report.ok and sorted(r.video_id for r in report.extracted) == ["v0", "v1", "v2"]
    with FeatureFile(tmp_path / "s.h5") as ff:
        assert all(ff.shape(v)[2] == 4 for v in ff.ids())


# -- the command, with the real network --------------------------------------------------------

@pytest.mark.slow
def test_cli_extract_lite0(tmp_path):
    from typer.testing import CliRunner

    from dnsvr.cli import app

    make_videos(tmp_path / "videos", n=2, seconds=2.0, size=(96, 64))
    out = tmp_path / "cli.h5"
    runner = CliRunner()
    args = ["extract", str(tmp_path / "videos"), "--output", str(out), "--no-progress"]
    res = runner.invoke(app, [*args, str(tmp_path / "nope.mp4"), "--json", "--failures-json",
                              str(tmp_path / "fail.json")])
    assert res.exit_code == 1, res.output
    data = json.loads(res.stdout)
    assert data["extracted"] == 2 and data["failed"] == 1
    assert json.loads((tmp_path / "fail.json").read_text())[0]["code"] == "not_found"
    with FeatureFile(out) as ff:
        assert ff.ids() == ["v0", "v1"] and ff.shape("v0") == (2, 9, 1456)
        assert ff.info("v0")["backbone"] == "efficientnet_lite0"
        norms = np.linalg.norm(ff.read("v1"), axis=-1)
        np.testing.assert_allclose(norms, 1.0, atol=1e-4)
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "2 already extracted" in res.stdout
    res = runner.invoke(app, [*args, "--backbone", "vgg"])
    assert res.exit_code == 2 and "--backbone must be one of" in res.output
    res = runner.invoke(app, [*args, "--decode", "nearest"])
    assert res.exit_code == 2 and "--decode" in res.output
    res = runner.invoke(app, [*args, "--precision", "int8"])                  # Lite0 has no int8 path
    assert res.exit_code == 2 and "resnet50" in res.output
    out_k = tmp_path / "cli_keyframes.h5"
    res = runner.invoke(app, ["extract", str(tmp_path / "videos"), "--output", str(out_k), "--no-progress",
                              "--decode", "keyframes"])
    assert res.exit_code == 0, res.output
    with FeatureFile(out_k) as ff:
        assert ff.file_attrs()["decode"] == "keyframes" and ff.shape("v0") == (2, 9, 1456)


def test_report_summary_is_clean_when_ok():
    r = ExtractionReport()
    assert r.ok and "0 failed" in r.summary()


def test_parallel_decoders_progress_bar_and_early_stop(tmp_path):
    import threading

    videos = make_videos(tmp_path / "videos", n=4, seconds=2.0, size=(64, 48))
    ex = FakeExtractor()
    out = tmp_path / "f.h5"
    report = extract_videos(list(videos.values()), out, ex, batch_size=3, decode_workers=2, progress=True)
    assert report.ok and len(report.extracted) == 4
    with FeatureFile(out) as ff:
        for vid, path in videos.items():
            np.testing.assert_allclose(ff.read(vid), expected_features(ex, path), atol=1e-6)
    before = threading.active_count()
    stream = iter_video_features(list(videos.values()), ex, batch_size=2)
    first = next(stream)
    assert first.video_id == "v0"
    stream.close()                                  # the consumer stops early: decoder threads must end
    deadline = time.monotonic() + 5
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() <= before


def test_resume_refuses_other_weights(tmp_path):
    videos = make_videos(tmp_path / "videos", n=1, seconds=2.0, size=(64, 48))
    out = tmp_path / "f.h5"
    extract_videos(list(videos.values()), out, FakeExtractor(), progress=False)
    with FeatureFile(out) as ff:
        assert ff.file_attrs()["weights"] == "fake-v1"

    class Other(FakeExtractor):
        identity = {"weights": "/elsewhere/other-weights.pth"}

    with pytest.raises(FeatureFileError, match="weights"):
        extract_videos(list(videos.values()), out, Other(), progress=False)


def test_keyframes_decode_is_opt_in_labelled_and_not_mixed(tmp_path):
    vids = {}
    for i in range(2):
        frames = S.render_clip(300 + i, seconds=6.0, fps=10, size=(96, 64))
        vids[f"k{i}"] = S.write_video(tmp_path / f"k{i}.mp4", frames, fps=10, gop=25)
    ex = FakeExtractor()
    exact = {r.video_id: (r.features, r.attrs()) for r in iter_video_features(vids, ex)}
    approx = {r.video_id: (r.features, r.attrs()) for r in iter_video_features(vids, ex, decode="keyframes")}
    for vid in vids:
        f_exact, m_exact = exact[vid]
        f_key, m_key = approx[vid]
        assert f_key.shape == f_exact.shape                       # the same ticks, the same count
        assert m_exact["decode"] == "exact" and m_exact["max_sampling_error"] == 0.0
        assert m_key["decode"] == "keyframes" and 0.0 < m_key["max_sampling_error"] <= 2.5 + 1e-6
        assert np.all(m_key["timestamps"] <= m_exact["timestamps"] + 1e-6)   # never after its tick
        np.testing.assert_allclose(f_key[0], f_exact[0], atol=1e-6)          # tick 0 is a keyframe
    out = tmp_path / "k.h5"
    extract_videos({"k0": vids["k0"]}, out, ex, decode="keyframes", progress=False)
    with FeatureFile(out) as ff:
        assert ff.file_attrs()["decode"] == "keyframes" and ff.info("k0")["decode"] == "keyframes"
    with pytest.raises(FeatureFileError, match="decode"):
        extract_videos({"k1": vids["k1"]}, out, ex, progress=False)          # exact features into it: refused
    with pytest.raises(ValueError, match="decode"):
        list(iter_video_features(vids, ex, decode="fastest"))


def test_precision_is_recorded_and_not_mixed(tmp_path):
    vids = make_videos(tmp_path / "v", n=2, seconds=2.0)
    out = tmp_path / "p.h5"
    int8 = FakeExtractor()
    int8.precision = "int8"
    extract_videos({"v0": vids["v0"]}, out, int8, progress=False)
    with FeatureFile(out) as ff:
        assert ff.file_attrs()["precision"] == "int8"
    with pytest.raises(FeatureFileError, match="precision"):
        extract_videos({"v1": vids["v1"]}, out, FakeExtractor(), progress=False)   # fp32 into an int8 file

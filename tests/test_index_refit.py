"""Refitting a collection-fitted (lite) whitening into a new index: dnsvr.index.refit and `dnsvr index refit`."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil

import numpy as np
import pytest
from helpers import student_bundle, write_h5
from typer.testing import CliRunner

from dnsvr import synthetic as S
from dnsvr.backbones import PCAWhitening
from dnsvr.bundle import Bundle, BundleError
from dnsvr.cli import app
from dnsvr.index import refit as refit_module
from dnsvr.index.refit import RefitError, refit_recommended, spread_sample
from dnsvr.index.sharded import ShardedIndex, open_any
from dnsvr.index.video_index import VideoIndex

runner = CliRunner()
RAW = 48  # raw region size of the feature-file tests


def _white_bundle() -> Bundle:
    """A lite-like bundle over 48-d raw regions: its whitening is fitted by the first add."""
    return Bundle("white", "efficientnet_lite0", whitening=PCAWhitening(dims=32), fine_type="chamfer",
                  whitening_dims=32)


def _raw_collection(seed: int = 0, n: int = 12) -> dict[str, np.ndarray]:
    """Raw 48-d regions: ``o{i}`` originals and ``c{i}`` noisy copies of them, with a shared low-rank structure."""
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((8, RAW)) * 3.0
    out = {}
    for i in range(n // 2):
        t = int(rng.integers(6, 12))
        x = rng.standard_normal((t, 9, 8)) @ basis + 0.3 * rng.standard_normal((t, 9, RAW))
        out[f"o{i}"] = x.astype(np.float32)
        out[f"c{i}"] = (x + 0.2 * rng.standard_normal(x.shape)).astype(np.float32)
    return out


def _tree_digest(folder):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_spread_sample_gives_every_video_an_equal_share():
    picks = spread_sample([10, 3, 50, 7], regions=9, budget=9 * 20)
    assert [len(p) for p in picks] == [5, 3, 5, 5]  # quota 5 frames: the 3-frame video gives all its frames
    assert sum(len(p) for p in picks) * 9 <= 9 * 20
    assert picks[2].tolist() == [0, 12, 24, 37, 49]  # evenly spaced over the video
    assert all(len(set(p.tolist())) == len(p) for p in picks)
    everything = spread_sample([4, 6], regions=9, budget=10_000)
    assert [p.tolist() for p in everything] == [[0, 1, 2, 3], [0, 1, 2, 3, 4, 5]]
    # more videos than frames in the budget: one frame from evenly spaced videos
    few = spread_sample([5] * 10, regions=9, budget=9 * 4)
    assert sum(len(p) for p in few) == 4 and len(few[0]) == 1 and len(few[-1]) == 1


def test_refit_recommended_rule():
    fitted = {"videos": 2, "region_vectors": 1000, "dims": 32}
    assert not refit_recommended(fitted, 1999)
    assert refit_recommended(fitted, 2000)
    assert not refit_recommended({**fitted, "region_vectors": 20_000}, 10**9)  # enough vectors: never
    assert not refit_recommended(None, 10**9)


def test_refit_from_feature_files_fits_on_all_videos_and_keeps_ids(tmp_path, caplog):
    raw = _raw_collection()
    names = list(raw)
    first = write_h5(tmp_path / "first.h5", {k: raw[k] for k in names[:2]})
    rest = write_h5(tmp_path / "rest.h5", {k: raw[k] for k in names[2:]})
    index = VideoIndex.create(tmp_path / "old", _white_bundle())
    index.add([first])
    fitted = index.info()["whitening_fitted_on"]
    assert fitted["videos"] == 2 and fitted["by"] == "first add"
    assert fitted["region_vectors"] == 9 * sum(len(raw[k]) for k in names[:2])
    assert index.info()["whitening_refit_recommended"] is False
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="dnsvr.index.video_index"):
        index.add([rest])
    advice = [r for r in caplog.records if r.name == "dnsvr.index.video_index" and "index refit" in r.getMessage()]
    assert len(advice) == 1  # once per add
    assert index.info()["whitening_refit_recommended"] is True
    index.close()

    old = VideoIndex.open(tmp_path / "old", readonly=True)
    before = _tree_digest(tmp_path / "old")
    old_fine = {v: np.asarray(f, np.float32) for v, f in zip(old.ids(), old.store.fine(old.ids()))}
    report = old.refit_whitening(tmp_path / "new", dims=32)
    assert _tree_digest(tmp_path / "old") == before  # the old index is only read
    assert report.fitted_on == {"videos": 12, "region_vectors": 9 * sum(len(x) for x in raw.values()), "dims": 32,
                                "by": "refit", "collection_videos": 12}
    assert report.videos == old.ids() and not report.skipped and not (tmp_path / "new.partial").exists()

    new = VideoIndex.open(tmp_path / "new", readonly=True)
    assert new.ids() == old.ids() and new.frames() == old.frames() and new.sources() == old.sources()
    assert new.info()["whitening_fitted_on"]["videos"] == 12 and new.info()["whitening_refit_recommended"] is False
    assert new.bundle.whitening.identity != old.bundle.whitening.identity
    for vid, fine in zip(new.ids(), new.store.fine(new.ids())):
        fine = np.asarray(fine, np.float32)
        # stored = the new whitening of the raw regions, and not the old stored features
        np.testing.assert_allclose(fine, new.bundle.whiten(raw[vid]), atol=2e-2, rtol=1e-2)
        assert not np.allclose(fine, old_fine[vid], atol=1e-2)
        entry, was = new.entry(vid), old.entry(vid)
        assert entry.meta["first_added"] == pytest.approx(was.added)
    hits = new.search(["o1", "o3"], top_k=1, budget="100%")
    assert [q.results[0].video_id for q in hits] == ["c1", "c3"]
    assert new.verify().ok
    new.close()
    old.close()


def test_refit_sample_is_spread_over_all_videos(tmp_path, monkeypatch):
    raw = _raw_collection(n=12)
    h5 = write_h5(tmp_path / "raw.h5", raw)
    with VideoIndex.create(tmp_path / "old", _white_bundle()) as index:
        index.add([h5])
        monkeypatch.setattr(refit_module, "WHITENING_SAMPLE_VECTORS", 9 * 36)  # 3 frames of each video
        report = index.refit_whitening(tmp_path / "new", dims=32)
    assert report.fitted_on["videos"] == 12 and report.fitted_on["region_vectors"] == 9 * 36


def test_refit_refuses_trained_and_published_whitening(tmp_path):
    raw = {f"v{i}": np.random.default_rng(i).standard_normal((6, 9, 64)).astype(np.float32) for i in range(4)}
    h5 = write_h5(tmp_path / "f.h5", raw)
    with VideoIndex.create(tmp_path / "trained", student_bundle("att")) as index:
        index.add([h5])
        with pytest.raises(BundleError, match="only a lite index"):
            index.refit_whitening(tmp_path / "new")
    trained = _white_bundle()
    trained.fit_whitening([np.random.default_rng(0).standard_normal((20, 9, RAW)).astype(np.float32)])
    trained.extra["trained"] = {"fine": {"run": "x"}}
    assert "trained networks" in trained.refit_problem()
    assert not (tmp_path / "new").exists() and not (tmp_path / "new.partial").exists()


def test_refit_errors_leave_nothing(tmp_path):
    raw = _raw_collection(n=6)
    h5 = write_h5(tmp_path / "raw.h5", raw)
    with VideoIndex.create(tmp_path / "old", _white_bundle()) as index:
        index.add([h5])
        with pytest.raises(RefitError, match="at least 32"):
            index.refit_whitening(tmp_path / "new", dims=4)
        with pytest.raises(RefitError, match="outside the old one"):
            index.refit_whitening(tmp_path / "old" / "inner")
        (tmp_path / "busy").mkdir()
        (tmp_path / "busy" / "x").write_text("x")
        with pytest.raises(FileExistsError):
            index.refit_whitening(tmp_path / "busy")
        (tmp_path / "other.partial").mkdir()
        (tmp_path / "other.partial" / "mine.txt").write_text("x")
        with pytest.raises(RefitError, match="was not left by a refit"):
            index.refit_whitening(tmp_path / "other")
        assert (tmp_path / "other.partial" / "mine.txt").exists() and not (tmp_path / "other").exists()
        moved = tmp_path / "moved"
        moved.mkdir()
        h5.rename(moved / "raw.h5")
        with pytest.raises(RefitError, match=r"6 of 6 indexed videos cannot be read again: c0 \(.*raw.h5:c0: not found"):
            index.refit_whitening(tmp_path / "new")
        assert not (tmp_path / "new").exists() and not (tmp_path / "new.partial").exists()
        report = index.refit_whitening(tmp_path / "new", videos_root=moved, dims=32)
    assert sorted(report.moved) == sorted(raw)
    with VideoIndex.open(tmp_path / "new", readonly=True) as new:
        assert new.sources() == [f"{(moved / 'raw.h5').absolute()}:{v}" for v in new.ids()]


def test_refit_sharded_index(tmp_path):
    raw = _raw_collection(n=10)
    names = list(raw)
    index = ShardedIndex.create(tmp_path / "old", _white_bundle(), shards=2)
    index.add([write_h5(tmp_path / "a.h5", {k: raw[k] for k in names[:2]})])
    index.add([write_h5(tmp_path / "b.h5", {k: raw[k] for k in names[2:]})])
    assert index.info()["whitening_refit_recommended"] is True
    report = index.refit_whitening(tmp_path / "new", dims=32)
    index.close()
    assert report.fitted_on["videos"] == 10
    new = open_any(tmp_path / "new", readonly=True)
    assert isinstance(new, ShardedIndex) and new.verify().ok
    assert sorted(new.ids()) == sorted(names) and new.info()["whitening_fitted_on"]["by"] == "refit"
    assert all(s.bundle.identity() == new.bundle.identity() for s in new.shards)
    new.close()


def _videos(folder, seeds, seconds=5.0):
    folder.mkdir(parents=True, exist_ok=True)
    return [S.write_video(folder / f"clip{s}.mp4", S.render_clip(s, seconds=seconds, fps=5, size=(96, 64)), fps=5)
            for s in seeds]


def test_cli_refit_videos_moved_missing_undecodable_and_resume(tmp_path):
    src = tmp_path / "videos"
    _videos(src / "a", [1, 2])
    _videos(src / "b", [3, 4])
    idx = tmp_path / "idx"
    assert runner.invoke(app, ["index", "create", str(idx)]).exit_code == 0
    r = runner.invoke(app, ["index", "add", str(idx), str(src / "a")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["index", "add", str(idx), str(src / "b")])
    assert r.exit_code == 0, r.output
    info = json.loads(runner.invoke(app, ["index", "info", str(idx), "--json"]).stdout)
    assert info["whitening_fitted_on"]["videos"] == 2 and info["whitening_refit_recommended"] is True
    table = runner.invoke(app, ["index", "info", str(idx)]).stdout
    assert "refit recommended" in table and "by first add" in table
    with VideoIndex.open(idx, readonly=True) as old:
        old_ids, old_frames = old.ids(), old.frames()

    moved = tmp_path / "elsewhere"
    shutil.move(str(src), str(moved))
    r = runner.invoke(app, ["index", "refit", str(idx), str(tmp_path / "n0")])
    assert r.exit_code == 2 and "4 of 4 indexed videos cannot be read again" in r.stderr
    assert not (tmp_path / "n0").exists() and not (tmp_path / "n0.partial").exists()

    r = runner.invoke(app, ["index", "refit", str(idx), str(tmp_path / "n1"), "--videos", str(moved), "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["videos"] == 4 and len(doc["moved"]) == 4 and doc["skipped"] == []
    assert doc["whitening_fitted_on"]["videos"] == 4 and doc["whitening_fitted_on"]["by"] == "refit"
    assert doc["whitening_fitted_on"]["region_vectors"] == 9 * sum(old_frames)
    with VideoIndex.open(tmp_path / "n1", readonly=True) as new:
        assert new.ids() == old_ids and new.frames() == old_frames
        where = {"clip1": "a", "clip2": "a", "clip3": "b", "clip4": "b"}
        assert new.sources() == [str((moved / where[v] / (v + ".mp4")).absolute()) for v in old_ids]
        hits = new.search([str(moved / "a" / "clip1.mp4")], top_k=1)[0]
        assert hits.results[0].video_id == "clip1"

    # one file gone, one no longer decodable
    (moved / "b" / "clip4.mp4").unlink()
    S.write_undecodable_video(moved / "b" / "clip3.mp4")
    r = runner.invoke(app, ["index", "refit", str(idx), str(tmp_path / "n2"), "--videos", str(moved)])
    assert r.exit_code == 2 and "clip4" in r.stderr and "not found" in r.stderr
    r = runner.invoke(app, ["index", "refit", str(idx), str(tmp_path / "n2"), "--videos", str(moved),
                            "--skip-missing", "--json"])
    # clip4 missing is left out before decoding; clip3 fails to decode (first run with --skip-missing)
    assert r.exit_code == 1, r.output
    doc = json.loads(r.stdout)
    assert doc["videos"] == 2 and {s["video_id"] for s in doc["skipped"]} == {"clip3", "clip4"}
    with VideoIndex.open(tmp_path / "n2", readonly=True) as new:
        assert new.ids() == old_ids[:2] and new.info()["whitening_fitted_on"]["videos"] == 2
        meta = new.entry("clip1").meta
    with VideoIndex.open(idx, readonly=True) as old:
        was = old.entry("clip1").meta
    # the same extraction record as the add wrote (plus first_added)
    assert {k: v for k, v in meta.items() if k != "first_added"} == was


def test_cli_refit_undecodable_keeps_partial_for_resume(tmp_path):
    src = tmp_path / "videos"
    _videos(src, [5, 6, 7])
    idx = tmp_path / "idx"
    assert runner.invoke(app, ["index", "create", str(idx)]).exit_code == 0
    assert runner.invoke(app, ["index", "add", str(idx), str(src)]).exit_code == 0
    S.write_undecodable_video(src / "clip7.mp4")
    r = runner.invoke(app, ["index", "refit", str(idx), str(tmp_path / "new")])
    assert r.exit_code == 2 and "could not be decoded: clip7" in r.stderr
    assert not (tmp_path / "new").exists() and (tmp_path / "new.partial" / "raw.h5").exists()
    r = runner.invoke(app, ["index", "refit", str(idx), str(tmp_path / "new"), "--skip-missing", "--json"])
    assert r.exit_code == 1, r.output
    doc = json.loads(r.stdout)
    assert doc["reused"] == 2 and doc["videos"] == 2  # the decoded videos of the first run were not decoded again
    assert not (tmp_path / "new.partial").exists()


def test_refit_interrupted_while_committing_leaves_no_output_and_resumes(tmp_path, monkeypatch):
    raw = _raw_collection(n=8)
    h5 = write_h5(tmp_path / "raw.h5", raw)
    with VideoIndex.create(tmp_path / "old", _white_bundle()) as index:
        index.add([h5])
        real = refit_module._commit_all

        def crash(new, bundle, sources, *args):
            real(new, bundle, sources[:3], *args)  # some videos committed into the new index, then a crash
            raise KeyboardInterrupt

        monkeypatch.setattr(refit_module, "_commit_all", crash)
        with pytest.raises(KeyboardInterrupt):
            index.refit_whitening(tmp_path / "new", dims=32)
        assert not (tmp_path / "new").exists() and (tmp_path / "new.partial" / "index").is_dir()
        monkeypatch.setattr(refit_module, "_commit_all", real)
        report = index.refit_whitening(tmp_path / "new", dims=32)
        ids = index.ids()
    assert report.videos == ids and not (tmp_path / "new.partial").exists()
    with VideoIndex.open(tmp_path / "new", readonly=True) as new:
        assert new.ids() == ids and new.verify().ok

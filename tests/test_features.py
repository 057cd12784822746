"""The crash-safe feature-file writer: journal parts, atomic checkpoints, recovery."""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest

from dnsvr.features import COMPLETE_ATTR, FeatureFile, FeatureFileError, FeatureWriter, validate_video_id


def feats(seed: int, t: int = 3, d: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((t, 9, d)).astype(np.float32)


def test_write_read_and_stream(tmp_path):
    out = tmp_path / "f.h5"
    with FeatureWriter(out, attrs={"backbone": "x", "dims": 8}) as w:
        w.write("a", feats(0), {"fps": 1.0, "timestamps": np.arange(3.0)})
        with w.begin("group/b") as part:             # streamed in blocks; nested id
            part.append(feats(1)[:2])
            part.append(feats(1)[2:])
            part.commit({"fps": 1.0})
        with w.begin("dropped") as part:
            part.append(feats(2))                    # never committed: must not appear
        assert w.completed_ids() == {"a", "group/b"}
    with FeatureFile(out) as ff:
        assert ff.ids() == ["a", "group/b"]
        np.testing.assert_array_equal(ff.read("a"), feats(0))
        np.testing.assert_array_equal(ff.read("group/b"), feats(1))
        assert ff.info("a")[COMPLETE_ATTR] and ff.file_attrs()["backbone"] == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.h5"]


def test_long_timestamp_attributes(tmp_path):
    out = tmp_path / "f.h5"
    with FeatureWriter(out) as w:
        w.write("long", feats(0, t=2), {"timestamps": np.arange(20000, dtype=np.float64)})   # > 64 KiB
    with FeatureFile(out) as ff:
        assert len(ff.info("long")["timestamps"]) == 20000


def test_recovers_parts_left_by_a_crash(tmp_path):
    out = tmp_path / "f.h5"
    w = FeatureWriter(out, checkpoint_interval=3600)
    w.write("a", feats(0))
    w.write("b", feats(1))
    part = w.begin("c")
    part.append(feats(2))                            # a video being written when the process dies
    # the process "dies": no close(); the feature file was never checkpointed; the OS drops its lock
    w._lock_fh.close()
    assert not out.exists()
    assert len(list(w.journal.glob("*.h5"))) == 2 and len(list(w.journal.glob("*.tmp"))) == 1
    w2 = FeatureWriter(out)
    assert w2.completed_ids() == {"a", "b"}
    with FeatureFile(out) as ff:                     # recovery merged them right away
        assert ff.ids() == ["a", "b"]
    assert not list(w2.journal.glob("*.tmp"))
    w2.close()
    part._h5.close()


def test_failed_checkpoint_leaves_the_file_as_it_was(tmp_path, monkeypatch):
    out = tmp_path / "f.h5"
    with FeatureWriter(out) as w:
        w.write("a", feats(0))
    before = out.read_bytes()
    w = FeatureWriter(out, checkpoint_interval=3600)
    w.write("b", feats(1))

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        w.checkpoint()
    monkeypatch.undo()
    assert out.read_bytes() == before                # untouched
    assert not (tmp_path / "f.h5.tmp").exists()
    assert w.completed_ids() == {"a", "b"}           # b is still safe in the journal
    w.close()
    with FeatureFile(out) as ff:
        assert ff.ids() == ["a", "b"]


def test_incomplete_dataset_is_skipped_and_overwritten(tmp_path):
    out = tmp_path / "f.h5"
    with FeatureWriter(out) as w:
        w.write("a", feats(0))
    with h5py.File(out, "a") as h5:                  # an unfinished write, as another tool might leave it
        ds = h5.create_dataset("b", data=np.zeros((1, 9, 8), np.float32))
        ds.attrs[COMPLETE_ATTR] = False
    with FeatureWriter(out) as w:
        assert w.completed_ids() == {"a"}
        w.write("b", feats(1))
    with FeatureFile(out) as ff:
        np.testing.assert_array_equal(ff.read("b"), feats(1))


def test_provenance_must_agree(tmp_path):
    out = tmp_path / "f.h5"
    with FeatureWriter(out, attrs={"backbone": "resnet50", "fps": 1.0}) as w:
        w.write("a", feats(0))
    with pytest.raises(FeatureFileError, match="backbone"):
        FeatureWriter(out, attrs={"backbone": "efficientnet_lite0", "fps": 1.0})
    FeatureWriter(out, attrs={"backbone": "resnet50", "fps": 1.0}).close()


def test_invalid_ids_and_shapes(tmp_path):
    assert validate_video_id("/a/b/") == "a/b"
    for bad in ["", "a//b", "../x", "."]:
        with pytest.raises(ValueError, match="invalid video id"):
            validate_video_id(bad)
    with FeatureWriter(tmp_path / "f.h5") as w:
        with w.begin("a") as part:
            part.append(feats(0, d=8))
            with pytest.raises(ValueError, match="block of shape"):
                part.append(feats(0, d=4))
        with pytest.raises(ValueError, match="no features"):
            w.begin("empty").commit()
        with pytest.raises(ValueError, match="float32 or float16"):
            FeatureWriter(tmp_path / "g.h5", dtype="int8")


def test_single_writer_lock(tmp_path):
    out = tmp_path / "f.h5"
    first = FeatureWriter(out)
    with pytest.raises(FeatureFileError, match="another process is writing"):
        FeatureWriter(out)
    first.write("a", feats(0))
    first.close()
    with FeatureWriter(out) as again:                # released on close
        assert again.completed_ids() == {"a"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.h5"]


def test_video_features_record_checks_shapes_and_round_trips() -> None:
    """The record between extraction and the index: shapes checked, timestamps and source in their fields."""
    from dnsvr.features import VideoFeatures

    feats = np.zeros((3, 9, 4), dtype=np.float32)
    attrs = {"source": "/v/a.mp4", "timestamps": [0.0, 1.0, 2.0], "fps": 1.0, "frames": 3, "damage": ""}
    rec = VideoFeatures.from_attrs("a", feats, attrs)
    assert rec.source == "/v/a.mp4" and rec.frames == 3 and rec.info == {"fps": 1.0, "frames": 3, "damage": ""}
    assert rec.timestamps.dtype == np.float64 and rec.timestamps.tolist() == [0.0, 1.0, 2.0]
    back = rec.attrs()
    assert back.keys() == attrs.keys() and back["timestamps"].tolist() == attrs["timestamps"]
    assert VideoFeatures("b", feats).attrs() == {"frames": 3}
    with pytest.raises(ValueError, match=r"\[T, regions, D\]"):
        VideoFeatures("c", np.zeros((3, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="timestamps for 3 frames"):
        VideoFeatures("d", feats, np.zeros(2))

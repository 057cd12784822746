"""Resume gives bit-identical weights to an uninterrupted run with the same seed (CPU); export layout."""

from __future__ import annotations

import json
import logging

import numpy as np

import pytest
import torch
from safetensors.torch import load_file


from train_synthetic import make_collection  # noqa: E402

from dnsvr.train.mining import MiningParams, mine  # noqa: E402
from dnsvr.train.students import StudentTrainConfig, load_student, train_student  # noqa: E402

CG_NET = {"transformer_feedforward_dims": 32, "netvlad_clusters": 4, "netvlad_outdims": 16}


@pytest.fixture(scope="module")
def mined(tmp_path_factory):
    d = tmp_path_factory.mktemp("resume")
    make_collection(d / "f.h5", n_sources=4, copies=1, distractors=4, dims=16, frames=(6, 10), seed=5)
    mine(d / "f.h5", d / "p.h5", "chamfer", MiningParams(candidates=4, positives=1, random_negatives=2),
         progress=False)
    return d


@pytest.mark.parametrize("kind", ["fg-att", "fg-bin", "cg"])
def test_resume_is_bit_exact(mined, tmp_path, kind, caplog):
    cfg = StudentTrainConfig(type=kind, epochs=3, batch_size=4, seed=11,
                             network=CG_NET if kind == "cg" else {})
    full = train_student(mined / "p.h5", mined / "f.h5", tmp_path / "full", cfg, progress=False)
    part = train_student(mined / "p.h5", mined / "f.h5", tmp_path / "part", cfg, progress=False,
                         stop_after_epochs=1)
    assert not part.config["finished"]
    torch.manual_seed(999)  # a different global RNG state must not matter: resume restores it
    caplog.set_level("INFO")
    caplog.clear()
    resumed = train_student(mined / "p.h5", mined / "f.h5", tmp_path / "part", cfg, progress=False, resume=True)
    assert resumed.config["finished"] and [h["epoch"] for h in resumed.history] == [0, 1, 2]
    a = load_file(str(tmp_path / "full" / "model.safetensors"))
    b = load_file(str(tmp_path / "part" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    changed = [k for k in a if not torch.equal(a[k], full.model.state_dict()[k])]
    assert not changed
    # the run really trained: weights differ from a fresh init with the same seed
    torch.manual_seed(11)
    from dnsvr.train.students import build_student
    init = build_student(kind, 16, **cfg.network).state_dict()
    assert any(not torch.equal(init[k], a[k]) for k in a)
    assert [h["loss"] for h in full.history] == [h["loss"] for h in resumed.history]
    # the resumed run skips the collection-fitted start (its weights come from the checkpoint) but keeps its record
    start = {k: v for k, v in full.config.items() if k in ("itq", "netvlad_init", "netvlad_alpha", "netvlad_vectors",
                                                                "coarse_bias", "coarse_bias_pairs")}
    assert start == {k: resumed.config[k] for k in start} and (kind == "fg-att" or start)
    assert kind != "cg" or "coarse_bias" in start
    fits = [r for r in caplog.records if r.getMessage().startswith(("NetVLAD: fitting", "ITQ:", "coarse output bias"))]
    assert not fits  # the resumed call did not fit its start again


def test_resume_refuses_another_config(mined, tmp_path):
    cfg = StudentTrainConfig(type="fg-att", epochs=2, batch_size=4)
    train_student(mined / "p.h5", mined / "f.h5", tmp_path / "run", cfg, progress=False, stop_after_epochs=1)
    with pytest.raises(ValueError, match="another config"):
        train_student(mined / "p.h5", mined / "f.h5", tmp_path / "run",
                      StudentTrainConfig(type="fg-att", epochs=2, batch_size=8), progress=False, resume=True)


def test_export_reference_layout_and_student_as_teacher(mined, tmp_path):
    from dnsvr.train.export import export_reference_checkpoint
    from dnsvr.train.teachers import load_teacher

    cfg = StudentTrainConfig(type="fg-att", epochs=1, batch_size=4)
    run = train_student(mined / "p.h5", mined / "f.h5", tmp_path / "run", cfg, progress=False).output_dir
    cfg_json = json.loads((run / "config.json").read_text())
    assert cfg_json["teacher"] == {"kind": "chamfer"} and cfg_json["network"]["type"] == "fg-att"
    pth = export_reference_checkpoint(run, tmp_path / "fg_att.pth")
    ckpt = torch.load(pth, map_location="cpu", weights_only=True)
    model, _ = load_student(run)
    assert set(ckpt) == {"model"} and ckpt["model"].keys() == model.state_dict().keys()
    # iterating: the trained student is the next teacher (from the run folder or the exported file)
    for spec in (run, pth):
        teacher = load_teacher(spec, dims=16)
        assert teacher.identity["kind"] == "fg_att_student"
    out = mine(mined / "f.h5", tmp_path / "p2.h5", str(run), MiningParams(candidates=4, positives=1,
                                                                         random_negatives=2), progress=False)
    from dnsvr.train.mining import MinedPairs

    assert MinedPairs(out).params["teacher"]["kind"] == "fg_att_student"
    with pytest.raises(ValueError, match="expects 16-d"):
        load_teacher(run, dims=32)


def test_selector_resume_is_bit_exact(mined, tmp_path, caplog):
    from dnsvr.train.selector import SelectorTrainConfig, train_selector
    from dnsvr.train.students import build_student

    torch.manual_seed(1)
    fine, coarse = build_student("fg-att", 16), build_student("cg", 16, **CG_NET)
    cfg = SelectorTrainConfig(epochs=2, batch_size=8, pairs_per_class=8, threshold=0.1, seed=3)
    args = (mined / "p.h5", mined / "f.h5")
    with caplog.at_level(logging.WARNING, logger="dnsvr.train.selector"):
        full = train_selector(*args, tmp_path / "full", (fine, "fg-att"), (coarse, "cg"), cfg, progress=False)
    # 2 x 8 pairs in batches of 8: 2 steps per epoch, 4 in the run -> the starved-selector warning
    assert full.config["steps_per_epoch"] == 2
    assert any("4 training steps" in r.getMessage() for r in caplog.records), caplog.text
    train_selector(*args, tmp_path / "part", (fine, "fg-att"), (coarse, "cg"), cfg, progress=False,
                   stop_after_epochs=1)
    res = train_selector(*args, tmp_path / "part", (fine, "fg-att"), (coarse, "cg"), cfg, progress=False,
                         resume=True)
    a, b = full.model.state_dict(), res.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [h["loss"] for h in full.history] == [h["loss"] for h in res.history]


def test_mining_with_a_network_teacher(mined, tmp_path):
    """A ViSiL-style network teacher (random weights here) plugs into mining like the published one."""
    from dnsvr.nn import ViSiLTeacher
    from dnsvr.train.mining import MinedPairs
    from dnsvr.train.teachers import NetworkTeacher

    torch.manual_seed(0)
    teacher = NetworkTeacher(ViSiLTeacher(dims=16, symmetric=True), {"kind": "visil-test"})
    out = mine(mined / "f.h5", tmp_path / "p.h5", teacher, MiningParams(candidates=4, positives=1,
                                                                     random_negatives=2), progress=False)
    mp = MinedPairs(out)
    assert mp.params["teacher"] == {"kind": "visil-test"} and len(mp) == 12 * 6
    assert np.isfinite(mp.similarity).all() and mp.similarity.std() > 0


def test_bundle_carries_the_base_whitening(tmp_path):
    """A bundle built on a base bundle keeps its backbone and whitening identity; dims must match."""
    from dnsvr.bundle import Bundle, lite_bundle
    from dnsvr.train.export import build_bundle

    rng = np.random.default_rng(0)
    raw = [rng.standard_normal((30, 9, 96)).astype(np.float32) for _ in range(3)]
    base = lite_bundle(dims=32)
    base.fit_whitening(raw)
    base.save(tmp_path / "base")
    make_collection(tmp_path / "f.h5", n_sources=3, copies=1, distractors=3, dims=32, frames=(5, 8), seed=9)
    mine(tmp_path / "f.h5", tmp_path / "p.h5", "chamfer", MiningParams(candidates=3, positives=1,
                                                                       random_negatives=2), progress=False)
    run = train_student(tmp_path / "p.h5", tmp_path / "f.h5", tmp_path / "fg",
                        StudentTrainConfig(type="fg-att", epochs=1, batch_size=4), progress=False).output_dir
    bundle = build_bundle(run, base=tmp_path / "base", name="mine")
    bundle.save(tmp_path / "out")
    loaded = Bundle.load(tmp_path / "out")
    assert loaded.backbone == "efficientnet_lite0" and loaded.fine_type == "att" and loaded.input_dims == 32
    assert loaded.identity()["whitening"] == base.identity()["whitening"]
    assert loaded.extra["trained"]["fine"]["teacher"] == {"kind": "chamfer"}
    wide = lite_bundle(dims=40)
    wide.fit_whitening(raw)
    wide.save(tmp_path / "wide")
    with pytest.raises(ValueError, match="40-d features"):
        build_bundle(run, base=tmp_path / "wide")


def test_students_train_on_other_features_than_the_teacher(mined, tmp_path):
    """The teacher may score one feature file (e.g. 3840-d regions) and students learn from another."""
    import h5py

    from dnsvr.features import FeatureFile

    proj = np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32)
    with FeatureFile(mined / "f.h5") as ff, h5py.File(tmp_path / "small.h5", "w") as out:
        for vid, x in ff.iter():
            out.create_dataset(vid, data=x @ proj)
    res = train_student(mined / "p.h5", tmp_path / "small.h5", tmp_path / "run",
                        StudentTrainConfig(type="fg-att", epochs=1, batch_size=4), progress=False)
    assert res.config["network"]["kwargs"]["dims"] == 8
    with pytest.raises(KeyError, match="not in"):
        with h5py.File(tmp_path / "partial.h5", "w") as out:
            out.create_dataset("only_one", data=np.zeros((3, 9, 8), np.float32))
        train_student(mined / "p.h5", tmp_path / "partial.h5", tmp_path / "run2",
                      StudentTrainConfig(type="fg-att", epochs=1), progress=False)

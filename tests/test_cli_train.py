"""The ``dnsvr train`` commands chained on a tiny collection, and validation during training."""

from __future__ import annotations

import json

import pytest
import torch


from typer.testing import CliRunner  # noqa: E402

from train_synthetic import make_collection  # noqa: E402

from dnsvr.cli import app  # noqa: E402

CG_NET = json.dumps({"transformer_feedforward_dims": 32, "netvlad_clusters": 4, "netvlad_outdims": 16})


def _ok(runner, args):
    res = runner.invoke(app, args)
    assert res.exit_code == 0, (args, res.output)
    return res.output


def test_cli_train_chain(tmp_path, caplog):
    runner = CliRunner()
    feats = tmp_path / "f.h5"
    make_collection(feats, n_sources=4, copies=1, distractors=4, dims=16, frames=(6, 10), seed=6)
    out = _ok(runner, ["train", "mine", str(feats), "-o", str(tmp_path / "p.h5"), "--candidates", "4",
                       "--positives", "1", "--random-negatives", "2", "--no-progress", "--json"])
    summary = json.loads(out)
    assert summary["pairs"] == 12 * 6 and summary["positive"]["count"] == 12
    assert json.loads(_ok(runner, ["train", "info", str(tmp_path / "p.h5"), "--json"]))["complete"] is True
    common = ["--pairs", str(tmp_path / "p.h5"), "--features", str(feats), "--no-progress", "--json"]
    truth = {f"src{i:03d}": {f"src{i:03d}_copy0": 1} for i in range(4)}
    (tmp_path / "gt.json").write_text(json.dumps(truth))
    hist = json.loads(_ok(runner, ["train", "student", "--type", "fg-att", "-o", str(tmp_path / "fg"), "--epochs",
                                   "1", "--batch-size", "4", "--stream", "--val-benchmark", "custom",
                                   "--val-features", str(feats), "--val-ground-truth", str(tmp_path / "gt.json"),
                                   *common]))["history"]
    assert 0.0 <= hist[0]["val_mAP"] <= 1.0 and (tmp_path / "fg" / "best").is_dir()
    hist = json.loads(_ok(runner, ["train", "student", "--type", "cg", "-o", str(tmp_path / "cg"), "--epochs", "1",
                                   "--batch-size", "4", "--network", CG_NET, "--validation-fraction", "0.25",
                                   *common]))["history"]
    assert "val_l1" in hist[0] and "val_pearson" in hist[0]
    assert (tmp_path / "cg" / "best" / "model.safetensors").is_file()
    cg_cfg = json.loads((tmp_path / "cg" / "config.json").read_text())  # the bias is fitted on training anchors only
    assert cg_cfg["training"]["fit_coarse_bias"] and 0 < cg_cfg["coarse_bias_pairs"] < 72
    _ok(runner, ["train", "student", "--type", "cg", "-o", str(tmp_path / "cg0"), "--epochs", "1", "--batch-size",
                 "4", "--network", CG_NET, "--no-fit-coarse-bias", *common])
    assert "coarse_bias" not in json.loads((tmp_path / "cg0" / "config.json").read_text())
    out = json.loads(_ok(runner, ["train", "selector", "--fine", str(tmp_path / "fg"), "--coarse",
                                  str(tmp_path / "cg"), "-o", str(tmp_path / "sel"), "--epochs", "1",
                                  "--batch-size", "8", "--positive-share", "0.25", *common]))
    assert out["labels"]["positive"] + out["labels"]["negative"] == 72 and out["labels"]["positive"] == 18
    # the students trained on these very pairs: the selector's labels understate their disagreement, it says so
    assert any("students' own training pairs" in r.getMessage() for r in caplog.records)
    _ok(runner, ["train", "bundle", "--fine", str(tmp_path / "fg"), "--coarse", str(tmp_path / "cg"),
                 "--selector", str(tmp_path / "sel"), "-o", str(tmp_path / "bundle")])
    from dnsvr.bundle import load_bundle

    bundle = load_bundle(tmp_path / "bundle")
    assert bundle.fine_type == "att" and bundle.coarse_type == "student" and bundle.has_selector
    rep = bundle.represent(torch.randn(5, 9, 16).numpy())
    assert rep.coarse.shape == (16,) and rep.selector is not None
    _ok(runner, ["train", "export", str(tmp_path / "fg"), "-o", str(tmp_path / "fg.pth")])
    assert set(torch.load(tmp_path / "fg.pth", weights_only=True)) == {"model"}
    _ok(runner, ["train", "itq", str(feats), "-o", str(tmp_path / "itq.npz"), "--bits", "8"])
    hist = json.loads(_ok(runner, ["train", "student", "--type", "fg-bin", "-o", str(tmp_path / "fgb"), "--epochs",
                                   "1", "--batch-size", "4", "--itq", str(tmp_path / "itq.npz"),
                                   "--network", '{"bits": 8}', *common]))["history"]
    assert len(hist) == 1
    bad = runner.invoke(app, ["train", "student", "--type", "fg-xyz", "-o", str(tmp_path / "x"), *common])
    assert bad.exit_code == 2 and "unknown student type" in bad.output
    bad = runner.invoke(app, ["train", "student", "--type", "cg", "-o", str(tmp_path / "x"), "--netvlad-init", "pca",
                              "--network", CG_NET, *common])
    assert bad.exit_code == 2 and "--netvlad-init" in bad.output and "netvlad_init" not in bad.output
    bad = runner.invoke(app, ["train", "selector", "--fine", str(tmp_path / "fg"), "--coarse", str(tmp_path / "cg"),
                              "-o", str(tmp_path / "x"), "--positive-share", "1.5", *common])
    assert bad.exit_code == 2 and "--positive-share" in bad.output and "positive_share" not in bad.output


def test_benchmark_validator_keeps_best(tmp_path):
    from dnsvr.train.mining import MiningParams, mine
    from dnsvr.train.students import StudentTrainConfig, train_student
    from dnsvr.train.validation import benchmark_validator

    feats = tmp_path / "f.h5"
    truth = make_collection(feats, n_sources=4, copies=1, distractors=4, dims=16, frames=(6, 10), seed=7)
    mine(feats, tmp_path / "p.h5", "chamfer", MiningParams(candidates=4, positives=1, random_negatives=2),
         progress=False)
    gt = {q: {c: 1 for c in copies} for q, copies in truth.items()}
    validator = benchmark_validator(feats, "custom", "fg-att", ground_truth=gt)
    res = train_student(tmp_path / "p.h5", feats, tmp_path / "run",
                        StudentTrainConfig(type="fg-att", epochs=2, batch_size=4), progress=False,
                        validator=validator)
    scores = [h["val_score"] for h in res.history]
    assert all(0.0 <= s <= 1.0 for s in scores) and all("val_mAP" in h for h in res.history)
    assert res.config["best_score"] == max(scores)
    assert res.config["final_weights"] == "best"
    # the final weights are the best epoch's: validating them again gives the best score
    assert validator(res.model)["score"] == pytest.approx(max(scores), abs=1e-6)
    with pytest.raises(ValueError, match="none of the"):
        benchmark_validator(feats, "custom", "cg", ground_truth={"nope": {"x": 1}})


def test_features_from_index_roundtrip(tmp_path):
    """A collection indexed with a chamfer-stage bundle can be trained on without the original files."""
    import numpy as np

    from dnsvr.bundle import Bundle
    from dnsvr.features import FeatureFile
    from dnsvr.index import VideoIndex

    feats = tmp_path / "f.h5"
    make_collection(feats, n_sources=2, copies=1, distractors=2, dims=16, frames=(6, 8), seed=8)
    index = VideoIndex.create(tmp_path / "idx", Bundle("plain", "resnet50", fine_args={"dims": 16}))
    report = index.add([feats])
    index.close()
    assert len(VideoIndex.open(tmp_path / "idx", readonly=True).ids()) == 6, report
    runner = CliRunner()
    _ok(runner, ["train", "features", str(tmp_path / "idx"), "-o", str(tmp_path / "back.h5")])
    with FeatureFile(feats) as a, FeatureFile(tmp_path / "back.h5") as b:
        assert sorted(a.ids()) == sorted(b.ids())
        for vid in a.ids():  # float16 storage in the index
            assert np.allclose(a.read(vid), b.read(vid), atol=2e-3)

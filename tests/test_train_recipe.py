"""`dnsvr train run` (dnsvr.train.recipe) on a tiny generated collection: every stage runs, the bundle has
trained students and a selector and attaches to the index, an interrupted run resumes to the same weights,
and a changed option in the same work folder is refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from dnsvr.cli import app
from helpers import indexed_clips
from dnsvr.train.recipe import STAGES, RecipeConfig, RecipeError, run_recipe, split_videos
from dnsvr.train.selfsup import TeacherTrainConfig
from dnsvr.train.mining import MiningParams

TINY = dict(copies=1, holdout=0.25, fine_epochs=1, coarse_epochs=2, selector_epochs=2,
            teacher=TeacherTrainConfig(epochs=2, batch_size=3, max_frames=8),
            mining=MiningParams(candidates=4, positives=1, random_negatives=2))


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    return indexed_clips(tmp_path_factory.mktemp("recipe"))


def _weights(bundle_dir) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(bundle_dir.glob("*.safetensors")):
        out.update({f"{f.name}:{k}": v for k, v in load_file(str(f)).items()})
    return out


def test_split_videos():
    ids = [f"v{i}" for i in range(10)]
    train, held = split_videos(ids, 0.2, seed=0)
    assert len(held) == 2 and sorted(train + held) == ids and split_videos(ids, 0.2, seed=0) == (train, held)
    with pytest.raises(RecipeError, match="at least 4"):
        split_videos(ids[:3], 0.2, 0)


def test_train_run_end_to_end_and_resume(collection, tmp_path, caplog):
    runner = CliRunner()
    args = ["train", "run", str(collection / "idx"), "-o", str(tmp_path / "bundle"), "--copies", "1",
            "--holdout", "0.25", "--teacher-epochs", "2", "--batch-size", "3", "--fine-epochs", "1",
            "--coarse-epochs", "2", "--selector-epochs", "2", "--result", "students", "--no-progress", "--json"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["videos"] == 8 and doc["copies"] == 8 and set(doc["seconds"]) == set(STAGES)
    from dnsvr.bundle import load_bundle

    bundle = load_bundle(tmp_path / "bundle")
    assert bundle.fine_type == "att" and bundle.coarse_type == "student" and bundle.has_selector
    assert bundle.extra["recipe"]["config"]["copies"] == 1
    # the coarse calibration was fitted on the held-out pairs: a positive slope, or (a dozen pairs of tiny
    # generated clips can go either way) refused as not increasing, never kept negative
    if bundle.scoring.coarse_scale is None:
        assert "not calibrated" in caplog.text
    else:
        assert bundle.scoring.coarse_scale > 0
    # the selector was labelled on held-out videos only
    state = json.loads((tmp_path / "bundle.work" / "recipe.json").read_text())
    assert state["done"]["split"] == {"seconds": state["done"]["split"]["seconds"], "train_videos": 6,
                                      "heldout_videos": 2}
    # a second call finds everything done and changes nothing
    before = _weights(tmp_path / "bundle")
    assert runner.invoke(app, args).exit_code == 0
    after = _weights(tmp_path / "bundle")
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    # the bundle attaches to the index and searches
    res = runner.invoke(app, ["index", "attach", str(collection / "idx"), str(tmp_path / "bundle"),
                              str(tmp_path / "trained")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["search", str(tmp_path / "trained"), str(collection / "videos" / "v3.mp4"),
                              "-k", "3", "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)["queries"][0]["results"]
    assert len(rows) == 3
    res = runner.invoke(app, ["search", str(tmp_path / "trained"), str(collection / "videos" / "v3.mp4"),
                              "-k", "8", "--budget", "1", "--json"])
    coarse_rows = [r for r in json.loads(res.stdout)["queries"][0]["results"] if r["stage"] == "coarse"]
    a, b = bundle.scoring.coarse_scale, bundle.scoring.coarse_offset
    def shown(c: float) -> float:   # not calibrated: the raw coarse similarity is the row's score
        return c if a is None else (a * c + b) / 2 + 0.5

    assert coarse_rows and all(r["score"] == pytest.approx(shown(r["coarse_score"]), abs=1e-5) for r in coarse_rows)
    # step by step, the same calibration from the same held-out pairs
    work = tmp_path / "bundle.work"
    res = runner.invoke(app, ["train", "bundle", "--fine", str(work / "fine"), "--coarse", str(work / "coarse"),
                              "--calibrate", str(work / "pairs_heldout.h5"), "--calibrate-features",
                              str(work / "heldout.h5"), "--base", str(collection / "idx" / "bundle"),
                              "-o", str(tmp_path / "by_hand")])
    assert res.exit_code == 0, res.output
    by_hand = load_bundle(tmp_path / "by_hand").scoring
    assert by_hand.coarse_scale is None if a is None else (
        (by_hand.coarse_scale, by_hand.coarse_offset) == pytest.approx((a, b)))
    res = runner.invoke(app, ["train", "bundle", "--fine", str(work / "fine"), "--calibrate", "x.h5",
                              "-o", str(tmp_path / "nope")])
    assert res.exit_code != 0 and "--calibrate needs" in res.output
    # another option in the same work folder is refused
    res = runner.invoke(app, [*args[:-2], "--teacher-epochs", "3", "--no-progress"])
    assert res.exit_code != 0 and "other options" in res.output


def test_interrupted_run_resumes_to_the_same_bundle(collection, tmp_path):
    cfg = RecipeConfig(**TINY)
    whole = run_recipe(collection / "idx", tmp_path / "a", config=cfg, progress=False)
    for stop in ("augment", "teacher", "coarse"):
        run_recipe(collection / "idx", tmp_path / "b", config=cfg, progress=False, stop_after=stop)
        assert not (tmp_path / "b").exists()
    resumed = run_recipe(collection / "idx", tmp_path / "b", config=cfg, progress=False)
    a, b = _weights(whole.bundle), _weights(resumed.bundle)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert np.isclose(sum(float(v.abs().sum()) for v in a.values()), sum(float(v.abs().sum()) for v in b.values()))


def test_result_is_the_better_at_finding_held_out_copies(collection, tmp_path):
    from dnsvr.bundle import load_bundle

    # one copy of 6 training videos gives too few region pairs to learn a whitening: the students stay
    few = run_recipe(collection / "idx", tmp_path / "few", config=RecipeConfig(**TINY), progress=False)
    assert few.result == "students" and few.validation == {} and not (few.work / "other-bundle").exists()
    auto = run_recipe(collection / "idx", tmp_path / "auto", config=RecipeConfig(**{**TINY, "copies": 2}),
                      progress=False)
    v = auto.validation
    assert set(v) == {"students", "whitening"} and all(0 < x <= 1 for x in v.values())
    assert auto.result == ("whitening" if v["whitening"] >= v["students"] else "students")
    chosen, other = load_bundle(auto.bundle), load_bundle(auto.work / "other-bundle")
    assert {chosen.name, other.name} == {"trained", "lite-learned"}
    assert chosen.extra["recipe"]["result"] == auto.result and chosen.extra["recipe"]["validation"] == v
    # asked for: the learned whitening, which attaches to the index (no validation needed)
    cfg = RecipeConfig(**{**TINY, "copies": 2, "result": "whitening"})
    forced = run_recipe(collection / "idx", tmp_path / "w", config=cfg, progress=False)
    bundle = load_bundle(forced.bundle)
    assert forced.result == "whitening" and forced.validation == {} and bundle.name == "lite-learned"
    assert bundle.extra["learned_whitening"]["pairs"] > 0
    res = CliRunner().invoke(app, ["index", "attach", str(collection / "idx"), str(forced.bundle),
                                   str(tmp_path / "attached")])
    assert res.exit_code == 0, res.output
    with pytest.raises(ValueError, match="result must be"):
        RecipeConfig(result="best")


def test_videos_other_than_the_index(collection, tmp_path):
    from dnsvr.bundle import load_bundle
    from dnsvr.features import FeatureFile

    cfg = RecipeConfig(**TINY)
    some = tmp_path / "some"
    some.mkdir()
    for i in (0, 2, 4, 6, 7):
        (some / f"clip{i}.mp4").symlink_to(collection / "videos" / f"v{i}.mp4")
    run_recipe(collection / "idx", tmp_path / "b", videos=some, config=cfg, progress=False, stop_after="split")
    with FeatureFile(tmp_path / "b.work" / "base.h5") as ff:
        assert sorted(ff.ids()) == [f"clip{i}" for i in (0, 2, 4, 6, 7)]
        assert ff.read("clip0").shape[-1] == load_bundle(collection / "idx" / "bundle").input_dims
    with FeatureFile(tmp_path / "b.work" / "augmented.h5") as ff:
        assert len(ff.ids()) == 5


def test_calibration_fit_is_least_squares_and_refuses_a_decreasing_one():
    from dnsvr.train.export import calibration_fit

    c = np.linspace(0.1, 0.9, 20)
    assert calibration_fit(c, 0.7 * c + 0.2) == pytest.approx((0.7, 0.2))
    assert calibration_fit(c, 1.0 - c) is None          # would reverse the coarse order
    assert calibration_fit(np.full(5, 0.3), np.arange(5.0)) is None
    assert calibration_fit([0.5], [0.5]) is None

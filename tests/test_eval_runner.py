"""Networks over a feature file: ``dnsvr evaluate --features ... --model ...`` end to end on synthetic data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dnsvr.bundle import Bundle, BundleError
from dnsvr.cli import app
from dnsvr.eval import CustomBenchmark
from dnsvr.eval.runner import FRACTIONS, evaluate_features
from dnsvr.eval.synthetic import make_synthetic_benchmark
from dnsvr.features import FeatureFile
from dnsvr.nn import CoarseGrainedStudent, FineGrainedStudent, SelectorNetwork, ViSiLTeacher

DIMS = 32


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory):
    return make_synthetic_benchmark(tmp_path_factory.mktemp("synth"), n_queries=2, n_near_duplicates=3,
                                    n_distractors=5, dims=DIMS, frames=(8, 10), seed=3)


@pytest.fixture(scope="module")
def random_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle folder with randomly initialised students and selector (no published weights needed)."""
    torch.manual_seed(0)
    fine = {"dims": DIMS, "attention": True}
    coarse = {"dims": DIMS, "transformer_heads": 4, "transformer_feedforward_dims": 64, "netvlad_clusters": 4,
              "netvlad_outdims": 32}
    sel = {"dims": DIMS}
    bundle = Bundle("random", "resnet50", fine_type="att", fine_net=FineGrainedStudent(**fine), fine_args=fine,
                    coarse_type="student", coarse_net=CoarseGrainedStudent(**coarse), coarse_args=coarse,
                    selector_net=SelectorNetwork(**sel), selector_args=sel)
    return bundle.save(tmp_path_factory.mktemp("bundle") / "random")


def test_cli_dns_curve_json_and_png(synth, random_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(app, [
        "evaluate", "--benchmark", "custom", "--ground-truth", str(synth.ground_truth_path), "--positive-labels", "ND",
        "--features", str(synth.features), "--model", "dns", "--bundle", str(random_bundle), "--output", str(out),
        "--batch-size", "8", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    n_db = len(synth.queries) + len(synth.database)  # a custom benchmark's database: every video in the file
    assert report["n_database"] == n_db and report["n_queries"] == len(synth.queries)
    assert [p["fraction"] for p in report["curve"]] == list(FRACTIONS)
    assert [p["pairs"] for p in report["curve"]] == [int(f * n_db) for f in FRACTIONS]
    assert all(0.0 <= p["metrics"]["mAP"] <= 1.0 for p in report["curve"])
    times = [p["time_per_query_s"] for p in report["curve"]]
    assert times == sorted(times) and times[-1] > times[0]
    assert set(report["storage_per_video_kb"]) == {"fine", "coarse", "selector", "dns_total"}
    assert json.loads((out / "custom_dns.json").read_text())["curve"] == report["curve"]
    png = Path(report["plot"])
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The table output names the curve too (the training-free lite bundle: fast).
    gt_args = ["--benchmark", "custom", "--ground-truth", str(synth.ground_truth_path), "--positive-labels", "ND"]
    saved = tmp_path / "sims.npz"
    result = CliRunner().invoke(app, ["evaluate", *gt_args, "-f", str(synth.features), "-m", "dns", "--bundle", "lite",
                                      "-o", str(out), "--save-similarities", str(saved)])
    assert result.exit_code == 0, result.output
    assert "100%" in result.stdout and "DnS" in result.stdout and (out / "custom_dns_curve.png").is_file()
    # The saved similarities (at 100%) re-evaluate to the report's metrics.
    lite = json.loads((out / "custom_dns.json").read_text())
    result = CliRunner().invoke(app, ["evaluate", *gt_args, "--similarities", str(saved), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == pytest.approx(lite["metrics"], abs=1e-12)


def test_dns_curve_ends_match_coarse_and_fine_models(synth, random_bundle: Path) -> None:
    bench = CustomBenchmark(synth.ground_truth, ["ND"])
    dns, _ = evaluate_features(bench, synth.features, "dns", bundle=str(random_bundle), fractions=[0.0, 0.5, 1.0])
    cg, cg_table = evaluate_features(bench, synth.features, "cg", bundle=str(random_bundle))
    fg, fg_table = evaluate_features(bench, synth.features, "fg_att", bundle=str(random_bundle), batch_size=5)
    assert dns.curve[0]["metrics"] == pytest.approx(cg.metrics, abs=1e-12)  # 0%: coarse only
    assert dns.curve[-1]["metrics"] == pytest.approx(fg.metrics, abs=1e-12)  # 100%: every pair re-scored
    assert fg.storage_per_video_kb["fine"] > cg.storage_per_video_kb["coarse"]
    # The fine scores are the student's similarity (stored float16 representations: 1e-2).
    bundle = Bundle.load(random_bundle)
    q, v = synth.queries[0], synth.database[0]
    with FeatureFile(synth.features) as ff, torch.inference_mode():
        qx, vx = torch.from_numpy(ff.read(q)), torch.from_numpy(ff.read(v))
        net = bundle.fine_net
        direct = float(net.calculate_video_similarity(net.index_video(qx), net.index_video(vx)).reshape(-1)[0])
        cnet = bundle.coarse_net
        coarse = float((cnet.index_video(qx[None]) @ cnet.index_video(vx[None]).T).reshape(-1)[0])
    pos = fg_table.index[v]
    row = fg_table[q]
    assert float(row.scores[row.positions == pos][0]) == pytest.approx(direct, abs=1e-2)
    row = cg_table[q]
    assert float(row.scores[row.positions == pos][0]) == pytest.approx(coarse, abs=1e-5)


def test_lite_bundle_finds_the_near_duplicates(synth) -> None:
    bench = CustomBenchmark(synth.ground_truth, ["ND"])
    report, _ = evaluate_features(bench, synth.features, "dns", bundle="lite", fractions=[0.0, 0.5, 1.0])
    assert [p["metrics"]["mAP"] for p in report.curve] == [1.0, 1.0, 1.0]
    assert "selector" not in report.time_per_query_s  # lite: the coarse order selects


def test_teacher_scores_are_the_networks(synth) -> None:
    torch.manual_seed(1)
    teacher = ViSiLTeacher(dims=DIMS, symmetric=True)
    bench = CustomBenchmark(synth.ground_truth, ["ND"])
    report, table = evaluate_features(bench, synth.features, "teacher", teacher=teacher, batch_size=4)
    assert report.bundle is None and 0.0 <= report.metrics["mAP"] <= 1.0
    q, v = synth.queries[1], synth.database[-1]
    with FeatureFile(synth.features) as ff, torch.inference_mode():
        direct = teacher.calculate_video_similarity(teacher.index_video(torch.from_numpy(ff.read(q))),
                                                    teacher.index_video(torch.from_numpy(ff.read(v))))
    row = table[q]
    assert float(row.scores[row.positions == table.index[v]][0]) == pytest.approx(float(direct.reshape(-1)[0]),
                                                                                  abs=1e-5)


def test_errors(synth, random_bundle: Path) -> None:
    bench = CustomBenchmark(synth.ground_truth, ["ND"])
    with pytest.raises(BundleError, match="bin"):
        evaluate_features(bench, synth.features, "fg_bin", bundle=str(random_bundle))
    with pytest.raises(ValueError, match="dns"):
        evaluate_features(bench, synth.features, "nope")
    with pytest.raises(ValueError, match="none of the"):
        evaluate_features(CustomBenchmark({"zzz": {"a": 1}}), synth.features, "cg", bundle="lite")
    result = CliRunner().invoke(app, ["evaluate", "--benchmark", "custom", "--ground-truth", str(synth.ground_truth_path),
                                      "-f", str(synth.features)])
    assert result.exit_code == 2 and "--model" in result.output


def test_cli_reports_unavailable_weights(synth, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DNSVR_OFFLINE", "1")
    monkeypatch.setenv("DNSVR_CACHE", str(tmp_path / "empty-cache"))
    result = CliRunner().invoke(app, ["evaluate", "--benchmark", "custom", "--ground-truth", str(synth.ground_truth_path),
                                      "-f", str(synth.features), "-m", "fg_att", "--bundle", "paper"])
    assert result.exit_code == 2 and "not cached" in result.output
    assert np.isfinite(FRACTIONS).all()

"""``dnsvr evaluate --similarities``: JSON and table output, custom benchmarks, errors."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dnsvr.cli import app

runner = CliRunner()


@pytest.mark.parametrize("name", ["FIVR-5K", "CC_WEB_VIDEO", "SVD"])
def test_cli_json_matches_golden(shared_dir: Path, tmp_path: Path, name: str) -> None:
    with gzip.open(shared_dir / "golden" / "eval" / f"{name}.json.gz", "rt") as fh:
        golden = json.load(fh)
    path = tmp_path / "sims.json.gz"
    with gzip.open(path, "wt") as fh:
        json.dump(golden["similarities"], fh)
    result = runner.invoke(app, ["evaluate", "--benchmark", name, "--similarities", str(path), "--json"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    for metric, expected in golden["expected"].items():
        assert metrics[metric] == pytest.approx(expected, abs=1e-9)


def _custom_files(tmp_path: Path) -> tuple[Path, Path]:
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps({"q1": {"a": "ND", "b": "X"}, "q2": {"c": "DS"}}))
    sims = tmp_path / "sims.json"
    sims.write_text(json.dumps({"q1": {"b": 0.9, "a": 0.8, "c": 0.1}, "q2": {"c": 0.7, "a": 0.2}}))
    return gt, sims


def test_cli_custom_json_and_table(tmp_path: Path) -> None:
    gt, sims = _custom_files(tmp_path)
    args = ["evaluate", "--benchmark", "custom", "-s", str(sims), "--ground-truth", str(gt), "--positive-labels", "ND,DS"]
    result = runner.invoke(app, args + ["--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"mAP": 0.75}
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "mAP" in result.stdout and "0.7500" in result.stdout and "queries" in result.stdout


def test_cli_errors(tmp_path: Path) -> None:
    gt, sims = _custom_files(tmp_path)
    result = runner.invoke(app, ["evaluate", "--benchmark", "custom", "-s", str(sims)])
    assert result.exit_code == 2 and "--ground-truth" in result.output
    result = runner.invoke(app, ["evaluate", "--benchmark", "FIVR-5K", "-s", str(tmp_path / "missing.json")])
    assert result.exit_code == 2 and "missing.json" in result.output
    result = runner.invoke(app, ["evaluate", "--benchmark", "nope", "-s", str(sims)])
    assert result.exit_code == 2 and "CC_WEB_VIDEO" in result.output


def test_cli_fivr_annotation_override_gives_davr(tmp_path: Path) -> None:
    from dnsvr.eval import FIVR

    bench = FIVR("5k")
    query, db = bench.queries[0], bench.database
    ann = tmp_path / "annotation.json"
    ann.write_text(json.dumps({query: {"ND": [db[0]], "DA": [db[1], db[2]]}}))
    sims = tmp_path / "sims.json"
    sims.write_text(json.dumps({query: {db[1]: 0.9, db[0]: 0.8, db[3]: 0.7, db[2]: 0.6}}))
    result = runner.invoke(app, ["evaluate", "--benchmark", "FIVR-5K", "-s", str(sims), "--annotation", str(ann), "--json"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert metrics["DSVR"] == 0.5 and metrics["DAVR"] == pytest.approx((1 + 2 / 4) / 2)
    result = runner.invoke(app, ["evaluate", "--benchmark", "SVD", "-s", str(sims), "--annotation", str(ann)])
    assert result.exit_code == 2 and "FIVR" in result.output

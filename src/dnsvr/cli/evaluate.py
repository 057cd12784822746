"""``dnsvr evaluate``: benchmark metrics from a similarity file (reference protocols)."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Optional

import typer

from dnsvr.cli._common import echo_json, fail, out

logger = logging.getLogger(__name__)


def _split_labels(values: Optional[list[str]]) -> Optional[list[str]]:
    if not values:
        return None
    parts = [part.strip() for value in values for part in value.split(",") if part.strip()]
    return parts or None


def _print_table(title: str, rows: list[tuple[str, str]]) -> None:
    from rich.table import Table

    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in rows:
        table.add_row(name, value)
    out().print(table)


def evaluate_command(
    benchmark: str = typer.Option(..., "--benchmark",
                                  help="FIVR-5K, FIVR-200K, CC_WEB_VIDEO, SVD, EVVE, or custom."),
    similarities: Optional[Path] = typer.Option(
        None, "--similarities", "-s", help="{query_id: {video_id: score}} as .json or .json.gz (or a .npz written by dnsvr)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object: the metrics (with --features: the whole report)."),
    ground_truth: Optional[Path] = typer.Option(
        None, "--ground-truth", help="custom benchmark: {query_id: {video_id: label}} (.json/.json.gz)."),
    positive_labels: Optional[list[str]] = typer.Option(
        None, "--positive-labels",
        help="custom benchmark: labels that count as positive (repeat or comma-separate; default 1)."),
    annotation: Optional[Path] = typer.Option(
        None, "--annotation",
        help="FIVR only: FIVR's annotation.json ({query: {label: list of ids}}, labels ND/DS/CS/IS/DA) "
             "replacing the shipped one (needed for DAVR)."),
    features: Optional[Path] = typer.Option(
        None, "--features", "-f", help="HDF5 feature file (published layout) to run --model over."),
    model: Optional[str] = typer.Option(
        None, "--model", "-m", help="With --features: teacher, fg-att, fg-bin, cg or dns."),
    bundle: str = typer.Option(
        "paper", "--bundle", "-b", help="With --features: paper (paper-bin for fg-bin), lite, or a bundle folder."),
    output: Path = typer.Option(
        Path("."), "--output", "-o", help="With --features: folder for the report JSON (and the dns curve PNG)."),
    batch_size: int = typer.Option(64, "--batch-size", help="With --features: database videos per fine batch."),
    save_similarities: Optional[Path] = typer.Option(
        None, "--save-similarities", help="With --features: also write the similarities (.json, .json.gz, or .npz: fastest to reload)."),
    progress: Optional[bool] = typer.Option(None, "--progress/--no-progress",
                                            help="Progress on stderr (default: a bar on a terminal, lines otherwise)."),
) -> None:
    """Evaluate retrieval results on a benchmark with the reference protocol.

    Either --similarities FILE ({query: {video: score}}; the available videos are every id in
    it), or --features FILE.hdf5 --model M to run the networks and report mAP, time per query,
    storage per video, and for dns the curve of mAP against the fraction of pairs re-scored.

    Examples:

    \b
      dnsvr evaluate --benchmark FIVR-5K -s similarities.json.gz
      dnsvr evaluate --benchmark FIVR-5K -f fivr5k_features.hdf5 -m dns -o reports/
      dnsvr evaluate --benchmark custom --ground-truth gt.json -s sims.json --json
    """
    from dnsvr.eval import get_benchmark
    from dnsvr.eval.similarities import SimilarityFileError, SimilarityTable

    if (similarities is None) == (features is None):
        fail("give either --similarities FILE or --features FILE.hdf5 --model M")
    if features is not None and model is None:
        fail("--features needs --model (teacher, fg-att, fg-bin, cg or dns)")
    kwargs = {}
    if benchmark.strip().lower() == "custom":
        if ground_truth is None:
            fail("the custom benchmark needs --ground-truth FILE (and optionally --positive-labels)")
        kwargs = {"ground_truth": ground_truth, "positive_labels": _split_labels(positive_labels)}
    elif ground_truth is not None or positive_labels:
        fail("--ground-truth/--positive-labels apply to --benchmark custom only")
    if annotation is not None:
        if not benchmark.upper().startswith("FIVR"):
            fail("--annotation applies to FIVR-5K/FIVR-200K only")
        kwargs["annotation"] = annotation
    if features is not None:
        try:
            bench = get_benchmark(benchmark, **kwargs)
        except (FileNotFoundError, ValueError) as exc:
            fail(str(exc))
            return
        _run_features(bench, benchmark, features, str(model), bundle, output, batch_size, save_similarities,
                      as_json, progress)
        return
    try:
        bench = get_benchmark(benchmark, **kwargs)
        table = SimilarityTable.from_file(similarities)  # type: ignore[arg-type]
        result = bench.evaluate_detailed(table)
    except (FileNotFoundError, ValueError, SimilarityFileError) as exc:
        fail(str(exc))
        return
    if as_json:
        echo_json({k: (None if math.isnan(v) else v) for k, v in result.metrics.items()})
        return
    rows = [(name, f"{value:.4f}") for name, value in result.metrics.items()]
    rows += [("queries", str(result.n_queries)), ("database videos", str(result.n_database))]
    if result.missing_queries:
        rows.append(("missing queries (ignored)", str(len(result.missing_queries))))
    for metric, queries in result.skipped.items():
        rows.append((f"{metric}: queries without positives", str(len(queries))))
    _print_table(result.benchmark, rows)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text).strip("_") or "benchmark"


def _run_features(bench: Any, name: str, features: Path, model: str, bundle: str, output_dir: Path, batch_size: int,
                  save_similarities: Optional[Path], as_json: bool, progress: Optional[bool]) -> None:
    from dnsvr.eval.runner import MODELS, evaluate_features, plot_curve
    from dnsvr.eval.similarities import save_similarities as write_similarities

    from dnsvr.stages import EVALUATED, Stage

    try:
        model = Stage.parse(model, EVALUATED).value
    except ValueError:
        fail(f"--model must be one of {', '.join(MODELS)}, got {model!r}")
    from dnsvr.weights import WeightsUnavailableError

    try:
        report, table = evaluate_features(bench, features, model, bundle=bundle, batch_size=batch_size,
                                          progress=progress)
    except (FileNotFoundError, ValueError, WeightsUnavailableError) as exc:  # incl. BundleError, FeatureFileError
        fail(str(exc))
        return
    output_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{_slug(name)}_{model}"
    report_path = output_dir / f"{stem}.json"
    payload = report.to_dict()
    if model == "dns":
        payload["plot"] = str(plot_curve(report, output_dir / f"{stem}_curve.png"))
    report_path.write_text(json.dumps(payload, indent=2) + "\n")  # a local report; not a commit point
    if save_similarities is not None:
        write_similarities(table, save_similarities)
    if as_json:
        echo_json(payload)
        return
    rows = [(k, f"{v:.4f}") for k, v in report.metrics.items()]
    rows += [(f"time per query: {k} (s)", f"{v:.4g}") for k, v in report.time_per_query_s.items()]
    rows += [(f"storage per video: {k} (KiB)", f"{v:.4g}") for k, v in report.storage_per_video_kb.items()]
    rows += [("queries", str(report.n_queries)), ("database videos", str(report.n_database))]
    _print_table(f"{report.benchmark} — {model}" + (f" ({report.bundle})" if report.bundle else ""), rows)
    if report.curve:
        from rich.table import Table

        metrics = list(report.curve[0]["metrics"])
        curve = Table(title="DnS: mAP against the pairs re-scored by the fine student", header_style="bold")
        for col in ["pairs %", "pairs/query", "s/query", *metrics]:
            curve.add_column(col, justify="right")
        for point in report.curve:
            curve.add_row(f"{100 * point['fraction']:.0f}%", str(point["pairs"]), f"{point['time_per_query_s']:.4g}",
                          *(f"{point['metrics'].get(m, float('nan')):.4f}" for m in metrics))
        out().print(curve)
    typer.echo(f"report: {report_path}" + (f"; plot: {payload['plot']}" if "plot" in payload else ""))

"""``dnsvr evaluate``: benchmark metrics from a similarity file (reference protocols)."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Optional

import typer

logger = logging.getLogger(__name__)


def _split_labels(values: Optional[list[str]]) -> Optional[list[str]]:
    if not values:
        return None
    out = [part.strip() for value in values for part in value.split(",") if part.strip()]
    return out or None


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


def _print_table(title: str, rows: list[tuple[str, str]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in rows:
        table.add_row(name, value)
    Console().print(table)


def evaluate_command(
    benchmark: str = typer.Option(..., "--benchmark", "-b",
                                  help="FIVR-5K, FIVR-200K, CC_WEB_VIDEO, SVD, EVVE, or custom."),
    similarities: Optional[Path] = typer.Option(
        None, "--similarities", "-s", help="{query_id: {video_id: score}} as .json or .json.gz."),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as one JSON object."),
    ground_truth: Optional[Path] = typer.Option(
        None, "--ground-truth", help="custom benchmark: {query_id: {video_id: label}} (.json/.json.gz)."),
    positive_labels: Optional[list[str]] = typer.Option(
        None, "--positive-labels",
        help="custom benchmark: labels that count as positive (repeat or comma-separate; default 1)."),
    annotation: Optional[Path] = typer.Option(
        None, "--annotation",
        help="FIVR only: an annotation.json {query: {ND/DS/CS/IS/DA: [ids]}} replacing the shipped one."),
) -> None:
    """Evaluate retrieval results on a benchmark with the reference protocol.

    The available videos are every id in the similarity file (queries and results).
    """
    from dnsvr.eval import get_benchmark
    from dnsvr.eval.similarities import SimilarityFileError, SimilarityTable

    if similarities is None:
        _fail("give --similarities FILE")
    kwargs = {}
    if benchmark.strip().lower() == "custom":
        if ground_truth is None:
            _fail("the custom benchmark needs --ground-truth FILE (and optionally --positive-labels)")
        kwargs = {"ground_truth": ground_truth, "positive_labels": _split_labels(positive_labels)}
    elif ground_truth is not None or positive_labels:
        _fail("--ground-truth/--positive-labels apply to --benchmark custom only")
    if annotation is not None:
        if not benchmark.upper().startswith("FIVR"):
            _fail("--annotation applies to FIVR-5K/FIVR-200K only")
        kwargs["annotation"] = annotation
    try:
        bench = get_benchmark(benchmark, **kwargs)
        table = SimilarityTable.from_file(similarities)
        result = bench.evaluate_detailed(table)
    except (FileNotFoundError, ValueError, SimilarityFileError) as exc:
        _fail(str(exc))
        return
    if as_json:
        typer.echo(json.dumps({k: (None if math.isnan(v) else v) for k, v in result.metrics.items()}))
        return
    rows = [(name, f"{value:.4f}") for name, value in result.metrics.items()]
    rows += [("queries", str(result.n_queries)), ("database videos", str(result.n_database))]
    if result.missing_queries:
        rows.append(("missing queries (ignored)", str(len(result.missing_queries))))
    for metric, queries in result.skipped.items():
        rows.append((f"{metric}: queries without positives", str(len(queries))))
    _print_table(result.benchmark, rows)

"""``dnsvr search DIR QUERY...``: rank an index's videos for query videos, ids or feature files."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from dnsvr.cli.index import cli_errors

# piped output gets room for the result columns (rich assumes 80 when it cannot ask a terminal)
_out = Console(width=None if sys.stdout.isatty() else 100)


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def segment_text(seg: Any, short: bool = False) -> str:
    """``q 0.0–12.0 s ↔ t 3.0–15.0 s (0.91)``, or ``0–12 ↔ 3–15 s`` when ``short``."""
    if short:
        return f"{seg.query_start:g}–{seg.query_end:g} ↔ {seg.target_start:g}–{seg.target_end:g} s"
    return (f"q {seg.query_start:.1f}–{seg.query_end:.1f} s ↔ t {seg.target_start:.1f}–{seg.target_end:.1f} s "
            f"({seg.score:.2f})")


def results_table(q: Any, title: str | None = None, relevant: set[str] | None = None) -> Table:
    """A rich table of one query's ranked results (``relevant`` ids are marked with ✓).

    The selector column appears only when a selector scored the pairs (not with ``lite``).
    """
    table = Table(title=title or f"{q.query}: {q.candidates} candidates, {q.fine_pairs} fine pairs, "
                                 f"{q.timings.get('total', 0.0) * 1000:.0f} ms", title_justify="left",
                  box=box.SIMPLE_HEAD, pad_edge=False)
    with_selector = any(r.selector_score is not None for r in q.results)
    table.add_column("#", justify="right")
    table.add_column("video", no_wrap=True)
    table.add_column("score", justify="right")
    table.add_column("coarse", justify="right")
    if with_selector:
        table.add_column("selector", justify="right")
    table.add_column("fine", justify="right")
    table.add_column("stage")
    table.add_column("matched: query ↔ video", no_wrap=True)
    for rank, r in enumerate(q.results, 1):
        name = r.video_id if relevant is None else (f"✓ {r.video_id}" if r.video_id in relevant
                                                    else f"  {r.video_id}")
        seg = segment_text(r.segments[0], short=True) if r.segments else ""
        row = [str(rank), name, f"{r.score:.3f}", _fmt(r.coarse_score)]
        if with_selector:
            row.append(_fmt(r.selector_score))
        row += [_fmt(r.fine_score), r.stage, seg]
        table.add_row(*row)
    return table


def search_command(
    directory: Path = typer.Argument(..., help="Index directory."),
    queries: list[str] = typer.Argument(..., help="Query video files, ids of indexed videos, or .h5 feature files."),
    top_k: int = typer.Option(10, "--top-k", "-k", help="Results per query."),
    budget: str = typer.Option(None, "--budget", "-b",
                               help="Fine re-ranking budget: '5%' or '0.05' of the database, '1000' pairs, "
                                    "or both ('5%,1000'). Default: 1000 pairs."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON document instead of tables."),
    segments: bool = typer.Option(True, "--segments/--no-segments", help="Aligned matching segments."),
    ann: int = typer.Option(None, "--ann", help="Coarse stage over an ANN top-N (needs an ANN coarse index)."),
    include_self: bool = typer.Option(False, "--include-self", help="Keep an indexed query in its own results."),
    precision: str = typer.Option(None, "--precision",
                                  help="Fine-stage region products: 'exact' or 'int8' (faster, approximate; "
                                       "binary S^f_B codes are exact either way). Default: the library's "
                                       "(dnsvr._fine.DEFAULT_PRECISION)."),
) -> None:
    """Rank the indexed videos for each query: coarse → selector → fine re-rank within the budget."""
    from dnsvr.index.video_index import VideoIndex
    from dnsvr.search import Budget, results_document

    with cli_errors():
        try:
            parsed = Budget.parse(budget)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--budget") from None
        if precision is not None and precision not in ("exact", "int8"):
            raise typer.BadParameter(f"{precision!r}: use 'exact' or 'int8'", param_hint="--precision")
        with VideoIndex.open(directory, readonly=True) as index:
            results = index.search(queries, top_k=top_k, budget=parsed, segments=segments,
                                   ann_candidates=ann, include_self=include_self, progress=False,
                                   **({} if precision is None else {"precision": precision}))
    if json_out:
        doc = results_document(str(directory), parsed, top_k, results)
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
        return
    for q in results:
        _out.print(results_table(q))

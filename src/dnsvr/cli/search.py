"""``dnsvr search DIR QUERY...``: rank an index's videos for query videos, ids or feature files."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer
from rich import box
from rich.table import Table

from dnsvr.cli._common import cli_errors, echo_json, fail, out, plural, warn

#: Values of ``--precision`` in every command that has it.
PRECISION_CHOICES = ("exact", "int8")
MATCH_MODES = ("related", "copy")  # dnsvr.bundle.MATCH_MODES (not imported: the CLI starts without torch)


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def hms(seconds: float) -> str:
    """``HH:MM:SS.s`` (tenths of a second), e.g. ``00:01:02.5``."""
    tenths = int(round(max(0.0, float(seconds)) * 10))
    h, rest = divmod(tenths, 36000)
    m, rest = divmod(rest, 600)
    return f"{h:02d}:{m:02d}:{rest / 10:04.1f}"


def segment_text(seg: Any, short: bool = False) -> str:
    """``00:00:00.0–00:00:12.0 ↔ 00:00:03.0–00:00:15.0 (0.91)``; ``short`` leaves out the score."""
    text = f"{hms(seg.query_start)}–{hms(seg.query_end)} ↔ {hms(seg.target_start)}–{hms(seg.target_end)}"
    return text if short else f"{text} ({seg.score:.2f})"


def results_table(q: Any, title: str | None = None, relevant: set[str] | None = None) -> Table:
    """A rich table of one query's ranked results (``relevant`` ids are marked with ✓).

    Every matched segment is shown (one per line, query ↔ video, ``HH:MM:SS.s``), and the file each
    video was indexed from. The selector column appears only when a selector scored the pairs.
    """
    table = Table(title=title or f"{q.query}: {plural(q.candidates, 'candidate')}, "
                                 f"{plural(q.fine_pairs, 'fine pair')}, "
                                 f"{q.timings.get('total', 0.0) * 1000:.0f} ms", title_justify="left",
                  box=box.SIMPLE_HEAD, pad_edge=False)
    with_selector = any(r.selector_score is not None for r in q.results)
    with_source = any(getattr(r, "source", None) for r in q.results)
    table.add_column("#", justify="right")
    table.add_column("video", no_wrap=True)
    table.add_column("score", justify="right")
    table.add_column("coarse", justify="right")
    if with_selector:
        table.add_column("selector", justify="right")
    table.add_column("fine", justify="right")
    table.add_column("stage")
    table.add_column("cover q/v", justify="right")
    table.add_column("matched: query ↔ video", no_wrap=True)
    if with_source:
        table.add_column("source", overflow="fold")
    for rank, r in enumerate(q.results, 1):
        name = r.video_id if relevant is None else (f"✓ {r.video_id}" if r.video_id in relevant
                                                    else f"  {r.video_id}")
        segs = "\n".join(segment_text(s, short=True) for s in r.segments)
        row = [str(rank), name, f"{r.score:.3f}", _fmt(r.coarse_score)]
        if with_selector:
            row.append(_fmt(r.selector_score))
        cover = "" if r.query_coverage is None else f"{r.query_coverage:.2f}/{r.target_coverage:.2f}"
        row += [_fmt(r.fine_score), r.stage, cover, segs]
        if with_source:
            row.append(getattr(r, "source", None) or "")
        table.add_row(*row)
    return table


def search_command(
    directory: Path = typer.Argument(..., help="Index directory."),
    queries: list[str] = typer.Argument(..., help="Query video files, ids of indexed videos, or .h5 feature files."),
    top_k: int = typer.Option(10, "--top-k", "-k", help="Results per query."),
    budget: str = typer.Option(None, "--budget",
                               help="Fine re-ranking budget: '5%' or '0.05' of the database, '1000' pairs, "
                                    "or both ('5%,1000'). Default: 1000 pairs."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON document instead of tables."),
    segments: bool = typer.Option(True, "--segments/--no-segments", help="Aligned matching segments."),
    ann: int = typer.Option(None, "--ann", help="Coarse stage over an ANN top-N (needs an ANN coarse index)."),
    include_self: bool = typer.Option(False, "--include-self", help="Keep an indexed query in its own results."),
    precision: str = typer.Option("exact", "--precision", metavar="exact|int8",
                                  help="Fine-stage arithmetic: exact, or int8 (faster, approximate; binary S^f_B "
                                       "codes are exact either way)."),
    progress: bool = typer.Option(None, "--progress/--no-progress",
                                  help="Progress on stderr while query videos are decoded (default: a bar on a "
                                       "terminal, a line per video otherwise)."),
    ray: str = typer.Option(None, "--ray", help="Sharded index: one Ray actor per shard (auto, an address, or local; "
                                                "needs dnsvr[ray]). Default: the shards in process, one after another."),
    allow_partial: bool = typer.Option(False, "--allow-partial",
                                       help="Sharded index: a shard that cannot answer is left out and named in "
                                            "the results (missing_shards) instead of failing the query."),
    match: str = typer.Option("related", "--match", metavar="related|copy",
                              help="related: everything that shares content with the query (whole copies and "
                                   "videos containing some of its shots); copy: whole copies first."),
) -> None:
    """Rank the indexed videos for each query: coarse → selector → fine re-rank within the budget.

    A query that cannot be searched (missing file, unreadable video) is reported on stderr and
    the others are still searched; the exit status is then 1.

    Examples:

    \b
      dnsvr search my.index query.mp4
      dnsvr search my.index query.mp4 other.mp4 -k 20 --json > hits.json
      dnsvr search my.index clip_0042 --budget 5%      # an indexed video as the query
      dnsvr search my.index query.mp4 --match copy      # whole copies above partial ones
    """
    from dnsvr.index.query import ShardUnavailableError
    from dnsvr.index.sharded import open_any
    from dnsvr.search import Budget, results_document

    try:
        parsed = Budget.parse(budget)
    except ValueError as exc:
        fail(f"--budget: {exc}")
    if precision not in PRECISION_CHOICES:
        fail(f"--precision must be {' or '.join(PRECISION_CHOICES)}, got {precision!r}")
    if match not in MATCH_MODES:
        fail(f"--match must be {' or '.join(MATCH_MODES)}, got {match!r}")
    with cli_errors():
        try:
            with open_any(directory, readonly=True, ray=ray) as index:
                results = index.search(queries, top_k=top_k, budget=parsed, segments=segments,
                                       ann_candidates=ann, include_self=include_self, progress=progress,
                                       precision=precision, on_error="report", allow_partial=allow_partial,
                                       match=match)
        except ShardUnavailableError as exc:
            fail(str(exc), code=3)
    failed = [q for q in results if q.error is not None]
    for q in failed:
        warn(f"error: query {q.query}: {q.error}")
    if json_out:
        echo_json(results_document(str(directory), parsed, top_k, results))
    else:
        console = out()
        for q in results:
            if q.error is None:
                console.print(results_table(q))
            if q.missing_shards:
                console.print(f"[yellow]partial:[/yellow] missing shards {', '.join(q.missing_shards)}",
                              highlight=False)
    if failed:
        if len(failed) == len(results):
            raise typer.Exit(2)
        raise typer.Exit(1)
    sys.stdout.flush()

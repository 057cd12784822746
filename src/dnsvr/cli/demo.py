"""``dnsvr demo``: build an index from generated videos with transformed copies and query it (offline)."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import typer

from dnsvr.cli._common import cli_errors, echo_json, out, plural
from dnsvr.cli.search import results_table, segment_text


def demo_command(
    workdir: Path = typer.Option(None, "--workdir", help="Keep the videos and the index here "
                                                         "(default: a temporary folder, removed at the end)."),
    originals: int = typer.Option(3, "--originals", help="Query videos (each gets 5 transformed copies)."),
    distractors: int = typer.Option(4, "--distractors", help="Unrelated videos in the index."),
    top_k: int = typer.Option(8, "--top-k", "-k", help="Results shown per query."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON document instead of tables."),
) -> None:
    """Offline demo: generated videos → lite index → DnS search with matched segments.

    Examples:

    \b
      dnsvr demo
      dnsvr demo --workdir demo/      # keep the videos and the index, then try dnsvr search on them
      dnsvr demo --json | python -m json.tool
    """
    from dnsvr.demo import run_demo

    _out = out()
    start = time.perf_counter()
    tmp = None
    if workdir is None:
        tmp = Path(tempfile.mkdtemp(prefix="dnsvr-demo-"))
        root = tmp
    else:
        root = workdir
    status = (lambda msg: None) if json_out else (lambda msg: _out.print(f"[bold]•[/bold] {msg}"))
    try:
        with cli_errors():
            res = run_demo(root, originals=originals, distractors=distractors, top_k=top_k, status=status)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    hit, total = res.found(5)
    elapsed = time.perf_counter() - start
    if json_out:
        doc = {"indexed": res.indexed, "frames": res.frames, "timings": res.timings,
               "copies_in_top5": hit, "copies": total, "seconds": elapsed,
               "queries": [q.to_dict() for q in res.results]}
        echo_json(doc)
        return
    _out.print(f"  indexed {plural(res.indexed, 'video')} ({plural(res.frames, 'frame')} at 1 fps) "
               f"in {res.timings['index']:.1f} s")
    for q in res.results:
        relevant = set(res.positives.get(q.query, []))
        _out.print()
        _out.print(results_table(q, title=f"query {q.query}.mp4 — ✓ = a transformed copy of it "
                                          f"({q.fine_pairs} pairs re-ranked, "
                                          f"{q.timings.get('total', 0) * 1000:.0f} ms)", relevant=relevant))
        best = next((r for r in q.results if r.video_id in relevant and r.segments), None)
        if best is not None:
            _out.print(f"  where: {q.query} ↔ {best.video_id} ({res.transforms.get(best.video_id, '')}): "
                       + "; ".join(segment_text(s) for s in best.segments))
    _out.print()
    _out.print(f"[bold]found {hit} of {total} transformed copies in the top 5[/bold] "
               f"(generate {res.timings['generate']:.1f} s, index {res.timings['index']:.1f} s, "
               f"search {res.timings['search']:.1f} s; total {elapsed:.1f} s)")
    if workdir is not None:
        _out.print(f"the index is in {res.index_dir}: try  dnsvr search {res.index_dir} "
                   f"{workdir / 'videos' / 'orig_0.mp4'}")

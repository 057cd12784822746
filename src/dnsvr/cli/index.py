"""``dnsvr index create|add|remove|list|info|verify|compact|attach|shard|refit``: manage a persistent index."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from dnsvr.cli._common import TYPER_SETTINGS, cli_errors, echo_json, fail, out, plural, user_errors, warn

__all__ = ["index_app", "cli_errors", "user_errors"]

index_app = typer.Typer(name="index", help="Create and manage a persistent video index.", **TYPER_SETTINGS)


def _open(directory: Path, readonly: bool) -> Any:
    from dnsvr.index.sharded import open_any

    return open_any(directory, readonly=readonly)


@index_app.command("create")
def create(directory: Path = typer.Argument(..., help="New (or empty) index directory."),
           bundle: str = typer.Option("lite", "--bundle", "-b",
                                      help="Model bundle: lite (offline default), paper, paper-bin, or a folder."),
           coarse_index: str = typer.Option("Flat", "--coarse-index",
                                            help="FAISS spec of the coarse search: Flat (exact) or e.g. HNSW32."),
           offline: bool = typer.Option(False, "--offline", help="Never download published weights."),
           shards: int = typer.Option(0, "--shards", help="Create a sharded index of N shards (see docs/scale-out.md)."),
           ) -> None:
    """Create an empty index with a model bundle.

    Examples:

    \b
      dnsvr index create my.index                  # lite: offline, whitening fitted on your first videos
      dnsvr index create my.index -b paper         # the published models (downloads once)
      dnsvr index create big.index --coarse-index HNSW32
    """
    from dnsvr.index.video_index import VideoIndex
    from dnsvr.stages import Stage

    with cli_errors():
        if shards:
            from dnsvr.index.sharded import ShardedIndex

            try:
                index = ShardedIndex.create(directory, bundle, shards=shards, coarse_index=coarse_index,
                                            offline=offline or None)
            except ValueError as exc:
                if isinstance(exc, user_errors()):
                    raise
                fail(f"--shards: {exc}")
        else:
            index = VideoIndex.create(directory, bundle, coarse_index=coarse_index, offline=offline or None)
        index.close()
    b = index.bundle
    typer.echo(f"created {directory} (bundle {b.name}: fine {Stage.from_fine_type(b.fine_type)}, "
               f"coarse {b.coarse_type}, selector {'yes' if b.has_selector else 'coarse order'})")


@index_app.command("add")
def add(directory: Path = typer.Argument(..., help="Index directory."),
        inputs: list[str] = typer.Argument(..., help="Video files, folders, list files, or .h5 feature files."),
        on_duplicate: str = typer.Option("error", "--on-duplicate", metavar="error|skip|replace",
                                         help="Videos already in the index: error (stop before decoding "
                                              "anything), skip (add only the new ones), or replace."),
        json_out: bool = typer.Option(False, "--json", help="Print the report as JSON."),
        progress: bool = typer.Option(None, "--progress/--no-progress",
                                      help="Progress on stderr (default: a bar on a terminal, a line per video "
                                           "otherwise)."),
        ray: str = typer.Option(None, "--ray", help="Extract on a Ray cluster: auto, an address, or local "
                                                    "(needs dnsvr[ray]); with --on-duplicate skip, re-running resumes."),
        ) -> None:
    """Add videos or feature files to an index.

    Video ids are file names without the extension (under a folder: the path below it, e.g.
    sub/clip); files that would get the same id take their parent folders (a/clip, b/clip). With
    --on-duplicate skip, videos already in the index are left out before decoding, so re-running
    the same command adds only what is new. Unreadable videos are reported and skipped: exit
    status 1 if any was.

    Examples:

    \b
      dnsvr index add my.index videos/
      dnsvr index add my.index videos/ --on-duplicate skip     # again, later: only the new files
      dnsvr index add my.index features.h5 --json > added.json
    """
    from dnsvr.index.records import DuplicateVideoError

    if on_duplicate not in ("error", "skip", "replace"):
        fail(f"--on-duplicate must be error, skip or replace, got {on_duplicate!r}")
    with cli_errors():
        try:
            with _open(directory, readonly=False) as index:
                report = index.add(inputs, on_duplicate=on_duplicate, progress=progress,
                                   **({"ray": ray} if ray else {}))
                total = len(index)
        except DuplicateVideoError as exc:
            shown = ", ".join(exc.video_ids[:5]) + (", ..." if len(exc.video_ids) > 5 else "")
            fail(f"{plural(len(exc.video_ids), 'video')} already in {directory} ({shown}); nothing was added. "
                 "Use --on-duplicate skip to add only the new ones, or --on-duplicate replace.")
    if json_out:
        echo_json({**report.to_dict(), "videos": total})
    else:
        known = f", {len(report.already_indexed)} already there" if report.already_indexed else ""
        typer.echo(f"added {plural(len(report.added), 'video')} in {report.seconds:.1f} s{known}; "
                   f"the index holds {plural(total, 'video')}")
    for item, reason in report.skipped:
        warn(f"skipped {item}: {reason}")
    if report.skipped:
        # as `dnsvr extract`: scripts can tell a partial add from a clean one
        raise typer.Exit(1)


@index_app.command("remove")
def remove(directory: Path = typer.Argument(..., help="Index directory."),
           video_ids: list[str] = typer.Argument(..., help="Ids to remove."),
           ignore_missing: bool = typer.Option(False, "--ignore-missing", help="Skip unknown ids.")) -> None:
    """Remove videos (hidden at once; `compact` reclaims the space).

    Examples:

    \b
      dnsvr index remove my.index clip_0042 sub/clip_0043
      dnsvr index compact my.index
    """
    with cli_errors():
        with _open(directory, readonly=False) as index:
            n = index.remove(video_ids, missing="ignore" if ignore_missing else "error")
    typer.echo(f"removed {plural(n, 'video')}")


@index_app.command("list")
def list_videos(directory: Path = typer.Argument(..., help="Index directory."),
                json_out: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List the indexed videos: id, number of frames, and the file it was indexed from (tab-separated).

    Examples:

    \b
      dnsvr index list my.index | cut -f1
      dnsvr index list my.index --json
    """
    with cli_errors():
        with _open(directory, readonly=True) as index:
            ids = index.ids()
            frames = index.frames()
            sources = index.sources()
    if json_out:
        echo_json([{"video_id": v, "frames": int(f), "source": src} for v, f, src in zip(ids, frames, sources)])
        return
    lines = "".join(f"{v}\t{f}\t{src or ''}\n" for v, f, src in zip(ids, frames, sources))
    typer.echo(lines, nl=False)


@index_app.command("info")
def info(directory: Path = typer.Argument(..., help="Index directory."),
         json_out: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Bundle, number of videos, storage per stage.

    Examples:

    \b
      dnsvr index info my.index
    """
    with cli_errors():
        with _open(directory, readonly=True) as index:
            data = index.info()
    if json_out:
        echo_json(data)
        return
    table = Table(title=str(directory), show_header=False)
    b = data["bundle"]
    table.add_row("bundle", f"{b['name']} ({b['backbone']}, whitening {b['whitening']})")
    table.add_row("stages", f"coarse {b['coarse']}, selector {'network' if b['selector'] else 'coarse order'}, "
                            f"fine {b['fine']}")
    fitted = data.get("whitening_fitted_on")
    if fitted:
        from dnsvr.bundle import WHITENING_RECOMMENDED_VECTORS
        low = fitted["region_vectors"] < WHITENING_RECOMMENDED_VECTORS
        by = f" (by {fitted['by']})" if fitted.get("by") else ""
        table.add_row("whitening fitted on", f"{plural(fitted['videos'], 'video')}, {fitted['region_vectors']:,} region "
                                             f"vectors → {fitted['dims']} dims{by}"
                                             + (f" (fewer than the recommended {WHITENING_RECOMMENDED_VECTORS:,}: see "
                                                "docs/search.md)" if low else ""))
        if data.get("whitening_refit_recommended"):
            table.add_row("refit recommended", f"yes: the index has outgrown its whitening; dnsvr index refit "
                                               f"{directory} NEW_INDEX")
    learned = data.get("learned_whitening")
    if learned:
        table.add_row("learned whitening", f"{learned['pairs']:,} region pairs of {plural(learned['videos'], 'video')} "
                                           f"and {learned['copies']} augmented copies (dnsvr train whitening)"
                                           + (f"; coarse chunks mapped from {learned['chunk_pairs']:,} chunk pairs"
                                              if learned.get("chunks_mapped") else ""))
    table.add_row("videos", str(data["videos"]))
    if "shards" in data:
        table.add_row("shards", ", ".join(f"{s['name']} {s['videos']}" for s in data["shards"]))
    store = data.get("store")
    if store:
        table.add_row("frames", str(store["frames"]))
        table.add_row("removed (pending compact)", str(store["removed_pending_compact"]))
        per = store["bytes_per_video"]
        table.add_row("bytes per video", ", ".join(f"{k} {v:,.0f}" for k, v in per.items()))
    out().print(table)


@index_app.command("verify")
def verify(directory: Path = typer.Argument(..., help="Index directory."),
           no_checksums: bool = typer.Option(False, "--no-checksums", help="Skip reading every fine array."),
           json_out: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Check the index; exit status 1 when damaged.

    Examples:

    \b
      dnsvr index verify my.index
      dnsvr index verify my.index --no-checksums --json
    """
    with cli_errors():
        with _open(directory, readonly=True) as index:
            report = index.verify(checksums=not no_checksums)
    if json_out:
        echo_json(report.to_dict())
    else:
        typer.echo(f"{'ok' if report.ok else 'DAMAGED'}: {plural(report.n_videos, 'video')}, "
                   f"{report.n_checked} checked")
        for p in report.problems:
            warn(f"problem {p.get('video_id') or ''} {p.get('message')}")
        for n in report.notes:
            typer.echo(f"note: {n}")
    if not report.ok:
        raise typer.Exit(1)


@index_app.command("compact")
def compact(directory: Path = typer.Argument(..., help="Index directory.")) -> None:
    """Reclaim the space of removed videos.

    Examples:

    \b
      dnsvr index compact my.index
    """
    with cli_errors():
        with _open(directory, readonly=False) as index:
            rep = index.compact()
    typer.echo(f"compacted: {plural(rep.purged_videos, 'removed video')} purged, "
               f"{rep.bytes_before:,} → {rep.bytes_after:,} bytes of fine shards")


@index_app.command("attach")
def attach(directory: Path = typer.Argument(..., help="A lite index (it stores the base features)."),
           bundle: str = typer.Argument(..., help="The trained bundle folder (or paper, paper-bin)."),
           output: Path = typer.Argument(..., help="New index directory built with that bundle.")) -> None:
    """Build a new index with a trained bundle from this index's stored features (no decoding).

    Examples:

    \b
      dnsvr index attach my.index my_bundle/ trained.index
    """
    with cli_errors():
        with _open(directory, readonly=True) as index:
            new = index.attach(bundle, output)
            n = len(new)
            new.close()
    typer.echo(f"built {output} with bundle {bundle}: {plural(n, 'video')}")



@index_app.command("shard")
def shard(source: Path = typer.Argument(..., help="An ordinary index."),
          output: Path = typer.Argument(..., help="New sharded index directory."),
          shards: int = typer.Option(..., "--shards", help="Number of shards.")) -> None:
    """Split an index into a sharded index (its stored representations are copied; no decoding).

    Examples:

    \b
      dnsvr index shard my.index big.index --shards 4
    """
    from dnsvr.index.sharded import ShardedIndex

    with cli_errors():
        try:
            index = ShardedIndex.split(source, output, shards)
        except ValueError as exc:
            if isinstance(exc, user_errors()):
                raise
            fail(f"--shards: {exc}")
        sizes = [len(s) for s in index.shards]
        index.close()
    typer.echo(f"split {source} into {output}: {plural(sum(sizes), 'video')} in {len(sizes)} shards "
               f"({', '.join(map(str, sizes))})")


@index_app.command("refit")
def refit(directory: Path = typer.Argument(..., help="A lite index (its whitening was fitted on its videos)."),
          output: Path = typer.Argument(..., help="New index directory (must not exist or be empty)."),
          videos: Path = typer.Option(None, "--videos", metavar="DIR",
                                      help="Where the videos are now, if they moved: each source is looked up under "
                                           "DIR first, by its path's trailing parts (a/b/clip.mp4, b/clip.mp4, "
                                           "clip.mp4), then at its recorded path."),
          skip_missing: bool = typer.Option(False, "--skip-missing",
                                            help="Leave out (and list) videos whose file is missing or undecodable "
                                                 "instead of stopping."),
          dims: int = typer.Option(None, "--dims", help="Whitened size (default: the larger of the index's and 128)."),
          json_out: bool = typer.Option(False, "--json", help="Print the report as JSON."),
          progress: bool = typer.Option(None, "--progress/--no-progress",
                                        help="Progress on stderr (default: a bar on a terminal, a line per video "
                                             "otherwise)."),
          ) -> None:
    """Refit the whitening on all the indexed videos, into a new index (the old one is left as it is).

    A lite index's whitening is fitted by its first add: refit it once the index has grown (`index add`
    and `index info` say when). Every video is decoded again from the file it was added from, the whitening is fitted on
    frames of all videos, and every video is indexed again under the same id. An interrupted refit leaves
    OUTPUT.partial, which the same command resumes from. Then swap the folders (mv). Exit status 1 if
    videos were skipped (--skip-missing).

    Examples:

    \b
      dnsvr index refit my.index my.index.new
      dnsvr index refit my.index my.index.new --videos /mnt/videos --skip-missing
      mv my.index my.index.old && mv my.index.new my.index
    """
    with cli_errors():
        with _open(directory, readonly=True) as index:
            report = index.refit_whitening(output, videos_root=videos, skip_missing=skip_missing, dims=dims,
                                           progress=progress)
    if json_out:
        echo_json(report.to_dict())
    else:
        f = report.fitted_on
        moved = f", {plural(len(report.moved), 'source')} found under {videos}" if report.moved else ""
        typer.echo(f"re-indexed {plural(len(report.videos), 'video')} into {output} in {report.seconds:.1f} s{moved}; "
                   f"whitening fitted on {f['region_vectors']:,} region vectors of {plural(f['videos'], 'video')} "
                   f"→ {f['dims']} dims; {len(report.skipped)} skipped")
        typer.echo(f"{directory} is unchanged; to use the new index: mv {directory} {directory}.old && "
                   f"mv {output} {directory}")
    for vid, source, reason in report.skipped:
        warn(f"skipped {vid} ({source or 'no source'}): {reason}")
    if report.skipped:
        raise typer.Exit(1)

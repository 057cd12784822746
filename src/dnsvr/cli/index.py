"""``dnsvr index create|add|remove|list|info|verify|compact|attach``: manage a persistent index."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

index_app = typer.Typer(name="index", help="Create and manage a persistent video index.", no_args_is_help=True)

_out = Console()
_err = Console(stderr=True)


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that are the user's to fix: printed as one line, exit status 2."""
    from dnsvr.bundle import BundleError
    from dnsvr.index.store import IndexFormatError, IndexLockedError, IndexStoreError
    from dnsvr.index.video_index import VideoIndexError

    errors: list[type[BaseException]] = [VideoIndexError, BundleError, IndexStoreError, IndexLockedError,
                                         IndexFormatError, FileExistsError, FileNotFoundError]
    try:
        from dnsvr.weights import WeightsUnavailableError

        errors.append(WeightsUnavailableError)
    except ImportError:  # pragma: no cover - weights registry is part of the package
        pass
    return tuple(errors)


@contextmanager
def cli_errors() -> Iterator[None]:
    """Turn user errors into ``error: ...`` on stderr and exit status 2."""
    try:
        yield
    except user_errors() as exc:
        # one line whatever the width: a long path must not wrap the message onto several lines
        text = " ".join(str(exc).split()) or type(exc).__name__
        _err.print(f"[red]error:[/red] {escape(text)}", highlight=False, markup=True, soft_wrap=True)
        raise typer.Exit(2) from None


def _open(directory: Path, readonly: bool) -> Any:
    from dnsvr.index.video_index import VideoIndex

    return VideoIndex.open(directory, readonly=readonly)


def _echo_json(payload: Any) -> None:
    sys.stdout.write(json.dumps(payload, indent=2, default=str) + "\n")


@index_app.command("create")
def create(directory: Path = typer.Argument(..., help="New (or empty) index directory."),
           bundle: str = typer.Option("lite", "--bundle", "-b",
                                      help="Model bundle: lite (offline default), paper, paper-bin, or a folder."),
           coarse_index: str = typer.Option("Flat", "--coarse-index",
                                            help="FAISS spec of the coarse search: Flat (exact) or e.g. HNSW32."),
           offline: bool = typer.Option(False, "--offline", help="Never download published weights.")) -> None:
    """Create an empty index with a model bundle."""
    from dnsvr.index.video_index import VideoIndex

    with cli_errors():
        index = VideoIndex.create(directory, bundle, coarse_index=coarse_index, offline=offline or None)
        index.close()
    _out.print(f"created {directory} (bundle {index.bundle.name}: fine {index.bundle.fine_type}, "
               f"coarse {index.bundle.coarse_type}, selector {'yes' if index.bundle.has_selector else 'coarse order'})")


@index_app.command("add")
def add(directory: Path = typer.Argument(..., help="Index directory."),
        inputs: list[str] = typer.Argument(..., help="Video files, folders, list files, or .h5 feature files."),
        on_duplicate: str = typer.Option("error", "--on-duplicate", help="error | replace | skip"),
        json_out: bool = typer.Option(False, "--json", help="Print the report as JSON."),
        progress: bool = typer.Option(None, "--progress/--no-progress", help="Progress bars (default: on a TTY)."),
        ) -> None:
    """Add videos or feature files; unreadable videos are reported and skipped (exit status 1 if any was)."""
    with cli_errors():
        with _open(directory, readonly=False) as index:
            report = index.add(inputs, on_duplicate=on_duplicate, progress=progress)
            total = len(index)
    if json_out:
        _echo_json({**report.to_dict(), "videos": total})
    else:
        _out.print(f"added {len(report.added)} videos in {report.seconds:.1f} s; the index holds {total}")
        for item, reason in report.skipped:
            _err.print(f"[yellow]skipped[/yellow] {item}: {reason}", highlight=False)
    if report.skipped:
        # as `dnsvr extract`: scripts can tell a partial add from a clean one
        raise typer.Exit(1)


@index_app.command("remove")
def remove(directory: Path = typer.Argument(..., help="Index directory."),
           video_ids: list[str] = typer.Argument(..., help="Ids to remove."),
           ignore_missing: bool = typer.Option(False, "--ignore-missing", help="Skip unknown ids.")) -> None:
    """Remove videos (hidden at once; `compact` reclaims the space)."""
    with cli_errors():
        with _open(directory, readonly=False) as index:
            n = index.remove(video_ids, missing="ignore" if ignore_missing else "error")
    _out.print(f"removed {n} videos")


@index_app.command("list")
def list_videos(directory: Path = typer.Argument(..., help="Index directory."),
                json_out: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List the indexed videos (id and number of frames)."""
    with cli_errors():
        with _open(directory, readonly=True) as index:
            ids = index.ids()
            frames = index.store.n_frames().tolist() if index.store is not None else []
    if json_out:
        _echo_json([{"video_id": v, "frames": int(f)} for v, f in zip(ids, frames)])
        return
    for v, f in zip(ids, frames):
        sys.stdout.write(f"{v}\t{f}\n")


@index_app.command("info")
def info(directory: Path = typer.Argument(..., help="Index directory."),
         json_out: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Bundle, number of videos, storage per stage."""
    with cli_errors():
        with _open(directory, readonly=True) as index:
            data = index.info()
    if json_out:
        _echo_json(data)
        return
    table = Table(title=str(directory), show_header=False)
    b = data["bundle"]
    table.add_row("bundle", f"{b['name']} ({b['backbone']}, whitening {b['whitening']})")
    table.add_row("stages", f"coarse {b['coarse']}, selector {'network' if b['selector'] else 'coarse order'}, "
                            f"fine {b['fine']}")
    table.add_row("videos", str(data["videos"]))
    store = data.get("store")
    if store:
        table.add_row("frames", str(store["frames"]))
        table.add_row("removed (pending compact)", str(store["removed_pending_compact"]))
        per = store["bytes_per_video"]
        table.add_row("bytes per video", ", ".join(f"{k} {v:,.0f}" for k, v in per.items()))
    _out.print(table)


@index_app.command("verify")
def verify(directory: Path = typer.Argument(..., help="Index directory."),
           no_checksums: bool = typer.Option(False, "--no-checksums", help="Skip reading every fine array."),
           json_out: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Check the index; exit status 1 when damaged."""
    with cli_errors():
        with _open(directory, readonly=True) as index:
            report = index.verify(checksums=not no_checksums)
    if json_out:
        _echo_json(report.to_dict())
    else:
        _out.print(f"{'ok' if report.ok else 'DAMAGED'}: {report.n_videos} videos, {report.n_checked} checked")
        for p in report.problems:
            _err.print(f"[red]problem[/red] {p.get('video_id') or ''} {p.get('message')}", highlight=False)
        for n in report.notes:
            _out.print(f"note: {n}", highlight=False)
    if not report.ok:
        raise typer.Exit(1)


@index_app.command("compact")
def compact(directory: Path = typer.Argument(..., help="Index directory.")) -> None:
    """Reclaim the space of removed videos."""
    with cli_errors():
        with _open(directory, readonly=False) as index:
            rep = index.compact()
    _out.print(f"compacted: {rep.purged_videos} removed videos purged, "
               f"{rep.bytes_before:,} → {rep.bytes_after:,} bytes of fine shards")


@index_app.command("attach")
def attach(directory: Path = typer.Argument(..., help="A lite index (it stores the base features)."),
           bundle: str = typer.Argument(..., help="The trained bundle folder (or paper / paper-bin)."),
           output: Path = typer.Argument(..., help="New index directory built with that bundle.")) -> None:
    """Build a new index with a trained bundle from this index's stored features (no decoding)."""
    with cli_errors():
        with _open(directory, readonly=True) as index:
            new = index.attach(bundle, output)
            n = len(new)
            new.close()
    _out.print(f"built {output} with bundle {bundle}: {n} videos")


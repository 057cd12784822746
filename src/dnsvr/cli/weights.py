"""``dnsvr weights``: list the weights registry, show an entry, fetch files into the cache (thin CLI)."""

from __future__ import annotations

from typing import Optional

import typer

from dnsvr.cli._common import TYPER_SETTINGS, echo_json, fail, warn

weights_app = typer.Typer(help="Published and bundled weights: list, inspect, download into the cache.",
                          **TYPER_SETTINGS)


@weights_app.command("list")
def list_command(
    pattern: str = typer.Argument("*", help="Glob over names, e.g. 'dns_*'."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List registered weights and whether each is on this machine.

    Examples:

    \b
      dnsvr weights list
      dnsvr weights list 'dns_*' --json
    """
    from dnsvr import weights as W

    rows = []
    for name in W.list_weights(pattern):
        found = W.find_weights(name)
        rows.append({"name": name, "available": found is not None, "path": str(found or W.cache_path(name)),
                     "description": W.weights_info(name).description})
    if as_json:
        echo_json(rows)
        return
    for r in rows:
        typer.echo(f"{r['name']:<30} {'cached' if r['available'] else 'missing':<8} {r['description']}")


@weights_app.command("info")
def info_command(
    name: str = typer.Argument(..., help="Registry name (see 'dnsvr weights list')."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Show an entry: URLs, hash, expected shapes, the preprocessing the weights expect, where it is cached.

    Examples:

    \b
      dnsvr weights info dns_fg_att_student
    """
    from dnsvr import weights as W

    try:
        info = W.weights_info(name).as_dict()
    except ValueError as exc:
        fail(str(exc))
    found = W.find_weights(name)
    info.update(cache_path=str(W.cache_path(name)), available=found is not None, path=str(found) if found else None)
    if as_json:
        echo_json(info)
        return
    for key, value in info.items():
        if key == "shapes" and value:
            value = f"{len(value)} tensors, e.g. " + ", ".join(f"{k} {v}" for k, v in list(value.items())[:3])
        typer.echo(f"{key:<14} {value}")


@weights_app.command("fetch")
def fetch_command(
    names: list[str] = typer.Argument(..., help="Registry names to download into the cache."),
    path: Optional[str] = typer.Option(None, "--path", help="Use (and hash-check) this local file instead."),
    offline: bool = typer.Option(False, "--offline", help="Never download; fail if not cached."),
) -> None:
    """Download weights once into the cache ($DNSVR_CACHE/weights); print each file's path.

    Examples:

    \b
      dnsvr weights fetch dns_fg_att_student dns_cg_student
      dnsvr weights fetch pca_resnet50_vcdb_1M --path ~/Downloads/pca.pth    # a copy you already have
    """
    from dnsvr import weights as W

    failed = False
    for name in names:
        try:
            typer.echo(f"{name}\t{W.resolve_weights(name, path=path, offline=offline or None)}")
        except (ValueError, FileNotFoundError, W.WeightsUnavailableError) as exc:
            warn(f"error: {name}: {exc}")
            failed = True
    if failed:
        raise typer.Exit(1)

"""The ``dnsvr`` command. Thin: parse arguments, call the library, print.

Each command group lives in its own module of this package and is registered here.
"""

from __future__ import annotations

import logging

import typer

from dnsvr import __version__

app = typer.Typer(
    name="dnsvr",
    help="DnS video retrieval: extract features, index videos, search, evaluate, distil.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"dnsvr {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress details."),
    version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")


# Command groups register themselves below, one import per module.
from dnsvr.cli.evaluate import evaluate_command  # noqa: E402

app.command("evaluate")(evaluate_command)
from dnsvr.cli.extract import extract_command  # noqa: E402

app.command("extract")(extract_command)
from dnsvr.cli.index import index_app  # noqa: E402
from dnsvr.cli.search import search_command  # noqa: E402
from dnsvr.cli.demo import demo_command  # noqa: E402

app.add_typer(index_app, name="index")
app.command("search")(search_command)
app.command("demo")(demo_command)
from dnsvr.cli.train import train_app  # noqa: E402

app.add_typer(train_app, name="train")
from dnsvr.cli.weights import weights_app  # noqa: E402

app.add_typer(weights_app, name="weights")
from dnsvr.cli.serve import serve_command  # noqa: E402

app.command("serve")(serve_command)


def main() -> None:
    """Entry point of the ``dnsvr`` console script."""
    app()

"""The ``dnsvr`` command. Thin: parse arguments, call the library, print.

Each command group lives in its own module of this package and is registered here.
"""

from __future__ import annotations

import typer

from dnsvr import __version__
from dnsvr.cli._common import TYPER_SETTINGS, Group, configure_logging

app = typer.Typer(
    name="dnsvr",
    cls=Group,
    help="DnS video retrieval: extract features, index videos, search, evaluate, distil.\n\n"
         "Results go to stdout (tables, or one JSON document with --json); progress and messages to "
         "stderr. Exit status: 0 done, 1 done but some inputs failed, 2 a usage error.",
    epilog="Start with: dnsvr demo   ·   dnsvr index create my.index && dnsvr index add my.index videos/",
    add_completion=False,
    pretty_exceptions_enable=False,
    **TYPER_SETTINGS,
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"dnsvr {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress details (also after the command)."),
    version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    configure_logging(verbose)


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

"""What every ``dnsvr`` command shares: consoles, errors, JSON output, plurals, ``-v`` and ``-h``.

* stdout carries results only (tables, or one JSON document with ``--json``); progress and
  messages go to stderr.
* Messages are never wrapped when piped (grep and logs see one line per message).
* A user's error is one line ``error: ...`` on stderr and exit status 2; a partial success
  (some inputs skipped or failed) exits 1.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import typer
from rich.console import Console
from typer.core import TyperGroup

#: Context settings of every command: ``-h`` as well as ``--help``.
CONTEXT_SETTINGS: dict[str, Any] = {"help_option_names": ["-h", "--help"]}

#: Keyword arguments of every ``typer.Typer`` of the command: plain help (examples shown as written).
TYPER_SETTINGS: dict[str, Any] = {"context_settings": CONTEXT_SETTINGS, "rich_markup_mode": None,
                                  "no_args_is_help": True}

#: JSON documents on stdout are indented by this much, in every command.
JSON_INDENT = 2


def _console(stderr: bool) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    tty = stream.isatty()
    # piped: room for the result tables, and messages on one line (rich assumes 80 columns otherwise)
    return Console(stderr=stderr, soft_wrap=True, width=None if tty else 200)


def out() -> Console:
    """A console on stdout (results)."""
    return _console(stderr=False)


def err() -> Console:
    """A console on stderr (messages)."""
    return _console(stderr=True)


def option_names(message: str) -> str:
    """Write the running command's Python parameter names as its options.

    A library error says ``positive_share must lie in (0, 1)`` or ``pass on_duplicate='skip'``;
    on the command line that is ``--positive-share`` and ``--on-duplicate skip``. Only names with
    an underscore are rewritten (plain words stay words).
    """
    import re

    ctx = typer_context()
    if ctx is None:
        return message
    for param in ctx.command.params:
        longs = [o for o in getattr(param, "opts", ()) if o.startswith("--")]
        name = param.name or ""
        if "_" not in name or not longs:
            continue
        message = re.sub(rf"\b{name}\s*=\s*(['\"]?)([^'\"\s,;)]*)\1", rf"{longs[0]} \2", message)
        message = re.sub(rf"(?<![-\w]){name}\b", longs[0], message)
    return message


def typer_context() -> Any:
    """The running command's context, or None outside a command."""
    try:  # the click that typer runs on: its own copy in recent typer releases
        from typer._click.globals import get_current_context
    except ImportError:  # pragma: no cover - typer on the standard click
        from click import get_current_context
    return get_current_context(silent=True)


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ``error: message`` on stderr (Python parameter names written as options) and exit.

    Exit status 2: the user's to fix.
    """
    typer.echo(f"error: {option_names(message)}", err=True)
    raise typer.Exit(code=code)


def warn(message: str) -> None:
    """One line on stderr, never wrapped."""
    typer.echo(message, err=True)


def echo_json(payload: Any) -> None:
    """One JSON document on stdout (indent 2, the same in every command)."""
    sys.stdout.write(json.dumps(payload, indent=JSON_INDENT, default=str) + "\n")
    sys.stdout.flush()


def plural(n: int, word: str, many: str | None = None) -> str:
    """``1 video``, ``2 videos``, ``0 videos``."""
    return f"{n} {word if n == 1 else (many or word + 's')}"


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that are the user's to fix: printed as one line, exit status 2."""
    from dnsvr.bundle import BundleError
    from dnsvr.index.records import IndexStoreError
    from dnsvr.index.store import IndexFormatError, IndexLockedError
    from dnsvr.index.video_index import VideoIndexError
    from dnsvr.weights import WeightsUnavailableError

    return (VideoIndexError, BundleError, IndexStoreError, IndexLockedError, IndexFormatError, FileExistsError,
            FileNotFoundError, WeightsUnavailableError)


@contextmanager
def cli_errors() -> Iterator[None]:
    """Turn user errors into ``error: ...`` on stderr and exit status 2."""
    try:
        yield
    except user_errors() as exc:
        fail(" ".join(str(exc).split()) or type(exc).__name__)  # one line, whatever the exception holds


def configure_logging(verbose: bool) -> None:
    """``-v``: INFO messages of the library on stderr; otherwise warnings only."""
    level = logging.INFO if verbose else logging.WARNING
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    root.setLevel(level)


#: Flags that ask for INFO logging, accepted before or after the command name.
VERBOSE_FLAGS = ("-v", "--verbose")


class Group(TyperGroup):
    """The root command group.

    ``-v/--verbose`` is accepted anywhere before ``--`` (after a subcommand's name too) and handed
    to the root option. Help shows values by name (``--top-k TOP_K``, ``QUERIES...``), never Python
    types: every parameter without an explicit ``metavar`` gets its upper-case name.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _name_values(self)

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        end = args.index("--") if "--" in args else len(args)
        head = [a for a in args[:end] if a not in VERBOSE_FLAGS]
        if len(head) != end:
            args = ["--verbose", *head, *args[end:]]
        return super().parse_args(ctx, args)


def _name_values(group: Any) -> None:
    for command in getattr(group, "commands", {}).values():
        if hasattr(command, "commands"):
            _name_values(command)
            continue
        for param in command.params:
            if getattr(param, "param_type_name", "") == "argument":
                # the usage line adds "..." to repeated arguments; the help column shows the name only
                param.metavar = param.metavar or (param.name or "value").upper()
                param.display_type_rich = _no_type  # type: ignore[method-assign]
            elif param.metavar is None and not getattr(param, "is_flag", False) \
                    and not getattr(param, "count", False):
                param.metavar = (param.name or "value").upper()


def _no_type(*args: Any, **kwargs: Any) -> None:
    return None

"""Progress bars (rich) for long library work, off when not a terminal or when asked."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from collections.abc import Iterator
from typing import Any


class _NullProgress:
    def add_task(self, *args: Any, **kwargs: Any) -> int:
        return 0

    def advance(self, *args: Any, **kwargs: Any) -> None:
        pass

    def update(self, *args: Any, **kwargs: Any) -> None:
        pass


@contextmanager
def progress_bar(enabled: bool | None = None) -> Iterator[Any]:
    """A ``rich.progress.Progress`` (or a no-op stand-in) as a context manager.

    Args:
        enabled: ``None`` → only when stderr is a terminal.
    """
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        yield _NullProgress()
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), TextColumn("{task.fields[info]}"), transient=False) as bar:
        orig = bar.add_task

        def add_task(*args: Any, **kwargs: Any) -> int:
            kwargs.setdefault("info", "")
            return orig(*args, **kwargs)

        bar.add_task = add_task  # type: ignore[method-assign]
        yield bar

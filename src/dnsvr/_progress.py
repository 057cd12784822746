"""Progress for long library work: a bar on a terminal, one line per step otherwise, always on stderr.

Progress never goes to stdout, so ``--json`` output stays parseable whatever is drawn. Modes:

* a terminal (``sys.stderr.isatty()``): a rich bar, redrawn in place;
* not a terminal (piped, cron, a log file): plain lines such as
  ``extracting 3/10: clip.mp4 (42 frames)`` — one per video (``min_interval=0``) or at
  most one every ``min_interval`` seconds, plus one when a task completes;
* ``enabled=False``: nothing.

The object yielded has rich's task API (``add_task``, ``advance``, ``update``), so callers
do not care which mode runs.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TextIO

#: Seconds between two lines of a task in line mode (the last step of a task always prints).
DEFAULT_LINE_INTERVAL = 5.0


class _NullProgress:
    def add_task(self, *args: Any, **kwargs: Any) -> int:
        return 0

    def advance(self, *args: Any, **kwargs: Any) -> None:
        pass

    def update(self, *args: Any, **kwargs: Any) -> None:
        pass


@dataclass
class _LineTask:
    label: str
    total: float | None
    completed: float = 0.0
    fields: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    last_line: float = float("-inf")


class _LineProgress:
    """rich's task API, printed as one plain line per step (or per ``min_interval`` seconds)."""

    def __init__(self, stream: TextIO, min_interval: float) -> None:
        self._stream = stream
        self._min_interval = float(min_interval)
        self._tasks: list[_LineTask] = []

    def add_task(self, description: str, total: float | None = None, completed: float = 0, **fields: Any) -> int:
        self._tasks.append(_LineTask(str(description), total, float(completed), dict(fields)))
        return len(self._tasks) - 1

    def advance(self, task: int, advance: float = 1) -> None:
        self.update(task, advance=advance)

    def update(self, task: int, *, advance: float | None = None, completed: float | None = None,
               total: float | None = None, description: str | None = None, **fields: Any) -> None:
        # ``description`` is the bar's live label (e.g. the video being decoded): lines keep the task's name
        t = self._tasks[task]
        if total is not None:
            t.total = total
        t.fields.update(fields)
        stepped = advance is not None or completed is not None
        if advance is not None:
            t.completed += advance
        if completed is not None:
            t.completed = float(completed)
        if not stepped:
            return
        now = time.monotonic()
        done = t.total is not None and t.completed >= t.total
        if done or now - t.last_line >= self._min_interval:
            t.last_line = now
            self._stream.write(self._line(t, now) + "\n")
            self._stream.flush()

    @staticmethod
    def _line(t: _LineTask, now: float) -> str:
        count = f"{t.completed:g}" + ("" if t.total is None else f"/{t.total:g}")
        item = t.fields.get("item")
        extra = [str(v) for k, v in t.fields.items() if k != "item" and v not in (None, "")]
        text = f"{t.label} {count}" + (f": {item}" if item else "")
        extra.append(f"{now - t.started:.0f} s")
        return text + " (" + ", ".join(extra) + ")"


def stderr_console() -> Any:
    """The rich console every progress display (and CLI error) draws on: stderr."""
    from rich.console import Console

    return Console(stderr=True)


@contextmanager
def progress_bar(enabled: bool | None = None, *, columns: tuple[Any, ...] | None = None,
                 min_interval: float = DEFAULT_LINE_INTERVAL, transient: bool = False) -> Iterator[Any]:
    """A progress display as a context manager: a rich bar on a terminal, lines otherwise, on stderr.

    Args:
        enabled: ``None`` → a bar when stderr is a terminal, lines when it is not; ``True`` → the same
            choice (a bar needs a terminal); ``False`` → nothing.
        columns: rich columns of the bar (default: label, bar, n/total, time left, ``info``).
        min_interval: line mode: seconds between two lines of one task (0: a line per step).
        transient: remove the bar when done (terminal only).

    Yields:
        An object with ``add_task(description, total=, completed=, **fields)``,
        ``advance(task, n)`` and ``update(task, advance=, description=, **fields)``.
    """
    if enabled is False:
        yield _NullProgress()
        return
    if not sys.stderr.isatty():
        yield _LineProgress(sys.stderr, min_interval)
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    if columns is None:
        columns = (TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeRemainingColumn(), TextColumn("{task.fields[info]}"))
    with Progress(*columns, console=stderr_console(), transient=transient) as bar:
        orig = bar.add_task

        def add_task(*args: Any, **kwargs: Any) -> int:
            kwargs.setdefault("info", "")
            return orig(*args, **kwargs)

        bar.add_task = add_task  # type: ignore[method-assign]
        yield bar

"""Progress bars of long operations: rich, on stderr, only when stderr is a terminal (and
``--no-progress`` is not given), gone when the operation ends. stdout is never touched,
so a command's output stays clean when piped."""

from __future__ import annotations

import sys
from typing import Any

import click


def wanted(no_progress: bool) -> bool:
    """Whether to draw a bar: stderr is a terminal and ``--no-progress`` was not given."""
    return not no_progress and sys.stderr.isatty()


class ProgressBar:
    """A transient bar on stderr, or nothing when ``show`` is false; ``update(done,
    total)`` moves it (a ``total`` of None pulses, for work of unknown size) and
    :meth:`say` prints a line above it. Use it as a context manager."""

    def __init__(self, label: str, show: bool, total: float | None = None, unit: str = "") -> None:
        self.label = label
        self.total = total
        self.unit = unit
        self.progress: Any = None
        self.task: Any = None
        if show:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self.progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(bar_width=24),
                MofNCompleteColumn(),
                TextColumn(unit),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                transient=True,
                redirect_stdout=False,  # the output goes to stdout, never through the bar
            )

    def __enter__(self) -> ProgressBar:
        if self.progress is not None:
            self.progress.start()
            self.task = self.progress.add_task(self.label, total=self.total)
        return self

    def __exit__(self, *_exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()

    def update(self, done: float, total: float | None = None) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=done, total=total or self.total)

    def say(self, message: str) -> None:
        """One line on stderr (above the bar while it is drawn)."""
        if self.progress is not None:
            self.progress.console.print(message, markup=False, highlight=False, soft_wrap=True)
        else:
            click.echo(message, err=True)

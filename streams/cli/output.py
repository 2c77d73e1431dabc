"""Where a command's output goes: stdout, or the file of ``--output FILE``."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

import click


@contextmanager
def output_stream(path: Path | None, what: str = "output") -> Iterator[TextIO]:
    """stdout, or ``path`` (UTF-8, no newline translation) with ``wrote WHAT to PATH`` on
    stderr once it is written; flushed either way."""
    if path is None:
        yield sys.stdout
        sys.stdout.flush()
        return
    with open(path, "w", encoding="utf-8", newline="") as stream:
        yield stream
    click.echo(f"wrote {what} to {path}", err=True)


def echo_columns(rows: Sequence[Sequence[str]]) -> None:
    """Rows (the first a header) as space-aligned columns on stdout; the last column is not
    padded (a URL or a status may be long)."""
    last = len(rows[0]) - 1
    widths = [max(len(row[i]) for row in rows) for i in range(last)]
    for row in rows:
        cells = "  ".join(c.ljust(w) for c, w in zip(row[:last], widths, strict=True))
        click.echo(cells + "  " + row[last])

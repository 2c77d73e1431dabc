"""Where a command's output goes: stdout, or the file of ``--output FILE``."""

from __future__ import annotations

import sys
from collections.abc import Iterator
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

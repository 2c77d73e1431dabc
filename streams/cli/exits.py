"""Exit codes every command shares, and :func:`fail`: one error line on stderr, then exit.

Usage errors exit 2 through click (``click.UsageError``, ``click.BadParameter``).
"""

from __future__ import annotations

import sys
from typing import NoReturn

import click

EXIT_FAILED = 1
"""Could not do it: a broker unreachable or failing, an unreadable input, a send failed."""
EXIT_BAD_LINES = 3
"""Done, but some input lines were rejected (each reported on stderr) and skipped."""
EXIT_REFUSED = 4
"""Refused on purpose (``caretally close``: already closed, month not over, unknown org)."""
EXIT_INTERRUPTED = 130
"""Stopped by Ctrl-C before the end of the input."""


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    """Print ``error: message`` on stderr and exit with ``code``."""
    click.echo(f"error: {message}", err=True)
    sys.exit(code)

"""Options and option callbacks the commands share, spelled once."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from streams.archive.store import DEFAULT_ARCHIVE

F = Callable[..., Any]


def bootstrap_option(f: F) -> F:
    return click.option(
        "--bootstrap",
        metavar="HOST:PORT",
        help="Kafka bootstrap address [default: $KAFKA_BOOTSTRAP, else 127.0.0.1:9092].",
    )(f)


def prefix_option(f: F) -> F:
    return click.option(
        "--topic-prefix",
        default=None,
        metavar="PREFIX",
        help="Prepended to every topic name, e.g. 'staging.' [default: $CARETALLY_TOPIC_PREFIX].",
    )(f)


def archive_option(help_text: str) -> Callable[[F], F]:
    """``--archive DIR`` (default ./data/archive, or $CARETALLY_ARCHIVE)."""
    return click.option(
        "--archive",
        "archive_dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=DEFAULT_ARCHIVE,
        envvar="CARETALLY_ARCHIVE",
        show_default=True,
        metavar="DIR",
        help=help_text + " [env: CARETALLY_ARCHIVE]",
    )


def parse_as_of(_ctx: click.Context, _param: click.Parameter, value: str | None) -> datetime | None:
    """``--as-of TS``: an ISO-8601 instant with a UTC offset."""
    if value is None:
        return None
    try:
        ts = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an ISO-8601 timestamp") from None
    if ts.tzinfo is None:
        raise click.BadParameter("give a UTC offset, e.g. 2025-03-31T23:59:59-04:00 or ...Z")
    return ts


def parse_month(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    """A ``YYYY-MM`` month."""
    if not re.fullmatch(r"\d{4}-(0[1-9]|1[0-2])", value):
        raise click.BadParameter(f"{value!r} is not a month; write YYYY-MM, e.g. 2025-03")
    return value


def writable_file(_ctx: click.Context, _param: click.Parameter, value: Path | None) -> Path | None:
    """An output file whose folder exists."""
    if value is not None and not value.parent.is_dir():
        raise click.BadParameter(f"folder {str(value.parent)!r} does not exist")
    return value

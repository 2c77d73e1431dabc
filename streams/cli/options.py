"""Options the commands share, each spelled once: the same name, metavar, help and
validation wherever it appears (``tests/unit/test_cli_consistency.py`` holds them to it).

Conventions:

* ``--input PATH`` is where events are read from (a file, ``-`` for stdin, or an archive
  directory, as each command says); ``--archive DIR`` is an archive a command *writes*.
* ``--format`` is the output format only; ``--output FILE`` writes the output to a file
  instead of stdout (one exception, named in its help: ``rules import-rvu --output DIR``
  writes a folder of rule books, as the issue that asked for it spells it).
* ``--rules DIR`` evaluates with the rule books of a folder instead of the shipped ones.
* Old spellings keep working for one release as hidden aliases (:func:`renamed`) that
  print one deprecation line on stderr.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from click.core import ParameterSource
from pydantic import TypeAdapter, ValidationError

from schemas.events import IDENTIFIER_RULE, MONTH_PATTERN, Identifier
from streams.archive.store import DEFAULT_ARCHIVE
from streams.ingest.sources import INPUT_FORMATS

if TYPE_CHECKING:
    from projections.rules import RuleCatalog

F = Callable[..., Any]

ARCHIVE_ENV = "CARETALLY_ARCHIVE"
INPUT_HELP = "Where the events are read from: "
OUTPUT_FORMAT_HELP = "Output format: "
PARTITIONS_HELP = "Partitions of each topic this command creates"
LOGLEVELS = ("debug", "info", "warning", "error")


# The Kafka options (--bootstrap, --topic-prefix, --kafka-config): streams.cli.kafka_options.


# -- callbacks ---------------------------------------------------------------------------


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


def parse_month(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """A ``YYYY-MM`` month (the wire contract's ``MONTH_PATTERN``)."""
    if value is not None and not re.fullmatch(MONTH_PATTERN, value):
        raise click.BadParameter(f"{value!r} is not a month; write YYYY-MM, e.g. 2025-03")
    return value


_IDENTIFIER: TypeAdapter[str] = TypeAdapter(Identifier)


def parse_org(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """An org id as the wire contract allows it (``schemas.events.Identifier``)."""
    if value is None:
        return None
    try:
        return _IDENTIFIER.validate_python(value)
    except ValidationError:
        raise click.BadParameter(
            f"{value!r} is not an org id: 1 to 128 characters; it {IDENTIFIER_RULE}"
        ) from None


def writable_file(_ctx: click.Context, _param: click.Parameter, value: Path | None) -> Path | None:
    """An output file whose folder exists."""
    if value is not None and not value.parent.is_dir():
        raise click.BadParameter(f"folder {str(value.parent)!r} does not exist")
    return value


@dataclass(frozen=True)
class RuleBooks:
    """The rule books a command evaluates with: those of ``--rules DIR`` (``directory``),
    or the shipped ones (``directory`` None)."""

    catalog: RuleCatalog
    directory: Path | None = None


def describe_books(catalog: RuleCatalog) -> str:
    """``2025, 2026, 2027 provisional``: the years of a set of books."""
    return ", ".join(f"{b.year}{' provisional' if b.provisional else ''}" for b in catalog.books)


def parse_rules(ctx: click.Context, _param: click.Parameter, value: Path | None) -> RuleBooks:
    """``--rules DIR``: the books of DIR, every problem of every book refused at once (a
    usage error, one ``file:line: key: what is wrong`` line each), else the shipped books.
    The books used are said on stderr (stdout carries the output)."""
    from projections.rules import SHIPPED_CATALOG, RuleBookError, RuleCatalog

    if value is None:
        return RuleBooks(SHIPPED_CATALOG)
    try:
        catalog = RuleCatalog.read_dir(value)
    except RuleBookError as exc:
        problems = "\n".join(str(p) for p in exc.problems)
        raise click.BadParameter(
            f"the rule books in {value} cannot be used ({len(exc.problems)} problem(s)):"
            f"\n{problems}"
        ) from None
    if not ctx.resilient_parsing:
        click.echo(f"rules: {value} ({describe_books(catalog)})", err=True)
    return RuleBooks(catalog, value)


# -- shared options ----------------------------------------------------------------------


def input_option(accepts: str, **kwargs: Any) -> Callable[[F], F]:
    """``--input PATH`` (into ``input_path``): where the events come from; ``accepts``
    says what this command reads. ``kwargs`` go to :func:`click.option` (type, default)."""
    kwargs.setdefault("type", click.Path(path_type=Path))
    return click.option(
        "--input", "input_path", metavar="PATH", help=INPUT_HELP + accepts, **kwargs
    )


def archive_input_option(accepts: str, allow_dash: bool = False) -> Callable[[F], F]:
    """``--input PATH`` defaulting to ``$CARETALLY_ARCHIVE``, else ``./data/archive``."""
    return input_option(
        accepts,
        type=click.Path(allow_dash=allow_dash, path_type=Path),
        default=DEFAULT_ARCHIVE,
        envvar=ARCHIVE_ENV,
        show_default=True,
        show_envvar=True,
    )


INPUT_FORMAT_HELP = (
    "How to read an --input file; auto: by its name (.csv, .ndjson, .jsonl, .json, "
    "each maybe .gz), else by its first byte ({ is NDJSON)."
)


def input_format_option(f: F, formats: tuple[str, ...] = INPUT_FORMATS, note: str = "") -> F:
    """``--input-format``: how to read an ``--input`` file; ``formats`` the choices (all of
    :data:`INPUT_FORMATS`, and more where a command reads more), ``note`` what the extra
    ones are."""
    return click.option(
        "--input-format",
        type=click.Choice(formats),
        default="auto",
        show_default=True,
        help=INPUT_FORMAT_HELP + (f" {note}" if note else ""),
    )(f)


def format_option(choices: tuple[str, ...], default: str, details: str) -> Callable[[F], F]:
    """``--format`` (into ``fmt``): the output format, and nothing else."""
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(choices),
        default=default,
        show_default=True,
        help=OUTPUT_FORMAT_HELP + details,
    )


def output_option(f: F) -> F:
    """``--output FILE``: write the result to FILE instead of stdout."""
    return click.option(
        "--output",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        callback=writable_file,
        metavar="FILE",
        help="Write the output to FILE instead of stdout.",
    )(f)


def as_of_option(f: F) -> F:
    """``--as-of TS`` (into ``as_of``)."""
    return click.option(
        "--as-of",
        "as_of",
        callback=parse_as_of,
        metavar="TS",
        help="Only events recorded at or before TS (ISO-8601 with a UTC offset, e.g. "
        "2025-04-01T00:00:00Z): what was known then.",
    )(f)


def month_option(default: str | None = None, required: bool | None = None) -> Callable[[F], F]:
    """``--month YYYY-MM``; required unless it has a ``default`` (or ``required`` is False:
    an old spelling stands in for it, see :func:`require`)."""
    return click.option(
        "--month",
        required=default is None if required is None else required,
        default=default,
        show_default=default is not None,
        callback=parse_month,
        metavar="YYYY-MM",
        help="A calendar month, in the practice's time zone.",
    )


ORG_HELP = "The practice (its org_id)."


def org_option(f: F, required: bool = True, note: str = "") -> F:
    """``--org ORG`` (into ``org_id``), validated as the wire contract validates org ids;
    ``note`` says when an optional one is needed."""
    return click.option(
        "--org",
        "org_id",
        required=required,
        callback=parse_org,
        metavar="ORG",
        help=ORG_HELP + (f" {note}" if note else ""),
    )(f)


def partitions_option(default: int | None, note: str = "") -> Callable[[F], F]:
    """``--partitions N``; ``note`` says what this command does with it."""
    return click.option(
        "--partitions",
        default=default,
        show_default=default is not None,
        type=click.IntRange(1),
        metavar="N",
        help=PARTITIONS_HELP + (f"; {note}" if note else "."),
    )


def rules_option(f: F) -> F:
    """``--rules DIR`` (into ``rules``, a :class:`RuleBooks`): evaluate with the books of
    DIR instead of the shipped ones. No environment variable: a draft must be chosen on
    the command line, never picked up unseen."""
    return click.option(
        "--rules",
        "rules",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        callback=parse_rules,
        metavar="DIR",
        help="Evaluate with the rule books in DIR (every *.toml, a complete set replacing "
        "the shipped books), e.g. the output of `caretally rules import-rvu --output DIR`; "
        "refused with every problem (file:line: key) if one fails a check. "
        "Default: the shipped books.",
    )(f)


def claims_dir_option(default: Path) -> Callable[[F], F]:
    """``--claims-dir DIR``: where claim files of a close are written (``close`` and the
    close page of ``serve``)."""
    return click.option(
        "--claims-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=default,
        show_default=True,
        metavar="DIR",
        help="Folder for claims-<org>-<digest>-<YYYY-MM>.csv / .json (replaced atomically; "
        "created if missing).",
    )


def no_progress_option(f: F) -> F:
    """``--no-progress``: see :mod:`streams.cli.progress`."""
    return click.option(
        "--no-progress",
        is_flag=True,
        help="No progress bar (there is none unless stderr is a terminal).",
    )(f)


def loglevel_option(default: str) -> Callable[[F], F]:
    """``--loglevel LEVEL``."""
    return click.option(
        "--loglevel",
        type=click.Choice(LOGLEVELS),
        default=default,
        show_default=True,
        metavar="LEVEL",
        help="Least severe log records to print on stderr: " + ", ".join(LOGLEVELS) + ".",
    )


def log_format_option() -> Callable[[F], F]:
    """``--log-format text|json`` (into ``log_format``): see :mod:`streams.observe.logs`."""
    return click.option(
        "--log-format",
        "log_format",
        type=click.Choice(("text", "json")),
        default="text",
        show_default=True,
        help="Log lines on stderr: text for people; json: one JSON object per line "
        "(ts, level, logger, message), for log shippers. Either way repeated warnings are "
        "rate-limited and patient ids are never logged at info level.",
    )


def web_port_option(default: int) -> Callable[[F], F]:
    """``--web-port PORT`` of a process without an API of its own
    (:mod:`streams.observe.probes`); 0 means no web server."""
    return click.option(
        "--web-port",
        default=default,
        show_default=True,
        type=click.IntRange(0, 65535),
        metavar="PORT",
        help="Port of GET /healthz (liveness, 200 while running), /readyz (200 only when "
        "connected to Kafka with partitions assigned, else 503) and /metrics (Prometheus). "
        "0: no web server. Give each process on one machine its own.",
    )


def web_host_option(f: F) -> F:
    """``--web-host HOST``: where ``--web-port`` binds."""
    return click.option(
        "--web-host",
        default="127.0.0.1",
        show_default=True,
        metavar="HOST",
        help="Address the web server binds; 0.0.0.0 only inside a container or behind a firewall.",
    )(f)


# -- old spellings -----------------------------------------------------------------------


class _HiddenArgument(click.Argument):
    """A positional argument left out of the usage line (an old spelling)."""

    def get_usage_pieces(self, ctx: click.Context) -> list[str]:
        return []


def renamed(old: str, new: str, dest: str, **kwargs: Any) -> Callable[[F], F]:
    """Accept the old spelling ``old`` of the option ``new`` (whose value goes to
    ``dest``) for one more release: hidden from --help, it prints ``OLD is deprecated:
    use NEW`` on stderr and stands in for ``new``; both at once is a usage error.

    ``old`` is an option (``--archive``) or, without dashes, a positional argument
    (``FILE``). ``kwargs`` go to the hidden parameter (give it ``new``'s type and
    callback). Apply it below ``@click.command``."""
    hidden = f"deprecated_{dest}"
    positional = not old.startswith("-")
    label = f"the {old} argument" if positional else old

    def decorate(f: F) -> F:
        @functools.wraps(f)
        def wrapper(*args: Any, **params: Any) -> Any:
            value = params.pop(hidden)
            if value is not None:
                ctx = click.get_current_context()
                if ctx.get_parameter_source(dest) is ParameterSource.COMMANDLINE:
                    raise click.UsageError(f"{label} is the old spelling of {new}: give {new} only")
                click.echo(f"{label} is deprecated: use {new}", err=True)
                params[dest] = value
            return f(*args, **params)

        if positional:
            param: click.Parameter = _HiddenArgument(
                [hidden], required=False, metavar=old, **kwargs
            )
        else:
            param = click.Option([old, hidden], hidden=True, default=None, **kwargs)
        wrapper.__click_params__ = [*getattr(f, "__click_params__", []), param]  # type: ignore[attr-defined]
        return wrapper

    return decorate


def require(value: Any, option: str) -> None:
    """A usage error if an option that is required (but has an old spelling, so click
    cannot require it) was not given."""
    if value is None:
        raise click.UsageError(f"Missing option '{option}'.")

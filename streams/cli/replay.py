"""``caretally replay``: billing per patient-month (or, with ``--alerts``, the alerts) from an
NDJSON or CSV log or the archive, offline."""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Iterable, Iterator
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import click
from pydantic import ValidationError

from streams.cli.exits import EXIT_BAD_LINES, fail
from streams.cli.options import (
    RuleBooks,
    as_of_option,
    format_option,
    input_format_option,
    input_option,
    no_progress_option,
    output_option,
    rules_option,
)
from streams.cli.output import output_stream
from streams.cli.progress import ProgressBar, wanted

if TYPE_CHECKING:
    from projections.rules import RuleCatalog
    from streams.files.logfile import Line
    from streams.ingest.sources import Source


def parse_day(_ctx: click.Context, _param: click.Parameter, value: str | None) -> date | None:
    """``--today DATE``: a calendar day, ``YYYY-MM-DD``."""
    if value is None:
        return None
    try:
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
            raise ValueError(value)
        return date.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not a date; write YYYY-MM-DD, e.g. 2025-03-26"
        ) from None


@click.command(
    short_help="Replay an event log or the archive offline: billing per patient-month, or alerts."
)
@input_option(
    "an NDJSON (one wire-contract event per line) or CSV file in log order, plain or "
    "gzip-compressed, - for stdin; or the Parquet archive written by `caretally archive` "
    "(its directory or one of its files).",
    required=True,
    type=click.Path(exists=True, allow_dash=True, path_type=Path),
)
@input_format_option
@as_of_option
@format_option(
    ("json", "table", "csv"),
    "json",
    "json: one object per line (with --alerts, each as on care.alerts.v1); csv (with a header "
    "row); table: human-readable.",
)
@output_option
@click.option(
    "--alerts",
    is_flag=True,
    help="Print the alerts the events raise instead of billing: each exactly as the worker "
    "puts it on care.alerts.v1 (same alert_id, kind, patient-month, code and text, "
    "staff_overlap and late_activity included), in log order.",
)
@click.option(
    "--today",
    callback=parse_day,
    metavar="DATE",
    help="With --alerts: after the replay, run the worker's daily threshold_approaching "
    "sweep as on DATE (YYYY-MM-DD, the practices' local day) over the month containing "
    "it. Without it no threshold_approaching alert is printed.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="Archive only, billing only (not with --alerts): processes sharing the replay "
    "(each takes a share of the patients). "
    "Default: one per CPU.",
)
@rules_option
@no_progress_option
def replay(
    input_path: Path,
    input_format: str,
    as_of: datetime | None,
    fmt: str,
    output: Path | None,
    alerts: bool,
    today: date | None,
    workers: int | None,
    rules: RuleBooks,
    no_progress: bool,
) -> None:
    """Replay events offline (no broker) and print billing per patient-month, or alerts.

    Billing: one line per patient-month, sorted by org, patient, month:
    minutes per program, billable codes and units, blocked codes with reasons,
    flags (docs/rules.md §6.3) and the estimated national payment. With --as-of,
    months that had not begun at TS are left out.

    A file (or stdin) is folded event by event. The Parquet archive is scanned by
    DuckDB (log order, idempotency, current activity versions) and each patient's
    record goes through the same accounting and rules; both give the same lines.

    With --alerts, the alerts the events raise, in log order, each as the worker sends
    it to care.alerts.v1 (the same alert_id, kind, patient-month, code and text): which
    alerts fired, after which event (cause_event_id), and why (detail). The file or
    the archive (in its canonical order) is folded by the worker's own fold, one
    event at a time; --as-of leaves out events recorded after TS. The clock-driven
    threshold_approaching comes only with --today DATE: the worker's daily sweep, run
    once after the replay as on that day.

    With --rules DIR, every month is evaluated with the rule books in DIR instead of
    the shipped ones (a draft tried on real logs before it ships).

    Bad lines (or CSV rows) are reported on stderr with their line number and skipped;
    the exit code is 3 if there were any, 0 otherwise.

    \b
    Examples:
      caretally replay --input events.ndjson
      caretally replay --input events.ndjson --format table
      caretally replay --input events.ndjson --as-of 2025-04-01T00:00:00Z --format csv
      caretally replay --input events.csv.gz --format table
      my-ehr-export | caretally replay --input - --as-of 2025-04-01T00:00:00Z
      caretally replay --input data/archive --format table --output billing.txt
      caretally replay --alerts --input events.ndjson --format table
      caretally replay --alerts --input data/archive --as-of 2025-04-01T00:00:00Z --format csv
      caretally replay --alerts --input events.ndjson --today 2025-03-26
      caretally replay --input events.ndjson --rules drafts/ --format table
    """
    from streams.archive.store import is_archive

    if today is not None and not alerts:
        raise click.UsageError(
            "--today is the day of the threshold_approaching sweep, which only --alerts "
            "runs: add --alerts, or leave --today out"
        )
    if alerts and workers is not None:
        raise click.UsageError(
            "--workers shares the billing replay of an archive; --alerts folds the events "
            "in log order in one process: leave --workers out"
        )
    show = wanted(no_progress)
    catalog = rules.catalog
    archive = is_archive(input_path)
    if not archive and input_path.is_dir():
        raise click.UsageError(
            f"{input_path} is a directory but not an archive (no _committed/ or org=*/ in it)"
        )
    if alerts:
        # json and csv are written as the events are read: no bar over them on a terminal
        show = show and (output is not None or fmt == "table" or not sys.stdout.isatty())
        if archive:
            _alerts_of_archive(input_path, as_of, today, fmt, output, show, catalog)
        else:
            _alerts_of_log(str(input_path), input_format, as_of, today, fmt, output, show, catalog)
        return
    if archive:
        _replay_archive(input_path, as_of, fmt, output, workers, show, catalog)
        return
    _replay_log(str(input_path), input_format, as_of, fmt, output, show, catalog)


def _replay_log(
    path: str,
    input_format: str,
    as_of: datetime | None,
    fmt: str,
    output: Path | None,
    show: bool,
    catalog: RuleCatalog,
) -> None:
    from projections.engine import billing
    from streams.files.logfile import BadLine, fold_lines
    from streams.ingest.sources import DecompressedTooLarge
    from streams.worker.heap import tune_for_large_heap

    with contextlib.ExitStack() as stack:
        source, lines = _open_lines(path, input_format, stack)
        bar, lines = _progress(source, lines, show, stack)

        def report(bad: BadLine) -> None:
            bar.say(f"{source.name}:{bad.line}: rejected: {bad.reason}")

        tune_for_large_heap()
        try:
            ledger, stats = fold_lines(lines, as_of=as_of, on_bad=report)
        except DecompressedTooLarge as exc:
            fail(f"{source.name}: {exc}")
        except (OSError, EOFError) as exc:
            fail(f"reading {source.name} failed: {exc}")
    if stats.lines == 0:
        click.echo(f"warning: {source.name} holds no events", err=True)
    _write_views((b.view() for b in billing(ledger, as_of=as_of, catalog=catalog)), fmt, output)
    click.echo(
        f"replayed {stats.lines} line(s): {stats.applied} applied, {stats.duplicates} duplicate, "
        f"{stats.skipped_as_of} after --as-of, {stats.bad} rejected",
        err=True,
    )
    if stats.bad:
        sys.exit(EXIT_BAD_LINES)


def _replay_archive(
    path: Path,
    as_of: datetime | None,
    fmt: str,
    output: Path | None,
    workers: int | None,
    show: bool,
    catalog: RuleCatalog,
) -> None:
    from streams.archive.replay import replay_views

    with ProgressBar("replaying the archive", show):  # of unknown length: it pulses
        views, stats = replay_views(path, as_of=as_of, workers=workers, catalog=catalog)
    _write_views(views, fmt, output)
    if stats.applied == 0:
        click.echo(f"warning: the archive at {path} holds no events", err=True)
    click.echo(
        f"replayed the archive: {stats.applied} event(s), {stats.patients} patient(s), "
        f"{stats.patient_months} patient-month(s)",
        err=True,
    )
    if stats.over_limit:
        click.echo(
            f"rejected {stats.over_limit} event(s): over_limit (their patient-month already "
            "held the most activity versions or readings one may have)",
            err=True,
        )
        sys.exit(EXIT_BAD_LINES)


def _write_views(views: Iterable[dict[str, Any]], fmt: str, output: Path | None) -> None:
    """Every line held to the published model first (``schemas.views.billing_line``)."""
    from schemas.views import billing_line, contract_fields
    from streams.render.views import write_csv, write_json_lines, write_table

    def checked(view: dict[str, Any]) -> dict[str, Any]:
        billing_line(view)
        return view

    views = map(checked, views)
    try:
        with output_stream(output, f"{fmt} billing") as out:
            if fmt == "json":
                write_json_lines(views, out)
            elif fmt == "csv":
                write_csv(views, out)
            else:
                write_table(views, out)
    except ValidationError as exc:  # a bug of ours, named by its fields (never values)
        if output is not None and output.is_file():
            output.unlink()  # no half-written --output
        fields = contract_fields(exc)
        fail(
            f"a billing line does not match the published contract ({fields}): a bug of "
            "caretally, please report it; the output is incomplete"
            + ("" if output is None else f" and {output} was removed")
        )


def _alerts_of_log(
    path: str,
    input_format: str,
    as_of: datetime | None,
    today: date | None,
    fmt: str,
    output: Path | None,
    show: bool,
    catalog: RuleCatalog,
) -> None:
    from streams.files.logfile import BadLine
    from streams.ingest.sources import DecompressedTooLarge
    from streams.worker.alert_replay import AlertStats, replay_alerts

    stats = AlertStats()
    with contextlib.ExitStack() as stack:
        source, lines = _open_lines(path, input_format, stack)
        out = stack.enter_context(output_stream(output, f"{fmt} alerts"))  # closed after the bar
        bar, lines = _progress(source, lines, show, stack)

        def report(bad: BadLine) -> None:
            bar.say(f"{source.name}:{bad.line}: rejected: {bad.reason}")

        values = replay_alerts(_reading(lines), as_of, today, report, stats, catalog)
        try:
            _write_alerts(values, fmt, out)  # as the lines are read
        except _ReadFailed as failed:
            if isinstance(failed.error, DecompressedTooLarge):
                fail(f"{source.name}: {failed.error}")
            fail(f"reading {source.name} failed: {failed.error}")
    if stats.records == 0:
        click.echo(f"warning: {source.name} holds no events", err=True)
    click.echo(
        f"replayed {stats.records} line(s): {stats.applied} applied, {stats.duplicates} "
        f"duplicate, {stats.skipped_as_of} after --as-of, {stats.bad} rejected; "
        f"{stats.alerts} alert(s)",
        err=True,
    )
    if stats.bad:
        sys.exit(EXIT_BAD_LINES)


def _alerts_of_archive(
    path: Path,
    as_of: datetime | None,
    today: date | None,
    fmt: str,
    output: Path | None,
    show: bool,
    catalog: RuleCatalog,
) -> None:
    from streams.archive.store import read_raw
    from streams.files.logfile import BadLine
    from streams.worker.alert_replay import AlertStats, replay_alerts

    stats = AlertStats()
    with (
        output_stream(output, f"{fmt} alerts") as out,
        ProgressBar("replaying the archive", show) as bar,  # of unknown length: it pulses
    ):

        def report(bad: BadLine) -> None:
            bar.say(f"{path}: archived event {bad.line} (canonical order): rejected: {bad.reason}")

        records = enumerate(read_raw(path, as_of=as_of), 1)  # recorded at or before as_of
        _write_alerts(replay_alerts(records, as_of, today, report, stats, catalog), fmt, out)
    if stats.records == 0:
        known = " recorded at or before --as-of" if as_of is not None else ""
        click.echo(f"warning: the archive at {path} holds no events{known}", err=True)
    click.echo(
        f"replayed the archive: {stats.records} event(s): {stats.applied} applied, "
        f"{stats.duplicates} duplicate, {stats.bad} rejected; {stats.alerts} alert(s)",
        err=True,
    )
    if stats.bad:
        sys.exit(EXIT_BAD_LINES)


def _open_lines(
    path: str, input_format: str, stack: contextlib.ExitStack[bool | None]
) -> tuple[Source, Iterator[Line]]:
    """The input file (or stdin) and its event lines; unreadable input is a usage error."""
    from streams.ingest.csv_events import CsvHeaderError
    from streams.ingest.sources import NotEvents, event_lines, open_source

    try:
        source = open_source(path, stack)
        return source, event_lines(source, input_format)
    except CsvHeaderError as exc:
        raise click.UsageError(f"{path}: CSV header: {exc}") from None
    except NotEvents as exc:
        raise click.UsageError(f"{path}: {exc}") from None
    except (OSError, EOFError) as exc:
        raise click.UsageError(f"cannot read {path}: {exc}") from None


def _progress(
    source: Source, lines: Iterator[Line], show: bool, stack: contextlib.ExitStack[bool | None]
) -> tuple[ProgressBar, Iterator[Line]]:
    """A progress bar over the input's bytes, and the lines that move it."""
    from streams.files.logfile import reporting

    label = f"replaying {Path(source.name).name}"
    bar = stack.enter_context(ProgressBar(label, show, source.size, "bytes"))
    if show and source.position is not None:
        lines = reporting(lines, source.position, bar.update)
    return bar, lines


class _ReadFailed(Exception):
    """Reading the input failed (not writing the output, which goes on meanwhile)."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


def _reading(lines: Iterable[Line]) -> Iterator[Line]:
    """``lines``, with an error in reading them raised as :class:`_ReadFailed`."""
    from streams.ingest.sources import DecompressedTooLarge

    try:
        yield from lines
    except (DecompressedTooLarge, OSError, EOFError) as exc:
        raise _ReadFailed(exc) from exc


def _write_alerts(values: Iterator[bytes], fmt: str, out: TextIO) -> None:
    """Write the alerts as they come (the table: once all are in)."""
    from streams.render.alerts import write_csv, write_json_lines, write_table

    if fmt == "json":
        write_json_lines(values, out)
    elif fmt == "csv":
        write_csv(values, out)
    else:
        write_table(values, out)

"""``caretally replay``: billing per patient-month from an NDJSON log or the archive, offline."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from streams.cli.exits import EXIT_BAD_LINES, fail
from streams.cli.options import (
    as_of_option,
    format_option,
    input_format_option,
    input_option,
    no_progress_option,
    output_option,
)
from streams.cli.output import output_stream
from streams.cli.progress import ProgressBar, wanted


@click.command(short_help="Replay an event log or the archive offline: billing per patient-month.")
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
    ("json", "table", "csv"), "json", "json: one object per line; csv; table: human-readable."
)
@output_option
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="Archive only: processes sharing the replay (each takes a share of the patients). "
    "Default: one per CPU.",
)
@no_progress_option
def replay(
    input_path: Path,
    input_format: str,
    as_of: datetime | None,
    fmt: str,
    output: Path | None,
    workers: int | None,
    no_progress: bool,
) -> None:
    """Replay events offline (no broker) and print billing per patient-month.

    One line per patient-month, sorted by org, patient, month:
    minutes per program, billable codes and units, blocked codes with reasons,
    flags (docs/rules.md §6.3) and the estimated national payment. With --as-of,
    months that had not begun at TS are left out.

    A file (or stdin) is folded event by event. The Parquet archive is replayed by
    DuckDB (idempotency, activity versions, months, interval accounting in SQL) with
    the same rules in Python for every patient-month; both give the same lines.

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
    """
    from streams.archive.store import is_archive

    show = wanted(no_progress)
    if is_archive(input_path):
        _replay_archive(input_path, as_of, fmt, output, workers, show)
        return
    if input_path.is_dir():
        raise click.UsageError(
            f"{input_path} is a directory but not an archive (no _committed/ or org=*/ in it)"
        )
    _replay_log(str(input_path), input_format, as_of, fmt, output, show)


def _replay_log(
    path: str,
    input_format: str,
    as_of: datetime | None,
    fmt: str,
    output: Path | None,
    show: bool,
) -> None:
    from projections.engine import billing
    from streams.files.logfile import BadLine, fold_lines, reporting
    from streams.ingest.csv_events import CsvHeaderError
    from streams.ingest.sources import DecompressedTooLarge, event_lines, open_source

    with contextlib.ExitStack() as stack:
        try:
            source = open_source(path, stack)
            lines = event_lines(source, input_format)
        except CsvHeaderError as exc:
            raise click.UsageError(f"{path}: CSV header: {exc}") from None
        except (OSError, EOFError) as exc:
            raise click.UsageError(f"cannot read {path}: {exc}") from None
        label = f"replaying {Path(source.name).name}"
        bar = stack.enter_context(ProgressBar(label, show, source.size, "bytes"))
        if show and source.position is not None:
            lines = reporting(lines, source.position, bar.update)

        def report(bad: BadLine) -> None:
            bar.say(f"{source.name}:{bad.line}: rejected: {bad.reason}")

        try:
            ledger, stats = fold_lines(lines, as_of=as_of, on_bad=report)
        except DecompressedTooLarge as exc:
            fail(f"{source.name}: {exc}")
        except (OSError, EOFError) as exc:
            fail(f"reading {source.name} failed: {exc}")
    if stats.lines == 0:
        click.echo(f"warning: {source.name} holds no events", err=True)
    _write_views((b.view() for b in billing(ledger, as_of=as_of)), fmt, output)
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
) -> None:
    from streams.archive.replay import replay_views

    with ProgressBar("replaying the archive", show):  # of unknown length: it pulses
        views, stats = replay_views(path, as_of=as_of, workers=workers)
    _write_views(views, fmt, output)
    if stats.applied == 0:
        click.echo(f"warning: the archive at {path} holds no events", err=True)
    click.echo(
        f"replayed the archive: {stats.applied} event(s), {stats.patient_months} "
        f"patient-month(s) ({stats.sql_accounted} accounted in SQL, {stats.core_accounted} "
        "by the core)",
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
    from streams.render.views import write_csv, write_json_lines, write_table

    with output_stream(output, f"{fmt} billing") as out:
        if fmt == "json":
            write_json_lines(views, out)
        elif fmt == "csv":
            write_csv(views, out)
        else:
            write_table(views, out)

"""``caretally audit``: one patient-month as an auditor sees it, from the archive or a log.

The report is built by the pure :func:`projections.audit.audit_month`; this module only
reads events (the Parquet archive through DuckDB, or a file in line order) and
writes the chosen format. Patient identifiers are PHI: nothing here logs them, and
the error messages do not repeat them.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import click

from projections.audit import AuditNotFound, AuditReport, audit_month
from schemas.events import Event
from streams.cli.exits import EXIT_BAD_LINES, EXIT_FAILED, fail
from streams.cli.options import (
    ARCHIVE_ENV,
    RuleBooks,
    archive_input_option,
    as_of_option,
    format_option,
    input_format_option,
    month_option,
    no_progress_option,
    org_option,
    output_option,
    rules_option,
)
from streams.cli.output import output_stream
from streams.cli.progress import ProgressBar, wanted


class InputError(Exception):
    """An input that cannot be read (exit code 1, message on stderr)."""


def read_events(
    path: Path,
    org_id: str,
    patient_id: str,
    as_of: datetime | None,
    bad: list[str],
    input_format: str = "auto",
    on_progress: Callable[[int, int | None], None] | None = None,
) -> Iterator[tuple[Event, bytes]]:
    """(event, raw bytes) in log order: the archive's canonical order (already narrowed to
    the patient and the org's practice-wide events) or a file's (stdin's) line order.
    Rejected lines are appended to ``bad`` as ``name:line: rejected: reason``;
    ``on_progress`` is given the bytes of a file read so far, and its size."""
    from schemas.events import EventRejected, parse_event
    from streams.archive import store as archive_store

    if archive_store.is_archive(path):
        for raw in archive_store.read_raw(path, as_of=as_of, org_id=org_id, patient_id=patient_id):
            try:
                yield parse_event(raw), raw
            except EventRejected as exc:  # the archive holds validated events only
                raise InputError(
                    f"{path}: an archived event does not parse: {exc.reason}"
                ) from None
        return
    if path.is_dir():
        raise InputError(f"{path} is a folder but not a caretally archive")
    from streams.files.logfile import reporting
    from streams.ingest.csv_events import CsvHeaderError
    from streams.ingest.sources import DecompressedTooLarge, NotEvents, event_lines, open_source

    with contextlib.ExitStack() as stack:
        try:
            source = open_source(str(path), stack)
            lines = event_lines(source, input_format)
        except CsvHeaderError as exc:
            raise InputError(f"{path}: CSV header: {exc}") from None
        except NotEvents as exc:
            raise InputError(f"{path}: {exc}") from None
        except (OSError, EOFError) as exc:
            raise InputError(f"cannot read {path}: {exc}") from None
        if on_progress is not None and source.position is not None:
            position, size = source.position, source.size
            lines = reporting(lines, position, lambda done: on_progress(done, size))
        try:
            for number, line in lines:
                if isinstance(line, str):
                    bad.append(f"{source.name}:{number}: rejected: {line}")
                    continue
                try:
                    yield parse_event(line), line
                except EventRejected as exc:
                    bad.append(f"{source.name}:{number}: rejected: {exc.reason}")
        except DecompressedTooLarge as exc:
            raise InputError(f"{source.name}: {exc}") from None


@click.command(short_help="Audit one patient-month: every minute, what counted and why not.")
@archive_input_option(
    "the Parquet archive (a folder, or one of its .parquet files), or an NDJSON or CSV "
    "file in log order, plain or gzip-compressed, - for stdin.",
    allow_dash=True,
)
@input_format_option
@org_option
@click.option("--patient", "patient_id", required=True, metavar="ID", help="The patient_id.")
@month_option()
@as_of_option
@format_option(
    ("table", "json", "csv", "html"),
    "table",
    "table: for the terminal; json: one document; csv: one row per activity; "
    "html: one printable page.",
)
@output_option
@rules_option
@no_progress_option
def audit(
    input_path: Path,
    input_format: str,
    org_id: str,
    patient_id: str,
    month: str,
    as_of: datetime | None,
    fmt: str,
    output: Path | None,
    rules: RuleBooks,
    no_progress: bool,
) -> None:
    """Rebuild one patient-month from the log, as an auditor needs it.

    Every activity (amended and voided versions too) with who, program, billing
    practitioner, start, end, minutes in the month, minutes counted and, for each
    minute not counted, why: face-to-face, overlap, double count, duplicate event,
    non-clinical staff, before consent, inpatient stay, voided (with the void's
    reason) or amended (from what, and what changed). Then the documentation on
    record (consents, care plans, conditions, enrollments, visits, stays, device
    reading days), the codes billed and blocked with reasons, the flags, the rule
    year with the source ids of the rules applied, and the estimated payment.

    The counted minutes are those of `caretally replay` for the same input; with
    --rules DIR the month is evaluated with the rule books in DIR, as `caretally
    replay --rules DIR` evaluates it.

    \b
    Formats:
      table  rich tables on stdout
      json   one document; keys documented in streams/render/audit.py
      csv    one row per activity version: minutes in month, counted, one
             excluded_* column per reason (minutes), details, void reason,
             amended-from versions
      html   one self-contained page (inline CSS, no external assets) to print

    Exit codes: 0 done; 1 unknown patient or month, or unreadable input; 3 the
    report was written but some lines of a file were rejected (listed on stderr).

    \b
    Examples:
      caretally audit --org practice-17 --patient P-000123 --month 2025-03
      caretally audit --input events.ndjson --org practice-17 --patient P-000123 \\
          --month 2025-03 --as-of 2025-04-02T00:00:00Z --format json
      caretally audit --org practice-17 --patient P-000123 --month 2025-03 \\
          --format html --output audit-2025-03.html
    """
    bad: list[str] = []
    try:
        if str(input_path) != "-" and not input_path.exists():
            raise InputError(
                f"no archive or log at {input_path} (give --input FILE|FOLDER or set {ARCHIVE_ENV})"
            )
        with ProgressBar("reading events", wanted(no_progress), unit="bytes") as bar:
            report = audit_month(
                read_events(input_path, org_id, patient_id, as_of, bad, input_format, bar.update),
                org_id,
                patient_id,
                month,
                as_of=as_of,
                catalog=rules.catalog,
            )
    except AuditNotFound as exc:
        for line in bad:
            click.echo(line, err=True)
        fail(f"{exc} (input: {input_path})", EXIT_FAILED)
    except InputError as exc:
        fail(str(exc), EXIT_FAILED)
    for line in bad:
        click.echo(line, err=True)
    _write(report, fmt, output, str(input_path))
    if bad:
        click.echo(f"{len(bad)} line(s) of {input_path} rejected and skipped", err=True)
        sys.exit(EXIT_BAD_LINES)


def _write(report: AuditReport, fmt: str, output: Path | None, source: str) -> None:
    from streams.render import audit as audit_render

    with output_stream(output, f"{fmt} report") as stream:
        if fmt == "json":
            audit_render.write_json(report, stream, source)
        elif fmt == "csv":
            audit_render.write_csv(report, stream)
        elif fmt == "html":
            audit_render.write_html(report, stream, source)
        else:
            audit_render.write_table(report, stream, source)

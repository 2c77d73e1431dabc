"""``caretally audit``: one patient-month as an auditor sees it, from the archive or a log.

The report is built by the pure :func:`projections.audit.audit_month`; this module only
reads events (the Parquet archive through DuckDB, or an NDJSON log in file order) and
writes the chosen format. Patient identifiers are PHI: nothing here logs them, and
the error messages do not repeat them.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path
from typing import TextIO

import click

from projections.audit import AuditNotFound, AuditReport, audit_month
from schemas.events import Event
from streams.cli.options import parse_as_of, parse_month, writable_file

ARCHIVE_ENV = "CARETALLY_ARCHIVE"
EXIT_NOT_FOUND = 1
EXIT_BAD_LINES = 3  # as `caretally replay`: the report is printed, some lines were skipped
GZIP_MAGIC = b"\x1f\x8b"


class InputError(Exception):
    """An input that cannot be read (exit code 1, message on stderr)."""


def read_events(
    path: Path, org_id: str, patient_id: str, as_of: datetime | None, bad: list[str]
) -> Iterator[tuple[Event, bytes]]:
    """(event, raw bytes) in log order: the archive's canonical order (already narrowed to
    the patient and the org's practice-wide events) or an NDJSON file's line order.
    Rejected NDJSON lines are appended to ``bad`` as ``path:line: rejected: reason``."""
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
    from streams.files.logfile import iter_lines, too_large_reason

    def too_large(number: int) -> None:
        bad.append(f"{path}:{number}: rejected: {too_large_reason()}")

    with open(path, "rb") as stream:
        if stream.read(2) == GZIP_MAGIC:
            raise InputError(f"{path} is gzip-compressed; decompress it first (gunzip -k FILE)")
        stream.seek(0)
        for number, line in iter_lines(stream, on_too_large=too_large):
            try:
                yield parse_event(line), line
            except EventRejected as exc:
                bad.append(f"{path}:{number}: rejected: {exc.reason}")


@click.command(short_help="Audit one patient-month: every minute, what counted and why not.")
@click.option(
    "--input",
    "input_path",
    type=click.Path(path_type=Path),
    default=Path("data/archive"),
    envvar=ARCHIVE_ENV,
    show_default=True,
    show_envvar=True,
    help="The Parquet archive (a folder, or one of its .parquet files) or an NDJSON log.",
)
@click.option("--org", "org_id", required=True, metavar="ORG", help="The practice (org_id).")
@click.option("--patient", "patient_id", required=True, metavar="ID", help="The patient_id.")
@click.option(
    "--month", required=True, callback=parse_month, metavar="YYYY-MM", help="Local month."
)
@click.option(
    "--as-of",
    "as_of",
    callback=parse_as_of,
    metavar="TS",
    help="Only events recorded at or before TS (ISO-8601 with offset): what was known "
    "then, as `caretally replay --as-of`.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json", "csv", "html"]),
    default="table",
    show_default=True,
    help="table: for the terminal; json: one document; csv: one row per activity; "
    "html: one printable page.",
)
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    callback=writable_file,
    metavar="FILE",
    help="Write the report to FILE instead of stdout.",
)
def audit(
    input_path: Path,
    org_id: str,
    patient_id: str,
    month: str,
    as_of: datetime | None,
    fmt: str,
    output: Path | None,
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

    The counted minutes are those of `caretally replay` for the same input.

    \b
    Formats:
      table  rich tables on stdout
      json   one document; keys documented in streams/render/audit.py
      csv    one row per activity version: minutes in month, counted, one
             excluded_* column per reason (minutes), details, void reason,
             amended-from versions
      html   one self-contained page (inline CSS, no external assets) to print

    Exit codes: 0 done; 1 unknown patient or month, or unreadable input; 3 the
    report was written but some NDJSON lines were rejected (listed on stderr).

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
        if not input_path.exists():
            raise InputError(
                f"no archive or log at {input_path} (give --input FILE|FOLDER or set {ARCHIVE_ENV})"
            )
        report = audit_month(
            read_events(input_path, org_id, patient_id, as_of, bad),
            org_id,
            patient_id,
            month,
            as_of=as_of,
        )
    except AuditNotFound as exc:
        for line in bad:
            click.echo(line, err=True)
        click.echo(f"error: {exc} (input: {input_path})", err=True)
        sys.exit(EXIT_NOT_FOUND)
    except InputError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_NOT_FOUND)
    for line in bad:
        click.echo(line, err=True)
    _write(report, fmt, output, str(input_path))
    if bad:
        click.echo(f"{len(bad)} line(s) of {input_path} rejected and skipped", err=True)
        sys.exit(EXIT_BAD_LINES)


def _write(report: AuditReport, fmt: str, output: Path | None, source: str) -> None:
    from streams.render import audit as audit_render

    with ExitStack() as stack:
        stream: TextIO = (
            stack.enter_context(open(output, "w", encoding="utf-8", newline=""))
            if output
            else sys.stdout
        )
        if fmt == "json":
            audit_render.write_json(report, stream, source)
        elif fmt == "csv":
            audit_render.write_csv(report, stream)
        elif fmt == "html":
            audit_render.write_html(report, stream, source)
        else:
            audit_render.write_table(report, stream, source)
        stream.flush()
    if output:
        click.echo(f"wrote {fmt} report to {output}", err=True)

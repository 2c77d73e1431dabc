"""``caretally``: the command line (a stable contract: tests and tools drive it)."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

import click
import orjson

from projections.engine import billing
from schemas.events import EVENT_TYPES, event_json_schemas
from streams.cli.options import parse_as_of, parse_month, writable_file
from streams.files.logfile import BadLine, fold_file
from streams.render.views import write_csv, write_json_lines, write_table

EXIT_BAD_LINES = 3
GZIP_MAGIC = b"\x1f\x8b"


@click.group(
    context_settings={"help_option_names": ["-h", "--help"]},
    invoke_without_command=True,
)
@click.version_option(package_name="caretally")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """caretally: an event-sourced time ledger for Medicare care-management billing.

    Every minute of care work is an immutable event (wire contract v1, see
    `caretally schema`); caretally turns them into billable CPT codes per patient
    and calendar month, with the reasons for anything it will not bill.

    \b
    Start here:
      caretally demo                                   a sample practice, live alerts
      caretally demo --save-log sample.ndjson          ... and keep its events
      caretally replay --input sample.ndjson --format table
    """
    if ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())


@cli.command(short_help="Replay an event log or the archive offline: billing per patient-month.")
@click.option(
    "--input",
    "input_path",
    required=True,
    type=click.Path(exists=True, path_type=Path),
    help="NDJSON event log (one wire-contract event per line, in log order), or the "
    "Parquet archive written by `caretally archive` (its directory or one of its files).",
)
@click.option(
    "--as-of",
    "as_of",
    callback=parse_as_of,
    metavar="TS",
    help="Only events recorded at or before TS (ISO-8601 with offset): what was known then. "
    "Months that had not begun at TS are left out.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["json", "table", "csv"]),
    default="json",
    show_default=True,
    help="json: one object per line; csv; table: human-readable.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Archive only: processes sharing the replay (each takes a share of the patients). "
    "Default: one per CPU.",
)
def replay(input_path: Path, as_of: datetime | None, fmt: str, workers: int | None) -> None:
    """Replay events offline (no broker) and print billing per patient-month.

    One line per patient-month, sorted by org, patient, month:
    minutes per program, billable codes and units, blocked codes with reasons,
    flags (docs/rules.md §6.3) and the estimated national payment.

    An NDJSON log is folded event by event. The Parquet archive is replayed by
    DuckDB (idempotency, activity versions, months, interval accounting in SQL) with
    the same rules in Python for every patient-month; both give the same lines.

    Bad NDJSON lines are reported on stderr with their line number and skipped; the
    exit code is 3 if there were any, 0 otherwise.

    \b
    Examples:
      caretally replay --input events.ndjson
      caretally replay --input events.ndjson --format table
      caretally replay --input events.ndjson --as-of 2025-04-01T00:00:00Z --format csv
      caretally replay --input data/archive --format table
    """
    from streams.archive.store import is_archive

    if is_archive(input_path):
        _replay_archive(input_path, as_of, fmt, workers)
        return
    if input_path.is_dir():
        raise click.UsageError(
            f"{input_path} is a directory but not an archive (no _committed/ or org=*/ in it)"
        )
    with open(input_path, "rb") as probe:
        if probe.read(2) == GZIP_MAGIC:
            raise click.UsageError(
                f"{input_path} is gzip-compressed; decompress it first (gunzip -k FILE)"
            )

    def report(bad: BadLine) -> None:
        click.echo(f"{input_path}:{bad.line}: rejected: {bad.reason}", err=True)

    ledger, stats = fold_file(input_path, as_of=as_of, on_bad=report)
    if stats.lines == 0:
        click.echo(f"warning: {input_path} holds no events", err=True)
    _write_views((b.view() for b in billing(ledger, as_of=as_of)), fmt)
    click.echo(
        f"replayed {stats.lines} line(s): {stats.applied} applied, {stats.duplicates} duplicate, "
        f"{stats.skipped_as_of} after --as-of, {stats.bad} rejected",
        err=True,
    )
    if stats.bad:
        sys.exit(EXIT_BAD_LINES)


def _replay_archive(path: Path, as_of: datetime | None, fmt: str, workers: int | None) -> None:
    from streams.archive.replay import replay_views

    views, stats = replay_views(path, as_of=as_of, workers=workers)
    _write_views(views, fmt)
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


def _write_views(views: Iterable[dict[str, Any]], fmt: str) -> None:
    out = sys.stdout
    if fmt == "json":
        write_json_lines(views, out)
    elif fmt == "csv":
        write_csv(views, out)
    else:
        write_table(views, out)
    out.flush()


@cli.command(short_help="Print the JSON Schema of each wire-contract event type.")
@click.option(
    "--type",
    "event_type",
    default=None,
    type=click.Choice(sorted(EVENT_TYPES)),
    help="Print only this event type's schema, as a standalone JSON Schema document.",
)
def schema(event_type: str | None) -> None:
    """Print the JSON Schema of every wire-contract v1 event type (hand it to an EHR vendor).

    Without --type: one object keyed by event type. With --type: that type's schema alone.

    \b
    Examples:
      caretally schema > caretally-events-v1.json
      caretally schema --type activity.logged
    """
    schemas = event_json_schemas()
    doc = schemas if event_type is None else schemas[event_type]
    click.echo(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())


@cli.command(short_help="Run the main job: broker, worker, a month of traffic, live alerts.")
@click.option(
    "--patients",
    default=40,
    show_default=True,
    type=click.IntRange(min=1, max=5000),
    help="Patients in the sample practice.",
)
@click.option(
    "--month",
    default="2025-03",
    show_default=True,
    callback=parse_month,
    help="Month of traffic (YYYY-MM).",
)
@click.option("--seed", default=7, show_default=True, help="Seed of the synthetic traffic.")
@click.option(
    "--feed-seconds",
    default=25.0,
    show_default=True,
    type=click.FloatRange(min=0.0, max=600.0),
    help="Spread the traffic over this many seconds (0: as fast as possible).",
)
@click.option(
    "--bootstrap",
    metavar="HOST:PORT",
    help="Use this Kafka instead of the embedded broker [default: $KAFKA_BOOTSTRAP].",
)
@click.option(
    "--offline",
    is_flag=True,
    help="No broker: step the pure core in-process (the same alerts and summary).",
)
@click.option(
    "--pace",
    default=0.0,
    show_default=True,
    type=click.FloatRange(min=0.0, max=5.0),
    help="With --offline: seconds to pause after each printed alert.",
)
@click.option(
    "--save-log",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    callback=writable_file,
    help="Also write the generated events as NDJSON (replay it with `caretally replay`).",
)
@click.option(
    "--archive",
    "archive_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    metavar="DIR",
    help="Where the archiver writes the demo's log (a new or empty folder) "
    "[default: data/demo-archive/<the run's topic prefix>].",
)
def demo(
    patients: int,
    month: str,
    seed: int,
    feed_seconds: float,
    bootstrap: str | None,
    offline: bool,
    pace: float,
    save_log: Path | None,
    archive_dir: Path | None,
) -> None:
    """Run the main job on a sample practice: a month of EHR traffic through the whole
    pipeline, live alerts, and the closing billing summary (codes, units, estimated
    payment, blocked reasons); then everything is shut down. About a minute.

    It uses the broker named by --bootstrap or $KAFKA_BOOTSTRAP, else one answering at
    127.0.0.1:9092, else starts the embedded broker (Tansu, memory only, on a free
    loopback port); then a worker and the archiver; the traffic goes in
    through care.ingress.v1 (topics get a fresh demo-... prefix), alerts are read off
    care.alerts.v1, and the summary off care.billing.v1, checked against an offline
    replay of the same events. Alerts name a short alert id and a demo alias for the
    patient, never the patient identifier.

    \b
    Examples:
      caretally demo
      caretally demo --patients 100 --month 2026-01 --feed-seconds 40
      caretally demo --offline --save-log sample.ndjson && caretally replay --input sample.ndjson
    """
    from rich.console import Console

    console = Console(width=None if sys.stdout.isatty() else 120)
    if offline:
        from streams.demo.offline import run_demo

        run_demo(console, patients=patients, month=month, seed=seed, pace=pace, log_path=save_log)
        return
    from streams.demo.live import DemoError, run_live_demo
    from streams.kafka import bootstrap as bs
    from streams.kafka.broker import reachable

    address, named = bs.resolve(bootstrap)
    if not named and reachable(address):
        named = True  # a broker already answers at the default address: use it
        console.print(f"[dim]using the broker answering at {address}[/]")
    try:
        run_live_demo(
            console,
            patients=patients,
            month=month,
            seed=seed,
            feed_seconds=feed_seconds,
            bootstrap=address,
            bootstrap_named=named,
            log_path=save_log,
            archive_dir=archive_dir,
        )
    except DemoError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)


# Commands that live in modules of their own (each imports its heavy dependencies lazily).
# One line each; keep this block in alphabetical order.
# (registered commands)
from streams.cli.archive import archive  # noqa: E402
from streams.cli.audit import audit  # noqa: E402
from streams.cli.broker import broker  # noqa: E402
from streams.cli.close import close  # noqa: E402
from streams.cli.ingest import ingest  # noqa: E402
from streams.cli.restore import restore  # noqa: E402
from streams.cli.serve import keys, serve  # noqa: E402
from streams.cli.sql import sql  # noqa: E402
from streams.cli.worker import worker  # noqa: E402

for command in (archive, audit, broker, close, ingest, keys, restore, serve, sql, worker):
    cli.add_command(command)


def main() -> None:
    cli(prog_name="caretally")


if __name__ == "__main__":
    main()

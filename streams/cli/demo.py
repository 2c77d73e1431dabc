"""``caretally demo``: the main job on a sample practice (``streams.demo``)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from streams.cli.exits import fail
from streams.cli.kafka_options import KafkaOptions, kafka_options
from streams.cli.options import month_option, writable_file


@click.command(short_help="Run the main job: broker, worker, a month of traffic, live alerts.")
@click.option(
    "--patients",
    default=40,
    show_default=True,
    type=click.IntRange(min=1, max=5000),
    metavar="N",
    help="Patients in the sample practice.",
)
@month_option(default="2025-03")
@click.option(
    "--seed", default=7, show_default=True, metavar="N", help="Seed of the synthetic traffic."
)
@click.option(
    "--feed-seconds",
    default=25.0,
    show_default=True,
    type=click.FloatRange(min=0.0, max=600.0),
    metavar="SECONDS",
    help="Spread the traffic over this many seconds (0: as fast as possible).",
)
@kafka_options
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
    metavar="SECONDS",
    help="With --offline: seconds to pause after each printed alert.",
)
@click.option(
    "--save-log",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    callback=writable_file,
    metavar="FILE",
    help="Also write the generated events as NDJSON (replay it with `caretally replay`).",
)
@click.option(
    "--archive",
    "archive_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    metavar="DIR",
    help="Keep the archive the demo's archiver writes in DIR (a new or empty folder; "
    "read it back with `caretally replay --input DIR`) [default: a temporary folder, "
    "removed at the end].",
)
def demo(
    patients: int,
    month: str,
    seed: int,
    feed_seconds: float,
    kafka: KafkaOptions,
    offline: bool,
    pace: float,
    save_log: Path | None,
    archive_dir: Path | None,
) -> None:
    """Run the main job on a sample practice: a month of EHR traffic through the whole
    pipeline, live alerts, and the closing billing summary (codes, units, estimated
    payment, blocked reasons); then everything is shut down. About 30 seconds.

    It uses the broker named by --bootstrap, --kafka-config or $KAFKA_BOOTSTRAP, else
    one answering at 127.0.0.1:9092, else starts the embedded broker (Tansu, memory
    only, on a free loopback port); then a worker and the archiver; the traffic goes in
    through care.ingress.v1 (topics get a fresh demo-... prefix, after --topic-prefix),
    alerts are read off
    care.alerts.v1, and the summary off care.billing.v1, checked against an offline
    replay of the same events. Alerts name a short alert id and a demo alias for the
    patient, never the patient identifier.

    Nothing is left in the current folder unless asked: the worker's state and the
    archive live in a temporary folder (keep them with --save-log and --archive).

    \b
    Examples:
      caretally demo
      caretally demo --patients 100 --month 2026-01 --feed-seconds 40
      caretally demo --offline --month 2027-01   # priced with the provisional 2027 book
      caretally demo --offline --save-log sample.ndjson && caretally replay --input sample.ndjson
    """
    from rich.console import Console

    console = Console(width=None if sys.stdout.isatty() else 120)
    if offline:
        from streams.demo.offline import run_demo

        run_demo(console, patients=patients, month=month, seed=seed, pace=pace, log_path=save_log)
        return
    from streams.demo.live import DemoError, run_live_demo
    from streams.kafka.clients import connection_problem

    settings = kafka.settings()
    named = settings.bootstrap_named
    if not named and connection_problem(settings) is None:
        named = True  # a broker already answers at the default address: use it
        console.print(f"[dim]using the broker answering at {settings.bootstrap}[/]")
    try:
        run_live_demo(
            console,
            patients=patients,
            month=month,
            seed=seed,
            feed_seconds=feed_seconds,
            kafka=settings if named else None,
            topic_prefix=kafka.topics.prefix,
            log_path=save_log,
            archive_dir=archive_dir,
        )
    except DemoError as exc:
        fail(str(exc))

"""``caretally worker``: run the stream processors (see ``streams.worker.app``)."""

from __future__ import annotations

from pathlib import Path

import click

from streams.cli.exits import fail
from streams.cli.kafka_options import KafkaOptions, connect, kafka_options
from streams.cli.options import (
    RuleBooks,
    log_format_option,
    loglevel_option,
    partitions_option,
    rules_option,
    web_host_option,
    web_port_option,
)
from streams.kafka.topics import DEFAULT_PARTITIONS
from streams.worker.snapshots import DEFAULT_STATE_DIR


@click.command(short_help="Run the stream processors: validate, fold, alert.")
@kafka_options
@partitions_option(
    DEFAULT_PARTITIONS,
    "the log (care.events.v1), care.staff.v1 and a new care.ingress.v1 get this many.",
)
@click.option(
    "--app-id",
    default="caretally",
    show_default=True,
    metavar="ID",
    help="Consumer group and Faust app id; workers with one id share the work.",
)
@click.option(
    "--state-dir",
    type=click.Path(path_type=Path),
    metavar="DIR",
    default=DEFAULT_STATE_DIR,
    show_default=True,
    help="Where partition snapshots are kept, under a folder per app id and topic prefix "
    "(so two pipelines never share snapshots). Folders are created 0700; one that "
    "others can write, or that another user owns, is refused.",
)
@click.option(
    "--snapshot-interval",
    default=30.0,
    show_default=True,
    type=click.FloatRange(0.1),
    metavar="SECONDS",
    help="Seconds between snapshots of the fold state.",
)
@click.option(
    "--sweep-interval",
    default=60.0,
    show_default=True,
    type=click.FloatRange(0.1),
    metavar="SECONDS",
    help="Seconds between checks for a new practice-local day to sweep.",
)
@click.option(
    "--sweep-clock",
    type=click.Choice(["wall", "log"]),
    default="wall",
    show_default=True,
    help="The sweep's today: the wall clock, or the newest event time in the log "
    "(for replays and demos of past months).",
)
@click.option(
    "--role",
    type=click.Choice(["all", "gate", "fold"]),
    default="all",
    show_default=True,
    help="All of it in this process, or only the gate (ingress -> log) or only the fold "
    "(log -> billing, alerts, staff). Any number of gates and folds may run: workers "
    "with one --app-id share the partitions of each role (give each its own --state-dir "
    "and --web-port).",
)
@web_port_option(6066)
@web_host_option
@rules_option
@loglevel_option("warning")
@log_format_option()
def worker(
    kafka: KafkaOptions,
    partitions: int,
    app_id: str,
    state_dir: Path,
    snapshot_interval: float,
    sweep_interval: float,
    sweep_clock: str,
    role: str,
    web_port: int,
    web_host: str,
    rules: RuleBooks,
    loglevel: str,
    log_format: str,
) -> None:
    """Run the stream processors until Ctrl-C or SIGTERM.

    \b
    care.ingress.v1  -> validate, dedupe -> care.events.v1 | care.deadletter.v1
    care.events.v1   -> fold per patient -> care.billing.v1, care.alerts.v1
    care.staff.v1    -> staff_overlap alerts; a daily threshold_approaching sweep

    The topics are created if missing. State is rebuilt from snapshots in
    --state-dir and the log itself, so a worker can be killed at any moment.

    With --rules DIR the fold evaluates billing with the books in DIR (logged at
    startup with each year's fee source). The books are configuration: give every
    worker of one --app-id the same DIR. A snapshot folded with other books is not
    restored: its partitions are refolded from the log with these books.

    \b
    Exit status: 0 after Ctrl-C or SIGTERM; 1 when it cannot start (e.g. a
    topic's partition count does not fit --partitions); 3 when it stopped
    itself (the gate could not write a batch, or the log was recreated with
    another partition count): the reason is its last critical log line.

    \b
    Examples:
      caretally broker &                   # an embedded broker on 127.0.0.1:9092
      caretally worker
      KAFKA_BOOTSTRAP=kafka:9092 caretally worker --partitions 16
      caretally worker --role gate & caretally worker --role fold   # two cores
      caretally worker --rules /srv/caretally/rules-2027
    """
    from streams.worker.app import WorkerConfig, WorkerStartError, run
    from streams.worker.snapshots import UnsafeStateDir, private_dir

    kafka.settings()  # a usage error first
    topics = kafka.topics
    folder = state_dir / f"{app_id}{'@' + topics.prefix.rstrip('.') if topics.prefix else ''}"
    try:  # snapshots hold PHI and are read back: only this user may write (or read) them
        private_dir(folder)
    except (UnsafeStateDir, OSError) as exc:
        fail(str(exc))
    ctx = connect(kafka)
    cfg = WorkerConfig(
        kafka=ctx.settings,
        topics=topics,
        partitions=partitions,
        app_id=app_id,
        state_dir=folder,
        snapshot_interval=snapshot_interval,
        sweep_interval=sweep_interval,
        sweep_clock=sweep_clock,
        role=role,
        web_port=web_port or None,
        web_host=web_host,
        rules_dir=rules.directory,
    )
    try:
        run(cfg, loglevel=loglevel, log_format=log_format)
    except WorkerStartError as exc:
        fail(str(exc))

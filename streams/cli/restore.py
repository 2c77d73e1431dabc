"""``caretally restore``: re-publish an archive into an empty log (``streams.archive.restore``)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import click

from streams.cli.options import archive_option, bootstrap_option, prefix_option

EXIT_FAILED = 1
EXIT_NOT_EMPTY = 2


@click.command(short_help="Re-publish the Parquet archive into an empty broker's log.")
@archive_option("Archive directory to restore from.")
@bootstrap_option
@prefix_option
@click.option(
    "--partitions",
    default=None,
    type=click.IntRange(1),
    help="Partitions of the topics it creates [default: as many as the archived log had]. "
    "An existing log topic keeps its own.",
)
@click.option(
    "--force",
    is_flag=True,
    help="Append to a log topic that already holds records (they are not checked).",
)
@click.option(
    "--no-progress",
    is_flag=True,
    help="No progress bar (there is none unless stderr is a terminal).",
)
def restore(
    archive_dir: Path,
    bootstrap: str | None,
    topic_prefix: str | None,
    partitions: int | None,
    force: bool,
    no_progress: bool,
) -> None:
    """Re-publish an archive into care.events.v1 of an empty broker.

    The embedded broker keeps its log in memory; the archive (`caretally archive`)
    is what survives. This writes every archived event back exactly as the ingress
    gate wrote it: the same bytes and event ids, keyed org_id:patient_id, with the
    gate's idem/body headers, in the original order per patient, and each
    practice-wide event (practice.configured, month.closed) once to every partition
    at its original place. A worker started on the restored log then folds it to the
    same billing. Missing topics are created; the partition count may differ from
    the original's (start the worker with the same --partitions).

    With the same partition count the restored log is the original offset for
    offset; the archive then adopts it, and `caretally archive` continues into the
    same directory. Otherwise archive the restored log into a new directory.

    Exit code: 0 when restored, 2 if the log topic already holds records (without
    --force) or the directory is not an archive, 1 if the broker is unreachable or a
    send failed.

    \b
    Examples:
      caretally broker &                        # a fresh, empty embedded broker
      caretally restore                         # from ./data/archive
      caretally restore --archive /srv/archive --bootstrap kafka:9092 --partitions 16
      caretally restore --partitions 8 && caretally worker --partitions 8
    """
    from streams.archive.archiver import ArchiveError
    from streams.archive.restore import NotEmpty, RestoreError
    from streams.archive.restore import restore as run_restore
    from streams.kafka import bootstrap as bs
    from streams.kafka.broker import reachable, split_bootstrap
    from streams.kafka.topics import Topics

    address, _named = bs.resolve(bootstrap)
    try:
        split_bootstrap(address)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--bootstrap") from None
    if not archive_dir.is_dir():
        raise click.BadParameter(f"{archive_dir} does not exist", param_hint="--archive")
    if not reachable(address, timeout=2.0):
        click.echo(
            f"error: no Kafka broker answers at {address} "
            "(start one with `caretally broker`, or pass --bootstrap)",
            err=True,
        )
        sys.exit(EXIT_FAILED)
    logging.getLogger("kafka").setLevel(logging.CRITICAL)  # our errors say what failed
    topics = Topics.from_env(topic_prefix)
    progress = _Bar(not no_progress and sys.stderr.isatty())
    try:
        with progress as bar:
            stats = run_restore(
                address,
                topics,
                archive_dir,
                partitions=partitions,
                force=force,
                on_progress=bar.update,
            )
    except NotEmpty as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_NOT_EMPTY)
    except RestoreError as exc:
        if "is not an archive" in str(exc):
            raise click.BadParameter(str(exc), param_hint="--archive") from None
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_FAILED)
    except ArchiveError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_FAILED)
    click.echo(stats.summary(topics.events, address))
    if stats.rows == 0:
        click.echo(f"warning: {archive_dir} holds no archived events", err=True)
    if stats.adopted:
        click.echo(
            f"the restored log is the archived one offset for offset: `caretally archive "
            f"--archive {archive_dir}` continues this archive"
        )
    elif stats.identical:
        click.echo(
            f"the restored log is the archived one offset for offset, but {archive_dir} could "
            "not record it (read-only?): archive the restored log into a new directory"
        )
    elif stats.rows:
        why = (
            f"{stats.partitions} partition(s) instead of {stats.archive_partitions}"
            if stats.partitions != stats.archive_partitions
            else "the archive has gaps or repeats, or the log was not empty"
        )
        click.echo(
            f"offsets differ from the archive's ({why}): archive the restored log into a "
            "new directory"
        )
    click.echo(f"start the worker with --partitions {stats.partitions}")


class _Bar:
    """A rich progress bar on stderr (rows read of the archive), or nothing."""

    def __init__(self, show: bool) -> None:
        self.progress: Any = None
        self.task: Any = None
        if show:
            from rich.console import Console
            from rich.progress import Progress

            self.progress = Progress(console=Console(stderr=True), transient=True)

    def __enter__(self) -> _Bar:
        if self.progress is not None:
            self.progress.start()
            self.task = self.progress.add_task("restoring", total=None)
        return self

    def __exit__(self, *_exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()

    def update(self, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=done, total=total)

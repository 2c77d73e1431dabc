"""``caretally restore``: re-publish an archive into an empty log (``streams.archive.restore``)."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from streams.cli.exits import fail
from streams.cli.kafka_options import KafkaOptions, connect, kafka_options
from streams.cli.options import (
    archive_input_option,
    no_progress_option,
    partitions_option,
    renamed,
)
from streams.cli.progress import ProgressBar, wanted

EXIT_NOT_EMPTY = 2


@click.command(short_help="Re-publish the Parquet archive into an empty broker's log.")
@archive_input_option("the Parquet archive (a directory written by `caretally archive`).")
@kafka_options
@partitions_option(
    None,
    "as many as the archived log had unless given (an existing log topic keeps its own).",
)
@click.option(
    "--force",
    is_flag=True,
    help="Append to a log topic that already holds records (they are not checked).",
)
@no_progress_option
@renamed("--archive", "--input", "input_path", type=click.Path(path_type=Path))
def restore(
    input_path: Path,
    kafka: KafkaOptions,
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
      caretally restore --input /srv/archive --bootstrap kafka:9092 --partitions 16
      caretally restore --partitions 8 && caretally worker --partitions 8
    """
    from streams.archive.archiver import ArchiveError
    from streams.archive.restore import NotEmpty, RestoreError
    from streams.archive.restore import restore as run_restore

    kafka.settings()  # a usage error first
    archive_dir = input_path
    if not archive_dir.is_dir():
        raise click.BadParameter(f"{archive_dir} does not exist", param_hint="--input")
    ctx = connect(kafka)
    logging.getLogger("kafka").setLevel(logging.CRITICAL)  # our errors say what failed
    topics = ctx.topics
    try:
        with ProgressBar("restoring", wanted(no_progress), unit="rows") as bar:
            stats = run_restore(
                ctx.settings,
                topics,
                archive_dir,
                partitions=partitions,
                force=force,
                on_progress=bar.update,
            )
    except NotEmpty as exc:
        fail(str(exc), EXIT_NOT_EMPTY)
    except RestoreError as exc:
        if "is not an archive" in str(exc):
            raise click.BadParameter(str(exc), param_hint="--input") from None
        fail(str(exc))
    except ArchiveError as exc:
        fail(str(exc))
    click.echo(stats.summary(topics.events, ctx.settings.describe()))
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

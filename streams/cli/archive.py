"""``caretally archive``: copy the log into the Parquet archive (``streams.archive.archiver``)."""

from __future__ import annotations

import logging
import signal
from pathlib import Path

import click

from streams.archive.archiver import DEFAULT_FLUSH_ROWS, DEFAULT_FLUSH_SECONDS, DEFAULT_GROUP
from streams.archive.store import DEFAULT_ARCHIVE
from streams.cli.exits import fail
from streams.cli.kafka_options import KafkaOptions, connect, kafka_options
from streams.cli.options import ARCHIVE_ENV, no_progress_option
from streams.cli.progress import ProgressBar, wanted


@click.command(short_help="Copy the log (care.events.v1) into the Parquet archive.")
@click.option(
    "--archive",
    "archive_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_ARCHIVE,
    envvar=ARCHIVE_ENV,
    show_default=True,
    show_envvar=True,
    metavar="DIR",
    help="The archive to write (created if missing). --archive names an archive a command "
    "writes; the commands that read one take it as --input.",
)
@kafka_options
@click.option(
    "--flush-rows",
    default=DEFAULT_FLUSH_ROWS,
    show_default=True,
    type=click.IntRange(1),
    metavar="N",
    help="Write a partition's rows once this many are held.",
)
@click.option(
    "--flush-seconds",
    default=DEFAULT_FLUSH_SECONDS,
    show_default=True,
    type=click.FloatRange(min=0.01),
    metavar="SECONDS",
    help="... or once its oldest held row is this old.",
)
@click.option(
    "--group",
    "group_id",
    default=DEFAULT_GROUP,
    show_default=True,
    metavar="ID",
    help="Consumer group; its committed offsets show the archiver's lag (the archive "
    "itself decides where to resume).",
)
@click.option(
    "--once/--follow",
    default=False,
    show_default=True,
    help="--once: archive up to the log's current end and exit; --follow: keep archiving "
    "new events until Ctrl-C or SIGTERM.",
)
@no_progress_option
def archive(
    archive_dir: Path,
    kafka: KafkaOptions,
    flush_rows: int,
    flush_seconds: float,
    group_id: str,
    once: bool,
    no_progress: bool,
) -> None:
    """Copy the immutable log (care.events.v1) into a Parquet archive, exactly once.

    \b
    DIR/org=<org key>/month=<YYYY-MM>/p<partition>-<first>-<last>.parquet
    DIR/_committed/p<partition>-<first>-<last>     (a flush is visible once committed)
    DIR/_orgs.json     which org each key is (32 hex digits of the id's SHA-256)

    Each row keeps the event's exact bytes, its partition, offset and record
    timestamp, and typed columns for DuckDB. The archive itself records how far
    each partition is archived: the archiver can be killed at any moment and
    restarted, and it resumes with no gap and no duplicate. It refuses an archive
    of another log (e.g. after the memory-only embedded broker restarted: see
    `caretally restore`). One archiver per directory.

    Exit code: 0 when done (or stopped by Ctrl-C/SIGTERM after flushing), 1 if the
    broker is unreachable or the archive does not belong to this log.

    \b
    Examples:
      caretally archive                        # follow the log into ./data/archive
      caretally archive --once                 # archive what the log holds now, exit
      caretally archive --archive /srv/caretally/archive --bootstrap kafka:9092
      CARETALLY_ARCHIVE=/srv/archive caretally archive --flush-rows 50000 --flush-seconds 10
    """
    from streams.archive.archiver import ArchiveError, Archiver

    ctx = connect(kafka)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.CRITICAL)  # our errors say what failed
    archiver = Archiver(
        ctx.settings,
        ctx.topics,
        archive_dir,
        flush_rows=flush_rows,
        flush_seconds=flush_seconds,
        group_id=group_id,
    )
    if not once:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: archiver.stop())
        click.echo(
            f"archiving {archiver.topics.events} from {ctx.settings.describe()} into {archive_dir} "
            "(Ctrl-C to stop)",
            err=True,
        )
    try:
        if once:
            with ProgressBar("archiving", wanted(no_progress), unit="records") as bar:
                stats = archiver.run(on_progress=bar.update)
        elif archiver.wait_for_log(lambda why: click.echo(why, err=True)):
            stats = archiver.run(follow=True)
        else:
            stats = archiver.stats  # stopped before the log existed
    except ArchiveError as exc:
        if archiver.stats.rows:
            click.echo(archiver.stats.summary(archive_dir), err=True)
        fail(str(exc))
    click.echo(stats.summary(archive_dir))

"""``caretally archive``: copy the log into the Parquet archive (``streams.archive.archiver``)."""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path

import click

from streams.archive.archiver import DEFAULT_FLUSH_ROWS, DEFAULT_FLUSH_SECONDS, DEFAULT_GROUP
from streams.cli.options import archive_option, bootstrap_option, prefix_option

EXIT_FAILED = 1


@click.command(short_help="Copy the log (care.events.v1) into the Parquet archive.")
@archive_option("Archive directory (created if missing).")
@bootstrap_option
@prefix_option
@click.option(
    "--flush-rows",
    default=DEFAULT_FLUSH_ROWS,
    show_default=True,
    type=click.IntRange(1),
    help="Write a partition's rows once this many are held.",
)
@click.option(
    "--flush-seconds",
    default=DEFAULT_FLUSH_SECONDS,
    show_default=True,
    type=click.FloatRange(min=0.01),
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
def archive(
    archive_dir: Path,
    bootstrap: str | None,
    topic_prefix: str | None,
    flush_rows: int,
    flush_seconds: float,
    group_id: str,
    once: bool,
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
    from streams.kafka import bootstrap as bs
    from streams.kafka.broker import reachable, split_bootstrap
    from streams.kafka.topics import Topics

    address, _named = bs.resolve(bootstrap)
    try:
        split_bootstrap(address)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--bootstrap") from None
    if not reachable(address, timeout=2.0):
        click.echo(
            f"error: no Kafka broker answers at {address} "
            "(start one with `caretally broker`, or pass --bootstrap)",
            err=True,
        )
        sys.exit(EXIT_FAILED)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.CRITICAL)  # our errors say what failed
    archiver = Archiver(
        address,
        Topics.from_env(topic_prefix),
        archive_dir,
        flush_rows=flush_rows,
        flush_seconds=flush_seconds,
        group_id=group_id,
    )
    if not once:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: archiver.stop())
        click.echo(
            f"archiving {archiver.topics.events} from {address} into {archive_dir} "
            "(Ctrl-C to stop)",
            err=True,
        )
    try:
        stats = archiver.run(follow=not once)
    except ArchiveError as exc:
        click.echo(f"error: {exc}", err=True)
        if archiver.stats.rows:
            click.echo(archiver.stats.summary(archive_dir), err=True)
        sys.exit(EXIT_FAILED)
    click.echo(stats.summary(archive_dir))

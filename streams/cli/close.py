"""``caretally close --org ORG YYYY-MM``: close a month and export its claim lines.

Mechanism (see ``streams.close.month_close``): read the log to its end (is the month closed
already? the practice's time zone), append ``month.closed`` straight to every partition
of ``care.events.v1`` as the ingress gate writes practice-wide events, take each
partition's offset from the broker's acknowledgement, fold the org's records up to and
including those offsets with the core, and write the claim lines of the month
(``projections.claims``) to ``claims-<org>-<digest>-<YYYY-MM>.csv`` / ``.json``
atomically (``streams.close.month_close.claims_stem``: a digest of the exact org id keeps
orgs that render alike apart). The worker need not run; when it folds the close it
remembers the same claim lines, and later activities or voids in the month raise
``late_activity`` alerts naming them.

Decisions:

* An already-closed month is refused (exit 4): ``--reissue`` closes it again (a new
  ``month.closed``; the claims as now known, late activity included, and later
  ``late_activity`` alerts name the reissued lines), ``--export-only`` rewrites the
  files exactly as the latest close saw the log, appending nothing.
* A month that has not ended in the practice's time zone, or an org with no records in
  the log (a typo would close a month of nobody, for ever), is refused unless ``--force``.
* Claim line ids are keyed by the ``event_id`` of the close (a random UUID4 here; see
  ``projections.claims``): ``--export-only`` reproduces them, ``--reissue`` makes new
  ones, and nobody without the log can test patient-id guesses against them.
* Two closes racing each other are not prevented (the check and the append are not
  atomic); each writes its own claim files, and the later close's lines are the ones
  the worker remembers.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import click

from schemas.events import MONTH_PATTERN
from streams.cli.options import bootstrap_option, prefix_option

EXIT_FAILED = 1  # broker unreachable or failing, no log topic, a partial close
EXIT_REFUSED = 4  # already closed, month not over, unknown org (see the options)


def _month(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    if not re.fullmatch(MONTH_PATTERN, value):
        raise click.BadParameter(f"{value!r} is not a month; write YYYY-MM, e.g. 2025-03")
    return value


def _fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


@click.command(short_help="Close a month: append month.closed, export its claim lines.")
@click.argument("month", metavar="YYYY-MM", callback=_month)
@click.option("--org", "org", required=True, metavar="ORG", help="The practice (org_id) to close.")
@bootstrap_option
@prefix_option
@click.option(
    "--claims-dir",
    type=click.Path(exists=True, file_okay=False, writable=True, path_type=Path),
    default=Path("."),
    show_default=True,
    help="Folder for claims-<org>-<digest>-<YYYY-MM>.csv / .json (replaced atomically).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["csv", "json", "both"]),
    default="both",
    show_default=True,
    help="Which claim files to write.",
)
@click.option(
    "--reissue",
    is_flag=True,
    help="Close a month that is already closed again, and export the claims as now known.",
)
@click.option(
    "--export-only",
    is_flag=True,
    help="Append nothing: write the claim files as the month's latest close saw the log.",
)
@click.option(
    "--force",
    is_flag=True,
    help="Close even if the month has not ended in the practice's time zone, or the org "
    "has no records in the log.",
)
def close(
    month: str,
    org: str,
    bootstrap: str | None,
    topic_prefix: str | None,
    claims_dir: Path,
    fmt: str,
    reissue: bool,
    export_only: bool,
    force: bool,
) -> None:
    """Close the month YYYY-MM of --org: append month.closed to the log (care.events.v1,
    every partition) and write the claim lines billed as of that close (org, patient,
    billing practitioner, code, units, date of service per docs/rules.md G16, estimated
    payment, a claim line id) to claims-<org>-<digest>-<YYYY-MM>.csv and .json, where
    <org> is the org id made file-name safe and <digest> 16 hex digits of a hash of the
    exact org id (orgs that look alike never share a file). Activities or voids that
    land in a closed month later raise late_activity alerts naming the claim line they
    would change. The worker need not be running.

    A claim line id is keyed by this close's random month.closed event id: the same
    with --export-only, new with --reissue, and useless for guessing patient ids.

    A closed month is refused unless --reissue (close again: new claims) or
    --export-only (rewrite the files of the latest close; nothing is appended). A month
    that has not ended in the practice's time zone, or an org without records, is
    refused unless --force.

    Exit code: 0 done, 1 broker unreachable or failing (or the close reached only some
    partitions: run again with --reissue), 2 usage error, 4 refused.

    \b
    Examples:
      caretally close --org practice-17 2025-03
      caretally close --org practice-17 2025-03 --claims-dir out/ --format csv
      caretally close --org practice-17 2025-03 --export-only      # the files again
      caretally close --org practice-17 2025-03 --reissue          # after late activity
    """
    from streams.kafka import bootstrap as bs
    from streams.kafka.broker import reachable, split_bootstrap
    from streams.kafka.topics import Topics

    if reissue and export_only:
        raise click.UsageError("--reissue and --export-only exclude each other")
    address, _named = bs.resolve(bootstrap)
    try:
        split_bootstrap(address)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--bootstrap") from None
    if not reachable(address, timeout=2.0):
        _fail(
            f"no Kafka broker answers at {address} "
            "(start one with `caretally broker`, or pass --bootstrap)"
        )
    logging.getLogger("kafka").setLevel(logging.CRITICAL)  # errors are reported below
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    topic = Topics.from_env(topic_prefix).events
    formats = ("csv", "json") if fmt == "both" else (fmt,)
    from aiokafka.errors import KafkaError as AioKafkaError
    from kafka.errors import KafkaError

    try:
        _close(address, topic, org, month, claims_dir, formats, reissue, export_only, force)
    except (KafkaError, AioKafkaError, OSError, TimeoutError) as exc:
        _fail(f"talking to Kafka at {address} failed: {type(exc).__name__}: {exc}")


def _close(
    address: str,
    topic: str,
    org: str,
    month: str,
    claims_dir: Path,
    formats: tuple[str, ...],
    reissue: bool,
    export_only: bool,
    force: bool,
) -> None:
    from projections.calendar import epoch, month_bounds
    from projections.claims import month_claims
    from streams.close.month_close import (
        append,
        close_record,
        fold_until,
        scan,
        write_claims,
    )
    from streams.kafka.topics import partition_counts

    partitions = partition_counts(address, [topic])[topic]
    if not partitions:
        _fail(f"no log topic {topic} at {address} (is --topic-prefix right?)")
    found = asyncio.run(scan(address, topic, partitions, org, month))
    now = datetime.now(UTC)
    if export_only:
        complete = found.complete()
        if not complete:
            _fail(f"{month} of org {org} has no close to export; close it first", EXIT_REFUSED)
        latest = complete[-1]
        event_id, closed_at, stops = latest.event_id, latest.recorded_at, latest.offsets
        action = f"exported the claims of {month} as closed by {event_id}"
    else:
        if found.closes and not reissue:
            last = found.closes[-1]
            reached = (
                "" if len(last.offsets) == partitions else " (it reached only some partitions)"
            )
            _fail(
                f"{month} of org {org} is already closed: month.closed {last.event_id}, recorded "
                f"{last.recorded_at.isoformat()}{reached}. Pass --reissue to close it again and "
                "export the claims as now known, or --export-only to write the claim files of "
                "that close again",
                EXIT_REFUSED,
            )
        if not force:
            if found.org_records == 0:
                _fail(
                    f"the log holds no records of org {org!r} (check --org and --topic-prefix); "
                    "pass --force to close the month all the same",
                    EXIT_REFUSED,
                )
            end = month_bounds(month, found.timezone)[1]
            if epoch(now) < end:
                _fail(
                    f"{month} has not ended yet in the practice's time zone ({found.timezone}); "
                    "pass --force to close it early",
                    EXIT_REFUSED,
                )
        record = close_record(org, month, now)
        stops, errors = asyncio.run(append(address, topic, partitions, record))
        if errors:
            failed = ", ".join(f"{p}: {e}" for p, e in sorted(errors.items()))
            _fail(
                f"month.closed {record.event.event_id} reached {len(stops)} of {partitions} "
                f"partition(s) (failed: {failed}); run again with --reissue"
            )
        event_id, closed_at = record.event.event_id, record.event.recorded_at
        action = f"closed {month} for org {org}: appended month.closed {event_id}"
    ledger = asyncio.run(fold_until(address, topic, org, stops))
    lines, total = month_claims(ledger, org, month, close_id=event_id)
    meta: dict[str, Any] = {
        "org_id": org,
        "month": month,
        "month_closed_event_id": event_id,
        "closed_at": closed_at.isoformat(),
        "log_topic": topic,
        "log_offsets": {str(p): o for p, o in sorted(stops.items())},
    }
    paths = write_claims(lines, claims_dir, org, month, formats, meta)
    patients = len({ln.patient_id for ln in lines})
    click.echo(action)
    click.echo(
        f"{len(lines)} claim line(s) for {patients} patient(s), "
        f"estimated payment ${total:,.2f}; wrote {', '.join(str(p) for p in paths)}"
    )

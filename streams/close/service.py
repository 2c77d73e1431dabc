"""Closing a month: the decisions of ``caretally close``, apart from its command line.

:func:`close_month` reads the log to its end (is the month closed already? the practice's
time zone), appends ``month.closed`` to every partition of the log
(:mod:`streams.close.log_append`), folds the org's records up to and including that
close (:mod:`streams.close.log_scan`) and writes the month's claim lines
(:mod:`projections.claims`) to the claim files (:mod:`streams.close.claim_files`). The
worker need not run: when it folds the close it remembers the same claim lines, and later
activities or voids in the month raise ``late_activity`` alerts naming them.

Decisions:

* An already-closed month is refused (:class:`CloseRefused`): ``reissue`` closes it
  again (a new ``month.closed``; the claims as now known, late activity included, and
  later ``late_activity`` alerts name the reissued lines), ``export_only`` rewrites the
  files exactly as the latest close saw the log, appending nothing.
* A month that has not ended in the practice's time zone, or an org with no records in
  the log (a typo would close a month of nobody, for ever), is refused unless ``force``.
* Claim line ids are keyed by the ``event_id`` of the close (a random UUID4; see
  ``projections.claims``): ``export_only`` reproduces them, ``reissue`` makes new ones,
  and nobody without the log can test patient-id guesses against them.
* Two closes racing each other are not prevented (the check and the append are not
  atomic); each writes its own claim files, and the later close's lines are the ones
  the worker remembers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from projections.claims import ClaimLine
from projections.rules import SHIPPED_CATALOG, RuleCatalog

if TYPE_CHECKING:
    from streams.kafka.clients import Connection


class CloseError(Exception):
    """A close that did not happen; the message (no patient ids) says why."""


class CloseRefused(CloseError):
    """Refused on purpose; ``reason`` says which way, for callers that word it their own
    way (the close page): ``nothing_to_export``, ``already_closed``, ``no_records``,
    ``not_ended``."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class CloseFailed(CloseError):
    """Could not close: no log topic, or the close reached only some partitions."""


@dataclass(frozen=True)
class CloseRequest:
    """Which month of which practice to close, and how (see the module's decisions)."""

    org: str
    month: str
    claims_dir: Path
    formats: tuple[str, ...] = ("csv", "json")  # and/or "837p" (streams.close.claim_files)
    reissue: bool = False
    export_only: bool = False
    force: bool = False

    def __post_init__(self) -> None:
        if self.reissue and self.export_only:
            raise ValueError("reissue and export_only exclude each other")
        from streams.close.claim_files import FORMATS

        unknown = set(self.formats) - set(FORMATS)  # before a close is appended, not after
        if unknown or not self.formats:
            raise ValueError(f"claim file formats: {sorted(unknown) or 'none'} (known: {FORMATS})")


@dataclass(frozen=True)
class CloseResult:
    """What a close did: the close it exported, its claim lines and the files written."""

    request: CloseRequest
    event_id: str
    closed_at: datetime
    appended: bool  # False: export_only wrote the files of an earlier close
    lines: list[ClaimLine]
    total: float
    paths: list[Path] = field(default_factory=list)

    @property
    def patients(self) -> int:
        return len({ln.patient_id for ln in self.lines})


def close_month(
    kafka: Connection,
    topic: str,
    request: CloseRequest,
    now: datetime | None = None,
    on_progress: Callable[[int], None] | None = None,
    catalog: RuleCatalog = SHIPPED_CATALOG,
) -> CloseResult:
    """Close ``request.month`` of ``request.org`` in the log ``topic`` (or export its
    latest close), write the claim files (priced with the rule books of ``catalog``) and
    say what was done. ``on_progress`` is given the records scanned so far. Raises
    :class:`CloseRefused` or :class:`CloseFailed`; Kafka's own errors pass through."""
    from projections.calendar import epoch, month_bounds
    from projections.claims import month_claims
    from streams.close.claim_files import write_claims
    from streams.close.log_append import append, close_record
    from streams.close.log_scan import fold_until, scan
    from streams.kafka.settings import KafkaSettings
    from streams.kafka.topics import partition_counts

    org, month = request.org, request.month
    partitions = partition_counts(kafka, [topic])[topic]
    if not partitions:
        where = KafkaSettings.of(kafka).bootstrap
        raise CloseFailed(f"no log topic {topic} at {where} (is --topic-prefix right?)")
    found = asyncio.run(scan(kafka, topic, partitions, org, month, on_progress))
    now = now or datetime.now(UTC)
    if request.export_only:
        complete = found.complete()
        if not complete:
            raise CloseRefused(
                f"{month} of org {org} has no close to export; close it first",
                "nothing_to_export",
            )
        latest = complete[-1]
        event_id, closed_at, stops = latest.event_id, latest.recorded_at, latest.offsets
    else:
        if found.closes and not request.reissue:
            last = found.closes[-1]
            reached = (
                "" if len(last.offsets) == partitions else " (it reached only some partitions)"
            )
            raise CloseRefused(
                f"{month} of org {org} is already closed: month.closed {last.event_id}, recorded "
                f"{last.recorded_at.isoformat()}{reached}. Pass --reissue to close it again and "
                "export the claims as now known, or --export-only to write the claim files of "
                "that close again",
                "already_closed",
            )
        if not request.force:
            if found.org_records == 0:
                raise CloseRefused(
                    f"the log holds no records of org {org!r} (check --org and --topic-prefix); "
                    "pass --force to close the month all the same",
                    "no_records",
                )
            end = month_bounds(month, found.timezone)[1]
            if epoch(now) < end:
                raise CloseRefused(
                    f"{month} has not ended yet in the practice's time zone ({found.timezone}); "
                    "pass --force to close it early",
                    "not_ended",
                )
        record = close_record(org, month, now)
        stops, errors = asyncio.run(append(kafka, topic, partitions, record))
        if errors:
            failed = ", ".join(f"{p}: {e}" for p, e in sorted(errors.items()))
            raise CloseFailed(
                f"month.closed {record.event.event_id} reached {len(stops)} of {partitions} "
                f"partition(s) (failed: {failed}); run again with --reissue"
            )
        event_id, closed_at = record.event.event_id, record.event.recorded_at
    ledger = asyncio.run(fold_until(kafka, topic, org, stops))
    lines, total = month_claims(ledger, org, month, close_id=event_id, catalog=catalog)
    meta: dict[str, Any] = {
        "org_id": org,
        "month": month,
        "month_closed_event_id": event_id,
        "closed_at": closed_at.isoformat(),
        "log_topic": topic,
        "log_offsets": {str(p): o for p, o in sorted(stops.items())},
    }
    paths = write_claims(lines, request.claims_dir, org, month, request.formats, meta)
    return CloseResult(request, event_id, closed_at, not request.export_only, lines, total, paths)


@dataclass(frozen=True)
class ClosePreview:
    """What closing the month now would export (nothing is appended or written)."""

    org: str
    month: str
    timezone: str
    ended: bool  # the month is over in the practice's time zone
    closed_by: str | None  # event_id of the month's latest month.closed, if any
    lines: list[ClaimLine]
    total: float

    @property
    def patients(self) -> int:
        return len({ln.patient_id for ln in self.lines})


def preview_month(
    kafka: Connection,
    topic: str,
    org: str,
    month: str,
    now: datetime | None = None,
    catalog: RuleCatalog = SHIPPED_CATALOG,
) -> ClosePreview:
    """The claim lines a close of ``month`` would export if made now: the org's records to
    the end of the log, folded and priced as :func:`close_month` does (claim line ids are
    keyed by a placeholder: the close that would key them does not exist yet)."""
    from projections.calendar import epoch, month_bounds
    from projections.claims import month_claims
    from projections.ledger import Practice
    from streams.close.log_scan import fold_to_end
    from streams.kafka.topics import partition_counts

    partitions = partition_counts(kafka, [topic])[topic]
    if not partitions:
        raise CloseFailed(f"no log topic {topic}")
    ledger = asyncio.run(fold_to_end(kafka, topic, partitions, org))
    practice = ledger.practices.get(org) or Practice()
    lines, total = month_claims(ledger, org, month, close_id="preview", catalog=catalog)
    ended = epoch(now or datetime.now(UTC)) >= month_bounds(month, practice.timezone)[1]
    closed_by = practice.close_ids.get(month)
    return ClosePreview(org, month, practice.timezone, ended, closed_by, lines, total)

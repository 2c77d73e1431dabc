"""What ``caretally close`` reads from the log: a month's closes (and the org's time zone)
before it decides, and the org's records up to a close, folded by the core.

Keys are matched by their parts, never by their bytes or a prefix of them (org ``a`` is
not org ``a:b``); only the org's practice-wide records are parsed during the scan.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime

from projections.calendar import DEFAULT_TIMEZONE
from projections.ledger import Ledger
from schemas.events import Event, EventRejected, MonthClosed, PracticeConfigured, parse_event
from streams.kafka.clients import Connection
from streams.kafka.log_reader import read_range, read_to_end
from streams.kafka.partitioning import log_partition
from streams.kafka.records import event_key, key_parts

PROGRESS_RECORDS = 10_000
"""Records between two progress reports of :func:`scan`."""


@dataclass
class Close:
    """One ``month.closed`` of the month in the log, and where each partition holds it."""

    event_id: str
    recorded_at: datetime
    offsets: dict[int, int] = field(default_factory=dict)


@dataclass
class LogScan:
    """What the log says about an org before a close."""

    partitions: int
    org_records: int = 0
    timezone: str = DEFAULT_TIMEZONE
    closes: list[Close] = field(default_factory=list)  # of the month, in log order

    def complete(self) -> list[Close]:
        """Closes that reached every partition."""
        return [c for c in self.closes if len(c.offsets) == self.partitions]


def _key_ids(key: bytes | None) -> tuple[str, str] | None:
    """(org_id, patient_id or "") of a log key."""
    parts = key_parts(key)
    return (parts[0], parts[1]) if parts is not None and len(parts) == 2 else None


def _org_match(key: bytes | None, org: str) -> bool:
    ids = _key_ids(key)
    return ids is not None and ids[0] == org


async def scan(
    kafka: Connection,
    topic: str,
    partitions: int,
    org: str,
    month: str,
    on_progress: Callable[[int], None] | None = None,
) -> LogScan:
    """Read the log to its end: the org's record count, time zone and closes of ``month``;
    ``on_progress`` is given the records read so far, now and then."""
    out = LogScan(partitions)
    closes: dict[str, Close] = {}
    seen = 0
    async for record in read_to_end(kafka, topic, range(partitions)):
        seen += 1
        if on_progress is not None and not seen % PROGRESS_RECORDS:
            on_progress(seen)
        ids = _key_ids(record.key)
        if ids is None or ids[0] != org:
            continue
        out.org_records += 1
        if ids[1]:  # not the practice-wide key
            continue
        try:
            event = parse_event(record.value or b"")
        except EventRejected:
            continue
        if event.org_id != org:
            continue
        if isinstance(event, PracticeConfigured):
            out.timezone = event.data.timezone  # the latest one (log order per partition)
        elif isinstance(event, MonthClosed) and event.data.month == month:
            close = closes.setdefault(event.event_id, Close(event.event_id, event.recorded_at))
            close.offsets.setdefault(record.partition, record.offset)
    if on_progress is not None:
        on_progress(seen)
    # log order, as partition 0 has it (a close that never reached it goes last)
    out.closes = sorted(closes.values(), key=lambda c: c.offsets.get(0, 2**63))
    return out


async def fold_until(kafka: Connection, topic: str, org: str, stops: dict[int, int]) -> Ledger:
    """Fold ``org``'s records of each partition up to and including ``stops[partition]``."""
    ledger = Ledger()
    for partition, stop in sorted(stops.items()):
        async for record in read_range(kafka, topic, partition, 0, stop + 1):
            if not _org_match(record.key, org):
                continue
            raw = record.value or b""
            try:
                event = parse_event(raw)
            except EventRejected:
                continue  # the worker dead-letters it too
            if event.org_id == org:
                ledger.apply(event, raw)
    return ledger


async def fold_to_end(kafka: Connection, topic: str, partitions: int, org: str) -> Ledger:
    """Fold ``org``'s records of every partition to the end of the log, a partition after
    the other (as :func:`fold_until` does)."""
    by_partition: dict[int, list[bytes]] = {}
    async for record in read_to_end(kafka, topic, range(partitions)):
        if _org_match(record.key, org):
            by_partition.setdefault(record.partition, []).append(record.value or b"")
    ledger = Ledger()
    for raw in (r for _, rs in sorted(by_partition.items()) for r in rs):
        try:
            event = parse_event(raw)
        except EventRejected:
            continue
        if event.org_id == org:
            ledger.apply(event, raw)
    return ledger


async def patient_log(
    kafka: Connection, topic: str, partitions: int, org: str, patient: str
) -> list[tuple[Event, bytes]]:
    """The events one patient's fold sees, in its log order: the records keyed by the
    patient and the org's practice-wide records (written to every partition) of the
    partition that holds the patient. What the audit of a patient-month reads from the
    live log: the partition the key hashes to, else (a log whose partition count
    changed) every partition, keeping the one where the patient's records are."""
    home = log_partition(event_key(org, patient), partitions)
    found = await _patient_records(kafka, topic, [home], org, patient)
    if not any(mine for mine, _ in found.get(home, [])):
        found = await _patient_records(kafka, topic, range(partitions), org, patient)
        home = next((p for p, rs in sorted(found.items()) if any(m for m, _ in rs)), 0)
    out: list[tuple[Event, bytes]] = []
    for _mine, raw in found.get(home, []):
        try:
            event = parse_event(raw)
        except EventRejected:
            continue  # the worker dead-letters it too
        if event.org_id == org:
            out.append((event, raw))
    return out


async def _patient_records(
    kafka: Connection, topic: str, partitions: Iterable[int], org: str, patient: str
) -> dict[int, list[tuple[bool, bytes]]]:
    """Per partition, (the patient's own?, raw) of its records and the org's
    practice-wide ones, in log order."""
    found: dict[int, list[tuple[bool, bytes]]] = {}
    # whole keys compared as bytes (what the log writer wrote), never parsed: a tenth of
    # the cost of key_parts, and exact (no prefix of another org's or patient's key)
    mine, practice = event_key(org, patient), event_key(org, None)
    async for record in read_to_end(kafka, topic, partitions):
        key = record.key
        if key in (mine, practice):
            found.setdefault(record.partition, []).append((key == mine, record.value or b""))
    return found

"""The I/O of ``caretally close``: find a month's closes in the log, append a new
``month.closed``, fold the log up to it, write the claim files.

The close is appended straight to the log (``care.events.v1``), the way the ingress
gate writes practice-wide events (``streams.kafka.records``): key ``org_id:``, headers
``idem``/``body`` (so a restarted gate learns its event id), the same bytes on every
partition. Each partition's offset comes from the broker's acknowledgement, and the
claims are the core's billing of the log up to and including those offsets: on every
partition, exactly what the worker's fold had folded when it reached the close, and so
exactly the claim lines its ``late_activity`` alerts name afterwards.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from projections.calendar import DEFAULT_TIMEZONE
from projections.claims import FIELDS, ClaimLine
from projections.ledger import Ledger, body_digest, idempotency_digest
from schemas.events import EventRejected, MonthClosed, PracticeConfigured, parse_event
from streams.files.atomic import write_bytes
from streams.kafka.log_reader import read_range, read_to_end
from streams.kafka.records import Headers, event_key, key_parts
from streams.worker.gate import log_headers

SOURCE = "caretally-close"


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
    """(org_id, patient_id or "") of a log key; a key is never matched by its bytes or a
    prefix of them (org ``a`` is not org ``a:b``)."""
    parts = key_parts(key)
    return (parts[0], parts[1]) if parts is not None and len(parts) == 2 else None


def _org_match(key: bytes | None, org: str) -> bool:
    ids = _key_ids(key)
    return ids is not None and ids[0] == org


async def scan(bootstrap: str, topic: str, partitions: int, org: str, month: str) -> LogScan:
    """Read the log to its end: the org's record count, time zone and closes of ``month``
    (only the org's practice-wide records are parsed)."""
    out = LogScan(partitions)
    closes: dict[str, Close] = {}
    async for record in read_to_end(bootstrap, topic, range(partitions)):
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
    # log order, as partition 0 has it (a close that never reached it goes last)
    out.closes = sorted(closes.values(), key=lambda c: c.offsets.get(0, 2**63))
    return out


@dataclass(frozen=True)
class CloseRecord:
    event: MonthClosed
    raw: bytes
    key: bytes
    headers: Headers


def close_record(org: str, month: str, now: datetime) -> CloseRecord:
    """A fresh ``month.closed`` (unique event id, recorded now) as the log stores it."""
    body = {
        "event_id": f"month-closed-{month}-{uuid.uuid4().hex}",
        "type": "month.closed",
        "schema_version": 1,
        "org_id": org,
        "recorded_at": now.isoformat(),
        "source": SOURCE,
        "data": {"month": month},
    }
    raw = orjson.dumps(body)
    event = parse_event(raw)  # the bytes are valid before they can reach the log
    assert isinstance(event, MonthClosed)
    headers = log_headers(idempotency_digest(event.org_id, event.event_id), body_digest(event, raw))
    return CloseRecord(event, raw, event_key(org, None), headers)


async def append(
    bootstrap: str, topic: str, partitions: int, record: CloseRecord, timeout: float = 15.0
) -> tuple[dict[int, int], dict[int, str]]:
    """Send ``record`` to every partition (acks=all): the acknowledged offset per
    partition, and the error per partition that failed."""
    from aiokafka import AIOKafkaProducer

    from streams.kafka.limits import PRODUCER_MAX_REQUEST_BYTES

    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        client_id=SOURCE,
        request_timeout_ms=int(timeout * 1000),
        max_request_size=PRODUCER_MAX_REQUEST_BYTES,
    )
    await producer.start()
    offsets: dict[int, int] = {}
    errors: dict[int, str] = {}
    try:
        sends = [
            producer.send_and_wait(
                topic, record.raw, key=record.key, partition=p, headers=record.headers
            )
            for p in range(partitions)
        ]
        results = await asyncio.wait_for(
            asyncio.gather(*sends, return_exceptions=True), timeout * 2
        )
        for p, res in enumerate(results):
            if isinstance(res, BaseException):
                errors[p] = f"{type(res).__name__}: {res}".rstrip(": ")
            else:
                offsets[p] = res.offset
    finally:
        await producer.stop()
    return offsets, errors


async def fold_until(bootstrap: str, topic: str, org: str, stops: dict[int, int]) -> Ledger:
    """Fold ``org``'s records of each partition up to and including ``stops[partition]``."""
    ledger = Ledger()
    for partition, stop in sorted(stops.items()):
        async for record in read_range(bootstrap, topic, partition, 0, stop + 1):
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


# -- claim files --------------------------------------------------------------------


STEM_ORG_CHARS = 48  # of the org's readable rendering in a claim file name


def claims_stem(org: str, month: str) -> str:
    """``claims-<org>-<digest>-<YYYY-MM>``: the org made readable and file-name safe
    (ASCII letters, digits, ``.``, ``_``, ``-``; anything else becomes ``_``; at most
    :data:`STEM_ORG_CHARS` characters), then 16 hex digits of a hash of the exact org id.
    Orgs that render alike (``a_b``, ``a b``, two CJK names, ``Org``/``org`` on a
    case-insensitive file system) still get names of their own."""
    readable = re.sub(r"[^A-Za-z0-9._-]", "_", org)[:STEM_ORG_CHARS]
    digest = hashlib.blake2b(org.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()
    return f"claims-{readable}-{digest}-{month}"


def _money(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def csv_text(lines: Iterable[ClaimLine]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(FIELDS)
    for ln in lines:
        row = ln.row()
        row["fee"] = _money(ln.fee)
        row["estimated_payment"] = _money(ln.estimated_payment)
        row["billing_practitioner_id"] = ln.practitioner_id or ""
        writer.writerow([row[f] for f in FIELDS])
    return buf.getvalue()


def json_bytes(lines: list[ClaimLine], meta: dict[str, Any]) -> bytes:
    doc = {
        **meta,
        "line_count": len(lines),
        "estimated_payment": round(sum(ln.estimated_payment for ln in lines), 2),
        "lines": [ln.row() for ln in lines],
    }
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n"


def write_claims(
    lines: list[ClaimLine],
    directory: Path,
    org: str,
    month: str,
    formats: tuple[str, ...],
    meta: dict[str, Any],
) -> list[Path]:
    """Write the claim files (``csv``, ``json``) atomically; returns their paths."""
    stem = claims_stem(org, month)
    written = []
    if "csv" in formats:
        path = directory / f"{stem}.csv"
        write_bytes(path, csv_text(lines).encode())
        written.append(path)
    if "json" in formats:
        path = directory / f"{stem}.json"
        write_bytes(path, json_bytes(lines, meta))
        written.append(path)
    return written

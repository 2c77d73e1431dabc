"""What ``caretally close`` writes to the log: a fresh ``month.closed``, appended to every
partition of ``care.events.v1``.

The close is appended the way the ingress gate writes practice-wide events
(``streams.kafka.log_writer``): key ``org_id:``, headers ``idem``/``body`` (so a restarted
gate learns its event id), the same bytes on every partition. Each partition's offset
comes from the broker's acknowledgement: the claims are the core's billing of the log up
to and including those offsets, on every partition exactly what the worker's fold had
folded when it reached the close, and so exactly the claim lines its ``late_activity``
alerts name afterwards.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import datetime

import orjson

from schemas.events import MonthClosed, parse_event
from streams.kafka.clients import CLOSE_PRODUCER, Connection, aio_producer
from streams.kafka.log_writer import log_records

SOURCE = "caretally-close"


@dataclass(frozen=True)
class CloseRecord:
    event: MonthClosed
    raw: bytes


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
    return CloseRecord(event, raw)


async def append(
    kafka: Connection, topic: str, partitions: int, record: CloseRecord, timeout: float = 15.0
) -> tuple[dict[int, int], dict[int, str]]:
    """Send ``record`` to every partition (acks=all): the acknowledged offset per
    partition, and the error per partition that failed."""
    producer = aio_producer(kafka, CLOSE_PRODUCER, request_timeout_ms=int(timeout * 1000))
    await producer.start()
    offsets: dict[int, int] = {}
    errors: dict[int, str] = {}
    try:
        records = log_records(record.event, record.raw, partitions)
        sends = [
            producer.send_and_wait(
                topic, r.value, key=r.key, partition=r.partition, headers=r.headers
            )
            for r in records
        ]
        results = await asyncio.wait_for(
            asyncio.gather(*sends, return_exceptions=True), timeout * 2
        )
        for r, res in zip(records, results, strict=True):
            assert r.partition is not None  # a practice-wide event names each partition
            if isinstance(res, BaseException):
                errors[r.partition] = f"{type(res).__name__}: {res}".rstrip(": ")
            else:
                offsets[r.partition] = res.offset
    finally:
        await producer.stop()
    return offsets, errors

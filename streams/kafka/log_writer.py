"""The one rule for writing ``care.events.v1``: which records an accepted event becomes.

Every writer of the log (the ingress gate, ``caretally close``, ``caretally restore``)
asks :func:`log_records` and sends what it returns, each with its own client:

* key ``org_id:patient_id`` (``org_id:`` for a practice-wide event), value the event's
  bytes exactly as accepted;
* headers ``idem`` and ``body``: the event's 8-byte idempotency and body digests (the
  ledger's own), so the gate rebuilds its index from the log without parsing it
  (:func:`log_digests`);
* a practice-wide event (``practice.configured``, ``month.closed``) is written once to
  every partition, since every partition's fold needs it (the fold ignores the repeats
  by ``event_id``); any other event once, to the partition its key hashes to.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from projections.ledger import body_digest, idempotency_digest
from schemas.events import Event, MonthClosed, PracticeConfigured
from streams.kafka.records import Headers, event_key, header

IDEM, BODY = "idem", "body"


@dataclass(frozen=True, slots=True)
class LogRecord:
    """One record of the log; ``partition`` None: the producer's partitioner picks it by
    the key (the default murmur2, as every other writer of the key's partition)."""

    key: bytes
    value: bytes
    headers: Headers
    partition: int | None = None


def practice_wide(event: Event | None) -> bool:
    """Events every partition's fold needs (written to every partition of the log)."""
    return isinstance(event, PracticeConfigured | MonthClosed)


def to_bytes(digest: int) -> bytes:
    return digest.to_bytes(8, "big")


def from_bytes(raw: bytes) -> int:
    return int.from_bytes(raw, "big")


def log_headers(idem: int, body: int) -> Headers:
    """The headers of a record of the log (``idem``, ``body``)."""
    return [(IDEM, to_bytes(idem)), (BODY, to_bytes(body))]


def log_digests(headers: Any) -> tuple[int, int] | None:
    """The (idempotency, body) digests of a log record's headers; None without them."""
    idem, body = header(headers, IDEM), header(headers, BODY)
    if not idem or not body:
        return None
    return from_bytes(idem), from_bytes(body)


def log_records(
    event: Event,
    raw: bytes,
    partitions: int,
    digests: tuple[int, int] | None = None,
) -> tuple[LogRecord, ...]:
    """The records ``event`` (accepted, its bytes ``raw``) becomes in a log of
    ``partitions`` partitions; ``digests`` (idempotency, body) when already computed."""
    idem, body = digests or (
        idempotency_digest(event.org_id, event.event_id),
        body_digest(event, raw),
    )
    key = event_key(event.org_id, event.patient_id)
    headers = log_headers(idem, body)
    if practice_wide(event):
        return tuple(LogRecord(key, raw, headers, p) for p in range(partitions))
    return (LogRecord(key, raw, headers),)

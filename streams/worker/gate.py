"""The ingress gate: what becomes part of the immutable log, and what is dead-lettered.

Valid and new: to the log. Same ``event_id`` (within an org) with the same bytes: an
exact duplicate, dropped and counted. Same ``event_id`` with other bytes, or anything
that fails validation: dead-lettered with the reason. The digests are the ledger's own
(``projections.ledger``), so the gate and an offline ``caretally replay`` of the same
lines agree on what is new, duplicate or conflicting.

The gate's index is rebuilt from the log's ``idem``/``body`` headers at start: the log
is the truth, and this worker is its only writer (its records are those of
``streams.kafka.log_writer``, like every writer of the log).

:meth:`IngressGate.route` is total: for any ingress record (any bytes, any key) it
returns exactly one outcome (log, dead letter or duplicate) with the records to write,
each of which fits the producers' ``max_request_size`` (``streams.kafka.limits``). A record
larger than ``EVENT_MAX_BYTES`` (or with a key over ``KEY_MAX_BYTES``) is dead-lettered
as ``too_large`` with an excerpt of its bytes and the SHA-256 digest of all of them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import Enum

from projections.digest_index import DigestIndex
from projections.ledger import body_digest, idempotency_digest
from schemas.events import Event, EventRejected, parse_event
from streams.kafka.limits import DEADLETTER_EXCERPT_BYTES, EVENT_MAX_BYTES, KEY_MAX_BYTES
from streams.kafka.log_writer import log_records, practice_wide
from streams.kafka.partitioning import ingress_partition
from streams.kafka.records import Headers, deadletter_headers, event_key

TOO_LARGE = "too_large"
REASON_MAX_CHARS = 1000


class Verdict(Enum):
    NEW = "new"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"
    REROUTED = "rerouted"  # valid, but on another ingress partition than its org's


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    raw: bytes
    event: Event | None = None
    reason: str | None = None
    idem: int = 0
    body: int = 0
    home: int = -1  # REROUTED: the ingress partition of the event's org

    @property
    def practice_wide(self) -> bool:
        """Events every partition's fold needs (written to every partition of the log)."""
        return practice_wide(self.event)


class Target(Enum):
    LOG = "log"
    DEADLETTER = "deadletter"
    INGRESS = "ingress"  # a rerouted record, to its org's partition


@dataclass(frozen=True, slots=True)
class Source:
    """Where an ingress record came from (the dead letter's ``source_*`` headers)."""

    topic: str
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class Write:
    """One record to produce: to the log or the dead-letter topic."""

    target: Target
    key: bytes | None
    value: bytes
    headers: Headers
    partition: int | None = None


@dataclass(frozen=True, slots=True)
class Routed:
    """The gate's one outcome for an ingress record, and what to write for it."""

    decision: Decision
    writes: tuple[Write, ...]

    @property
    def outcome(self) -> str:
        """``log``, ``deadletter``, ``duplicate`` or ``rerouted``: exactly one per
        ingress record."""
        return {
            Verdict.NEW: "log",
            Verdict.REJECTED: "deadletter",
            Verdict.DUPLICATE: "duplicate",
            Verdict.REROUTED: "rerouted",
        }[self.decision.verdict]


def sha256_header(value: bytes) -> bytes:
    return b"sha256:" + hashlib.sha256(value).hexdigest().encode()


def deadletter_write(reason: str, key: bytes | None, value: bytes, source: Source) -> Write:
    """A dead letter that always fits: the raw bytes, or for ``too_large`` an excerpt of
    them with headers ``digest`` (SHA-256 of all of them) and ``size``; the key and the
    reason are cut to their limits."""
    headers = deadletter_headers(
        reason[:REASON_MAX_CHARS], source.topic, source.partition, source.offset
    )
    if len(value) > EVENT_MAX_BYTES or (key is not None and len(key) > KEY_MAX_BYTES):
        headers += [("digest", sha256_header(value)), ("size", str(len(value)).encode())]
        value = value[:DEADLETTER_EXCERPT_BYTES]
    return Write(Target.DEADLETTER, None if key is None else key[:KEY_MAX_BYTES], value, headers)


class IngressGate:
    """Decides each ingress record; remembers what the log holds."""

    def __init__(self, ingress_partitions: int = 1) -> None:
        self.index = DigestIndex()
        self.ingress_partitions = ingress_partitions

    def learn(self, idem: int, body: int) -> None:
        """Record an event already in the log (rebuild from log headers)."""
        if self.index.get(idem) is None:
            self.index.add(idem, body)

    def forget(self, idem: int) -> None:
        """Undo :meth:`decide`'s NEW for an event that could not be written after all."""
        self.index.discard(idem)

    def decide(self, value: bytes | None, home: int | None = None) -> Decision:
        """The verdict on one record's bytes; never raises. A NEW event's digests enter
        the index at once (a re-send in the same batch is a duplicate), so its caller must
        write it to the log or :meth:`forget` it. ``home``: when set, the ingress partition
        the record was read from, out of ``self.ingress_partitions``; a valid event of an
        org whose partition is another is REROUTED there, undecided (that partition's
        gate holds the org's index)."""
        raw = (value or b"").strip()
        if not raw:
            return Decision(Verdict.REJECTED, raw, reason="empty record")
        if len(raw) > EVENT_MAX_BYTES:
            return Decision(Verdict.REJECTED, raw, reason=TOO_LARGE)
        try:
            event = parse_event(raw)
        except EventRejected as exc:
            return Decision(Verdict.REJECTED, raw, reason=exc.reason)
        except Exception:  # a validator bug must not stop the gate: refuse the record
            return Decision(Verdict.REJECTED, raw, reason="unreadable event")
        if len(event_key(event.org_id, event.patient_id)) > KEY_MAX_BYTES:
            return Decision(Verdict.REJECTED, raw, reason=TOO_LARGE)
        if home is not None and self.ingress_partitions > 1:
            own = ingress_partition(event.org_id, self.ingress_partitions)
            if own != home:
                return Decision(Verdict.REROUTED, raw, event, home=own)
        idem = idempotency_digest(event.org_id, event.event_id)
        body = body_digest(event, raw)
        prior = self.index.get(idem)
        if prior is not None:
            if prior == body:
                return Decision(Verdict.DUPLICATE, raw, event, idem=idem, body=body)
            return Decision(
                Verdict.REJECTED,
                raw,
                event,
                reason="conflicting_duplicate: event_id already in the log with another body",
                idem=idem,
                body=body,
            )
        self.index.add(idem, body)
        return Decision(Verdict.NEW, raw, event, idem=idem, body=body)

    def route(
        self, value: bytes | None, key: bytes | None, source: Source, partitions: int
    ) -> Routed:
        """:meth:`decide`, plus the records to write; total (never raises). A record
        read from a partition (``source.partition >= 0``) is checked to be on its org's."""
        d = self.decide(value, source.partition if source.partition >= 0 else None)
        if d.verdict is Verdict.DUPLICATE:
            return Routed(d, ())
        if d.verdict is Verdict.REROUTED:
            hop = [("rerouted_from", f"{source.partition}:{source.offset}".encode())]
            return Routed(d, (Write(Target.INGRESS, key, value or b"", hop, d.home),))
        if d.verdict is Verdict.REJECTED or d.event is None:
            reason = d.reason or "rejected"
            return Routed(d, (deadletter_write(reason, key, value or b"", source),))
        records = log_records(d.event, d.raw, partitions, (d.idem, d.body))
        return Routed(
            d, tuple(Write(Target.LOG, r.key, r.value, r.headers, r.partition) for r in records)
        )

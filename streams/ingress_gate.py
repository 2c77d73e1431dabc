"""The ingress gate: what becomes part of the immutable log, and what is dead-lettered.

Valid and new: to the log. Same ``event_id`` (within an org) with the same bytes: an
exact duplicate, dropped and counted. Same ``event_id`` with other bytes, or anything
that fails validation: dead-lettered with the reason. The digests are the ledger's own
(``projections.ledger``), so the gate and an offline ``caretally replay`` of the same
lines agree on what is new, duplicate or conflicting.

The gate's index is rebuilt from the log's ``idem``/``body`` headers at start: the log
is the truth, and this worker is its only writer.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from projections.digest_index import DigestIndex
from projections.ledger import body_digest, idempotency_digest
from schemas.events import Event, EventRejected, MonthClosed, PracticeConfigured, parse_event


class Verdict(Enum):
    NEW = "new"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    raw: bytes
    event: Event | None = None
    reason: str | None = None
    idem: int = 0
    body: int = 0

    @property
    def practice_wide(self) -> bool:
        """Events every partition's fold needs (written to every partition of the log)."""
        return isinstance(self.event, PracticeConfigured | MonthClosed)


def to_bytes(digest: int) -> bytes:
    return digest.to_bytes(8, "big")


def log_headers(idem: int, body: int) -> list[tuple[str, bytes]]:
    """The headers of a record of the log (``idem``, ``body``): all its writers use them."""
    return [("idem", to_bytes(idem)), ("body", to_bytes(body))]


def from_bytes(raw: bytes) -> int:
    return int.from_bytes(raw, "big")


class IngressGate:
    """Decides each ingress record; remembers what the log holds."""

    def __init__(self) -> None:
        self.index = DigestIndex()

    def learn(self, idem: int, body: int) -> None:
        """Record an event already in the log (rebuild from log headers)."""
        if self.index.get(idem) is None:
            self.index.add(idem, body)

    def decide(self, value: bytes | None) -> Decision:
        raw = (value or b"").strip()
        if not raw:
            return Decision(Verdict.REJECTED, raw, reason="empty record")
        try:
            event = parse_event(raw)
        except EventRejected as exc:
            return Decision(Verdict.REJECTED, raw, reason=exc.reason)
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

"""What goes on ``care.webhooks.parked.v1`` (docs/webhooks.md "Parked deliveries").

Two kinds of record, both keyed by the org (``streams.kafka.records.org_key``), so all of
an org's records share a partition and keep their order, and the ``type`` header and
value field say which:

* ``parked``: a delivery that failed every attempt: the alert as sent, the webhook id,
  the attempts, the last status and error, the first and last attempt times, a
  ``parked_id`` (random) and where the alert was read (``source``). It holds the alert,
  so a patient id: the topic is PHI, like ``care.alerts.v1``.
* ``resolved``: ``webhooks replay`` finished a parked delivery (``outcome``
  ``delivered``, or ``parked_again`` with the ``parked_id`` of the new record). A parked
  record is done once a ``resolved`` record names its ``parked_id``; it follows the
  parked record in the same partition. No patient id.
"""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass
from typing import Any

import orjson

from streams.kafka.records import Headers, header, org_key

PARKED = "parked"
RESOLVED = "resolved"
TYPE_HEADER = "type"


@dataclass(frozen=True, slots=True)
class Parked:
    parked_id: str
    webhook_id: str
    org_id: str
    alert_id: str
    kind: str
    alert: dict[str, Any]
    attempts: int
    last_status: int | None
    last_error: str
    first_attempt_at: str | None
    last_attempt_at: str | None
    parked_at: str
    replays: int = 0
    source: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Resolved:
    parked_id: str
    webhook_id: str
    org_id: str
    alert_id: str
    outcome: str
    at: str
    parked_again_as: str | None = None


def new_parked_id() -> str:
    return uuid.uuid4().hex


def record(item: Parked | Resolved) -> tuple[bytes, bytes, Headers]:
    """Key, value and headers of a record."""
    kind = PARKED if isinstance(item, Parked) else RESOLVED
    value = orjson.dumps({"type": kind, **asdict(item)})
    return org_key(item.org_id), value, [(TYPE_HEADER, kind.encode())]


def parse(value: bytes | None, headers: Any = None) -> Parked | Resolved | None:
    """A record read back; None when it is neither (a foreign or damaged record)."""
    if value is None:
        return None
    try:
        doc = orjson.loads(value)
        kind = doc.pop("type")
        if header(headers, TYPE_HEADER) not in (None, kind.encode()):
            return None
        if kind == PARKED:
            return Parked(**doc)
        if kind == RESOLVED:
            return Resolved(**doc)
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        return None
    return None

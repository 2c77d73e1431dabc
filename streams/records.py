"""What goes on each topic, byte for byte (one place, so producers and readers agree).

* ``care.ingress.v1``: key ``org_id:patient_id`` (``org_id:`` for practice-wide events),
  value the event's JSON exactly as the feed sent it.
* ``care.events.v1``: the same key and bytes once validated; headers ``idem`` and
  ``body`` carry the 8-byte idempotency and body digests so the ingress gate can
  rebuild its index from the log without parsing it. Practice-wide events
  (``practice.configured``, ``month.closed``) are written to every partition, since
  every partition's fold needs them; the fold ignores the repeats by ``event_id``.
* ``care.deadletter.v1``: the rejected raw bytes under the original key; headers
  ``reason``, ``source_topic``, ``source_partition``, ``source_offset``.
* ``care.billing.v1``: key ``org_id:patient_id:month``, value the ``caretally replay``
  JSON line of that patient-month (``None``, a tombstone, when the month no longer has
  anything in it); header ``progress`` is JSON ``[{family, practitioner_id, code,
  have_s, need_s}]``, where the month stands against each track's next threshold.
* ``care.alerts.v1``: key ``org_id:patient_id``, value an ``Alert`` as JSON.
* ``care.staff.v1`` (internal): key ``org_id:staff_id``, value a staff interval as JSON.
"""

from __future__ import annotations

from typing import Any

import orjson

from projections.billing import MonthBilling
from schemas.views import Alert

Headers = list[tuple[str, bytes]]


def event_key(org_id: str, patient_id: str | None) -> bytes:
    return f"{org_id}:{patient_id or ''}".encode()


def key_of(raw: bytes) -> bytes | None:
    """``event_key`` of a raw line that may not be a valid event (None without an org_id)."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("org_id"), str):
        return None
    patient = obj.get("patient_id")
    return event_key(obj["org_id"], patient if isinstance(patient, str) else None)


def billing_key(org_id: str, patient_id: str, month: str) -> bytes:
    return f"{org_id}:{patient_id}:{month}".encode()


def billing_value(billing: MonthBilling | None) -> bytes | None:
    return None if billing is None else orjson.dumps(billing.view())


def progress_header(billing: MonthBilling) -> bytes:
    return orjson.dumps(
        [
            {
                "family": p.family,
                "practitioner_id": p.practitioner_id,
                "code": p.code,
                "have_s": p.have_s,
                "need_s": p.need_s,
            }
            for p in billing.progress
        ]
    )


def alert_value(alert: Alert) -> bytes:
    return alert.model_dump_json().encode()


def deadletter_headers(reason: str, topic: str, partition: int, offset: int) -> Headers:
    return [
        ("reason", reason.encode()),
        ("source_topic", topic.encode()),
        ("source_partition", str(partition).encode()),
        ("source_offset", str(offset).encode()),
    ]


def header(headers: Any, name: str) -> bytes | None:
    """A header's value from Kafka client headers (list of pairs, or a mapping)."""
    if not headers:
        return None
    items = headers.items() if isinstance(headers, dict) else headers
    for k, v in items:
        if k == name:
            return bytes(v) if v is not None else None
    return None

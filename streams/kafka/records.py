"""What goes on each topic, byte for byte (one place, so producers and readers agree).

* ``care.ingress.v1``: key ``org_id:patient_id`` (``org_id:`` for practice-wide events),
  value the event's JSON exactly as the feed sent it.
* ``care.events.v1``: the same key and bytes once validated, with headers ``idem`` and
  ``body``; practice-wide events on every partition (``streams.kafka.log_writer``, the
  one rule every writer of the log follows).
* ``care.deadletter.v1``: the rejected raw bytes under the original key; headers
  ``reason``, ``source_topic``, ``source_partition``, ``source_offset``.
* ``care.billing.v1``: key ``org_id:patient_id:month``, value the ``caretally replay``
  JSON line of that patient-month (``None``, a tombstone, when the month no longer has
  anything in it); header ``progress`` is JSON ``[{family, practitioner_id, code,
  have_s, need_s}]``, where the month stands against each track's next threshold.
* ``care.alerts.v1``: key ``org_id:patient_id``, value an ``Alert`` as JSON.
* ``care.staff.v1`` (internal): key ``org_id:staff_id``, value a staff interval as JSON
  ``{org_id, staff_id, patient_id, activity_id, event_id, start, end, timezone, voided}``
  (:func:`staff_value`, read back by :func:`staff_item`).

Key parts are ids as the event gives them (``/`` and ``:`` escaped as ``/2F`` and ``/3A``,
which no valid id holds); ``key_parts`` decodes a key to its ids.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from projections.billing import MonthBilling
from projections.ledger import Activity
from projections.staff import StaffInterval, StaffVoid
from schemas.views import Alert

Headers = list[tuple[str, bytes]]


# Key parts are joined by ``:``. Identifiers cannot hold ``:`` or ``/`` (schemas.events), so
# a valid id is its own key part and every key of a valid event is what it always was (the
# partitioning of existing logs is unchanged); anything else has ``/`` and ``:`` escaped,
# with ``/`` as the escape, so no two tuples of ids ever share a key. Readers decode a key
# back to its tuple (``key_parts``) and compare tuples, never joined bytes or prefixes.
_UNESCAPE = re.compile("/(2F|3A)")


def _part(text: str) -> str:
    if "/" not in text and ":" not in text:
        return text
    return text.replace("/", "/2F").replace(":", "/3A")


def _join(*parts: str) -> bytes:
    return ":".join(map(_part, parts)).encode()


def key_parts(key: bytes | None) -> tuple[str, ...] | None:
    """The ids a key was made of (inverse of ``event_key``/``billing_key``/``staff_key``;
    the practice-wide ``event_key(org, None)`` gives ``(org, "")``); None if not a key."""
    if key is None:
        return None
    try:
        text = bytes(key).decode()
    except UnicodeDecodeError:
        return None
    parts = []
    for part in text.split(":"):
        plain = _UNESCAPE.sub(lambda m: chr(int(m.group(1), 16)), part)
        if _part(plain) != part:  # not what _part writes (a stray "/")
            return None
        parts.append(plain)
    return tuple(parts)


def org_key(org_id: str) -> bytes:
    """The org's part of every key of its records (what ingress is partitioned by)."""
    return _part(org_id).encode()


def event_key(org_id: str, patient_id: str | None) -> bytes:
    return _join(org_id, patient_id or "")


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
    return _join(org_id, patient_id, month)


def staff_key(org_id: str, staff_id: str) -> bytes:
    return _join(org_id, staff_id)


def staff_value(
    org_id: str, patient_id: str | None, event_id: str, activity: Activity, tz: str, voided: bool
) -> bytes:
    """A ``care.staff.v1`` value: one activity interval of a staff member (or its void)."""
    item = {
        "org_id": org_id,
        "staff_id": activity.staff_id,
        "patient_id": patient_id,
        "activity_id": activity.activity_id,
        "event_id": event_id,
        "start": activity.start,
        "end": activity.end,
        "timezone": tz,
        "voided": voided,
    }
    return orjson.dumps(item)


def staff_item(value: bytes) -> StaffInterval | StaffVoid:
    """A ``care.staff.v1`` value read back (``KeyError``/``TypeError``/``ValueError`` when
    it is not one)."""
    d = orjson.loads(value)
    if d["voided"]:
        return StaffVoid(
            d["org_id"], d["staff_id"], d["patient_id"], d["activity_id"], d["event_id"]
        )
    return StaffInterval(
        d["org_id"],
        d["staff_id"],
        d["patient_id"],
        d["activity_id"],
        d["event_id"],
        d["start"],
        d["end"],
        d["timezone"],
    )


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


def context_header(billing: MonthBilling, timezone: str) -> bytes:
    """What a reader of the view needs besides it (the pages of ``caretally serve``): the
    practice's time zone (days left in the month) and the billing practitioners the
    month's lines and tracks name."""
    named = [ln.practitioner_id for ln in billing.billable]
    named += [b.line.practitioner_id for b in billing.blocked]
    named += [p.practitioner_id for p in billing.progress]
    practitioners = sorted({p for p in named if p})
    return orjson.dumps({"timezone": timezone, "practitioners": practitioners})


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

"""Hostile identifiers and JSON (issue #9, items 2 and 9): ids that would join into another
tenant's keys, and objects that name a key twice, as raw event bytes."""

from __future__ import annotations

import orjson

from support.http import activity

ID_RULE = "must be printable text without ':', '/', control characters or edge spaces"
EVENT_ID_RULE = "must be printable text without control characters"


def raw_activity(org: str, patient: str, event_id: str = "e1") -> bytes:
    return orjson.dumps({**activity(org, patient), "event_id": event_id})


def with_first(raw: bytes, key: bytes, first: bytes) -> bytes:
    """``raw`` with ``"key":first`` inserted before the object's own ``"key"``."""
    head = b'"' + key + b'":'
    at = raw.index(head)
    return raw[:at] + head + first + b"," + raw[at:]


ORG_A = raw_activity("org-a", "P-1")
DOUBLES = {
    "org_id": with_first(ORG_A, b"org_id", b'"org-b"'),
    "patient_id": with_first(ORG_A, b"patient_id", b'"P-2"'),
    "minutes": with_first(ORG_A, b"minutes", b"50"),  # nested, in data
    "data": with_first(ORG_A, b"data", b"{}"),
}

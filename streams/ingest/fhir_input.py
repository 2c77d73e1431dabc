"""FHIR R4 as ``ingest`` input: a Bundle (or one resource) or NDJSON of resources (a Bulk
Data export), mapped by :mod:`streams.fhir` to wire-contract events.

The input is read whole, because the mapping needs all of it: a patient's active
``Condition`` resources become one ``conditions.recorded`` (the event replaces the list),
and ``urn:uuid:`` references resolve inside the Bundle. It is bounded by
:data:`FHIR_MAX_BYTES`. Each event becomes an :class:`Outgoing` numbered by the entry (or
line) it came from; each entry that cannot be mapped becomes a ``letter_only`` record:
reported, dead-lettered with its JSON and the reason, never sent as an event.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, BinaryIO

import orjson

from schemas.events import parse_event
from streams.fhir.convert import Conversion, convert_document, convert_ndjson
from streams.ingest.sources import Outgoing
from streams.kafka.records import event_key

FHIR_MAX_BYTES = 256 * 1024 * 1024
SOURCE = "fhir"


class FhirInputTooLarge(Exception):
    """FHIR input over :data:`FHIR_MAX_BYTES` (it is read whole)."""

    def __init__(self) -> None:
        super().__init__(
            f"FHIR input is read whole and may be at most {FHIR_MAX_BYTES:,} bytes; "
            "split the export (e.g. one NDJSON file per resource type and patient group)"
        )


def _conversion(raw: bytes, org_id: str) -> tuple[Conversion, list[bytes], int]:
    """The conversion, each entry's bytes (for its dead letter) and the number of the first
    entry (Bundle entries count from 1 in what is reported; NDJSON lines are lines)."""
    text = raw.strip()
    document: Any = None
    if text.startswith(b"{"):
        try:
            document = orjson.loads(text)
        except orjson.JSONDecodeError:
            document = None  # several objects: NDJSON
    if isinstance(document, dict):
        conversion = convert_document(text, org_id, source=SOURCE)
        entries = document.get("entry") if document.get("resourceType") == "Bundle" else None
        if isinstance(entries, list):
            return conversion, [orjson.dumps(e) for e in entries], 1
        return conversion, [text], 1
    lines = raw.split(b"\n")
    return convert_ndjson(lines, org_id, source=SOURCE), [ln.strip() for ln in lines], 1


def fhir_records(stream: BinaryIO, org_id: str) -> Iterator[Outgoing]:
    """The events of a FHIR input as records to send, then its unmapped entries as
    dead letters; raises :class:`~streams.fhir.convert.FhirInputError` (the input is no
    FHIR at all) or :class:`FhirInputTooLarge` at once, before anything is sent."""
    raw = stream.read(FHIR_MAX_BYTES + 1)
    if len(raw) > FHIR_MAX_BYTES:
        raise FhirInputTooLarge
    conversion, entries, first = _conversion(raw, org_id)
    ndjson = conversion.bundle_type is None and len(entries) > 1
    origin_of: dict[int, int] = {}
    for entry, produced in enumerate(conversion.entry_events):
        for index in produced:
            origin_of.setdefault(index, entry)
    records = []
    for index, value in enumerate(conversion.events):
        event = parse_event(value)  # the mapper builds every event through the contract
        entry = origin_of.get(index, 0)
        number = entry + 1 if ndjson else entry + first
        records.append(Outgoing(number, value, event_key(event.org_id, event.patient_id), None))
    practice = event_key(org_id, None)
    for problem in conversion.problems:
        number = problem.entry if ndjson else problem.entry + first
        i = problem.entry - 1 if ndjson else problem.entry
        value = entries[i] if 0 <= i < len(entries) else raw.strip()
        reason = f"{problem.where}: {problem.reason}"
        records.append(Outgoing(number, value, practice, reason, letter_only=True))
    return iter(records)

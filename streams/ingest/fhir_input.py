"""FHIR R4 as ``ingest`` input: a Bundle (or one resource) or NDJSON of resources (a Bulk
Data export), mapped by :mod:`streams.fhir` to wire-contract events.

The input is read whole, because the mapping needs all of it: a patient's active
``Condition`` resources become one ``conditions.recorded`` (the event replaces the list),
and ``urn:uuid:`` references resolve inside the Bundle. It is bounded by
:data:`~streams.fhir.convert.FHIR_MAX_BYTES`, and told apart (one document or NDJSON) by
:func:`~streams.fhir.convert.convert_input`, as ``caretally convert`` does. Each event
becomes an :class:`Outgoing` numbered by the entry (or line) it came from; each entry
that cannot be mapped becomes a ``letter_only`` record: reported, dead-lettered with its
JSON and the reason, never sent as an event.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

from streams.fhir.convert import FHIR_MAX_BYTES, SOURCE, convert_input
from streams.ingest.sources import Outgoing
from streams.kafka.records import event_key

__all__ = ["FHIR_MAX_BYTES", "SOURCE", "FhirInputTooLarge", "fhir_records"]


class FhirInputTooLarge(Exception):
    """FHIR input over :data:`FHIR_MAX_BYTES` (it is read whole)."""

    def __init__(self) -> None:
        super().__init__(
            f"FHIR input is read whole and may be at most {FHIR_MAX_BYTES:,} bytes; "
            "split the export (e.g. one NDJSON file per resource type and patient group)"
        )


def fhir_records(stream: BinaryIO, org_id: str) -> Iterator[Outgoing]:
    """The events of a FHIR input as records to send, then its unmapped entries as
    dead letters; raises :class:`~streams.fhir.convert.FhirInputError` (the input is no
    FHIR at all) or :class:`FhirInputTooLarge` at once, before anything is sent.

    Numbers count from 1: a Bundle's entry ``i`` is ``i + 1``, an NDJSON line its number,
    a lone resource 1."""
    raw = stream.read(FHIR_MAX_BYTES + 1)
    if len(raw) > FHIR_MAX_BYTES:
        raise FhirInputTooLarge
    conversion = convert_input(raw, org_id, source=SOURCE)
    bundle = conversion.bundle_type is not None
    origin_of: dict[int, int] = {}
    for slot, produced in enumerate(conversion.entry_events):
        for index in produced:
            origin_of.setdefault(index, slot)
    records = [
        Outgoing(origin_of.get(i, 0) + 1, value, event_key(org_id, patient), None)
        for i, (value, patient) in enumerate(
            zip(conversion.events, conversion.patients, strict=True)
        )
    ]
    practice = event_key(org_id, None)
    for problem in conversion.problems:
        number = problem.entry + 1 if bundle else max(problem.entry, 1)
        reason = f"{problem.where}: {problem.reason}"
        records.append(Outgoing(number, problem.value or b"", practice, reason, letter_only=True))
    return iter(records)

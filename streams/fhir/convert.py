"""FHIR R4 in, wire-contract v1 events out (docs/fhir.md): the public API of the room.

A Bundle (transaction, batch or collection), a single resource, or NDJSON (one resource
per line, as a Bulk Data ``$export`` writes it) is read whole: references resolve inside
the input, and a patient's Conditions become one ``conditions.recorded`` together. Every
resource is validated with its ``fhir.resources.R4B`` model first. Each entry either
produces events or is an :class:`EntryProblem`; none is dropped silently. The events are
byte-identical for the same input, so a re-sent resource is a no-op for the ledger.

Pure translation: no I/O, no logging (reasons never repeat a patient id).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from pydantic import ValidationError

from schemas.events import EventRejected, parse_event
from streams.fhir import codes
from streams.fhir.mapping import MAPPERS, ConditionPart, Context, Mapped
from streams.fhir.refs import Entries, Unmapped, digest, fit, identity

BUNDLE_TYPES = ("transaction", "batch", "collection")
FHIR_VERSION = "4.0.1"
"""What the mapping reads: FHIR R4, validated with the R4B (4.3.0) models of
fhir.resources, identical for every resource mapped here (docs/fhir.md "Which FHIR")."""
MAX_ERRORS = 3  # validation errors named per entry


@dataclass(frozen=True, slots=True)
class EntryProblem:
    """An entry that produced no event, and why."""

    entry: int  # 0-based index in Bundle.entry, or 1-based line number of NDJSON input
    where: str  # FHIRPath-ish location for an OperationOutcome: "Bundle.entry[3]", "line 7"
    resource: str | None  # "Encounter/abc" (type/id) when known, else None
    reason: str  # clear, safe to show the sender
    code: str = "invalid"  # the OperationOutcome issue type


@dataclass(frozen=True, slots=True)
class Conversion:
    events: list[bytes]  # wire-contract v1 JSON, one event each
    problems: list[EntryProblem]  # every entry that produced no event, and why
    entries: int  # entries (or NDJSON lines) read
    bundle_type: str | None  # "transaction" | "batch" | "collection"; None: NDJSON, a resource
    entry_events: list[list[int]]  # per entry (NDJSON: per line, from line 1): event indices


class FhirInputError(ValueError):
    """The whole document is unreadable (not JSON, not a Bundle of an accepted type, ...)."""


@dataclass(slots=True)
class _Item:
    """One entry (or line) on its way: its slot in ``entry_events``."""

    slot: int
    entry: int
    where: str
    resource: dict[str, Any] | None = None
    full_url: str | None = None
    problem: tuple[str, str] | None = None  # (reason, code) found while reading it


def convert_document(raw: bytes, org_id: str, *, source: str = "fhir") -> Conversion:
    """One JSON document: a Bundle (transaction, batch or collection) or one resource."""
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise FhirInputError(f"not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise FhirInputError("not a FHIR resource: a JSON object with a resourceType expected")
    rtype = document.get("resourceType")
    if not isinstance(rtype, str):
        raise FhirInputError("not a FHIR resource: no resourceType")
    if rtype != "Bundle":
        return _convert([_read_resource(0, 0, rtype, document, None)], org_id, source, None)
    kind = document.get("type")
    if kind not in BUNDLE_TYPES:
        raise FhirInputError(
            f"Bundle.type {kind!r} is not accepted; send a transaction, batch or collection"
        )
    entries = document.get("entry", [])
    if not isinstance(entries, list):
        raise FhirInputError("Bundle.entry: must be a list")
    shell = {k: v for k, v in document.items() if k != "entry"}
    if (problem := _invalid("Bundle", shell)) is not None:
        raise FhirInputError(problem)
    items = [_read_entry(i, e) for i, e in enumerate(entries)]
    return _convert(items, org_id, source, kind)


def convert_ndjson(lines: Iterable[bytes], org_id: str, *, source: str = "fhir") -> Conversion:
    """NDJSON, one resource per line (Bulk Data ``$export`` style); blank lines are skipped
    (they keep their slot in ``entry_events``)."""
    items = []
    for slot, line in enumerate(lines):
        number = slot + 1
        item = _Item(slot, number, f"line {number}")
        text = line.strip()
        if not text:
            item.problem = ("", "")  # blank: nothing to convert, no problem
            items.append(item)
            continue
        try:
            resource = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            item.problem = (f"not JSON: {exc}", "structure")
            items.append(item)
            continue
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            item.problem = ("not a FHIR resource (a JSON object with a resourceType)", "structure")
            items.append(item)
            continue
        items.append(_read_resource(slot, number, f"line {number}", resource, None))
    return _convert(items, org_id, source, None)


def operation_outcome(problems: Sequence[EntryProblem]) -> dict[str, Any]:
    """An R4 OperationOutcome: one error issue per problem (an information issue if none:
    the resource needs at least one)."""
    issues = [
        {
            "severity": "error",
            "code": p.code,
            "diagnostics": p.reason if p.resource is None else f"{p.resource}: {p.reason}",
            "expression": [p.where],
        }
        for p in problems
    ]
    if not issues:
        issues = [
            {"severity": "information", "code": "informational", "diagnostics": "no problems"}
        ]
    return {"resourceType": "OperationOutcome", "issue": issues}


# -- reading ------------------------------------------------------------------------------


def _read_entry(index: int, entry: Any) -> _Item:
    where = f"Bundle.entry[{index}]"
    item = _Item(index, index, where)
    if not isinstance(entry, dict):
        item.problem = ("not a Bundle entry (a JSON object)", "structure")
        return item
    request = entry.get("request")
    method = request.get("method") if isinstance(request, dict) else None
    if method == "DELETE":
        item.problem = (
            "request.method DELETE is not mapped; send the resource with status "
            "entered-in-error to withdraw what it recorded",
            "not-supported",
        )
        return item
    resource = entry.get("resource")
    if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
        item.problem = ("no resource (a JSON object with a resourceType)", "required")
        return item
    full_url = entry.get("fullUrl") if isinstance(entry.get("fullUrl"), str) else None
    shell = {k: v for k, v in entry.items() if k != "resource"}
    if (problem := _invalid("BundleEntry", shell, "Bundle.entry")) is not None:
        item.problem = (problem, "invalid")
        return item
    return _read_resource(index, index, where, resource, full_url)


def _read_resource(
    slot: int, entry: int, where: str, resource: dict[str, Any], full_url: str | None
) -> _Item:
    item = _Item(slot, entry, where, resource, full_url)
    rtype = resource["resourceType"]
    if rtype not in MAPPERS and rtype not in codes.REFERENCE_ONLY:
        item.problem = (
            f"resource type {rtype!r} is not mapped; mapped are "
            f"{', '.join(sorted(MAPPERS))} (and {', '.join(sorted(codes.REFERENCE_ONLY))} "
            "for references)",
            "not-supported",
        )
    elif (problem := _invalid(rtype, resource)) is not None:
        item.problem = (problem, "invalid")
    return item


_FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}|[0-9]{1,6}")


def _invalid(model: str, data: dict[str, Any], prefix: str | None = None) -> str | None:
    """Why ``data`` is not a valid R4B ``model`` (at most :data:`MAX_ERRORS` fields
    named), or None. Values are never repeated; an unknown key only if it looks like a
    field name."""
    from fhir.resources.R4B import get_fhir_model_class

    try:
        get_fhir_model_class(model).model_validate(data)
    except ValidationError as exc:
        parts = []
        for err in exc.errors(include_url=False, include_input=False)[:MAX_ERRORS]:
            steps = [str(s) for s in err["loc"]]
            steps = [s if _FIELD.fullmatch(s) else "<unknown field>" for s in steps]
            path = (prefix or model) + "".join(f"[{s}]" if s.isdigit() else f".{s}" for s in steps)
            msg = str(err["msg"]).removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "not an element of this resource in FHIR R4"
            parts.append(f"{path}: {msg}")
        more = len(exc.errors()) - MAX_ERRORS
        return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")
    except ValueError as exc:  # not a model name, or a model's own check
        return f"{prefix or model}: {exc}"
    return None


# -- mapping ------------------------------------------------------------------------------


@dataclass(slots=True)
class _Conditions:
    """A patient's Conditions in one input: they form that patient's chronic list."""

    patient_id: str
    codes: list[str] = field(default_factory=list)
    pairs: list[str] = field(default_factory=list)
    slots: list[int] = field(default_factory=list)
    entries: list[tuple[int, str, str | None]] = field(default_factory=list)  # entry, where, res
    latest: datetime | None = None


def _convert(items: list[_Item], org_id: str, source: str, kind: str | None) -> Conversion:
    problems: list[EntryProblem] = []
    index = Entries()
    for item in items:
        if item.resource is not None and item.problem is None:
            index.add(item.resource, item.full_url)
    # per slot: events (bytes) or the patient whose conditions event goes here
    produced: list[list[bytes | _Conditions]] = [[] for _ in items]
    conditions: dict[str, _Conditions] = {}
    for item in items:
        if item.problem is not None:
            if item.problem[0]:
                problems.append(EntryProblem(item.entry, item.where, _label(item), *item.problem))
            continue
        assert item.resource is not None
        rtype = item.resource["resourceType"]
        mapper = MAPPERS.get(rtype)
        if mapper is None:
            continue  # read for references only
        label: str | None = None
        try:
            who = identity(item.resource, item.full_url)
            label = who.label
            mapped = mapper(item.resource, Context(index, who))
        except Unmapped as exc:
            problems.append(EntryProblem(item.entry, item.where, label, exc.reason, exc.code))
            continue
        if isinstance(mapped, ConditionPart):
            group = conditions.get(mapped.patient_id)
            if group is None:
                group = conditions[mapped.patient_id] = _Conditions(mapped.patient_id)
                produced[item.slot].append(group)
            if mapped.code is not None and mapped.code not in group.codes:
                group.codes.append(mapped.code)
            group.pairs.append(who.pair)
            group.slots.append(item.slot)
            group.entries.append((item.entry, item.where, who.label))
            if group.latest is None or mapped.recorded_at > group.latest:
                group.latest = mapped.recorded_at
            continue
        produced[item.slot].append(_envelope(mapped, who.event_id, org_id, source))
    return _assemble(items, produced, problems, kind, org_id, source)


def _envelope(mapped: Mapped, event_id: str, org_id: str, source: str) -> bytes:
    return orjson.dumps(
        {
            "event_id": event_id,
            "type": mapped.type,
            "schema_version": 1,
            "org_id": org_id,
            "patient_id": mapped.patient_id,
            "recorded_at": mapped.recorded_at.isoformat(),
            "source": source,
            "data": mapped.data,
        }
    )


def _conditions_event(group: _Conditions, org_id: str, source: str) -> bytes:
    """The patient's chronic list; its id names the (id, version) of every Condition in it."""
    assert group.latest is not None
    event_id = fit("fhir:conditions/" + digest("\x1f".join(group.pairs)), "fhir:conditions/")
    mapped = Mapped("conditions.recorded", group.patient_id, {"chronic": group.codes}, group.latest)
    return _envelope(mapped, event_id, org_id, source)


def _assemble(
    items: list[_Item],
    produced: list[list[bytes | _Conditions]],
    problems: list[EntryProblem],
    kind: str | None,
    org_id: str,
    source: str,
) -> Conversion:
    """Check every event against the wire contract and number them in entry order (a
    patient's conditions event at its first Condition)."""
    events: list[bytes] = []
    entry_events: list[list[int]] = [[] for _ in items]
    seen: dict[str, bytes] = {}
    for item in items:
        for part in produced[item.slot]:
            if isinstance(part, _Conditions):
                value = _conditions_event(part, org_id, source)
                owners = list(zip(part.slots, part.entries, strict=True))
            else:
                value = part
                owners = [(item.slot, (item.entry, item.where, _label(item)))]
            reason = _refusal(value, seen)
            if reason is not None:
                for _slot, (entry, where, label) in owners:
                    problems.append(EntryProblem(entry, where, label, reason, "invalid"))
                continue
            for slot, _owner in owners:
                entry_events[slot].append(len(events))
            events.append(value)
    problems.sort(key=lambda p: p.entry)
    return Conversion(events, problems, len(items), kind, entry_events)


def _refusal(value: bytes, seen: dict[str, bytes]) -> str | None:
    """Why an event cannot be sent: the wire contract refuses it, or this input already
    holds the same event id with another body (one resource version sent twice, changed)."""
    try:
        event = parse_event(value)
    except EventRejected as exc:
        return f"the event it maps to breaks the wire contract: {exc.reason}"
    prior = seen.setdefault(event.event_id, value)
    if prior != value:
        return (
            "this input holds the same resource version (id and meta.versionId) twice with "
            "different content; give each change a new versionId"
        )
    return None


def _label(item: _Item) -> str | None:
    """``Type/id`` of an entry's resource; never a Patient's (its id is PHI)."""
    if item.resource is None or item.resource.get("resourceType") == "Patient":
        return None
    try:
        return identity(item.resource, item.full_url).label
    except Unmapped:
        return None


__all__ = [
    "BUNDLE_TYPES",
    "Conversion",
    "EntryProblem",
    "FhirInputError",
    "convert_document",
    "convert_ndjson",
    "operation_outcome",
]

"""FHIR R4 in, wire-contract v1 events out (docs/fhir.md): the public API of the room.

A Bundle (transaction, batch or collection), a single resource, or NDJSON (one resource
per line, as a Bulk Data ``$export`` writes it) is read whole: references resolve inside
the input, and a patient's Conditions become one ``conditions.recorded`` together. Every
resource is validated with its ``fhir.resources.R4B`` model first. Each entry either
produces events or is an :class:`EntryProblem`; none is dropped silently, and nothing in
one entry can crash the conversion (it is that entry's problem). The events are
byte-identical for the same input, so a re-sent resource is a no-op for the ledger.

Pure translation: no I/O, no logging (reasons never repeat a patient id).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from pydantic import ValidationError

from schemas.events import EventRejected, parse_event
from streams.fhir import codes
from streams.fhir.mapping import MAPPERS, PATIENT, ConditionPart, Context, Mapped
from streams.fhir.refs import (
    Entries,
    Identity,
    Lookup,
    Unmapped,
    content_digest,
    digest,
    fit,
    identity,
    known_type,
    resolve,
)

BUNDLE_TYPES = ("transaction", "batch", "collection")
"""The Bundle types read (a collection is read as a batch)."""
SOURCE = "fhir"
"""The wire-contract ``source`` of the events mapped from FHIR."""
FHIR_MAX_BYTES = 64 * 1024 * 1024
"""An input is read whole (references resolve across it, a patient's Conditions are
grouped): at most this many bytes, decompressed."""
FHIR_VERSION = "4.0.1"
"""What the mapping reads: FHIR R4, validated with the R4B (4.3.0) models of
fhir.resources, identical for every resource mapped here (docs/fhir.md "Which FHIR")."""
MAX_ERRORS = 3  # validation errors named per entry
MAX_DEPTH = 64
"""Nesting (JSON objects and arrays) an entry may have: real resources stay far below;
a deeper one is a problem, never a RecursionError in the validation."""


@dataclass(frozen=True, slots=True)
class EntryProblem:
    """An entry that produced no event, and why."""

    entry: int  # 0-based index in Bundle.entry, or 1-based line number of NDJSON input
    where: str  # FHIRPath-ish location for an OperationOutcome: "Bundle.entry[3]", "line 7"
    resource: str | None  # "Encounter/abc" (type/id) when known, else None
    reason: str  # clear, safe to show the sender
    code: str = "invalid"  # the OperationOutcome issue type
    value: bytes | None = None  # the entry (NDJSON: the line) as JSON, for its dead letter


@dataclass(frozen=True, slots=True)
class Conversion:
    events: list[bytes]  # wire-contract v1 JSON, one event each
    problems: list[EntryProblem]  # every entry that produced no event, and why
    entries: int  # entries (or NDJSON lines) read
    bundle_type: str | None  # "transaction" | "batch" | "collection"; None: NDJSON, a resource
    entry_events: list[list[int]]  # per entry (NDJSON: per line, from line 1): event indices
    patients: list[str | None] = field(default_factory=list)  # per event: its patient_id


class FhirInputError(ValueError):
    """The whole document is unreadable (not JSON, not a Bundle of an accepted type, ...)."""


@dataclass(slots=True)
class _Item:
    """One entry (or line) on its way: its slot in ``entry_events``."""

    slot: int
    entry: int
    where: str
    sent: Any = None  # the entry as sent (bytes: an NDJSON line or the document)
    resource: dict[str, Any] | None = None
    full_url: str | None = None
    problem: tuple[str, str] | None = None  # (reason, code) found while reading it
    blank: bool = False  # an empty NDJSON line: nothing to convert, no problem


_ARRAY = (
    "a JSON array is not FHIR input: send a Bundle, one resource, or NDJSON (one resource per line)"
)


def convert_input(raw: bytes, org_id: str, *, source: str = SOURCE) -> Conversion:
    """Any FHIR input, told apart by content: one JSON document (a Bundle or a resource)
    or NDJSON. What ``caretally convert`` and ``ingest --input-format fhir`` read."""
    text = raw.strip()
    if not text:
        raise FhirInputError("empty: give a FHIR Bundle, a resource or NDJSON of resources")
    try:
        document = orjson.loads(text)
    except orjson.JSONDecodeError:
        pass
    else:
        return _convert_document(document, text, org_id, source)
    lines = raw.rstrip().split(b"\n")  # a final newline ends the last line: no line after it
    first = next(line.strip() for line in lines if line.strip())
    try:
        head = orjson.loads(first)
    except orjson.JSONDecodeError as exc:
        raise FhirInputError(f"not JSON, nor NDJSON (one JSON object per line): {exc}") from None
    if isinstance(head, list):
        raise FhirInputError(_ARRAY)
    if not isinstance(head, dict):
        raise FhirInputError("not a FHIR resource: a JSON object with a resourceType expected")
    return convert_ndjson(lines, org_id, source=source)


def convert_document(raw: bytes, org_id: str, *, source: str = SOURCE) -> Conversion:
    """One JSON document: a Bundle (transaction, batch or collection) or one resource."""
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise FhirInputError(f"not JSON: {exc}") from None
    return _convert_document(document, raw, org_id, source)


def convert_ndjson(lines: Iterable[bytes], org_id: str, *, source: str = SOURCE) -> Conversion:
    """NDJSON, one resource per line (Bulk Data ``$export`` style); blank lines are skipped
    (they keep their slot in ``entry_events``)."""
    items = []
    for slot, line in enumerate(lines):
        number = slot + 1
        text = line.strip()
        item = _Item(slot, number, f"line {number}", text, blank=not text)
        if text:
            _guarded(item, _read_line, item, text)
        items.append(item)
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


def _convert_document(document: Any, raw: bytes, org_id: str, source: str) -> Conversion:
    if isinstance(document, list):
        raise FhirInputError(_ARRAY)
    if not isinstance(document, dict):
        raise FhirInputError("not a FHIR resource: a JSON object with a resourceType expected")
    rtype = document.get("resourceType")
    if not isinstance(rtype, str):
        raise FhirInputError("not a FHIR resource: no resourceType")
    if rtype != "Bundle":
        item = _Item(0, 0, rtype if known_type(rtype) else "resource", raw)
        _guarded(item, _read_resource, item, document, None)
        return _convert([item], org_id, source, None)
    kind = document.get("type")
    if kind not in BUNDLE_TYPES:
        shown = repr(kind) if isinstance(kind, str) and re.fullmatch(r"[a-z-]{1,32}", kind) else ""
        raise FhirInputError(
            f"Bundle.type {shown or '(missing or unknown)'} is not accepted; send a "
            "transaction, batch or collection"
        )
    entries = document.get("entry", [])
    if not isinstance(entries, list):
        raise FhirInputError("Bundle.entry: must be a list")
    shell = {k: v for k, v in document.items() if k != "entry"}
    if _too_deep(shell):
        raise FhirInputError(f"Bundle: nested deeper than {MAX_DEPTH} levels")
    if (problem := _invalid("Bundle", shell)) is not None:
        raise FhirInputError(problem)
    items = []
    for index, entry in enumerate(entries):
        item = _Item(index, index, f"Bundle.entry[{index}]", entry)
        _guarded(item, _read_entry, item, entry)
        items.append(item)
    return _convert(items, org_id, source, kind)


def _guarded(item: _Item, read: Any, *args: Any) -> None:
    """Run ``read``; any exception is the item's problem, never the input's crash."""
    try:
        read(*args)
    except Exception as exc:  # one entry's failure is that entry's problem
        item.problem = _broken(exc)


def _broken(exc: BaseException) -> tuple[str, str]:
    """An entry that raised while read or mapped: named by the exception type, no values."""
    return f"could not be read: {type(exc).__name__}", "exception"


def _read_line(item: _Item, text: bytes) -> None:
    try:
        resource = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        item.problem = (f"not JSON: {exc}", "structure")
        return
    if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
        item.problem = ("not a FHIR resource (a JSON object with a resourceType)", "structure")
        return
    _read_resource(item, resource, None)


def _read_entry(item: _Item, entry: Any) -> None:
    if not isinstance(entry, dict):
        item.problem = ("not a Bundle entry (a JSON object)", "structure")
        return
    resource = entry.get("resource")
    if isinstance(resource, dict) and isinstance(resource.get("resourceType"), str):
        item.resource = resource  # known before the checks: a bad Condition withholds a list
    request = entry.get("request")
    method = request.get("method") if isinstance(request, dict) else None
    if method == "DELETE":
        item.problem = (
            "request.method DELETE is not mapped; send the resource with status "
            "entered-in-error to withdraw what it recorded",
            "not-supported",
        )
        return
    if item.resource is None:
        item.problem = ("no resource (a JSON object with a resourceType)", "required")
        return
    full_url = entry.get("fullUrl") if isinstance(entry.get("fullUrl"), str) else None
    shell = {k: v for k, v in entry.items() if k != "resource"}
    if _too_deep(shell):
        item.problem = (f"nested deeper than {MAX_DEPTH} levels", "structure")
        return
    if (problem := _invalid("BundleEntry", shell, "Bundle.entry")) is not None:
        item.problem = (problem, "invalid")
        return
    _read_resource(item, item.resource, full_url)


def _read_resource(item: _Item, resource: dict[str, Any], full_url: str | None) -> None:
    item.resource, item.full_url = resource, full_url
    rtype = resource["resourceType"]
    if rtype not in MAPPERS and rtype not in codes.REFERENCE_ONLY:
        named = repr(rtype) if known_type(rtype) else "(unknown)"
        item.problem = (
            f"resource type {named} is not mapped; mapped are "
            f"{', '.join(sorted(MAPPERS))} (and {', '.join(sorted(codes.REFERENCE_ONLY))} "
            "for references)",
            "not-supported",
        )
    elif _too_deep(resource):
        item.problem = (f"nested deeper than {MAX_DEPTH} levels", "structure")
    elif (problem := _invalid(rtype, resource)) is not None:
        item.problem = (problem, "invalid")


def _too_deep(value: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether JSON ``value`` nests objects and arrays deeper than ``limit`` (iteratively:
    no recursion to exhaust)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if not isinstance(node, dict | list):
            continue
        if depth > limit:
            return True
        children = node.values() if isinstance(node, dict) else node
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


_FIELD = re.compile(r"_?[a-z][A-Za-z]{0,63}|[0-9]{1,6}")
"""What a validation error may name: a FHIR element name (lowerCamelCase, ``_`` before a
primitive's extensions) or an array index; any other key may be data (an MRN, a name)."""


def _invalid(model: str, data: dict[str, Any], prefix: str | None = None) -> str | None:
    """Why ``data`` is not a valid R4B ``model`` (at most :data:`MAX_ERRORS` fields
    named), or None. Values are never repeated; an unknown key only if it looks like an
    element name."""
    from fhir.resources.R4B import get_fhir_model_class

    try:
        get_fhir_model_class(model).model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        parts = []
        for err in errors[:MAX_ERRORS]:
            steps = [str(s) for s in err["loc"]]
            steps = [s if _FIELD.fullmatch(s) else "<unknown field>" for s in steps]
            if err["type"] == "extra_forbidden" and steps:  # a key the sender made up:
                steps[-1] = "<unknown field>"  # never named (it may be data, even letters)
            path = (prefix or model) + "".join(f"[{s}]" if s.isdigit() else f".{s}" for s in steps)
            msg = str(err["msg"]).removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "not an element of this resource in FHIR R4"
            parts.append(f"{path}: {msg}")
        more = len(errors) - MAX_ERRORS
        return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")
    except RecursionError:
        return f"{prefix or model}: nested too deeply to validate"
    except ValueError as exc:  # not a model name, or a model's own check
        return f"{prefix or model}: {exc}"
    return None


# -- mapping ------------------------------------------------------------------------------

_DUPLICATE_VERSION = (
    "this input holds the same resource version (id and meta.versionId) twice with "
    "different content; give each change a new versionId"
)


@dataclass(slots=True)
class _Conditions:
    """A patient's Conditions in one input: they form that patient's chronic list."""

    patient_id: str
    codes: list[str] = field(default_factory=list)
    pairs: list[str] = field(default_factory=list)
    context: set[str] = field(default_factory=set)
    items: list[_Item] = field(default_factory=list)
    latest: datetime | None = None


@dataclass(slots=True)
class _Condition:
    """One Condition entry: mapped (``part``) or a problem; its patient when known."""

    item: _Item
    patient: str | None
    part: ConditionPart | None = None
    pair: str = ""
    context: list[str] = field(default_factory=list)
    again: bool = False  # the same version already read (an identical NDJSON line)


def _convert(items: list[_Item], org_id: str, source: str, kind: str | None) -> Conversion:
    index = Entries()
    for item in items:
        if (
            item.resource is not None
            and item.problem is None
            and not index.add(item.resource, item.full_url, unique=kind is not None)
        ):
            item.problem = (
                "another entry of this Bundle has the same fullUrl, or the same "
                "resource type and id (FHIR rule bdl-7); send each resource once",
                "duplicate",
            )
    problems: list[EntryProblem] = []
    # per slot: events (bytes) or the patient whose conditions event goes here
    produced: list[list[bytes | _Conditions]] = [[] for _ in items]
    conditions: list[_Condition] = []
    versions: dict[str, str] = {}  # Type/key/version -> digest of the content read first
    for item in items:
        if item.blank or (item.resource is None and item.problem is None):
            continue
        result = None
        if item.problem is None:
            try:
                result = _map(item, index, versions)
            except Unmapped as exc:
                item.problem = (exc.reason, exc.code)
            except Exception as exc:  # one entry's failure is its problem
                item.problem = _broken(exc)
        if item.problem is not None:
            if item.resource is not None and item.resource.get("resourceType") == "Condition":
                conditions.append(_Condition(item, _patient_of(item, index)))
            else:
                problems.append(_problem(item, *item.problem))
            continue
        if result is None:
            continue  # read for references only
        mapped, who, context, again = result
        if isinstance(mapped, ConditionPart):
            conditions.append(_Condition(item, mapped.patient_id, mapped, who.pair, context, again))
            continue
        produced[item.slot].append(_envelope(mapped, who.event_id(context), org_id, source))
    problems += _group(conditions, produced)
    return _assemble(items, produced, problems, kind, org_id, source)


def _map(
    item: _Item, index: Entries, versions: dict[str, str]
) -> tuple[Mapped | ConditionPart, Identity, list[str], bool] | None:
    """The mapping of one valid entry, its identity, the versions of the other entries it
    consulted, and whether this very version was read before; None: references only."""
    assert item.resource is not None
    mapper = MAPPERS.get(item.resource["resourceType"])
    if mapper is None:
        return None
    who = identity(item.resource)
    content = content_digest(item.resource)
    again = who.pair in versions
    if versions.setdefault(who.pair, content) != content:
        raise Unmapped(_DUPLICATE_VERSION, "duplicate")
    lookup = Lookup(index)
    mapped = mapper(item.resource, Context(lookup, who))
    context = sorted({_pair_of(r) for r in lookup.consulted if r is not item.resource})
    return mapped, who, context, again


def _pair_of(resource: dict[str, Any]) -> str:
    """``Type/key/version`` of a consulted entry (its content digest if it has no key)."""
    try:
        return identity(resource).pair
    except Unmapped:
        return f"{resource.get('resourceType')}/_content/{content_digest(resource)}"


def _patient_of(item: _Item, index: Entries) -> str | None:
    """The patient of a Condition that is a problem, if its subject still says."""
    assert item.resource is not None
    try:
        return resolve(Lookup(index), item.resource.get("subject"), PATIENT, "subject")
    except Exception:  # unknown, then
        return None


def _group(
    conditions: list[_Condition], produced: list[list[bytes | _Conditions]]
) -> list[EntryProblem]:
    """Each patient's Conditions as one list, at the patient's first Condition. A patient
    with a Condition that is a problem gets no list (it replaces the previous one: a
    shorter list would drop a diagnosis); nor does anyone if that Condition names no
    patient that can be read. Every withheld Condition is a problem saying why."""
    bad: dict[str | None, _Item] = {}
    for c in conditions:
        if c.item.problem is not None:
            bad.setdefault(c.patient, c.item)
    problems = []
    groups: dict[str, _Conditions] = {}
    for c in conditions:
        if c.item.problem is not None:
            reason, code = c.item.problem
            problems.append(
                _problem(c.item, f"{reason}; the patient's conditions.recorded is withheld", code)
            )
            continue
        assert c.part is not None and c.patient is not None
        culprit = bad.get(c.patient) or bad.get(None)
        if culprit is not None:
            whose = "this patient" if culprit is bad.get(c.patient) else "an unknown patient"
            problems.append(
                _problem(
                    c.item,
                    f"withheld: the Condition at {culprit.where} (of {whose}) is a problem, and "
                    "conditions.recorded replaces the whole list; send the patient's "
                    "Conditions again once it is fixed",
                    "business-rule",
                )
            )
            continue
        group = groups.get(c.patient)
        if group is None:
            group = groups[c.patient] = _Conditions(c.patient)
            produced[c.item.slot].append(group)
        group.items.append(c.item)
        if c.again:
            continue
        if c.part.code is not None and c.part.code not in group.codes:
            group.codes.append(c.part.code)
        group.pairs.append(c.pair)
        group.context.update(c.context)
        if group.latest is None or c.part.recorded_at > group.latest:
            group.latest = c.part.recorded_at
    return problems


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
    """The patient's chronic list; its id names the (id, version) of every Condition in it
    and of every entry they were read with (the Patient of a urn:uuid)."""
    assert group.latest is not None
    names = "\x1f".join(group.pairs) + "\x1e" + "\x1f".join(sorted(group.context))
    event_id = fit("fhir:conditions/" + digest(names), "fhir:conditions/")
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
    patient's conditions event at its first Condition); an identical event is kept once."""
    events: list[bytes] = []
    patients: list[str | None] = []
    entry_events: list[list[int]] = [[] for _ in items]
    seen: dict[str, int] = {}
    for item in items:
        for part in produced[item.slot]:
            if isinstance(part, _Conditions):
                value, owners = _conditions_event(part, org_id, source), part.items
            else:
                value, owners = part, [item]
            try:
                event = parse_event(value)
            except EventRejected as exc:
                reason = f"the event it maps to breaks the wire contract: {exc.reason}"
                problems += [_problem(owner, reason, "invalid") for owner in owners]
                continue
            at = seen.setdefault(event.event_id, len(events))
            if at == len(events):
                events.append(value)
                patients.append(event.patient_id)
            elif events[at] != value:  # not expected: a version check above refuses it
                problems += [_problem(o, _DUPLICATE_VERSION, "duplicate") for o in owners]
                continue
            for owner in owners:
                entry_events[owner.slot].append(at)
    problems.sort(key=lambda p: p.entry)
    return Conversion(events, problems, len(items), kind, entry_events, patients)


def _problem(item: _Item, reason: str, code: str) -> EntryProblem:
    return EntryProblem(item.entry, item.where, _label(item), reason, code, _value(item))


def _value(item: _Item) -> bytes:
    """The entry as sent, as JSON (for its dead letter)."""
    if isinstance(item.sent, bytes):
        return item.sent
    try:
        return orjson.dumps(item.sent)
    except (orjson.JSONEncodeError, TypeError):  # deeper than orjson writes
        try:
            return json.dumps(item.sent).encode()
        except (RecursionError, ValueError, TypeError):
            return orjson.dumps("the entry is nested too deeply to repeat")


def _label(item: _Item) -> str | None:
    """``Type/id`` of an entry's resource; never a Patient's (its id is PHI), nor an
    unknown type's."""
    resource = item.resource
    if resource is None or resource.get("resourceType") == "Patient":
        return None
    try:
        if not known_type(resource["resourceType"]):
            return None
        return identity(resource).label
    except Exception:  # a label is a courtesy
        return None


__all__ = [
    "BUNDLE_TYPES",
    "FHIR_MAX_BYTES",
    "SOURCE",
    "Conversion",
    "EntryProblem",
    "FhirInputError",
    "convert_document",
    "convert_input",
    "convert_ndjson",
    "operation_outcome",
]

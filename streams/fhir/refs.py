"""Reading a FHIR resource: references, codings, dates and the identity of a version.

Everything here raises :class:`Unmapped` with a reason safe to show the sender; a reason
never repeats a reference's value (it may be a patient id).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from functools import lru_cache
from typing import Any

import orjson

from schemas.events import FIRST_DAY, LAST_DAY
from streams.fhir import codes

MAX_ID = 128  # schemas.events: event_id and Identifier are at most 128 characters
MAX_MINUTES = 1440  # schemas.events: ActivityLoggedData.minutes is at most 24 h


class Unmapped(Exception):
    """A resource that cannot become an event: ``reason`` for the sender, ``code`` an
    OperationOutcome issue type (``required``, ``not-supported``, ``invalid``, ``value``)."""

    def __init__(self, reason: str, code: str = "required") -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


def digest(data: str | bytes, size: int = 16) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return hashlib.blake2b(raw, digest_size=size).hexdigest()


# -- the entries of one input, for references --------------------------------------------


@dataclass(slots=True)
class Entries:
    """The valid resources of one input by ``fullUrl`` and by ``Type/id``."""

    by_url: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add(self, resource: dict[str, Any], full_url: str | None, *, unique: bool) -> bool:
        """Index ``resource``; with ``unique`` (a Bundle, FHIR rule bdl-7) refuse it (False)
        when another entry already has its fullUrl or its ``Type/id``."""
        names = []
        if full_url:
            names.append(full_url)
            literal = _literal(full_url)
            if literal is not None:
                names.append(f"{literal[0]}/{literal[1]}")
        rid = resource.get("id")
        if isinstance(rid, str):
            names.append(f"{resource['resourceType']}/{rid}")
        if unique and any(self.by_url.get(n, resource) is not resource for n in names):
            return False
        for name in names:
            self.by_url.setdefault(name, resource)
        return True

    def get(self, reference: str) -> dict[str, Any] | None:
        found = self.by_url.get(reference)
        if found is None and (literal := _literal(reference)) is not None:
            found = self.by_url.get(f"{literal[0]}/{literal[1]}")
        return found


class Lookup:
    """The entries as one mapping sees them: it notes every entry it consulted (their
    versions belong in the event id, as the body may depend on them)."""

    def __init__(self, entries: Entries) -> None:
        self.entries = entries
        self.consulted: list[dict[str, Any]] = []

    def get(self, reference: str) -> dict[str, Any] | None:
        found = self.entries.get(reference)
        if found is not None and all(found is not c for c in self.consulted):
            self.consulted.append(found)
        return found


@lru_cache(maxsize=512)
def known_type(name: str) -> bool:
    """Whether ``name`` is an R4B resource type (never echo anything else: a reference's
    path may be a name)."""
    from fhir.resources.R4B import get_fhir_model_class
    from fhir.resources.R4B.resource import Resource

    try:
        return issubclass(get_fhir_model_class(name), Resource)
    except ValueError:
        return False


def _literal(reference: str) -> tuple[str, str] | None:
    """``(Type, id)`` of a literal reference (relative or absolute, maybe with
    ``/_history/v``); None for ``urn:``, ``#contained`` or anything else."""
    if reference.startswith(("urn:", "#")):
        return None
    parts = reference.split("/")
    if len(parts) >= 4 and parts[-2] == "_history":
        parts = parts[:-2]
    if len(parts) >= 2 and parts[-2][:1].isupper() and parts[-1]:
        return parts[-2], parts[-1]
    return None


def resolve(
    entries: Lookup, ref: Any, types: tuple[str, ...], field_name: str, *, required: bool = True
) -> str | None:
    """The caretally id of what ``ref`` (a FHIR Reference) points to, one of ``types``:

    * ``Type/{id}`` (relative or absolute): ``{id}``;
    * ``urn:uuid:`` / ``urn:oid:``: the entry of this input with that ``fullUrl``, by
      :func:`own_id`;
    * a logical reference (``identifier`` only): its ``identifier.value`` (never an SSN or
      an MBI).
    """
    what = " or ".join(types)
    if not isinstance(ref, dict):
        if required:
            raise Unmapped(f"{field_name}: missing (a reference to a {what})")
        return None
    reference = ref.get("reference")
    if isinstance(reference, str):
        literal = _literal(reference)
        if literal is not None:
            if literal[0] not in types:
                other = f"a {literal[0]}" if known_type(literal[0]) else "another resource"
                raise Unmapped(f"{field_name}: must refer to a {what}, not {other}", "value")
            return literal[1]
        if reference.startswith("urn:"):
            target = entries.get(reference)
            if target is None:
                kind = reference.split(":")[1] if reference.count(":") >= 2 else ""
                named = f"a {kind} reference" if kind in ("uuid", "oid") else "a urn reference"
                raise Unmapped(
                    f"{field_name}: {named} with no entry of that fullUrl in this input "
                    f"(send the {what} in the same Bundle)"
                )
            if target.get("resourceType") not in types:
                raise Unmapped(
                    f"{field_name}: must refer to a {what}, not a {target.get('resourceType')}",
                    "value",
                )
            return own_id(target, field_name, what)
        raise Unmapped(
            f"{field_name}: a contained or unreadable reference; refer to a {what} as "
            f"{types[0]}/{{id}} or by the urn:uuid fullUrl of its entry",
            "not-supported",
        )
    identifier = ref.get("identifier")
    if isinstance(identifier, dict) and isinstance(identifier.get("value"), str):
        if identifier.get("system") in codes.REFUSED_IDENTIFIERS:
            raise Unmapped(
                f"{field_name}: an SSN or MBI is never an id here; refer to the {what} by "
                "its id or its medical record number",
                "value",
            )
        return str(identifier["value"])
    raise Unmapped(f"{field_name}: no reference and no identifier.value")


def _identifiers(resource: dict[str, Any]) -> list[dict[str, Any]]:
    found = resource.get("identifier")
    items = found if isinstance(found, list) else []
    return [i for i in items if isinstance(i, dict) and isinstance(i.get("value"), str)]


def chosen_identifier(resource: dict[str, Any]) -> dict[str, Any] | None:
    """The business identifier that names a resource without an id: the one typed ``MR``
    (v2-0203: a medical record number), else the first whose system is not an SSN or an
    MBI; None if there is none (an SSN or MBI alone is refused: it is no id to keep)."""
    usable = [i for i in _identifiers(resource) if i.get("system") not in codes.REFUSED_IDENTIFIERS]
    for ident in usable:
        if has_code(codes.V2_0203, ("MR",), ident.get("type")):
            return ident
    return usable[0] if usable else None


def own_id(resource: dict[str, Any], field_name: str, what: str) -> str:
    """The caretally id of an entry: its ``id``, else :func:`chosen_identifier`."""
    rid = resource.get("id")
    if isinstance(rid, str):
        return rid
    ident = chosen_identifier(resource)
    if ident is not None:
        return str(ident["value"])
    raise Unmapped(
        f"{field_name}: the {what} entry it refers to has no id and no identifier that may "
        "name it (an MR-typed one or another that is not an SSN or MBI)"
    )


def ref_type(entries: Lookup, ref: Any) -> str | None:
    """The resource type a Reference points to, when it says or its entry is here."""
    if not isinstance(ref, dict):
        return None
    reference = ref.get("reference")
    if isinstance(reference, str):
        if (literal := _literal(reference)) is not None:
            return literal[0]
        target = entries.get(reference) if reference.startswith("urn:") else None
        return None if target is None else str(target.get("resourceType"))
    kind = ref.get("type")
    return kind if isinstance(kind, str) else None


# -- codings ------------------------------------------------------------------------------


def codings(*concepts: Any) -> Iterator[dict[str, Any]]:
    """Every Coding of some CodeableConcepts (each maybe a list, or None)."""
    for concept in concepts:
        items = concept if isinstance(concept, list) else [concept]
        for item in items:
            if isinstance(item, dict):
                yield from (c for c in item.get("coding") or [] if isinstance(c, dict))


def code_of(system: str, *concepts: Any) -> str | None:
    """The first code of ``system`` among the concepts' codings."""
    for coding in codings(*concepts):
        if coding.get("system") == system and isinstance(coding.get("code"), str):
            return str(coding["code"])
    return None


def has_code(system: str, codes: Iterable[str], *concepts: Any) -> bool:
    wanted = set(codes)
    return any(c.get("system") == system and c.get("code") in wanted for c in codings(*concepts))


def label(concept: Any, default: str, skip: tuple[str, ...] = ()) -> str:
    """What a CodeableConcept says in words: its text, else the display or code of its first
    coding outside ``skip`` systems, else ``default``."""
    if isinstance(concept, list):
        concept = concept[0] if concept else None
    if isinstance(concept, dict):
        if isinstance(concept.get("text"), str) and concept["text"].strip():
            return str(concept["text"]).strip()[:200]
        for coding in codings(concept):
            if coding.get("system") in skip:
                continue
            for key in ("display", "code"):
                if isinstance(coding.get(key), str) and coding[key].strip():
                    return str(coding[key]).strip()[:200]
    return default


def extension_value(resource: dict[str, Any], url: str, key: str) -> Any:
    for ext in resource.get("extension") or []:
        if isinstance(ext, dict) and ext.get("url") == url:
            return ext.get(key)
    return None


# -- dates --------------------------------------------------------------------------------

NOON = time(12, tzinfo=UTC)
"""A date alone is recorded at its 12:00 UTC: the same calendar date from UTC-11 to UTC+11
(midnight UTC is the previous day all over the Americas)."""


def _in_range(moment: datetime, field_name: str) -> datetime:
    """``moment`` if the wire contract's calendar (1900-2199) holds it, else a problem."""
    if not FIRST_DAY.year <= moment.year <= LAST_DAY.year:
        raise Unmapped(
            f"{field_name}: out of range (years {FIRST_DAY.year}-{LAST_DAY.year})", "value"
        )
    return moment


def instant(value: Any, field_name: str) -> datetime:
    """A FHIR dateTime/instant with a time and a UTC offset."""
    if not isinstance(value, str):
        raise Unmapped(f"{field_name}: missing")
    if "T" not in value:
        raise Unmapped(f"{field_name}: needs a time of day with a UTC offset, not a date", "value")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise Unmapped(f"{field_name}: not an ISO-8601 date-time", "value") from None
    if moment.tzinfo is None:
        raise Unmapped(f"{field_name}: needs a UTC offset", "value")
    return _in_range(moment, field_name)


def day(value: Any, field_name: str) -> date:
    """The calendar day a FHIR date or dateTime names, as written (its own offset)."""
    if not isinstance(value, str):
        raise Unmapped(f"{field_name}: missing")
    try:
        return date.fromisoformat(value[:10])
    except ValueError:
        raise Unmapped(f"{field_name}: needs a full date (YYYY-MM-DD)", "value") from None


def moment_of(value: str) -> datetime | None:
    """An instant for ``recorded_at`` from a FHIR instant, dateTime or date (a date is its
    :data:`NOON`); None for a partial date or one out of the contract's range."""
    try:
        if "T" in value:
            moment = datetime.fromisoformat(value)
            if moment.tzinfo is None:
                return None
        elif len(value) == 10:
            moment = datetime.combine(date.fromisoformat(value), NOON)
        else:
            return None
    except ValueError:
        return None
    return moment if FIRST_DAY.year <= moment.year <= LAST_DAY.year else None


def minutes_of(length: Any, field_name: str) -> float:
    """An ``Encounter.length`` Duration in minutes (UCUM ``min`` or ``h``; the code before
    the unit), more than 0 and at most :data:`MAX_MINUTES`."""
    value = length.get("value") if isinstance(length, dict) else None
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise Unmapped(f"{field_name}.value: missing (a number of minutes)")
    unit = length.get("code") or length.get("unit")
    scale = {"min": 1, "h": 60}.get(str(unit))
    if scale is None:
        raise Unmapped(f"{field_name}: give the unit min or h (UCUM code)", "value")
    if not math.isfinite(value) or not 0 < value <= MAX_MINUTES / scale:
        raise Unmapped(
            f"{field_name}: more than 0 and at most {MAX_MINUTES} minutes (24 h)", "value"
        )
    return float(value) * scale


@dataclass(frozen=True, slots=True)
class Span:
    """When time was spent: a start and either an end or a number of minutes."""

    start: datetime
    end: datetime | None = None
    minutes: float | None = None


def span(period: Any, field_name: str, length: Any = None, length_name: str = "") -> Span:
    """The time of a Period; a ``length`` (Encounter) wins over ``period.end``: it is the
    time spent, the period only when it happened (docs/fhir.md "The time")."""
    if not isinstance(period, dict):
        raise Unmapped(f"{field_name}: missing (the time needs a start and an end)")
    start = instant(period.get("start"), f"{field_name}.start")
    if length is not None:
        return Span(start, minutes=minutes_of(length, length_name))
    if period.get("end") is None:
        more = f" and no {length_name}" if length_name else ""
        raise Unmapped(f"{field_name}.end: missing{more}")
    return Span(start, end=instant(period.get("end"), f"{field_name}.end"))


# -- identity -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a resource version is: ``key`` is stable across its versions, ``version`` names
    this one (``_history/{versionId}``, else ``_content/{digest}`` of its JSON)."""

    type: str
    key: str
    version: str

    @property
    def label(self) -> str:
        """``Encounter/abc`` (the resource, no version)."""
        return f"{self.type}/{self.key}"

    def event_id(self, context: Sequence[str] = ()) -> str:
        """``fhir:{type}/{key}/{version}``, and ``/_context/{digest}`` of the versions of
        the other entries the event was made with: a changed context is a new event (an
        amendment), never the same id with another body."""
        base = f"fhir:{self.type}/{self.key}/{self.version}"
        if context:
            base += "/_context/" + digest("\x1f".join(context))
        return fit(base, f"fhir:{self.type}/")

    @property
    def activity_id(self) -> str:
        """Stable across versions, and an Identifier (no ``:`` or ``/``)."""
        return fit(f"fhir.{self.type}.{self.key}", f"fhir.{self.type}.")

    @property
    def pair(self) -> str:
        return f"{self.type}/{self.key}/{self.version}"


def fit(text: str, prefix: str) -> str:
    """``text`` if it fits an id (128 characters), else ``prefix`` and a digest of it."""
    return text if len(text) <= MAX_ID else prefix + digest(text)


def content_digest(resource: dict[str, Any]) -> str:
    return digest(orjson.dumps(resource, option=orjson.OPT_SORT_KEYS))


def identity(resource: dict[str, Any]) -> Identity:
    """The identity of a resource: its ``id``, else ``identifier-`` and a digest of the
    system and value of :func:`chosen_identifier`. A ``urn:uuid`` fullUrl is never one: it
    is a placeholder a sender may change on every send."""
    rtype = str(resource["resourceType"])
    rid = resource.get("id")
    key: str | None = rid if isinstance(rid, str) else None
    if key is None and (ident := chosen_identifier(resource)) is not None:
        key = "identifier-" + digest(f"{ident.get('system', '')}|{ident['value']}")
    if key is None:
        raise Unmapped(
            f"{rtype}: needs an id or an identifier (not an SSN or MBI) to be known again "
            "when it is re-sent or amended; a urn:uuid fullUrl is a placeholder"
        )
    meta = resource.get("meta")
    version_id = meta.get("versionId") if isinstance(meta, dict) else None
    if isinstance(version_id, str):
        version = f"_history/{version_id}"
    else:
        version = "_content/" + content_digest(resource)
    return Identity(rtype, key, version)


def recorded_at(resource: dict[str, Any], *fallbacks: tuple[str, Any]) -> datetime:
    """``meta.lastUpdated``, else the first ``(field, value)`` fallback that is a date or
    an instant: the same resource always gives the same ``recorded_at``."""
    meta = resource.get("meta")
    candidates = [("meta.lastUpdated", meta.get("lastUpdated") if isinstance(meta, dict) else None)]
    for _name, value in [*candidates, *fallbacks]:
        if isinstance(value, str) and (moment := moment_of(value)) is not None:
            return moment
    names = ", ".join(name for name, _ in [*candidates, *fallbacks])
    raise Unmapped(f"recorded_at: give {names} (a full date or a date-time)")

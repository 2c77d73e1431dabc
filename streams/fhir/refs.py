"""Reading a FHIR resource: references, codings, dates and the identity of a version.

Everything here raises :class:`Unmapped` with a reason safe to show the sender; a reason
never repeats a reference's value (it may be a patient id).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import orjson

MAX_ID = 128  # schemas.events: event_id and Identifier are at most 128 characters


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

    def add(self, resource: dict[str, Any], full_url: str | None) -> None:
        if full_url:
            self.by_url.setdefault(full_url, resource)
            literal = _literal(full_url)
            if literal is not None:
                self.by_url.setdefault(f"{literal[0]}/{literal[1]}", resource)
        rid = resource.get("id")
        if isinstance(rid, str):
            self.by_url.setdefault(f"{resource['resourceType']}/{rid}", resource)

    def get(self, reference: str) -> dict[str, Any] | None:
        found = self.by_url.get(reference)
        if found is None and (literal := _literal(reference)) is not None:
            found = self.by_url.get(f"{literal[0]}/{literal[1]}")
        return found


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
    entries: Entries, ref: Any, types: tuple[str, ...], field_name: str, *, required: bool = True
) -> str | None:
    """The caretally id of what ``ref`` (a FHIR Reference) points to, one of ``types``:

    * ``Type/{id}`` (relative or absolute): ``{id}``;
    * ``urn:uuid:`` / ``urn:oid:``: the entry of this input with that ``fullUrl``, by its
      ``id``, else its first ``identifier.value`` (a conditional create names it so);
    * a logical reference (``identifier`` only): its ``identifier.value``.
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
                raise Unmapped(f"{field_name}: must refer to a {what}, not a {literal[0]}", "value")
            return literal[1]
        if reference.startswith("urn:"):
            target = entries.get(reference)
            if target is None:
                raise Unmapped(
                    f"{field_name}: a {reference.split(':')[1]} reference with no entry of "
                    f"that fullUrl in this input (send the {what} in the same Bundle)"
                )
            if target.get("resourceType") not in types:
                raise Unmapped(
                    f"{field_name}: must refer to a {what}, not a {target.get('resourceType')}",
                    "value",
                )
            return _own_id(target, field_name, what)
        raise Unmapped(
            f"{field_name}: a contained or unreadable reference; refer to a {what} as "
            f"{types[0]}/{{id}} or by the urn:uuid fullUrl of its entry",
            "not-supported",
        )
    identifier = ref.get("identifier")
    if isinstance(identifier, dict) and isinstance(identifier.get("value"), str):
        return str(identifier["value"])
    raise Unmapped(f"{field_name}: no reference and no identifier.value")


def _own_id(resource: dict[str, Any], field_name: str, what: str) -> str:
    rid = resource.get("id")
    if isinstance(rid, str):
        return rid
    for identifier in resource.get("identifier") or []:
        if isinstance(identifier.get("value"), str):
            return str(identifier["value"])
    raise Unmapped(f"{field_name}: the {what} entry it refers to has neither id nor identifier")


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
    return moment


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
    midnight UTC); None for a partial date."""
    try:
        if "T" in value:
            moment = datetime.fromisoformat(value)
            return moment if moment.tzinfo is not None else None
        if len(value) == 10:
            return datetime.combine(date.fromisoformat(value), datetime.min.time(), UTC)
    except ValueError:
        return None
    return None


def minutes_of(length: Any) -> float | None:
    """An ``Encounter.length`` Duration in minutes (UCUM ``min`` or ``h``)."""
    if not isinstance(length, dict) or not isinstance(length.get("value"), int | float):
        return None
    unit = length.get("code") or length.get("unit")
    scale = {"min": 1, "h": 60}.get(str(unit))
    return None if scale is None else float(length["value"]) * scale


def period_bounds(period: Any, field_name: str, length: Any = None) -> tuple[datetime, datetime]:
    """``(start, end)`` of a Period; without ``end``, ``start + length``."""
    if not isinstance(period, dict):
        raise Unmapped(f"{field_name}: missing (the time needs a start and an end)")
    start = instant(period.get("start"), f"{field_name}.start")
    if period.get("end") is not None:
        return start, instant(period.get("end"), f"{field_name}.end")
    minutes = minutes_of(length)
    if minutes is None:
        raise Unmapped(f"{field_name}.end: missing (and no length in minutes)")
    return start, start + timedelta(minutes=minutes)


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

    @property
    def event_id(self) -> str:
        return fit(f"fhir:{self.type}/{self.key}/{self.version}", f"fhir:{self.type}/")

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


def identity(resource: dict[str, Any], full_url: str | None) -> Identity:
    """The identity of a resource: its ``id``; else its first business identifier
    (``identifier-`` and a digest of system and value); else the uuid of a ``urn:uuid``
    fullUrl."""
    rtype = str(resource["resourceType"])
    rid = resource.get("id")
    key: str | None = rid if isinstance(rid, str) else None
    if key is None:
        for ident in resource.get("identifier") or []:
            if isinstance(ident, dict) and isinstance(ident.get("value"), str):
                key = "identifier-" + digest(f"{ident.get('system', '')}|{ident['value']}")
                break
    if key is None and full_url and full_url.startswith("urn:uuid:"):
        key = full_url.removeprefix("urn:uuid:")
    if key is None:
        raise Unmapped(f"{rtype}: needs an id, an identifier or a urn:uuid fullUrl")
    meta = resource.get("meta")
    version_id = meta.get("versionId") if isinstance(meta, dict) else None
    if isinstance(version_id, str):
        version = f"_history/{version_id}"
    else:
        version = "_content/" + digest(orjson.dumps(resource, option=orjson.OPT_SORT_KEYS))
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

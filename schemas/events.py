"""Wire contract v1: one pydantic model per event type, discriminated on ``type``.

Validation is strict (no type coercion) and every error names its field, so an
EHR vendor can fix a feed from the message alone. JSON input may carry
timestamps and dates as ISO strings; they must carry a UTC offset.
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

MAX_ACTIVITY = timedelta(hours=24)
MONTH_PATTERN = r"^[0-9]{4}-(0[1-9]|1[0-2])$"  # ASCII digits: \d matches any script's

# A bounded calendar (checked natively by pydantic-core): no sentinel 9999-12-31 dates
FIRST_DAY, LAST_DAY = date(1900, 1, 1), date(2199, 12, 31)
_YEARS = {"pattern": "^(19|20|21)[0-9]{2}-"}  # the bound in JSON Schema terms (strings)
Day = Annotated[date, Field(ge=FIRST_DAY, le=LAST_DAY, json_schema_extra=_YEARS)]
Instant = Annotated[
    AwareDatetime,
    Field(
        ge=datetime(1900, 1, 2, tzinfo=UTC),
        le=datetime(2199, 12, 30, tzinfo=UTC),
        json_schema_extra=_YEARS,
    ),
]
_ID_CHAR = r"[^\p{C}\p{Z}:/]"
IDENTIFIER_PATTERN = rf"^{_ID_CHAR}(?:(?:{_ID_CHAR}| )*{_ID_CHAR})?$"
"""Printable text (CJK and other non-ASCII letters are fine) without ``:`` or ``/`` (they
separate the parts of record keys and archive paths), control or format characters
(Unicode C*: ``\x1f`` separates the parts of digests), other separators than the ASCII
space, or a leading/trailing space: the ids of two tenants can never join into the same
key. ECMA-262 (``u`` flag) and pydantic-core's Rust regex read it alike."""
IDENTIFIER_RULE = "must be printable text without ':', '/', control characters or edge spaces"
EVENT_ID_PATTERN = r"^(?:[^\p{C}\p{Z}]| )+$"
"""``event_id`` is in no key or path, so ``:`` and ``/`` stay legal (``urn:uuid:…``,
``ehr-main:000001``); printable only, so the ``\x1f`` join of the idempotency digest
(``projections.ledger``) cannot be forged."""
EVENT_ID_RULE = "must be printable text without control characters"
Identifier = Annotated[str, Field(min_length=1, max_length=128, pattern=IDENTIFIER_PATTERN)]
EventId = Annotated[str, Field(min_length=1, max_length=128, pattern=EVENT_ID_PATTERN)]
Label = Annotated[str, Field(min_length=1, max_length=200)]


Program = Literal["ccm", "pcm", "rpm", "rtm", "bhi", "tcm"]
"""Programs whose minutes an activity can be logged under."""
StaffRole = Literal["clinical_staff", "physician", "qhp", "non_clinical"]
FacilityType = Literal["office", "fqhc", "rhc"]
FeeSchedule = Literal["non_facility", "facility"]
"""Which PFS amount a practice is paid: the non-facility or the facility one."""
ConsentProgram = Literal["ccm", "pcm", "rpm", "rtm", "bhi", "apcm"]
EnrollmentProgram = Literal["ccm", "pcm", "rpm", "rtm", "bhi", "apcm"]
CarePlanProgram = Literal["ccm", "pcm", "bhi", "rpm", "rtm"]
DeviceProgram = Literal["rpm", "rtm"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


# --- data payloads -----------------------------------------------------------


class PracticeConfiguredData(_Strict):
    timezone: str = Field(default="America/New_York", description="IANA time zone name")
    facility_type: FacilityType = "office"
    qualifying_apm_participant: bool = Field(
        default=False,
        description="the practice's clinicians are qualifying APM participants (QPs): fees "
        "use the rule year's QP conversion factor (docs/rules.md §5)",
    )
    fee_schedule: FeeSchedule = Field(
        default="non_facility",
        description="which national amount the fees are: the non-facility (rvu_nf) or the "
        "facility (rvu_fac) one (docs/rules.md §5)",
    )

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown IANA time zone {value!r}") from exc
        return value


class ActivityLoggedData(_Strict):
    activity_id: Identifier
    staff_id: Identifier
    staff_role: StaffRole
    practitioner_id: Identifier = Field(description="the billing practitioner")
    program: Program
    activity: Label = Field(description="what was done, e.g. medication_review")
    started_at: Instant
    ended_at: Instant | None = None
    minutes: Annotated[float, Field(gt=0, le=1440, allow_inf_nan=False)] | None = None
    face_to_face: bool = False
    interactive: bool = Field(default=False, description="a real-time exchange with the patient")
    note_digest: Annotated[str, Field(max_length=256)] | None = Field(
        default=None, description="hash of the normalized note, never the note"
    )

    @field_validator("ended_at")
    @classmethod
    def _ends_after_start(cls, value: datetime | None, info: ValidationInfo) -> datetime | None:
        start = info.data.get("started_at")
        if value is not None and start is not None:
            elapsed = value - start
            if elapsed <= timedelta(0):
                raise ValueError("must be after started_at")
            if elapsed > MAX_ACTIVITY:
                raise ValueError("an activity may last at most 24 h after started_at")
        return value

    @field_validator("minutes")
    @classmethod
    def _agrees_with_end(cls, value: float | None, info: ValidationInfo) -> float | None:
        start, end = info.data.get("started_at"), info.data.get("ended_at")
        if (
            value is not None
            and start is not None
            and end is not None
            and abs((end - start).total_seconds() - value * 60) >= 60
        ):
            raise ValueError("disagrees with ended_at - started_at")
        return value

    @model_validator(mode="after")
    def _has_duration(self) -> ActivityLoggedData:
        if self.ended_at is None and self.minutes is None:
            raise ValueError("give ended_at or minutes")
        return self

    @property
    def seconds(self) -> int:
        """Whole elapsed seconds on absolute instants (DST-safe), rounded down: a
        threshold is met only by time really spent (19.992 min is 1199 s, not 1200)."""
        if self.ended_at is not None:
            return math.floor((self.ended_at - self.started_at).total_seconds())
        assert self.minutes is not None
        return math.floor(self.minutes * 60 + 1e-9)


class ActivityVoidedData(_Strict):
    activity_id: Identifier
    reason: Label


class ConsentData(_Strict):
    program: ConsentProgram
    practitioner_id: Identifier
    method: Literal["verbal", "written"]
    on: Day


class CarePlanRecordedData(_Strict):
    program: CarePlanProgram
    on: Day
    complexity: Literal["low", "moderate", "high"]


class ConditionsRecordedData(_Strict):
    chronic: list[Annotated[str, Field(pattern=r"^[A-Z][0-9][0-9A-Z](\.?[0-9A-Z]{1,4})?$")]] = (
        Field(
            description="ICD-10 codes: the patient's current chronic-condition list", max_length=200
        )
    )


class EnrollmentRecordedData(_Strict):
    program: EnrollmentProgram
    practitioner_id: Identifier
    on: Day
    qmb: bool = Field(default=False, description="Qualified Medicare Beneficiary (APCM G0558)")


class VisitRecordedData(_Strict):
    practitioner_id: Identifier
    on: Day
    kind: Literal["e_m", "awv", "ippe", "tcm"]


class StayRecordedData(_Strict):
    setting: Literal["inpatient", "snf"]
    admitted_on: Day
    discharged_on: Day

    @model_validator(mode="after")
    def _order(self) -> StayRecordedData:
        if self.discharged_on < self.admitted_on:
            raise ValueError("discharged_on must not be before admitted_on")
        return self


class DeviceReadingData(_Strict):
    device_id: Identifier
    program: DeviceProgram
    taken_at: Instant


class MonthClosedData(_Strict):
    month: Annotated[str, Field(pattern=MONTH_PATTERN, description="YYYY-MM")]


# --- envelopes ---------------------------------------------------------------


class _Envelope(_Strict):
    event_id: EventId = Field(description="idempotency key, at most 128 characters")
    schema_version: Literal[1]
    org_id: Identifier
    recorded_at: Instant = Field(description="when the source recorded the event")
    source: Label


class _PatientEnvelope(_Envelope):
    patient_id: Identifier


class _PracticeEnvelope(_Envelope):
    patient_id: None = Field(default=None, description="omitted: the event concerns the practice")


class PracticeConfigured(_PracticeEnvelope):
    """The practice's settings: its IANA time zone (minutes belong to the calendar month there)
    and facility type.
    """

    type: Literal["practice.configured"]
    data: PracticeConfiguredData


class ActivityLogged(_PatientEnvelope):
    """Minutes of care work by one person for one patient under one program; re-logging an
    activity_id amends it.
    """

    type: Literal["activity.logged"]
    data: ActivityLoggedData


class ActivityVoided(_PatientEnvelope):
    """Removes a logged activity (entered in error, duplicate, ...); the reason is kept for
    audit.
    """

    type: Literal["activity.voided"]
    data: ActivityVoidedData


class ConsentRecorded(_PatientEnvelope):
    """The patient's consent to a program with a billing practitioner; obtained once (docs/rules.md
    G10).
    """

    type: Literal["consent.recorded"]
    data: ConsentData


class ConsentRevoked(_PatientEnvelope):
    """The patient withdraws consent; effective at the end of that calendar month (G10)."""

    type: Literal["consent.revoked"]
    data: ConsentData


class CarePlanRecorded(_PatientEnvelope):
    """A care plan established or revised on a date, with the complexity of medical decision
    making.
    """

    type: Literal["care_plan.recorded"]
    data: CarePlanRecordedData


class ConditionsRecorded(_PatientEnvelope):
    """The patient's current list of chronic conditions (ICD-10 codes); replaces the previous
    list.
    """

    type: Literal["conditions.recorded"]
    data: ConditionsRecordedData


class EnrollmentRecorded(_PatientEnvelope):
    """The program and practitioner of record from a date (also APCM, with QMB status)."""

    type: Literal["enrollment.recorded"]
    data: EnrollmentRecordedData


class VisitRecorded(_PatientEnvelope):
    """A visit with a practitioner (E/M, AWV, IPPE, TCM): establishes the patient for RPM."""

    type: Literal["visit.recorded"]
    data: VisitRecordedData


class StayRecorded(_PatientEnvelope):
    """An inpatient or SNF stay; CCM time on those dates does not count (G17)."""

    type: Literal["stay.recorded"]
    data: StayRecordedData


class DeviceReading(_PatientEnvelope):
    """A transmission from a remote-monitoring device; device codes count distinct days per
    30-day period.
    """

    type: Literal["device.reading"]
    data: DeviceReadingData


class MonthClosed(_PracticeEnvelope):
    """Claims for the month are out; later activities or voids in it raise late_activity."""

    type: Literal["month.closed"]
    data: MonthClosedData


EVENT_MODELS: tuple[type[_Envelope], ...] = (
    PracticeConfigured,
    ActivityLogged,
    ActivityVoided,
    ConsentRecorded,
    ConsentRevoked,
    CarePlanRecorded,
    ConditionsRecorded,
    EnrollmentRecorded,
    VisitRecorded,
    StayRecorded,
    DeviceReading,
    MonthClosed,
)
EVENT_TYPES: dict[str, type[_Envelope]] = {
    m.model_fields["type"].annotation.__args__[0]: m  # type: ignore[union-attr]
    for m in EVENT_MODELS
}

Event = Annotated[
    PracticeConfigured
    | ActivityLogged
    | ActivityVoided
    | ConsentRecorded
    | ConsentRevoked
    | CarePlanRecorded
    | ConditionsRecorded
    | EnrollmentRecorded
    | VisitRecorded
    | StayRecorded
    | DeviceReading
    | MonthClosed,
    Field(discriminator="type"),
]
EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)


class EventRejected(ValueError):
    """A line that is not a valid v1 event; ``reason`` is safe to show its sender."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


_PATTERN_RULES = {IDENTIFIER_PATTERN: IDENTIFIER_RULE, EVENT_ID_PATTERN: EVENT_ID_RULE}


_FIELD_NAME = re.compile(r"[a-z][a-z0-9_]{0,39}")


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = [str(p) for p in err["loc"]]
        # the discriminator tag appears as a location step; drop it for readability
        if loc and loc[0] in EVENT_TYPES:
            loc = loc[1:]
        field = ".".join(loc) or "event"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "union_tag_invalid":
            msg = f"unknown type; expected one of {', '.join(sorted(EVENT_TYPES))}"
            field = "type"
        elif err["type"] == "union_tag_not_found":
            msg, field = "missing", "type"
        elif err["type"] == "json_invalid":
            # the position is within this one line: "line 1" would only confuse
            msg = re.sub(r" at line 1 column (\d+)$", r" at column \1", msg)
        elif err["type"] == "literal_error" and field == "schema_version":
            msg = "unsupported schema_version; this service speaks version 1"
        elif err["type"] == "extra_forbidden":
            # the location ends in the unknown key itself, which may be anything (even a
            # patient id): named only when it looks like a field name (snake_case)
            if not _FIELD_NAME.fullmatch(loc[-1]):
                field = ".".join([*loc[:-1], "<unknown field>"])
            msg = "not in the wire contract (see `caretally schema`)"
        elif err["type"] == "string_pattern_mismatch":
            msg = _PATTERN_RULES.get(str((err.get("ctx") or {}).get("pattern")), msg)
        parts.append(f"{field}: {msg}")
    return "; ".join(parts)


def parse_event(raw: bytes | str) -> Event:
    """Validate one JSON event; raise :class:`EventRejected` with a precise reason.

    An object with a repeated key is refused: pydantic keeps the last value and other
    JSON readers (DuckDB) the first, so the typed event and the stored bytes would disagree.
    """
    try:
        event = EVENT_ADAPTER.validate_json(raw)
    except ValidationError as exc:
        raise EventRejected(_describe(exc)) from None
    if _member_bound(raw) > _distinct_keys(event):
        _refuse_duplicate_keys(raw)
    return event


# --- duplicate keys ------------------------------------------------------------------------
# parse_event is the hot path: members are bounded with C-level scans, and the object is
# read again (json, which sees every pair) only when that bound cannot prove it clean.

_KEY_END = re.compile(r'"[: \t\n\r]')  # JSON whitespace is exactly these four
_KEY_END_BYTES = re.compile(rb'"[: \t\n\r]')
_QUOTE_SPACE = re.compile(r'"[ \t\n\r]')
_QUOTE_SPACE_BYTES = re.compile(rb'"[ \t\n\r]')


def _member_bound(raw: bytes | str) -> int:
    """At least the number of members of all objects in ``raw``: a key's closing quote is
    followed by ``:`` or whitespace. Without any quote-whitespace, count ``":`` (cheaper)."""
    if isinstance(raw, str):
        return raw.count('":') if _QUOTE_SPACE.search(raw) is None else len(_KEY_END.findall(raw))
    if _QUOTE_SPACE_BYTES.search(raw) is None:
        return raw.count(b'":')
    return len(_KEY_END_BYTES.findall(raw))


def _distinct_keys(event: _Envelope) -> int:
    """Keys the parsed JSON held: ``extra="forbid"``, so each is a field it set; ``data``
    is the only nested object (checked at import)."""
    return len(event.model_fields_set) + len(event.data.model_fields_set)  # type: ignore[attr-defined]


def _nested_models(cls: type[BaseModel]) -> list[str]:
    return [
        name
        for name, f in cls.model_fields.items()
        if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel)
    ]


assert all(_nested_models(m) == ["data"] for m in EVENT_MODELS)
assert not any(_nested_models(m.model_fields["data"].annotation) for m in EVENT_MODELS)  # type: ignore[arg-type]


def _no_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:  # a field name: validation passed and unknown keys are refused
            raise EventRejected(f"{key}: duplicate key in a JSON object; send each key once")
        seen.add(key)
    return dict(pairs)


def _refuse_duplicate_keys(raw: bytes | str) -> None:
    try:
        json.loads(raw, object_pairs_hook=_no_repeats)
    except (ValueError, RecursionError) as exc:
        if isinstance(exc, EventRejected):
            raise
        raise EventRejected("event: JSON that cannot be checked for duplicate keys") from None


def event_json_schemas() -> dict[str, dict[str, Any]]:
    """One JSON Schema per event type, keyed by the ``type`` value."""
    out = {}
    for name, model in sorted(EVENT_TYPES.items()):
        schema = model.model_json_schema()
        out[name] = {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}
    return out

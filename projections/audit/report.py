"""The audit report of one patient-month: frozen dataclasses, no behaviour beyond units.

Built by :mod:`projections.audit.fold`, with the sentences and rule references of
:mod:`projections.audit.explain`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Literal

# exclusion reasons of versions the ledger no longer holds (the others are the core's)
VOIDED = "voided"
AMENDED = "amended"


def to_minutes(seconds: int) -> float:
    """Seconds as minutes, rounded like the billing view's minutes."""
    return round(seconds / 60, 2)


@dataclass(frozen=True, slots=True)
class Exclusion:
    """Seconds of one version not counted, and why (``reason``: see :mod:`projections.audit`)."""

    reason: str
    seconds: int
    detail: str

    @property
    def minutes(self) -> float:
        return to_minutes(self.seconds)


@dataclass(frozen=True, slots=True)
class Change:
    """One field an amendment changed (values as text, for people)."""

    field: str
    before: str
    after: str


@dataclass(frozen=True, slots=True)
class PriorVersion:
    """An earlier version the row's version replaced; ``changes``: what its successor
    changed."""

    version: int
    event_id: str
    recorded_at: datetime
    changes: tuple[Change, ...]


@dataclass(frozen=True, slots=True)
class VoidInfo:
    event_id: str
    recorded_at: datetime
    reason: str


@dataclass(frozen=True, slots=True)
class ActivityRow:
    """One version of one activity, with how its seconds inside the month were treated.

    ``status``: ``current`` (in the ledger; counted as accounted), ``superseded`` (an
    amendment replaced it) or ``voided``. ``in_month == counted + sum(excluded)``.
    """

    activity_id: str
    version: int
    versions: int
    status: Literal["current", "superseded", "voided"]
    event_id: str
    recorded_at: datetime
    staff_id: str
    role: str
    program: str
    practitioner_id: str
    label: str
    start: datetime  # in the practice's time zone
    end: datetime
    seconds: int  # the whole activity (the ledger's rounded-down length)
    face_to_face: bool
    interactive: bool
    in_month: int
    counted: int
    excluded: tuple[Exclusion, ...]
    amended_from: tuple[PriorVersion, ...] = ()
    superseded_by: int | None = None
    void: VoidInfo | None = None


@dataclass(frozen=True, slots=True)
class ProgramTime:
    """Counted time of one program under one billing practitioner (docs/rules.md §6.2 step 5).

    ``counted`` is the sum over the activities; different staff working at the same
    time count once (``concurrent`` seconds), so ``total = counted - concurrent`` is
    what the codes are earned on (personal ``personal`` + other staff ``staff``).
    """

    program: str
    practitioner_id: str
    counted: int
    concurrent: int
    total: int
    personal: int
    staff: int


@dataclass(frozen=True, slots=True)
class ConsentDoc:
    program: str
    practitioner_id: str
    method: str
    on: date
    revoked: bool
    event_id: str
    recorded_at: datetime


@dataclass(frozen=True, slots=True)
class CarePlanDoc:
    program: str
    on: date
    complexity: str
    event_id: str
    recorded_at: datetime


@dataclass(frozen=True, slots=True)
class ConditionsDoc:
    """A chronic-condition list as recorded (the count only: the codes are not needed)."""

    count: int
    event_id: str
    recorded_at: datetime


@dataclass(frozen=True, slots=True)
class EnrollmentDoc:
    program: str
    practitioner_id: str
    on: date
    qmb: bool
    event_id: str
    recorded_at: datetime


@dataclass(frozen=True, slots=True)
class VisitDoc:
    practitioner_id: str
    on: date
    kind: str
    event_id: str
    recorded_at: datetime


@dataclass(frozen=True, slots=True)
class StayDoc:
    setting: str
    admitted_on: date
    discharged_on: date
    event_id: str
    recorded_at: datetime


@dataclass(frozen=True, slots=True)
class DevicePeriod:
    """A 30-day device period (docs/rules.md G1) ending in the month, as billing sees it."""

    start: date
    end: date
    index: int  # 0: the first period of an episode
    days: int  # transmission days in the period


@dataclass(frozen=True, slots=True)
class DeviceDays:
    program: str
    days: tuple[date, ...]  # local days with a reading, in the month
    periods: tuple[DevicePeriod, ...]


@dataclass(frozen=True, slots=True)
class Documentation:
    """Everything documented for the patient as known (all dates, not only the month's),
    and what the gates read from it for the month."""

    consents: tuple[ConsentDoc, ...]
    care_plans: tuple[CarePlanDoc, ...]
    conditions: tuple[ConditionsDoc, ...]
    enrollments: tuple[EnrollmentDoc, ...]
    visits: tuple[VisitDoc, ...]
    stays: tuple[StayDoc, ...]
    devices: tuple[DeviceDays, ...]
    conditions_in_effect: int  # the latest list recorded before the month's end
    complex_month: bool  # a moderate/high CCM care plan dated in the month
    established_patient: bool  # a visit within the policy's years (RPM, G11)


@dataclass(frozen=True, slots=True)
class CodeLine:
    """A billable or blocked line (``reasons`` empty when billable)."""

    code: str
    units: int
    practitioner_id: str | None
    family: str
    descriptor: str
    fee: float | None  # national amount per unit
    amount: float | None  # fee * units
    reasons: tuple[str, ...]
    sources: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RuleRef:
    """A rule of the book that applied: a code, track, gate, exclusive pair or the
    conversion factor, with its docs/rules.md §1 source ids."""

    kind: Literal["code", "track", "gate", "exclusive", "conversion_factor"]
    name: str
    sources: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Billing:
    rule_year: int
    conversion_factor: float  # the one used: the QP one for qualifying APM participants
    in_replay: bool  # False: `caretally replay` prints no line for this month
    minutes: dict[str, float]
    billable: tuple[CodeLine, ...]
    blocked: tuple[CodeLine, ...]
    flags: tuple[str, ...]
    estimated_payment: float
    rules: tuple[RuleRef, ...]
    source_ids: tuple[str, ...]  # the union of the rules' sources, sorted


@dataclass(frozen=True, slots=True)
class RejectedEvent:
    """An event of the patient the ledger refused (same ``event_id``, another body)."""

    event_id: str
    type: str
    recorded_at: datetime
    reason: str


@dataclass(frozen=True, slots=True)
class UnmatchedVoid:
    """A void of an activity not on record when it arrived (it changed nothing)."""

    activity_id: str
    event_id: str
    recorded_at: datetime
    reason: str


@dataclass(frozen=True, slots=True)
class EventCounts:
    """Events of the patient and of the org's practice known at ``as_of``: the same for a
    log file and for the archive of it (events recorded later are not read at all)."""

    applied: int = 0
    duplicates: int = 0  # same event_id and body again: a no-op
    rejected: int = 0  # same event_id, another body


@dataclass(frozen=True, slots=True)
class AuditReport:
    org_id: str
    patient_id: str
    month: str
    timezone: str
    facility_type: str
    qualifying_apm_participant: bool  # payment settings of practice.configured
    fee_schedule: str  # non_facility | facility
    as_of: datetime | None  # None: everything in the input
    latest_recorded_at: datetime | None  # newest recorded_at among the applied events
    month_start: datetime
    month_end: datetime  # exclusive
    month_closed: bool
    events: EventCounts
    activities: tuple[ActivityRow, ...]
    programs: tuple[ProgramTime, ...]
    documentation: Documentation
    billing: Billing
    rejected: tuple[RejectedEvent, ...]
    unmatched_voids: tuple[UnmatchedVoid, ...]

"""The fold: validated events in, per-patient state out (pure, deterministic, in memory).

``Ledger.apply(event)`` is the single mutator. It does the cheap part of docs/rules.md
§6.2 on every event (idempotency by ``event_id``, amendments and voids by
``activity_id``) and keeps what billing needs, compactly; evaluating a patient-month
is left to :mod:`projections.billing`, so a replay evaluates each month once.

Log order decides ties: each applied event gets the next ``seq``; an activity keeps
the position of its first logging when amended ("the earliest-received event keeps
the minutes"); a void removes it entirely, so voiding equals never logging.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from enum import Enum
from sys import intern
from typing import Any

from projections.calendar import DEFAULT_TIMEZONE, epoch
from projections.digest_index import DigestIndex
from schemas.events import (
    ActivityLogged,
    ActivityVoided,
    CarePlanRecorded,
    ConditionsRecorded,
    ConsentRecorded,
    ConsentRevoked,
    DeviceReading,
    EnrollmentRecorded,
    Event,
    MonthClosed,
    PracticeConfigured,
    StayRecorded,
    VisitRecorded,
)

PERSONAL_ROLES = frozenset({"physician", "qhp"})
QUARTER_HOUR = 900

# Volume bounds per patient and UTC calendar month (of ``started_at`` / ``taken_at``), so
# one feed cannot make a patient-month arbitrarily expensive to fold for everyone behind
# it on the partition. A CCM patient has tens of activities a month and an RPM device a
# few readings a day (a CGM at one reading every 5 minutes sends 8,928 in a 31-day month);
# at the activity bound the fold of the worst patient-month (every activity a separate
# interval) takes about 0.4 s in all and under 20 ms for its slowest event (2 cores, 2026-12).
# Counted over applied events in log order, so the fold, ``caretally replay`` and the
# archive replay (``streams.archive.replay``, in SQL) reject the same events.
MAX_ACTIVITY_VERSIONS = 200
"""``activity.logged`` events (first loggings and amendments) per patient-month."""
MAX_READINGS = 10_000
"""``device.reading`` events per patient-month."""


@dataclass(slots=True)
class Activity:
    """The current version of one logged activity, on epoch seconds."""

    activity_id: str
    seq: int  # log position of its first logging (amendments keep it)
    staff_id: str
    role: str
    practitioner_id: str
    program: str
    start: int
    end: int
    face_to_face: bool
    interactive: bool

    @property
    def personal(self) -> bool:
        """Time the billing practitioner spent personally (docs/rules.md G4c)."""
        return self.role in PERSONAL_ROLES and self.staff_id == self.practitioner_id


@dataclass(frozen=True, slots=True)
class ConsentEntry:
    seq: int
    program: str
    practitioner_id: str
    revoked: bool
    on: date


@dataclass(frozen=True, slots=True)
class EnrollmentEntry:
    seq: int
    program: str
    practitioner_id: str
    on: date
    qmb: bool


@dataclass(slots=True)
class PatientState:
    org_id: str
    patient_id: str
    activities: dict[str, Activity] = field(default_factory=dict)
    consents: list[ConsentEntry] = field(default_factory=list)
    care_plans: list[tuple[int, str, date, str]] = field(default_factory=list)  # seq, prog, on, cx
    conditions: list[tuple[int, int, int]] = field(default_factory=list)  # seq, recorded, count
    enrollments: list[EnrollmentEntry] = field(default_factory=list)
    visits: list[tuple[str, date, str]] = field(default_factory=list)  # practitioner, on, kind
    stays: list[tuple[str, date, date]] = field(default_factory=list)
    # program -> epoch quarter-hours with a reading: exact for local days (every UTC offset
    # is a multiple of 15 minutes) and at most 96 a day however often a device sends
    readings: dict[str, set[int]] = field(default_factory=dict)
    # "activity:YYYY-MM" / "reading:YYYY-MM" (UTC) -> events applied, for the bounds above
    volume: dict[str, int] = field(default_factory=dict)
    # seq of a ``conditions`` entry -> its ICD-10 codes as recorded, in list order (the
    # diagnoses of a claim line, projections.claims); the archive replay reads them from the
    # archived raw bytes (streams/archive/replay.py); empty in a ledger restored from a
    # snapshot written before the codes were kept
    condition_codes: dict[int, tuple[str, ...]] = field(default_factory=dict)


@dataclass(slots=True)
class Practice:
    timezone: str = DEFAULT_TIMEZONE
    facility_type: str = "office"
    # payment settings (docs/rules.md §5): QP conversion factor, facility amounts
    qualifying_apm_participant: bool = False
    fee_schedule: str = "non_facility"
    closed_months: set[str] = field(default_factory=set)
    # month -> event_id of its latest month.closed (the key of its claim line ids)
    close_ids: dict[str, str] = field(default_factory=dict)

    def pricing(self) -> tuple[bool, bool]:
        """``(qp, facility)``: how the practice's fees are priced (``RuleBook.fee``)."""
        return self.qualifying_apm_participant, self.fee_schedule == "facility"


class Status(Enum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"  # same event_id, same body: a no-op
    CONFLICT = "conflict"  # same event_id, different body: rejected
    OVER_LIMIT = "over_limit"  # its patient-month is at a volume bound: rejected


class Outcome:
    """What applying one event did (a plain slotted class: built once per event)."""

    __slots__ = ("previous", "reason", "seq", "status")

    def __init__(
        self, status: Status, seq: int = 0, reason: str = "", previous: Activity | None = None
    ) -> None:
        self.status = status
        self.seq = seq
        self.reason = reason
        self.previous = previous  # the version an amendment or void replaced


_DUPLICATE = Outcome(Status.DUPLICATE)
_CONFLICT = Outcome(
    Status.CONFLICT, reason="event_id: already used for an event with a different body"
)


def utc_month(instant: datetime) -> str:
    """``YYYY-MM`` of an instant in UTC (the bucket of the volume bounds)."""
    u = instant.astimezone(UTC)
    return f"{u.year:04d}-{u.month:02d}"


def over_limit_reason(what: str, month: str, limit: int) -> str:
    """The rejection of an event beyond a volume bound (no patient id: it is PHI)."""
    return (
        f"over_limit: the patient-month {month} (UTC) already holds {limit:,} {what}, "
        "the most one patient-month may have; event not applied"
    )


def _digest(text: str | bytes) -> int:
    raw = text.encode() if isinstance(text, str) else text
    return int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "big")


def idempotency_digest(org_id: str, event_id: str) -> int:
    """Digest of an event's idempotency key: ``event_id`` scoped to its org."""
    return _digest(f"{org_id}\x1f{event_id}")


def body_digest(event: Event, raw: bytes | None = None) -> int:
    """Digest of an event's body: its raw bytes when the caller has them (a log line,
    a Kafka value), else its canonical JSON. The log topic stores canonical JSON, so
    both agree there; in a hand-made file the same ``event_id`` re-sent with other
    bytes (even re-ordered keys) counts as a different body and is rejected."""
    return _digest(raw if raw is not None else event.model_dump_json())


class Ledger:
    """All fold state: practices, patients and the idempotency index."""

    __slots__ = ("_handlers", "patients", "practices", "seen", "seq")

    def __init__(self) -> None:
        self.practices: dict[str, Practice] = {}
        self.patients: dict[tuple[str, str], PatientState] = {}
        # 64-bit digest of (org_id, event_id) -> 64-bit digest of the body: event ids are
        # idempotency keys within an org, never across orgs
        self.seen = DigestIndex()
        self.seq = 0
        self._handlers: dict[type, Any] = {
            ActivityLogged: self._activity_logged,
            ActivityVoided: self._activity_voided,
            ConsentRecorded: self._consent,
            ConsentRevoked: self._consent,
            CarePlanRecorded: self._care_plan,
            ConditionsRecorded: self._conditions,
            EnrollmentRecorded: self._enrollment,
            VisitRecorded: self._visit,
            StayRecorded: self._stay,
            DeviceReading: self._reading,
            PracticeConfigured: self._practice,
            MonthClosed: self._month_closed,
        }

    # -- public ---------------------------------------------------------------

    def practice(self, org_id: str) -> Practice:
        p = self.practices.get(org_id)
        if p is None:
            p = self.practices[org_id] = Practice()
        return p

    def patient(self, org_id: str, patient_id: str) -> PatientState:
        key = (org_id, patient_id)
        p = self.patients.get(key)
        if p is None:
            p = self.patients[key] = PatientState(org_id, patient_id)
        return p

    def apply(
        self, event: Event, raw: bytes | None = None, digests: tuple[int, int] | None = None
    ) -> Outcome:
        """Fold one validated event; ``raw`` is its wire bytes when the caller has them, and
        ``digests`` its (idempotency, body) digests when the log's headers carry them."""
        if digests is not None:
            key, body = digests
        else:
            key = idempotency_digest(event.org_id, event.event_id)
            body = body_digest(event, raw)
        prior = self.seen.get(key)
        if prior is not None:
            return _DUPLICATE if prior == body else _CONFLICT
        self.seen.add(key, body)  # consumed even when refused below, as in the archive replay
        refusal = self._over_limit(event)
        if refusal is not None:
            return Outcome(Status.OVER_LIMIT, reason=refusal)
        self.seq += 1
        previous = self._handlers[type(event)](event, self.seq)
        return Outcome(Status.APPLIED, self.seq, previous=previous)

    def _over_limit(self, event: Event) -> str | None:
        """Count an activity version or reading toward its patient-month's bound; the
        reason when the month is already at it (then nothing is counted)."""
        if isinstance(event, ActivityLogged):
            kind, what, limit = "activity", "activity versions", MAX_ACTIVITY_VERSIONS
            month = utc_month(event.data.started_at)
        elif isinstance(event, DeviceReading):
            kind, what, limit = "reading", "readings", MAX_READINGS
            month = utc_month(event.data.taken_at)
        else:
            return None
        volume = self.patient(event.org_id, event.patient_id).volume  # type: ignore[arg-type]
        key = f"{kind}:{month}"
        n = volume.get(key, 0)
        if n >= limit:
            return over_limit_reason(what, month, limit)
        volume[key] = n + 1
        return None

    # -- handlers (one per event type) ---------------------------------------

    def _activity_logged(self, ev: ActivityLogged, seq: int) -> Activity | None:
        d = ev.data
        start = epoch(d.started_at)
        end = start + d.seconds  # the duration is rounded down, never up (G3)
        patient = self.patient(ev.org_id, ev.patient_id)
        previous = patient.activities.get(d.activity_id)
        patient.activities[d.activity_id] = Activity(
            activity_id=d.activity_id,
            seq=previous.seq if previous is not None else seq,
            staff_id=intern(d.staff_id),
            role=d.staff_role,
            practitioner_id=intern(d.practitioner_id),
            program=d.program,
            start=start,
            end=end,
            face_to_face=d.face_to_face,
            interactive=d.interactive,
        )
        return previous

    def _activity_voided(self, ev: ActivityVoided, seq: int) -> Activity | None:
        return self.patient(ev.org_id, ev.patient_id).activities.pop(ev.data.activity_id, None)

    def _consent(self, ev: ConsentRecorded | ConsentRevoked, seq: int) -> None:
        d = ev.data
        self.patient(ev.org_id, ev.patient_id).consents.append(
            ConsentEntry(seq, d.program, d.practitioner_id, isinstance(ev, ConsentRevoked), d.on)
        )

    def _care_plan(self, ev: CarePlanRecorded, seq: int) -> None:
        d = ev.data
        self.patient(ev.org_id, ev.patient_id).care_plans.append(
            (seq, d.program, d.on, d.complexity)
        )

    def _conditions(self, ev: ConditionsRecorded, seq: int) -> None:
        chronic = ev.data.chronic
        patient = self.patient(ev.org_id, ev.patient_id)
        patient.conditions.append((seq, epoch(ev.recorded_at), len(set(chronic))))
        patient.condition_codes[seq] = tuple(intern(code) for code in chronic)

    def _enrollment(self, ev: EnrollmentRecorded, seq: int) -> None:
        d = ev.data
        self.patient(ev.org_id, ev.patient_id).enrollments.append(
            EnrollmentEntry(seq, d.program, d.practitioner_id, d.on, d.qmb)
        )

    def _visit(self, ev: VisitRecorded, seq: int) -> None:
        d = ev.data
        self.patient(ev.org_id, ev.patient_id).visits.append((d.practitioner_id, d.on, d.kind))

    def _stay(self, ev: StayRecorded, seq: int) -> None:
        d = ev.data
        self.patient(ev.org_id, ev.patient_id).stays.append(
            (d.setting, d.admitted_on, d.discharged_on)
        )

    def _reading(self, ev: DeviceReading, seq: int) -> None:
        d = ev.data
        patient = self.patient(ev.org_id, ev.patient_id)
        quarters = patient.readings.get(d.program)
        if quarters is None:
            quarters = patient.readings[d.program] = set()
        quarters.add(epoch(d.taken_at) // QUARTER_HOUR)

    def _practice(self, ev: PracticeConfigured, seq: int) -> None:
        p = self.practice(ev.org_id)
        p.timezone = ev.data.timezone
        p.facility_type = ev.data.facility_type
        p.qualifying_apm_participant = ev.data.qualifying_apm_participant
        p.fee_schedule = ev.data.fee_schedule

    def _month_closed(self, ev: MonthClosed, seq: int) -> None:
        practice = self.practice(ev.org_id)
        practice.closed_months.add(ev.data.month)
        practice.close_ids[ev.data.month] = ev.event_id

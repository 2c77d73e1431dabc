"""The auditor's view of one patient-month (pure: events in, a report out; no I/O, no clock).

:func:`audit_month` folds the log exactly as ``caretally replay`` does (the same
:class:`~projections.ledger.Ledger`, the same ``as_of`` semantics as
:func:`projections.engine.fold` and :func:`projections.engine.billing`) and keeps what
the ledger forgets on purpose: every version of every activity (amended and voided
ones, with the void's reason) and the documentation as it was sent. Minutes come from
the core's accounting (``ActivityTime.counted`` and ``.excluded``), codes from
``PatientContext.month``; nothing here re-decides a rule, it only names the evidence.

Exclusion reasons of a version's minutes are the accounting's docs/rules.md §6.3 names
(``duplicate_event``, ``face_to_face_excluded``, ``non_clinical_staff_excluded``,
``consent_after_activity``, ``inpatient_time_excluded``, ``overlap``,
``double_count:<a>+<b>``) plus two for versions the ledger no longer holds:
``voided`` and ``amended`` (superseded by a later version of the same activity).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Literal

from projections.accounting import ActivityTime, MonthTime
from projections.billing import MonthBilling, PatientContext
from projections.calendar import epoch, month_bounds, month_of_date, zone
from projections.documentation import (
    complex_month,
    condition_count,
    established,
)
from projections.ledger import Activity, Ledger, Status, body_digest, idempotency_digest
from projections.rulebook import book_for_month
from schemas.events import (
    ActivityLogged,
    ActivityVoided,
    CarePlanRecorded,
    ConditionsRecorded,
    ConsentRecorded,
    ConsentRevoked,
    EnrollmentRecorded,
    Event,
    StayRecorded,
    VisitRecorded,
)

VOIDED = "voided"
AMENDED = "amended"


class AuditNotFound(LookupError):
    """Nothing on record for the patient (or the month) asked for; the message names no
    patient identifier, so it is safe to print or log."""


def to_minutes(seconds: int) -> float:
    """Seconds as minutes, rounded like the billing view's minutes."""
    return round(seconds / 60, 2)


# -- the report ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Exclusion:
    """Seconds of one version not counted, and why (``reason``: see the module doc)."""

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
    conversion_factor: float
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


# -- the fold -------------------------------------------------------------------------


@dataclass(slots=True)
class _Version:
    number: int
    activity: Activity  # the ledger's object (replaced, never mutated, on amendment)
    event: ActivityLogged
    previous: _Version | None  # the version this one amended
    status: Literal["current", "superseded", "voided"] = "current"
    superseded_by: _Version | None = None
    void: VoidInfo | None = None


@dataclass(slots=True)
class _Counts:
    applied: int = 0
    duplicates: int = 0
    rejected: int = 0


@dataclass(slots=True)
class _Docs:
    consents: list[ConsentDoc] = field(default_factory=list)
    care_plans: list[CarePlanDoc] = field(default_factory=list)
    conditions: list[ConditionsDoc] = field(default_factory=list)
    enrollments: list[EnrollmentDoc] = field(default_factory=list)
    visits: list[VisitDoc] = field(default_factory=list)
    stays: list[StayDoc] = field(default_factory=list)


class AuditFold:
    """Fold one org's log for one patient, keeping the history the ledger drops.

    Give it every event in log order (or only the patient's and the org's practice-wide
    ones, as the archive reader does). Events of the org's other patients only claim
    their ``event_id`` (idempotency is per org), so a clash decides exactly as in a full
    replay; events of other orgs are ignored.
    """

    def __init__(self, org_id: str, patient_id: str, as_of: datetime | None = None) -> None:
        self.org_id = org_id
        self.patient_id = patient_id
        self.as_of = as_of
        self.ledger = Ledger()
        self.counts = _Counts()
        self.latest: datetime | None = None
        self.chains: dict[str, list[_Version]] = {}
        self.docs = _Docs()
        self.rejected: list[RejectedEvent] = []
        self.unmatched_voids: list[UnmatchedVoid] = []

    def apply(self, event: Event, raw: bytes | None = None) -> None:
        """Fold one validated event; ``raw``: its log bytes when the caller has them."""
        if event.org_id != self.org_id:
            return
        pid = event.patient_id
        if pid is not None and pid != self.patient_id:
            if self.as_of is None or event.recorded_at <= self.as_of:
                key = idempotency_digest(event.org_id, event.event_id)
                if self.ledger.seen.get(key) is None:
                    self.ledger.seen.add(key, body_digest(event, raw))
            return
        if self.as_of is not None and event.recorded_at > self.as_of:
            return
        counts = self.counts
        outcome = self.ledger.apply(event, raw)
        if outcome.status is Status.DUPLICATE:
            counts.duplicates += 1
            return
        if outcome.status in (Status.CONFLICT, Status.OVER_LIMIT):
            counts.rejected += 1
            self.rejected.append(
                RejectedEvent(event.event_id, event.type, event.recorded_at, outcome.reason)
            )
            return
        counts.applied += 1
        if self.latest is None or event.recorded_at > self.latest:
            self.latest = event.recorded_at
        if pid is not None:
            self._record(event, outcome.previous)

    def _record(self, event: Event, previous: Activity | None) -> None:
        docs, at, eid = self.docs, event.recorded_at, event.event_id
        if isinstance(event, ActivityLogged):
            aid = event.data.activity_id
            chain = self.chains.setdefault(aid, [])
            before = chain[-1] if previous is not None and chain else None
            patient = self.ledger.patients[(self.org_id, self.patient_id)]
            version = _Version(len(chain) + 1, patient.activities[aid], event, before)
            if before is not None:
                before.status, before.superseded_by = "superseded", version
            chain.append(version)
        elif isinstance(event, ActivityVoided):
            d = event.data
            chain = self.chains.get(d.activity_id, [])
            if previous is not None and chain:
                chain[-1].status = "voided"
                chain[-1].void = VoidInfo(eid, at, d.reason)
            else:
                self.unmatched_voids.append(UnmatchedVoid(d.activity_id, eid, at, d.reason))
        elif isinstance(event, ConsentRecorded | ConsentRevoked):
            c = event.data
            revoked = isinstance(event, ConsentRevoked)
            docs.consents.append(
                ConsentDoc(c.program, c.practitioner_id, c.method, c.on, revoked, eid, at)
            )
        elif isinstance(event, CarePlanRecorded):
            p = event.data
            docs.care_plans.append(CarePlanDoc(p.program, p.on, p.complexity, eid, at))
        elif isinstance(event, ConditionsRecorded):
            docs.conditions.append(ConditionsDoc(len(set(event.data.chronic)), eid, at))
        elif isinstance(event, EnrollmentRecorded):
            e = event.data
            docs.enrollments.append(
                EnrollmentDoc(e.program, e.practitioner_id, e.on, e.qmb, eid, at)
            )
        elif isinstance(event, VisitRecorded):
            v = event.data
            docs.visits.append(VisitDoc(v.practitioner_id, v.on, v.kind, eid, at))
        elif isinstance(event, StayRecorded):
            s = event.data
            docs.stays.append(StayDoc(s.setting, s.admitted_on, s.discharged_on, eid, at))

    # -- the report ---------------------------------------------------------------

    def report(self, month: str) -> AuditReport:
        """The patient-month as known; :class:`AuditNotFound` when nothing is on record."""
        when = "" if self.as_of is None else f" as of {self.as_of.isoformat()}"
        patient = self.ledger.patients.get((self.org_id, self.patient_id))
        if patient is None:
            raise AuditNotFound(f"no events for this patient in org {self.org_id!r}{when}")
        practice = self.ledger.practice(self.org_id)
        tz = practice.timezone
        lo, hi = month_bounds(month, tz)
        if self.as_of is not None and lo > epoch(self.as_of):
            raise AuditNotFound(f"{month} had not begun at {self.as_of.isoformat()} ({tz})")
        ctx = PatientContext(patient, practice)
        months = ctx.months()
        chains = [
            chain
            for _, chain in sorted(self.chains.items())
            if any(v.activity.start < hi and v.activity.end > lo for v in chain)
        ]
        if month not in months and not chains:
            known = ", ".join(months) or "none"
            raise AuditNotFound(
                f"nothing on record for this patient in {month}{when}; months on record: {known}"
            )
        mb = ctx.month(month)
        mt, c = mb.time, self.counts
        assert mt is not None
        rows = self._rows(chains, mt, lo, hi, tz)
        return AuditReport(
            org_id=self.org_id,
            patient_id=self.patient_id,
            month=month,
            timezone=tz,
            facility_type=practice.facility_type,
            as_of=self.as_of,
            latest_recorded_at=self.latest,
            month_start=_local(lo, tz),
            month_end=_local(hi, tz),
            month_closed=month in practice.closed_months,
            events=EventCounts(c.applied, c.duplicates, c.rejected),
            activities=rows,
            programs=_programs(mt, mb, rows),
            documentation=self._documentation(ctx, month),
            billing=_billing(mb, month in months),
            rejected=tuple(self.rejected),
            unmatched_voids=tuple(self.unmatched_voids),
        )

    def _rows(
        self, chains: list[list[_Version]], mt: MonthTime, lo: int, hi: int, tz: str
    ) -> tuple[ActivityRow, ...]:
        times = {at.activity.activity_id: at for at in mt.activities}
        rows = []
        for chain in chains:
            for v in chain:
                a = v.activity
                in_month = max(0, min(a.end, hi) - max(a.start, lo))
                counted = 0
                excluded: list[Exclusion] = []
                if v.status == "current":
                    at = times.get(a.activity_id)
                    if at is not None:
                        counted, in_month = at.counted, at.in_month
                        excluded = self._why(at, mt, tz)
                elif v.status == "voided" and v.void is not None:
                    excluded = [
                        Exclusion(
                            VOIDED,
                            in_month,
                            f"{v.void.reason} (void event {v.void.event_id}, recorded "
                            f"{v.void.recorded_at.isoformat()})",
                        )
                    ]
                elif v.superseded_by is not None:
                    nxt = v.superseded_by
                    what = "; ".join(_change_text(c) for c in _changes(v, nxt)) or "no change"
                    excluded = [
                        Exclusion(
                            AMENDED,
                            in_month,
                            f"superseded by version {nxt.number} (event {nxt.event.event_id}, "
                            f"recorded {nxt.event.recorded_at.isoformat()}): {what}",
                        )
                    ]
                rows.append(_row(v, len(chain), in_month, counted, excluded, tz))
        rows.sort(key=lambda r: (r.start, r.activity_id, r.version))
        return tuple(r for r in rows if r.in_month > 0 or _touches(r, lo, hi))

    def _why(self, at: ActivityTime, mt: MonthTime, tz: str) -> list[Exclusion]:
        """The core's exclusion reasons for a current version, with the evidence named."""
        a = at.activity
        out = []
        for reason, seconds in at.excluded.items():
            detail = ""
            if reason == "duplicate_event":
                first = next(o.activity.activity_id for o in mt.activities if _same(o, a))
                detail = f"same staff, start, length and program as {first}, logged first (G9)"
            elif reason == "face_to_face_excluded":
                detail = "face-to-face time belongs to the visit (G7)"
            elif reason == "non_clinical_staff_excluded":
                detail = f"{a.role} staff time never counts"
            elif reason == "consent_after_activity":
                dates = [
                    f"{c.on.isoformat()}{' (revoked)' if c.revoked else ''}"
                    for c in self.docs.consents
                    if c.program == a.program and c.practitioner_id == a.practitioner_id
                ]
                detail = (
                    f"outside {a.program} consent with {a.practitioner_id} "
                    f"(consent on {', '.join(dates) or 'none'}; G10)"
                )
            elif reason == "inpatient_time_excluded":
                day0, day1 = _local(a.start, tz).date(), _local(a.end, tz).date()
                stays = [
                    f"{s.setting} {s.admitted_on.isoformat()}..{s.discharged_on.isoformat()}"
                    for s in self.docs.stays
                    if s.admitted_on <= day1 and s.discharged_on >= day0
                ]
                detail = f"{a.program} time during {', '.join(stays)} (G17)"
            elif reason == "overlap" or reason.startswith("double_count:"):
                kept = [
                    f"{p.kept} ({to_minutes(p.seconds):g} min)"
                    for p in mt.pairs
                    if p.other == a.activity_id and p.flag == reason
                ]
                if reason == "overlap":
                    rule = "same staff, same program"
                else:  # double_count:<program that kept them>+<this program>
                    rule = f"same staff, counted first under {reason[13:].split('+')[0]}"
                detail = f"kept by {', '.join(kept)}: {rule} (G9)"
            out.append(Exclusion(reason, seconds, detail))
        return out

    def _documentation(self, ctx: PatientContext, month: str) -> Documentation:
        d, p = self.docs, ctx.patient
        lo, hi = month_bounds(month, ctx.tz)
        first, last = _local(lo, ctx.tz).date(), _local(hi - 1, ctx.tz).date()
        devices = []
        for program in sorted(ctx.days):
            days = tuple(sorted(x for x in ctx.days[program] if month_of_date(x) == month))
            periods = tuple(
                DevicePeriod(s, e, i, n)
                for s, e, i, n in ctx.periods.get(program, [])
                if first <= e <= last
            )
            if days or periods:
                devices.append(DeviceDays(program, days, periods))
        policy = book_for_month(month).policy
        return Documentation(
            consents=tuple(sorted(d.consents, key=lambda c: (c.on, c.program))),
            care_plans=tuple(sorted(d.care_plans, key=lambda c: (c.on, c.program))),
            conditions=tuple(d.conditions),
            enrollments=tuple(sorted(d.enrollments, key=lambda e: (e.on, e.program))),
            visits=tuple(sorted(d.visits, key=lambda v: v.on)),
            stays=tuple(sorted(d.stays, key=lambda s: s.admitted_on)),
            devices=tuple(devices),
            conditions_in_effect=condition_count(p, month, ctx.tz),
            complex_month=complex_month(p, month),
            established_patient=established(p, month, policy.established_patient_years),
        )


def audit_month(
    events: Iterable[Event | tuple[Event, bytes | None]],
    org_id: str,
    patient_id: str,
    month: str,
    as_of: datetime | None = None,
) -> AuditReport:
    """The audit report of one patient-month from ``events`` in log order (each an event,
    or ``(event, raw bytes)``); only events recorded at or before ``as_of`` count.

    Raises :class:`AuditNotFound` when the patient, or anything in the month, is unknown.
    """
    fold = AuditFold(org_id, patient_id, as_of)
    for item in events:
        if isinstance(item, tuple):
            fold.apply(item[0], item[1])
        else:
            fold.apply(item)
    return fold.report(month)


# -- helpers --------------------------------------------------------------------------


def _same(at: ActivityTime, a: Activity) -> bool:
    """The accounting's duplicate fingerprint: staff, start, length and program."""
    b = at.activity
    return (b.staff_id, b.start, b.end, b.program) == (a.staff_id, a.start, a.end, a.program)


def _local(ts: int, tz: str) -> datetime:
    return datetime.fromtimestamp(ts, zone(tz))


def _touches(row: ActivityRow, lo: int, hi: int) -> bool:
    """A zero-length version inside the month still belongs to it."""
    s = epoch(row.start)
    return lo <= s < hi


_FIELDS: tuple[tuple[str, str], ...] = (
    ("staff_id", "staff"),
    ("role", "role"),
    ("practitioner_id", "practitioner"),
    ("program", "program"),
    ("face_to_face", "face-to-face"),
    ("interactive", "interactive"),
)


def _changes(old: _Version, new: _Version) -> list[Change]:
    a, b = old.activity, new.activity
    out = []
    if old.event.data.activity != new.event.data.activity:
        out.append(Change("activity", old.event.data.activity, new.event.data.activity))
    if a.start != b.start:
        out.append(Change("start", old.event.data.started_at.isoformat(), _iso_start(new)))
    if a.end - a.start != b.end - b.start:
        out.append(
            Change(
                "minutes", f"{to_minutes(a.end - a.start):g}", f"{to_minutes(b.end - b.start):g}"
            )
        )
    for attr, name in _FIELDS:
        x, y = getattr(a, attr), getattr(b, attr)
        if x != y:
            out.append(Change(name, str(x).lower(), str(y).lower()))
    return out


def _iso_start(v: _Version) -> str:
    return v.event.data.started_at.isoformat()


def _change_text(c: Change) -> str:
    return f"{c.field} {c.before} -> {c.after}"


def _row(
    v: _Version, versions: int, in_month: int, counted: int, excluded: list[Exclusion], tz: str
) -> ActivityRow:
    a = v.activity
    prior: list[PriorVersion] = []
    p = v.previous
    nxt = v
    while p is not None:
        prior.append(
            PriorVersion(p.number, p.event.event_id, p.event.recorded_at, tuple(_changes(p, nxt)))
        )
        nxt, p = p, p.previous
    return ActivityRow(
        activity_id=a.activity_id,
        version=v.number,
        versions=versions,
        status=v.status,
        event_id=v.event.event_id,
        recorded_at=v.event.recorded_at,
        staff_id=a.staff_id,
        role=a.role,
        program=a.program,
        practitioner_id=a.practitioner_id,
        label=v.event.data.activity,
        start=_local(a.start, tz),
        end=_local(a.end, tz),
        seconds=a.end - a.start,
        face_to_face=a.face_to_face,
        interactive=a.interactive,
        in_month=in_month,
        counted=counted,
        excluded=tuple(excluded),
        amended_from=tuple(reversed(prior)),
        superseded_by=v.superseded_by.number if v.superseded_by is not None else None,
        void=v.void,
    )


def _programs(
    mt: MonthTime, mb: MonthBilling, rows: tuple[ActivityRow, ...]
) -> tuple[ProgramTime, ...]:
    policy = book_for_month(mb.month).policy
    out = []
    for (program, practitioner), pool in sorted(mt.pools.items()):
        personal, staff, pooled, _ = pool.seconds(policy.concurrent_staff_time)
        counted = sum(
            r.counted
            for r in rows
            if r.status == "current" and r.program == program and r.practitioner_id == practitioner
        )
        out.append(
            ProgramTime(program, practitioner, counted, counted - pooled, pooled, personal, staff)
        )
    return tuple(out)


def _source_key(source: str) -> tuple[str, int, str]:
    digits = source.lstrip("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
    return (source[: len(source) - len(digits)], int(digits) if digits.isdigit() else 0, source)


def _billing(mb: MonthBilling, in_replay: bool) -> Billing:
    book = book_for_month(mb.month)

    def line(
        code: str, units: int, practitioner: str | None, family: str, reasons: list[str]
    ) -> CodeLine:
        rule = book.code(code)
        fee = book.fee(code)
        amount = None if fee is None else round(fee * units, 2)
        return CodeLine(
            code,
            units,
            practitioner,
            family,
            rule.descriptor,
            fee,
            amount,
            tuple(reasons),
            rule.sources,
        )

    billable = tuple(
        line(ln.code, ln.units, ln.practitioner_id, ln.family, []) for ln in mb.billable
    )
    blocked = tuple(
        line(b.line.code, b.line.units, b.line.practitioner_id, b.line.family, b.reasons)
        for b in sorted(mb.blocked, key=lambda b: (b.line.code, b.line.practitioner_id or ""))
    )
    families = {ln.family for ln in billable + blocked}
    if mb.time is not None:
        families |= {program for program, _ in mb.time.pools}
    rules: list[RuleRef] = []
    for ln in billable + blocked:
        if not any(r.kind == "code" and r.name == ln.code for r in rules):
            rules.append(RuleRef("code", ln.code, ln.sources))
    for track in book.tracks:
        if track.family in families:
            name = f"{track.family}/{track.name}: {track.base}" + (
                f"+{track.addon}" if track.addon else ""
            )
            rules.append(RuleRef("track", name, track.sources))
    for family in sorted(families):
        gate = book.gates.get(family)
        if gate is not None:
            rules.append(RuleRef("gate", family, gate.sources))
    conflicts = {f.split(":", 1)[1] for f in mb.flags if f.startswith("exclusive_conflict:")}
    for pair in book.exclusives:
        if f"{pair.a}+{pair.b}" in conflicts or f"{pair.b}+{pair.a}" in conflicts:
            rules.append(RuleRef("exclusive", f"{pair.a}+{pair.b}", pair.sources))
    if billable:
        rules.append(
            RuleRef(
                "conversion_factor",
                f"{book.conversion_factor}",
                (book.conversion_factor_source,),
            )
        )
    sources = sorted({s for r in rules for s in r.sources}, key=_source_key)
    return Billing(
        rule_year=mb.rule_year,
        conversion_factor=book.conversion_factor,
        in_replay=in_replay,
        minutes=dict(sorted(mb.minutes.items())),
        billable=billable,
        blocked=blocked,
        flags=tuple(sorted(mb.flags)),
        estimated_payment=mb.estimated_payment,
        rules=tuple(rules),
        source_ids=tuple(sources),
    )

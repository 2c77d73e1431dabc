"""The audit fold: one org's log folded for one patient exactly as ``caretally replay``
folds it, keeping what the ledger drops (every version of every activity, voids with
their reasons, the documentation as sent), and the report of a month built from it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from projections.accounting import MonthTime
from projections.audit import explain
from projections.audit.report import (
    ActivityRow,
    AuditReport,
    CarePlanDoc,
    ConditionsDoc,
    ConsentDoc,
    DeviceDays,
    DevicePeriod,
    Documentation,
    EnrollmentDoc,
    EventCounts,
    Exclusion,
    PriorVersion,
    ProgramTime,
    RejectedEvent,
    StayDoc,
    UnmatchedVoid,
    VisitDoc,
    VoidInfo,
)
from projections.billing import PatientContext
from projections.calendar import epoch, month_bounds, month_of_date, zone
from projections.documentation import (
    complex_month,
    condition_count,
    established,
)
from projections.ledger import Activity, Ledger, Status, body_digest, idempotency_digest
from projections.rules import SHIPPED_CATALOG, RuleBook, RuleCatalog
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


class AuditNotFound(LookupError):
    """Nothing on record for the patient (or the month) asked for; the message names no
    patient identifier, so it is safe to print or log."""


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
    replay; events of other orgs are ignored. The month is evaluated under the rule books
    of ``catalog``.
    """

    def __init__(
        self,
        org_id: str,
        patient_id: str,
        as_of: datetime | None = None,
        catalog: RuleCatalog = SHIPPED_CATALOG,
    ) -> None:
        self.org_id = org_id
        self.catalog = catalog
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
        ctx = PatientContext(patient, practice, catalog=self.catalog)
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
        book = self.catalog.for_month(month)
        mt, c = mb.time, self.counts
        assert mt is not None
        rows = self._rows(chains, mt, lo, hi, tz)
        return AuditReport(
            org_id=self.org_id,
            patient_id=self.patient_id,
            month=month,
            timezone=tz,
            facility_type=practice.facility_type,
            qualifying_apm_participant=practice.qualifying_apm_participant,
            fee_schedule=practice.fee_schedule,
            as_of=self.as_of,
            latest_recorded_at=self.latest,
            month_start=_local(lo, tz),
            month_end=_local(hi, tz),
            month_closed=month in practice.closed_months,
            events=EventCounts(c.applied, c.duplicates, c.rejected),
            activities=rows,
            programs=_programs(mt, book, rows),
            documentation=self._documentation(ctx, month),
            billing=explain.billing(mb, book, month in months, *practice.pricing()),
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
                        excluded = explain.exclusions(
                            at, mt, self.docs.consents, self.docs.stays, tz
                        )
                elif v.status == "voided" and v.void is not None:
                    excluded = [explain.voided(v.void, in_month)]
                elif v.superseded_by is not None:
                    excluded = [explain.amended(v, v.superseded_by, in_month)]
                rows.append(_row(v, len(chain), in_month, counted, excluded, tz))
        rows.sort(key=lambda r: (r.start, r.activity_id, r.version))
        return tuple(r for r in rows if r.in_month > 0 or _touches(r, lo, hi))

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
        policy = ctx.catalog.for_month(month).policy
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
    catalog: RuleCatalog = SHIPPED_CATALOG,
) -> AuditReport:
    """The audit report of one patient-month from ``events`` in log order (each an event,
    or ``(event, raw bytes)``); only events recorded at or before ``as_of`` count; the
    month is evaluated under the rule books of ``catalog``.

    Raises :class:`AuditNotFound` when the patient, or anything in the month, is unknown.
    """
    fold = AuditFold(org_id, patient_id, as_of, catalog)
    for item in events:
        if isinstance(item, tuple):
            fold.apply(item[0], item[1])
        else:
            fold.apply(item)
    return fold.report(month)


# -- helpers --------------------------------------------------------------------------


def _local(ts: int, tz: str) -> datetime:
    return datetime.fromtimestamp(ts, zone(tz))


def _touches(row: ActivityRow, lo: int, hi: int) -> bool:
    """A zero-length version inside the month still belongs to it."""
    s = epoch(row.start)
    return lo <= s < hi


def _row(
    v: _Version, versions: int, in_month: int, counted: int, excluded: list[Exclusion], tz: str
) -> ActivityRow:
    a = v.activity
    prior: list[PriorVersion] = []
    p = v.previous
    nxt = v
    while p is not None:
        prior.append(
            PriorVersion(
                p.number, p.event.event_id, p.event.recorded_at, tuple(explain.changes(p, nxt))
            )
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
    mt: MonthTime, book: RuleBook, rows: tuple[ActivityRow, ...]
) -> tuple[ProgramTime, ...]:
    policy = book.policy
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

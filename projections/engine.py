"""The two ways to run the core, with one semantics.

* :func:`replay` folds a whole log and evaluates every patient-month once (batch).
* :class:`Projector` steps event by event, ``step(event) -> StepResult``, keeping
  the billing of each touched patient-month and returning alerts as data (the
  difference before/after), in the spirit of a ``(state, event) -> (state, out)``
  step. Its views after the last event equal :func:`replay`'s for the same log.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime

from projections.alerts import alert_id, diff
from projections.billing import MonthBilling, Verdicts, evaluate
from projections.calendar import (
    epoch,
    month_bounds,
    months_spanned,
)
from projections.claims import ClaimRef, claim_refs
from projections.kernel import PatientKernel
from projections.ledger import QUARTER_HOUR, Activity, Ledger, Outcome, Status
from projections.rules import SHIPPED_CATALOG, RuleCatalog
from schemas.events import (
    ActivityLogged,
    ActivityVoided,
    ConsentRecorded,
    ConsentRevoked,
    DeviceReading,
    Event,
    MonthClosed,
    PracticeConfigured,
    StayRecorded,
)
from schemas.views import Alert

CUTS_TIME = (ConsentRecorded, ConsentRevoked, StayRecorded)
"""Documentation that changes counted time (consent windows, inpatient stays)."""


def fold(
    events: Iterable[Event], ledger: Ledger | None = None, as_of: datetime | None = None
) -> Ledger:
    """Fold ``events`` (log order) into a ledger; events recorded after ``as_of`` are skipped."""
    ledger = ledger if ledger is not None else Ledger()
    for event in events:
        if as_of is None or event.recorded_at <= as_of:
            ledger.apply(event)
    return ledger


def billing(
    ledger: Ledger, as_of: datetime | None = None, catalog: RuleCatalog = SHIPPED_CATALOG
) -> Iterator[MonthBilling]:
    """Every patient-month's billing under the rule books of ``catalog``, sorted by org,
    patient, month.

    With ``as_of``, months that had not begun at that instant (in the practice's time
    zone) are left out: a device period or an enrollment may point into them, but
    nothing in them was known yet.
    """
    cutoff = None if as_of is None else epoch(as_of)
    memo = Verdicts(limit=10_000)  # the most recent facts: most repeat within a practice
    for key in sorted(ledger.patients):
        patient = ledger.patients[key]
        practice = ledger.practice(key[0])
        months = evaluate(patient, practice, catalog=catalog, memo=memo)
        for m in sorted(months):
            if cutoff is not None and month_bounds(m, practice.timezone)[0] > cutoff:
                continue
            yield months[m]


def replay(
    events: Iterable[Event],
    as_of: datetime | None = None,
    catalog: RuleCatalog = SHIPPED_CATALOG,
) -> list[MonthBilling]:
    """Fold ``events`` and evaluate every patient-month (as known at ``as_of``) under the
    rule books of ``catalog``."""
    return list(billing(fold(events, as_of=as_of), as_of=as_of, catalog=catalog))


@dataclass(slots=True)
class StepResult:
    outcome: Outcome
    alerts: list[Alert] = field(default_factory=list)
    changed: list[MonthBilling] = field(default_factory=list)


class Projector:
    """Incremental fold: one event in, changed patient-month billings and alerts out
    (evaluated under the rule books of ``catalog``)."""

    def __init__(
        self, ledger: Ledger | None = None, catalog: RuleCatalog = SHIPPED_CATALOG
    ) -> None:
        self.ledger = ledger if ledger is not None else Ledger()
        self.catalog = catalog
        self.views: dict[tuple[str, str, str], MonthBilling] = {}
        self._months: dict[tuple[str, str], set[str]] = {}  # months in ``views`` per patient
        # per patient, what its evaluation needs, kept between events (a cache of the
        # ledger: rebuilt when missing or when the practice's zone changed)
        self._kernels: dict[tuple[str, str], PatientKernel] = {}
        self.verdicts = Verdicts()  # month facts -> verdict, shared by every patient
        # (org, patient, month) -> the claim lines billed when the month was (last) closed,
        # their ids keyed by that close's event_id; plain tuples, as the worker's JSON
        # snapshots keep them
        self.closed_claims: dict[tuple[str, str, str], tuple[ClaimRef, ...]] = {}

    def step(
        self, event: Event, raw: bytes | None = None, digests: tuple[int, int] | None = None
    ) -> StepResult:
        """Fold one event (``raw``: its wire bytes, ``digests``: its idempotency and body
        digests, if the caller has them) and say what it changed."""
        ledger = self.ledger
        org = event.org_id
        settings = _settings(ledger, org) if isinstance(event, PracticeConfigured) else None
        outcome = ledger.apply(event, raw, digests)
        if outcome.status is not Status.APPLIED:
            return StepResult(outcome)
        result = StepResult(outcome)
        if isinstance(event, PracticeConfigured):
            if settings == _settings(ledger, org):
                return result  # the same settings again: no evaluation can change
            for key in [k for k in self._kernels if k[0] == org]:
                del self._kernels[key]
            for o, pid in sorted(k for k in ledger.patients if k[0] == org):
                self._refresh(o, pid, None, event, result)
            return result
        if isinstance(event, MonthClosed):
            self._remember_claims(org, event.data.month, event.event_id)
            return result
        pid = event.patient_id
        assert pid is not None
        tz = ledger.practice(org).timezone
        kernel, fresh = self._kernel(org, pid)
        months: set[str] | None = None  # None: every month of the patient
        late: dict[str, MonthBilling | None] = {}  # closed month -> its billing before
        versions: list[Activity] = []
        if isinstance(event, ActivityLogged | ActivityVoided):
            current = (
                ledger.patients[(org, pid)].activities.get(event.data.activity_id)
                if isinstance(event, ActivityLogged)
                else None
            )
            if not fresh:
                kernel.activity(outcome.previous, current)
            months = set()
            for version in (outcome.previous, current):
                if version is not None:
                    versions.append(version)
                    months.update(months_spanned(version.start, version.end, tz))
            closed = ledger.practice(org).closed_months
            late = {m: self.views.get((org, pid, m)) for m in sorted(months & closed)}
        elif isinstance(event, DeviceReading):
            quarter = epoch(event.data.taken_at) // QUARTER_HOUR
            if not fresh:  # (a fresh kernel holds the reading: every month, None)
                months = kernel.reading(event.data.program, quarter)
                if months is not None and not months:
                    return result  # another reading on a day that had one: nothing changes
        elif not fresh:
            kernel.documentation(isinstance(event, CUTS_TIME))
        self._refresh(org, pid, months, event, result)
        if late:
            assert isinstance(event, ActivityLogged | ActivityVoided)
            result.alerts[:0] = self._late(event, late, versions)
        return result

    def _kernel(self, org: str, pid: str) -> tuple[PatientKernel, bool]:
        """The patient's kernel, and whether it was just built (from a ledger that
        already holds the event being stepped)."""
        practice = self.ledger.practice(org)
        kernel = self._kernels.get((org, pid))
        if kernel is not None and kernel.tz == practice.timezone:
            return kernel, False
        patient = self.ledger.patients[(org, pid)]
        kernel = self._kernels[(org, pid)] = PatientKernel(patient, practice, self.catalog)
        return kernel, True

    def _remember_claims(self, org: str, month: str, close_id: str) -> None:
        """Keep the claim lines of ``org``'s patient-months in ``month`` as billed at its
        close ``close_id`` (a later close of the same month replaces them: the claims were
        reissued)."""
        for key in [k for k in self.closed_claims if k[0] == org and k[2] == month]:
            del self.closed_claims[key]
        for key, billing in self.views.items():
            if key[0] == org and key[2] == month and billing.billable:
                self.closed_claims[key] = claim_refs(billing, close_id)

    def _late(
        self,
        event: ActivityLogged | ActivityVoided,
        before: dict[str, MonthBilling | None],
        versions: list[Activity],
    ) -> list[Alert]:
        """``late_activity`` for each closed month the event lands in (docs/rules.md §6.3),
        naming the claim lines it would change.

        A line billed at close is affected when the event's activity (either version)
        counts toward its family and practitioner, or when the event changes its units
        (a knock-on effect, e.g. through an exclusive pair); a line not billed at close
        that the event makes billable is named too, without an id (a claim line id is
        keyed by its close, so it has none until the month is reissued). The alert's
        ``code`` is the first of them; its id hashes only the cause, as before.
        """
        org, pid = event.org_id, event.patient_id
        what = "void" if isinstance(event, ActivityVoided) else "activity"
        touched = {(v.program, v.practitioner_id) for v in versions}
        out = []
        for m, was in before.items():
            book = self.catalog.for_month(m)
            at_close = self.closed_claims.get((org, pid, m), ())
            old, new = _units(was), _units(self.views.get((org, pid, m)))
            parts: list[tuple[str, str]] = []  # (code, words)
            for code, units, who, line_id in at_close:
                key = (code, who)
                if (book.code(code).family, who) in touched or old.get(key) != new.get(key):
                    parts.append(
                        (
                            code,
                            f"{_line(code, who, line_id)}: x{units} at close, "
                            f"x{new.get(key, 0)} now",
                        )
                    )
            billed = {(code, who) for code, _, who, _ in at_close}
            for (code, who), units in sorted(new.items(), key=_by_code):
                if (code, who) in billed or not units:
                    continue
                if (book.code(code).family, who) in touched or old.get((code, who)) != units:
                    parts.append((code, f"{_line(code, who)}: not billed at close, x{units} now"))
            detail = f"{what} {event.data.activity_id} lands in closed month {m}; "
            if parts:
                detail += "affects " + "; ".join(words for _, words in parts)
            elif at_close:
                detail += "affects no claim line billed at close; it may create a claim line"
            else:
                detail += (
                    "nothing was billed for this patient-month at close; it may create a claim line"
                )
            out.append(
                Alert(
                    alert_id=alert_id(
                        "late_activity", org, pid, m, event.data.activity_id, event.event_id
                    ),
                    kind="late_activity",
                    org_id=org,
                    patient_id=pid,
                    month=m,
                    code=parts[0][0] if parts else None,
                    cause_event_id=event.event_id,
                    detail=detail,
                )
            )
        return out

    def _refresh(
        self, org: str, pid: str, months: set[str] | None, event: Event, result: StepResult
    ) -> None:
        if (org, pid) not in self.ledger.patients:
            return
        kernel, _ = self._kernel(org, pid)
        valid = set(kernel.months())
        known = self._months.setdefault((org, pid), set())
        # besides the months the event touches, any month that appeared or vanished (APCM
        # months span enrollment to the last month the record speaks of, activities included)
        wanted = (valid | known) if months is None else (months & (valid | known)) | (valid ^ known)
        fresh = {m: kernel.month(m, self.verdicts) for m in sorted(wanted & valid)}
        for m in sorted(wanted):
            key = (org, pid, m)
            before = self.views.get(key)
            after = fresh.get(m)
            if after is None:  # the month no longer has anything in it
                if before is not None:
                    del self.views[key]
                    known.discard(m)
                    empty = MonthBilling(org, pid, m, before.rule_year, {}, [], [], set(), 0.0)
                    result.alerts.extend(diff(before, empty, event.event_id))
                    result.changed.append(empty)
                continue
            if before is not None and before.same_view(after) and _same_pairs(before, after):
                self.views[key] = after
                continue
            self.views[key] = after
            known.add(m)
            result.alerts.extend(diff(before, after, event.event_id))
            result.changed.append(after)

    def billing(self) -> list[MonthBilling]:
        return [self.views[k] for k in sorted(self.views)]


def _settings(ledger: Ledger, org: str) -> tuple[str, str, bool, str] | None:
    """What a ``practice.configured`` sets, as the evaluation reads it (None: never set;
    looked up without creating the practice, as the event may yet be refused): any
    change re-evaluates every month of the practice (the payment settings re-price them)."""
    practice = ledger.practices.get(org)
    if practice is None:
        return None
    return (
        practice.timezone,
        practice.facility_type,
        practice.qualifying_apm_participant,
        practice.fee_schedule,
    )


def _same_pairs(a: MonthBilling, b: MonthBilling) -> bool:
    return {(p.kind, p.kept, p.other) for p in a.pairs} == {
        (p.kind, p.kept, p.other) for p in b.pairs
    }


def _units(billing: MonthBilling | None) -> dict[tuple[str, str | None], int]:
    """Billable units per (code, billing practitioner)."""
    out: dict[tuple[str, str | None], int] = {}
    for ln in billing.billable if billing is not None else ():
        out[(ln.code, ln.practitioner_id)] = out.get((ln.code, ln.practitioner_id), 0) + ln.units
    return out


def _by_code(item: tuple[tuple[str, str | None], int]) -> tuple[str, str]:
    return item[0][0], item[0][1] or ""


def _line(code: str, practitioner: str | None, line_id: str | None = None) -> str:
    line = f"{code} by {practitioner or 'no practitioner of record'}"
    return line if line_id is None else f"{line} (claim line {line_id})"

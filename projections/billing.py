"""Billing for a patient-month: docs/rules.md §6.2 steps 6-13 over the rule book's data.

``evaluate(patient, practice, months)`` turns accounted time and documentation
into billable lines, blocked lines (time met, something missing) with reasons, and
flags named exactly as docs/rules.md §6.3. Thresholds, caps, pairings, track order,
gates, APCM levels, flag order and fees come from the month's rule book in the
:class:`~projections.rules.RuleCatalog` passed in (default: the shipped books); this
module is the procedure.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any, assert_never

from projections.accounting import MonthTime, Pair, account
from projections.calendar import (
    first_day,
    last_day,
    local_day,
    month_bounds,
    month_of_date,
    months_spanned,
    next_month,
)
from projections.documentation import (
    complex_month,
    condition_count,
    consent_periods,
    enrollment_of_record,
    enrollment_on,
    episodes,
    established,
    has_care_plan,
    initiating_visit,
)
from projections.intervals import Interval
from projections.ledger import QUARTER_HOUR, Activity, PatientState, Practice
from projections.rules import SHIPPED_CATALOG, RuleBook, RuleCatalog, Track
from projections.rules.model import Basis, Requirement

TIME_FAMILIES = ("ccm", "pcm", "rpm", "rtm", "bhi")
DEVICE_FAMILIES = ("rpm", "rtm")
DOCUMENTATION_REASONS = frozenset(
    {
        "missing_consent",
        "missing_care_plan",
        "insufficient_chronic_conditions",
        "rpm_not_established_patient",
        "rtm_not_established_patient",
        "missing_initiating_visit",
        "rpm_no_interactive_communication",
    }
)


@dataclass(frozen=True, slots=True)
class Line:
    """Units of one code for one billing practitioner (``None``: not attributable)."""

    code: str
    units: int
    practitioner_id: str | None
    family: str


@dataclass(slots=True)
class Blocked:
    line: Line
    reasons: list[str]


@dataclass(frozen=True, slots=True)
class Progress:
    """Where a patient-month stands against the next threshold of a track."""

    family: str
    practitioner_id: str
    code: str
    have_s: int
    need_s: int


@dataclass(slots=True)
class _Option:
    """One CCM track's outcome, kept apart until a track is chosen."""

    flags: set[str]
    earned: list[tuple[str, int]] = field(default_factory=list)
    progress: list[tuple[str, str, str, Basis, int]] = field(default_factory=list)


PROVISIONAL_FLAG_PREFIXES = ("rules_provisional:", "rules_extrapolated:")
"""Flags that make a month's estimated payment provisional (docs/rules.md §6.3)."""


@dataclass(slots=True)
class MonthBilling:
    org_id: str
    patient_id: str
    month: str
    rule_year: int
    minutes: dict[str, float]
    billable: list[Line]
    blocked: list[Blocked]
    flags: set[str]
    estimated_payment: float
    progress: list[Progress] = field(default_factory=list)
    pairs: list[Pair] = field(default_factory=list)
    time: MonthTime | None = field(default=None, repr=False, compare=False)
    verdict: Verdict | None = field(default=None, repr=False, compare=False)

    def same_view(self, other: MonthBilling) -> bool:
        """Whether :meth:`view` of both is equal, for two billings of one patient-month
        (cheaply when one verdict made both: then only the minutes can differ)."""
        if self.verdict is not None and self.verdict is other.verdict:
            return self.minutes == other.minutes and self.month == other.month
        return self.view() == other.view()

    def units(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for ln in self.billable:
            out[ln.code] = out.get(ln.code, 0) + ln.units
        return out

    def view(self) -> dict[str, Any]:
        """The public line (docs/design.md ``caretally replay`` shape)."""
        blocked: dict[tuple[str, tuple[str, ...]], int] = {}
        for b in self.blocked:
            key = (b.line.code, tuple(sorted(set(b.reasons))))
            blocked[key] = blocked.get(key, 0) + b.line.units
        return {
            "org_id": self.org_id,
            "patient_id": self.patient_id,
            "month": self.month,
            "rule_year": self.rule_year,
            "minutes": dict(sorted(self.minutes.items())),
            "billable": [{"code": c, "units": u} for c, u in sorted(self.units().items())],
            "blocked": [
                {"code": c, "units": u, "reasons": list(r)} for (c, r), u in sorted(blocked.items())
            ],
            "flags": sorted(self.flags),
            "estimated_payment": self.estimated_payment,
            "payment_provisional": self.payment_provisional,
        }

    @property
    def payment_provisional(self) -> bool:
        """Whether the payment is not final: priced with a provisional book
        (``rules_provisional:<year>``) or past the last book (``rules_extrapolated:<year>``)."""
        return any(f.startswith(PROVISIONAL_FLAG_PREFIXES) for f in self.flags)


# -- one patient, many months ----------------------------------------------------


def patient_months(
    patient: PatientState, practice: Practice, catalog: RuleCatalog = SHIPPED_CATALOG
) -> list[str]:
    """Months a patient has something to bill or explain: activity, readings, device
    periods that end in them, and APCM enrollment months up to the last active month."""
    return PatientContext(patient, practice, catalog=catalog).months()


def evaluate(
    patient: PatientState,
    practice: Practice,
    months: Iterable[str] | None = None,
    catalog: RuleCatalog = SHIPPED_CATALOG,
    memo: Verdicts | None = None,
) -> dict[str, MonthBilling]:
    """Billing for each of ``months`` (default: all of the patient's months) under the
    rule books of ``catalog``, every month accounted from scratch (``memo``: verdicts
    shared with other patients' evaluations)."""
    ctx = PatientContext(patient, practice, catalog=catalog)
    wanted = ctx.months() if months is None else sorted(set(months))
    return {m: ctx.month(m, memo) for m in wanted}


# -- device transmission days ---------------------------------------------------


def reading_days(patient: PatientState, tz: str) -> dict[str, set[date]]:
    """Local days with a reading, per device program."""
    return {
        fam: {local_day(q * QUARTER_HOUR, tz) for q in quarters}
        for fam, quarters in patient.readings.items()
        if quarters
    }


def activities_by_month(patient: PatientState, tz: str) -> dict[str, list[Activity]]:
    """The patient's activities under each local month they touch."""
    by_month: dict[str, list[Activity]] = {}
    for a in patient.activities.values():
        for m in months_spanned(a.start, a.end, tz):
            by_month.setdefault(m, []).append(a)
    return by_month


def device_periods(
    patient: PatientState,
    family: str,
    days: set[date],
    ordered: list[date] | None = None,
    catalog: RuleCatalog = SHIPPED_CATALOG,
) -> list[tuple[date, date, int, int]]:
    """(start, end inclusive, index in episode, transmission days) of every device period
    holding a reading (docs/rules.md §6.1, G1, C-1).

    Periods are 30 days long from the program's enrollment date. Each later enrollment
    starts a new episode (99453 again, D-12) with a grid of its own (C-1): at its own
    date when the period running on it has, on the days before it, earned no device
    code (that period then ends the day before, earning nothing); else the day after
    that period ends, so that no two billed periods overlap. "Earned" is judged by the
    book of the month of the day before the enrollment (:func:`earns_device_code`), so a
    period cut short earns nothing under the book that bills it. Readings before the
    first enrollment belong to no period; with no enrollment at all, periods start at
    the first reading.
    """
    if not days:
        return []
    if ordered is None:  # ``days`` in order (a caller may keep them so)
        ordered = sorted(days)
    starts = episodes(patient, family) or [ordered[0]]
    length, last, day = timedelta(days=30), timedelta(days=29), timedelta(days=1)
    out: list[tuple[date, date, int, int]] = []
    p, k, j = starts[0], 0, 1
    while p <= ordered[-1]:
        while j < len(starts) and starts[j] <= p:
            j += 1  # enrollments on or before ``p`` have been placed
        end = p + last
        lo = bisect_left(ordered, p)
        if j < len(starts) and starts[j] <= end:  # a re-enrollment inside this period
            cut = starts[j]
            n = bisect_left(ordered, cut) - lo  # its days before the re-enrollment
            book = catalog.for_month(month_of_date(cut - day))
            if not earns_device_code(book, family, n):
                if n:  # cut short: the new episode's grid starts at once
                    out.append((p, cut - day, k, n))
                p, k = cut, 0
                continue
        n = bisect_right(ordered, end) - lo
        if n:
            out.append((p, end, k, n))
        p, k = p + length, k + 1
        if j < len(starts) and starts[j] <= p:
            k = 0  # an enrollment during the period just ended: a new episode starts now
    return out


def device_codes_earned(book: RuleBook, family: str, qualified: tuple[bool, ...]) -> list[str]:
    """The device codes (fewest days first) a period billed under ``book`` earns, from
    :meth:`RuleBook.qualifies` of its days; RTM only the codes its policy picks (§3.4)."""
    rules = book.day_codes(family)[0]
    wanted = None
    if family == "rtm":
        wanted = {book.policy.rtm_device_code, book.policy.rtm_device_code_low_days}
    return [
        r.code
        for r, q in zip(rules, qualified[: len(rules)], strict=True)
        if q and (wanted is None or r.code in wanted)
    ]


def earns_device_code(book: RuleBook, family: str, days: int) -> bool:
    """Whether ``days`` transmission days earn a device code of ``book`` (C-1)."""
    return bool(days) and bool(device_codes_earned(book, family, book.qualifies(family, days)))


# -- evaluation -----------------------------------------------------------------


class PatientContext:
    """What the months of one patient share in one evaluation, computed once: build one
    per patient and state, then ask for ``months()`` and ``month(m)``."""

    def __init__(
        self,
        patient: PatientState,
        practice: Practice,
        days: dict[str, set[date]] | None = None,
        by_month: dict[str, list[Activity]] | None = None,
        catalog: RuleCatalog = SHIPPED_CATALOG,
    ) -> None:
        """``days`` and ``by_month`` may come from :func:`reading_days` and
        :func:`activities_by_month` of the same patient and zone (an incremental caller
        keeps them between events instead of recomputing them from the whole record).
        ``catalog``: the rule books each month is evaluated with."""
        self.patient = patient
        self.catalog = catalog
        self.practice = practice
        self.tz = practice.timezone
        self.days = reading_days(patient, self.tz) if days is None else days
        self.periods = {
            fam: device_periods(patient, fam, d, catalog=catalog) for fam, d in self.days.items()
        }
        self.consent_cache: dict[tuple[str, str], list[Interval] | None] = {}
        self.by_month = activities_by_month(patient, self.tz) if by_month is None else by_month
        self._months: list[str] | None = None
        # per month, what documentation and readings decide (kept until they change)
        self._docs: dict[str, DocFacts] = {}
        self._gates: dict[tuple[str, str, str | None], tuple[str, ...]] = {}

    def forget_months(self) -> None:
        """Drop the cached :meth:`months` (after a change to activities or readings)."""
        self._months = None

    def forget_periods(self) -> None:
        """Drop what the device periods decided (after they all may have moved)."""
        self._months = None
        self._docs.clear()

    def forget_docs(self, months: set[str]) -> None:
        """Drop the documentation facts of ``months`` (a period ending there changed)."""
        for m in months:
            self._docs.pop(m, None)

    def has_months(self, months: set[str]) -> bool:
        """Whether ``months`` are all among :meth:`months` (cached: no recomputing)."""
        return self._months is not None and months <= set(self._months)

    def add_months(self, months: set[str]) -> None:
        """``months`` now have readings or a period end: known months stay as they are
        (the set only grows with readings), a new one means computing them again."""
        if self._months is not None and not months <= set(self._months):
            self._months = None

    def doc_facts(self, book: RuleBook, month: str) -> DocFacts:
        facts = self._docs.get(month)
        if facts is None:
            facts = self._docs[month] = doc_facts(self, book, month)
        return facts

    def gate(
        self, book: RuleBook, month: str, family: str, practitioner: str | None
    ) -> tuple[str, ...]:
        """What the family's gate finds missing in ``month`` for ``practitioner``."""
        key = (month, family, practitioner)
        reasons = self._gates.get(key)
        if reasons is None:
            reasons = self._gates[key] = tuple(_gate(self, book, month, family, practitioner))
        return reasons

    def months(self) -> list[str]:
        if self._months is None:
            self._months = self._all_months()
        return self._months

    def _all_months(self) -> list[str]:
        months = set(self.by_month)
        for fam, fam_days in self.days.items():
            months.update(month_of_date(d) for d in fam_days)
            months.update(month_of_date(end) for _, end, _, _ in self.periods[fam])
        apcm = [e.on for e in self.patient.enrollments if e.program == "apcm"]
        if apcm:
            # APCM has no time threshold: bill each month from enrollment to the last
            # month the record speaks of (activity, readings or dated documentation)
            p = self.patient
            dated = [c.on for c in p.consents] + [on for _, _, on, _ in p.care_plans]
            dated += [e.on for e in p.enrollments] + [on for _, on, _ in p.visits]
            last = max([*months, *(month_of_date(d) for d in dated)])
            # ... but never before the first rule book (APCM began in CY 2025)
            first = self.catalog.first.effective_from
            m = max(month_of_date(min(apcm)), month_of_date(first))
            while m <= last:
                months.add(m)
                m = next_month(m)
        return sorted(months)

    def consent_periods(self, family: str, practitioner: str) -> list[Interval] | None:
        key = (family, practitioner)
        if key not in self.consent_cache:
            self.consent_cache[key] = consent_periods(self.patient, family, practitioner, self.tz)
        return self.consent_cache[key]

    def month(self, month: str, memo: Verdicts | None = None) -> MonthBilling:
        """The billing of ``month``, accounted from scratch (``memo``: verdicts to reuse)."""
        book = self.catalog.for_month(month)
        mt = account(
            self.patient,
            month,
            self.tz,
            book.policy,
            self.by_month.get(month, []),
            self.consent_cache,
        )
        return self.bill(mt, memo)

    def bill(self, mt: MonthTime, memo: Verdicts | None = None) -> MonthBilling:
        """The billing of a month from its accounted time: its facts (the canonical
        summary of every input the rules read), their verdict (from ``memo`` when the
        same facts were judged before), and the month's own minutes and progress."""
        book = self.catalog.for_month(mt.month)
        facts, seconds = month_facts(self, book, mt)
        verdict = None if memo is None else memo.get(facts)
        if verdict is None:
            verdict = _MonthEval(book, facts, seconds).run()
            if memo is not None:
                memo.put(facts, verdict)
        return verdict.billing(self.patient, mt, book, seconds)


# -- the canonical summary of a patient-month, and its verdict -------------------------


@dataclass(frozen=True, slots=True)
class PoolFacts:
    """One time pool as the rules see it: where each basis's seconds stand against every
    breakpoint of the family's tracks (:meth:`RuleBook.position`), not the seconds."""

    program: str
    practitioner_id: str
    interactive: bool
    personal: tuple[int, ...]
    staff: tuple[int, ...]
    pooled: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class DocFacts:
    """The facts of a patient-month that documentation and readings decide (kept per
    month by the patient's context until either changes)."""

    year: int  # the rule book
    extrapolated: bool  # a month after the last book
    complex_month: bool  # G12
    # per device family, each 30-day period ending in the month: (first of its episode,
    # which device and set-up codes its transmission days qualify for, practitioner)
    devices: tuple[tuple[str, tuple[tuple[bool, tuple[bool, ...], str | None], ...]], ...]
    apcm: tuple[str, bool, int] | None  # (practitioner, qmb, conditions) of record
    records: tuple[tuple[str, str], ...]  # enrollments of record, latest first
    transition_window: bool  # an RHC/FQHC in the G0511 transition window
    qp: bool  # the practice's fees: the QP conversion factor (docs/rules.md §5)
    facility: bool  # ... and the facility amounts
    gates: tuple[tuple[str, str | None, tuple[str, ...]], ...]  # device and APCM lines' gates


@dataclass(frozen=True, slots=True)
class MonthFacts:
    """Everything the rules of one patient-month read, canonical and hashable: two months
    with equal facts get the same lines, blocked lines, flags, payment and progress
    targets (:class:`Verdict`), whatever patient, month or seconds they came from. The
    completeness property (tests/property/test_kernel.py) holds the evaluation to it."""

    docs: DocFacts
    flags: frozenset[str]  # from the accounting (steps 1-5)
    pools: tuple[PoolFacts, ...]  # time families, by (program, practitioner)
    gates: tuple[tuple[str, str | None, tuple[str, ...]], ...]  # (family, who, reasons)


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the rules decide from a month's facts (``progress``: family, practitioner,
    code, the basis whose seconds count toward it, seconds needed)."""

    billable: tuple[Line, ...]
    blocked: tuple[Blocked, ...]
    flags: frozenset[str]
    estimated_payment: float
    progress: tuple[tuple[str, str, str, Basis, int], ...]

    def billing(
        self,
        patient: PatientState,
        mt: MonthTime,
        book: RuleBook,
        seconds: dict[tuple[str, str], dict[Basis, int]],
    ) -> MonthBilling:
        concurrent = book.policy.concurrent_staff_time
        minutes: dict[str, float] = {}
        for (program, _), pool in mt.pools.items():
            t = pool.seconds(concurrent)[2]
            minutes[program] = minutes.get(program, 0.0) + t
        return MonthBilling(
            org_id=patient.org_id,
            patient_id=patient.patient_id,
            month=mt.month,
            rule_year=book.year,
            minutes={k: round(v / 60, 2) for k, v in minutes.items()},
            # copies: a verdict is shared by many months, and each month's billing owns
            # its lines (a snapshot keeps object identity, which must not depend on the memo)
            billable=[
                Line(ln.code, ln.units, ln.practitioner_id, ln.family) for ln in self.billable
            ],
            blocked=[Blocked(Line(*_fields(b.line)), list(b.reasons)) for b in self.blocked],
            flags=set(self.flags),
            estimated_payment=self.estimated_payment,
            progress=[
                Progress(family, who, code, seconds[(family, who)][basis], need)
                for family, who, code, basis, need in self.progress
            ],
            pairs=list(mt.pairs),
            time=mt,
            verdict=self,
        )


class Verdicts:
    """A bounded memo of verdicts by facts (cleared whole when full: facts repeat across
    patients and months, so a fresh memo refills fast). The 1M-event synthetic log
    judges 53,187 distinct facts in 473,511 evaluations of the Projector."""

    __slots__ = ("hits", "limit", "misses", "table")

    def __init__(self, limit: int = 50_000) -> None:
        self.table: dict[MonthFacts, Verdict] = {}
        self.limit = limit
        self.hits = self.misses = 0

    def get(self, facts: MonthFacts) -> Verdict | None:
        verdict = self.table.get(facts)
        if verdict is None:
            self.misses += 1
        else:
            self.hits += 1
        return verdict

    def put(self, facts: MonthFacts, verdict: Verdict) -> None:
        if len(self.table) >= self.limit:
            self.table.clear()
        self.table[facts] = verdict


def month_facts(
    ctx: PatientContext, book: RuleBook, mt: MonthTime
) -> tuple[MonthFacts, dict[tuple[str, str], dict[Basis, int]]]:
    """The facts of ``mt.month`` for ``ctx``'s patient, and each time pool's seconds."""
    month = mt.month
    concurrent = book.policy.concurrent_staff_time
    seconds: dict[tuple[str, str], dict[Basis, int]] = {}
    pools: list[PoolFacts] = []
    gates: list[tuple[str, str | None, tuple[str, ...]]] = []
    pos = book.position
    for (program, who), pool in sorted(mt.pools.items()):
        if program not in TIME_FAMILIES:
            continue
        p_s, s_s, t_s, _ = pool.seconds(concurrent)
        seconds[(program, who)] = {"personal": p_s, "staff": s_s, "pooled": t_s}
        pools.append(
            PoolFacts(
                program,
                who,
                pool.interactive,
                pos(program, p_s),
                pos(program, s_s),
                pos(program, t_s),
            )
        )
        gates.append((program, who, ctx.gate(book, month, program, who)))
    facts = MonthFacts(ctx.doc_facts(book, month), frozenset(mt.flags), tuple(pools), tuple(gates))
    return facts, seconds


def doc_facts(ctx: PatientContext, book: RuleBook, month: str) -> DocFacts:
    """The facts of ``month`` that documentation and readings decide."""
    patient, tz = ctx.patient, ctx.tz
    wanted: set[tuple[str, str | None]] = set()
    devices: list[tuple[str, tuple[tuple[bool, tuple[bool, ...], str | None], ...]]] = []
    lo, hi = first_day(month), last_day(month)
    for family in DEVICE_FAMILIES:
        rows: list[tuple[bool, tuple[bool, ...], str | None]] = []
        for start, end, index, n in ctx.periods.get(family, ()):
            if not lo <= end <= hi:
                continue
            enr = enrollment_on(patient, family, start)  # one practitioner per period (G14)
            who_dev = enr.practitioner_id if enr is not None else None
            rows.append((index == 0, book.qualifies(family, n), who_dev))
            wanted.add((family, who_dev))
        if rows:
            devices.append((family, tuple(rows)))
    apcm: tuple[str, bool, int] | None = None
    enr = enrollment_of_record(patient, ("apcm",), month)
    if enr is not None and lo >= book.effective_from:
        apcm = (enr.practitioner_id, enr.qmb, condition_count(patient, month, tz))
        wanted.add(("apcm", enr.practitioner_id))
    pol = book.policy
    return DocFacts(
        year=book.year,
        extrapolated=ctx.catalog.extrapolated(month),
        complex_month=complex_month(patient, month),
        devices=tuple(devices),
        apcm=apcm,
        records=_records(patient, month),
        qp=ctx.practice.qualifying_apm_participant,
        facility=ctx.practice.fee_schedule == "facility",
        transition_window=(
            ctx.practice.facility_type in ("fqhc", "rhc")
            and pol.g0511_transition_from is not None
            and pol.g0511_transition_to is not None
            and pol.g0511_transition_from <= lo <= pol.g0511_transition_to
        ),
        gates=tuple(
            (family, who, ctx.gate(book, month, family, who))
            for family, who in sorted(wanted, key=lambda k: (k[0], k[1] or ""))
        ),
    )


def _fields(ln: Line) -> tuple[str, int, str | None, str]:
    return ln.code, ln.units, ln.practitioner_id, ln.family


def _records(patient: PatientState, month: str) -> tuple[tuple[str, str], ...]:
    """(program, practitioner) of the latest enrollment of each pair on or before the
    month's end, latest first: ``enrollment_of_record`` of any programs and practitioner
    is the first entry that matches."""
    end = last_day(month)
    best: dict[tuple[str, str], tuple[date, int]] = {}
    for e in patient.enrollments:
        if e.on > end:
            continue
        key = (e.program, e.practitioner_id)
        if key not in best or (e.on, e.seq) > best[key]:
            best[key] = (e.on, e.seq)
    return tuple(sorted(best, key=best.__getitem__, reverse=True))


def _gate(
    ctx: PatientContext, book: RuleBook, month: str, family: str, practitioner: str | None
) -> list[str]:
    """Step 6: what the family's documentation gate finds missing in the month."""
    gate = book.gates.get(family)
    if gate is None:
        return []
    p, m, reasons = ctx.patient, month, []
    lo, hi = month_bounds(month, ctx.tz)
    if gate.consent:
        if practitioner is not None:
            periods = ctx.consent_periods(family, practitioner)
            ok = periods is not None and any(a < hi and b > lo for a, b in periods)
        else:  # device lines with no practitioner of record: anyone's consent
            ok = any(
                a < hi and b > lo
                for pr in {c.practitioner_id for c in p.consents if c.program == family}
                for a, b in ctx.consent_periods(family, pr) or ()
            )
        if not ok:
            reasons.append("missing_consent")
    if gate.min_conditions and condition_count(p, m, ctx.tz) < gate.min_conditions:
        reasons.append("insufficient_chronic_conditions")
    if gate.care_plan and not has_care_plan(p, family, m):
        reasons.append("missing_care_plan")
    years = book.policy.established_patient_years
    rtm_p2 = family == "rtm" and book.proposal_on("rtm_established_patient")  # §7.2 P2
    if (gate.established_patient or rtm_p2) and not established(p, m, years):
        reasons.append(f"{'rtm' if family == 'rtm' else 'rpm'}_not_established_patient")
    p1 = family in DEVICE_FAMILIES and book.proposal_on("rpm_rtm_initiating_visit")  # §7.2 P1
    if p1 and not initiating_visit(
        p, practitioner, _episode_start(p, family, practitioner, m), years
    ):
        reasons.append("missing_initiating_visit")
    return reasons


def _episode_start(
    patient: PatientState, family: str, practitioner: str | None, month: str
) -> date:
    """Where the initiating visit of the proposed rule P1 is looked for: the date of the
    episode the month's lines belong to, the latest enrollment in ``family`` on or before
    the month's end by ``practitioner`` (a device line's practitioner is its period's
    enrollment, G14), else by anyone; with no enrollment, the month's last day. Documentation
    alone decides it, as every gate (kept per month until documentation changes)."""
    enr = enrollment_of_record(patient, (family,), month, practitioner)
    if enr is None:
        enr = enrollment_of_record(patient, (family,), month)
    return last_day(month) if enr is None else enr.on


class _MonthEval:
    """Steps 6-13 of one month from its facts (and, for the comparisons, its seconds)."""

    def __init__(
        self,
        book: RuleBook,
        facts: MonthFacts,
        seconds: dict[tuple[str, str], dict[Basis, int]],
    ) -> None:
        self.book = book
        self.policy = book.policy
        self.facts = facts
        self.seconds = seconds
        self.flags: set[str] = set(facts.flags)
        self.lines: list[Line] = []
        self.blocked: list[Blocked] = []
        self.progress: list[tuple[str, str, str, Basis, int]] = []
        self._gates = {(f, who): r for f, who, r in (*facts.docs.gates, *facts.gates)}

    # -- driver --------------------------------------------------------------

    def run(self) -> Verdict:
        for pool in self.facts.pools:
            self._time_family(pool)
        for family, periods in self.facts.docs.devices:
            self._device_family(family, periods)
        self._apcm()
        self._one_practitioner("ccm")
        self._exclusive_pairs()
        self._transition_flag()
        if self.facts.docs.extrapolated:
            self.flags.add(f"rules_extrapolated:{self.book.year}")
        if self.book.provisional:
            self.flags.add(f"rules_provisional:{self.book.year}")
        payment = 0.0
        for ln in self.lines:
            fee = self._fee(ln.code)
            if fee is not None:
                payment += fee * ln.units
        return Verdict(
            billable=tuple(sorted(self.lines, key=lambda ln: (ln.code, ln.practitioner_id or ""))),
            blocked=tuple(self.blocked),
            flags=frozenset(self.flags),
            estimated_payment=round(payment, 2),
            progress=tuple(self.progress),
        )

    def _fee(self, code: str) -> float | None:
        """The code's amount for the practice's payment settings (docs/rules.md §5)."""
        docs = self.facts.docs
        return self.book.fee(code, qp=docs.qp, facility=docs.facility)

    def _record(
        self, programs: tuple[str, ...], practitioner: str | None = None
    ) -> tuple[str, str] | None:
        """(program, practitioner) of the enrollment of record among ``programs``."""
        for program, who in self.facts.docs.records:
            if program in programs and (practitioner is None or who == practitioner):
                return program, who
        return None

    # -- earning units on a track ---------------------------------------------

    def _threshold(self, code: str) -> int:
        return self.book.code(code).threshold_minutes * 60

    def _earn(
        self, track: Track, seconds: int, practitioner: str, option: _Option | None = None
    ) -> list[tuple[str, int]]:
        """Units a track earns for ``seconds`` (G3 full thresholds, G15 pairing, caps).

        Cap flags and progress go to ``option`` when given (a CCM track that may not
        be chosen), else straight to the month.
        """
        flags = self.flags if option is None else option.flags
        progress = self.progress if option is None else option.progress
        base = self.book.code(track.base)
        thr = base.threshold_minutes * 60
        if seconds < thr:
            progress.append((track.family, practitioner, base.code, track.basis, thr))
            return []
        if base.band_max_minutes is not None and seconds >= (base.band_max_minutes + 1) * 60:
            return []
        earned = [(base.code, 1)]
        if track.addon is not None:
            addon = self.book.code(track.addon)
            step = addon.step_minutes * 60
            raw = (seconds - thr) // step
            units = raw if addon.cap is None else min(raw, addon.cap)
            if addon.cap is not None and raw > addon.cap:
                flags.add(f"cap_reached:{addon.code}")
            if addon.flag_above is not None and raw > addon.flag_above:
                flags.add(f"units_exceed_common_payer_edit:{addon.code}")
            if units:
                earned.append((addon.code, units))
            if addon.cap is None or units < addon.cap:
                need = thr + (units + 1) * step
                progress.append((track.family, practitioner, addon.code, track.basis, need))
        if option is not None:
            option.earned = earned
        return earned

    def _tracks(self, family: str) -> dict[str, Track]:
        return {t.name: t for t in self.book.tracks_for(family)}

    # -- step 6: documentation gates --------------------------------------------

    def _gate_reasons(self, family: str, practitioner: str | None) -> list[str]:
        reasons = self._gates.get((family, practitioner))
        if reasons is None:  # month_facts judges every gate a line can meet
            raise KeyError(f"no gate facts for {family} by {practitioner}")
        return list(reasons)

    def _emit(
        self,
        family: str,
        practitioner: str | None,
        earned: list[tuple[str, int]],
        extra: list[str] | None = None,
        gate: list[str] | None = None,
    ) -> None:
        """Add earned units as billable, or blocked with the gate reasons."""
        reasons = list(gate if gate is not None else self._gate_reasons(family, practitioner))
        reasons += extra or []
        self.flags.update(reasons)
        base_blocked = False
        for code, units in earned:
            line = Line(code, units, practitioner, family)
            rule = self.book.code(code)
            if rule.role == "addon" and base_blocked:
                r = [*reasons, f"addon_without_base:{code}"]
                self.flags.add(f"addon_without_base:{code}")
                self.blocked.append(Blocked(line, r))
            elif reasons:
                self.blocked.append(Blocked(line, list(reasons)))
                base_blocked = base_blocked or rule.role == "base"
            else:
                self.lines.append(line)

    # -- steps 7, 9, 10, 11: time families -----------------------------------

    def _time_family(self, pool: PoolFacts) -> None:
        family, practitioner = pool.program, pool.practitioner_id
        secs = self.seconds[(family, practitioner)]
        if family == "ccm":
            earned = self._ccm(practitioner, secs)
        elif family == "pcm":
            earned = self._pcm(practitioner, secs)
        else:
            earned = self._first_track(family, practitioner, secs)
        extra: list[str] = []
        if earned and family in DEVICE_FAMILIES:
            base = self.book.code(earned[0][0])
            if base.requires_interactive and not pool.interactive:
                extra.append("rpm_no_interactive_communication")
        gate = self._gate_reasons(family, practitioner)
        self.flags.update(gate)
        self._emit(family, practitioner, earned, extra, gate)

    def _first_track(
        self, family: str, practitioner: str, secs: dict[Basis, int]
    ) -> list[tuple[str, int]]:
        tracks = self.book.tracks_for(family)
        for track in tracks:
            earned = self._earn(track, secs[track.basis], practitioner)
            if earned:
                return earned
        lowest = min(tracks, key=lambda t: self._threshold(t.base))
        self.flags.add(f"below_threshold:{lowest.base}")
        return []

    def _meets(self, requirement: Requirement | None) -> bool:
        """Whether the month meets what a track ``requires`` besides time."""
        if requirement is None:
            return True
        if requirement == "complex_month":  # G12
            return self.facts.docs.complex_month
        assert_never(requirement)

    def _ccm(self, practitioner: str, secs: dict[Basis, int]) -> list[tuple[str, int]]:
        """docs/rules.md §6.2 step 7: complex, then physician, then staff track, each on
        the seconds of its basis (shipped: pooled, personal, pooled)."""
        tracks = self._tracks("ccm")
        cx, phys, staff = tracks["complex"], tracks["physician"], tracks["staff"]
        cx_s, phys_s, staff_s = secs[cx.basis], secs[phys.basis], secs[staff.basis]
        p_s, s_s = secs["personal"], secs["staff"]
        qualifies = self._meets(cx.requires)
        options: list[_Option] = []
        if qualifies and cx_s >= self._threshold(cx.base):
            opt = _Option({"physician_time_pooled"} if p_s > 0 else set())
            if phys_s >= self._threshold(phys.base):
                opt.flags.add(self.book.conflict_flag(phys.base, cx.base))
            self._earn(cx, cx_s, practitioner, opt)
            options.append(opt)
        elif not qualifies and cx_s >= self._threshold(cx.base):
            self.flags.add("complex_criteria_not_met")
        if qualifies and cx_s < self._threshold(cx.base):
            self.flags.add(f"below_threshold:{cx.base}")
            self.progress.append(("ccm", practitioner, cx.base, cx.basis, self._threshold(cx.base)))
        if 0 < phys_s < self._threshold(phys.base):
            self.progress.append(
                ("ccm", practitioner, phys.base, phys.basis, self._threshold(phys.base))
            )
        if phys_s >= self._threshold(phys.base):
            opt = _Option(set())
            if s_s >= self._threshold(staff.base):
                opt.flags.add(self.book.conflict_flag(phys.base, staff.base))
            self._earn(phys, phys_s, practitioner, opt)
            options.append(opt)
        if phys_s < self._threshold(phys.base) or self.policy.ccm_track_policy == "revenue":
            opt = _Option(set())
            if 0 < phys_s < self._threshold(phys.base):
                opt.flags |= {"physician_time_pooled", f"below_threshold:{phys.base}"}
            if staff_s < self._threshold(staff.base):
                opt.flags.add(f"below_threshold:{staff.base}")
            self._earn(staff, staff_s, practitioner, opt)
            options.append(opt)
        return self._choose(options)

    def _pcm(self, practitioner: str, secs: dict[Basis, int]) -> list[tuple[str, int]]:
        """docs/rules.md §6.2 step 9: the physician track, else the staff track (each on
        the seconds of its basis)."""
        tracks = self._tracks("pcm")
        phys, staff = tracks["physician"], tracks["staff"]
        phys_s, staff_s, s_s = secs[phys.basis], secs[staff.basis], secs["staff"]
        if phys_s >= self._threshold(phys.base):
            if s_s >= self._threshold(staff.base):
                self.flags.add(self.book.conflict_flag(phys.base, staff.base))
            return self._earn(phys, phys_s, practitioner)
        if phys_s > 0:
            self.flags |= {"physician_time_pooled", f"below_threshold:{phys.base}"}
            self.progress.append(
                ("pcm", practitioner, phys.base, phys.basis, self._threshold(phys.base))
            )
        if staff_s < self._threshold(staff.base):
            self.flags.add(f"below_threshold:{staff.base}")
        return self._earn(staff, staff_s, practitioner)

    def _choose(self, options: list[_Option]) -> list[tuple[str, int]]:
        """First option in track order (descriptor policy) or the best paid (revenue)."""
        if not options:
            return []
        if self.policy.ccm_track_policy == "revenue":
            chosen = max(options, key=lambda o: sum((self._fee(c) or 0.0) * u for c, u in o.earned))
        else:
            chosen = options[0]
        self.flags |= chosen.flags
        self.progress.extend(chosen.progress)
        return chosen.earned

    # -- step 10/11: device periods ---------------------------------------------

    def _device_family(
        self, family: str, periods: tuple[tuple[bool, tuple[bool, ...], str | None], ...]
    ) -> None:
        """Device codes for each 30-day period ending in the month, from the codes its
        transmission days qualify for (:meth:`RuleBook.qualifies`)."""
        rules, setup = self.book.day_codes(family)
        for first, qualified, practitioner in periods:
            chosen = device_codes_earned(self.book, family, qualified)
            if not chosen:
                self.flags.add("rpm_insufficient_days")
                continue
            earned = [(chosen[-1], 1)]
            if first:
                extra = zip(setup, qualified[len(rules) :], strict=True)
                earned += [(r.code, 1) for r, q in extra if q]
            self._emit(family, practitioner, earned)

    # -- step 12: APCM -----------------------------------------------------------

    def _apcm(self) -> None:
        """Step 12: an APCM enrollment naming X makes CCM/PCM by X not billable that month,
        whether or not the APCM code itself is billable (the book's level for the
        condition count and QMB status, G13)."""
        if self.facts.docs.apcm is None:
            return
        who, qmb, n = self.facts.docs.apcm
        rule = self.book.monthly_code("apcm", n, qmb)
        if rule is None:
            return
        code = rule.code
        self._emit("apcm", who, [(code, 1)])
        barred = {
            self.book.code(other).family
            for pair in self.book.exclusives
            for mine, other in ((pair.a, pair.b), (pair.b, pair.a))
            if self.book.code(mine).family == "apcm" and self.book.code(other).family != "apcm"
        }
        for family in sorted(barred):
            mine = [ln for ln in self.lines if ln.family == family and ln.practitioner_id == who]
            base = next((ln.code for ln in mine if self.book.code(ln.code).role == "base"), None)
            if base is None:
                continue
            flag = self.book.conflict_flag(code, base)
            self.flags.add(flag)
            for ln in mine:
                self._block(ln, [flag])

    # -- step 8: one practitioner per family --------------------------------------

    def _one_practitioner(self, family: str) -> None:
        billing = sorted(
            {ln.practitioner_id for ln in self.lines if ln.family == family}, key=lambda p: p or ""
        )
        if len(billing) < 2:
            return
        self.flags.add(f"multiple_practitioners:{family}")
        rec = self._record((family,))
        keep = rec[1] if rec is not None and rec[1] in billing else None
        kept_base = next(
            (
                ln.code
                for ln in self.lines
                if ln.family == family
                and ln.practitioner_id == keep
                and self.book.code(ln.code).role == "base"
            ),
            None,
        )
        for ln in [ln for ln in self.lines if ln.family == family and ln.practitioner_id != keep]:
            reasons = [f"multiple_practitioners:{family}"]
            other = kept_base or next(
                (
                    o.code
                    for o in self.lines
                    if o.family == family
                    and o.practitioner_id != ln.practitioner_id
                    and self.book.code(o.code).role == "base"
                ),
                None,
            )
            if other and other != ln.code and self.book.code(ln.code).role == "base":
                flag = self.book.conflict_flag(ln.code, other)
                reasons.append(flag)
                self.flags.add(flag)
            self._block(ln, reasons)
        if keep is None:
            for ln in [ln for ln in self.lines if ln.family == family]:
                self._block(ln, [f"multiple_practitioners:{family}"])

    def _block(self, line: Line, reasons: list[str]) -> None:
        self.lines.remove(line)
        self.blocked.append(Blocked(line, reasons))

    # -- steps 9, 11, 12: exclusive pairs resolved by program of record ------------

    def _exclusive_pairs(self) -> None:
        """Steps 9 and 11: families never billed together (per practitioner or for the
        patient, as each pair's scope says) keep the program of record."""
        present = {ln.family for ln in self.lines}
        for pair, fa, fb in self.book.pair_families:
            if fa not in present or fb not in present:
                continue  # nothing to resolve or flag without lines of both families
            if pair.resolution == "allow_flagged":
                self._disputed(pair.a, pair.b)
                continue
            if pair.resolution != "program_of_record":
                continue  # track_order pairs are settled inside a family's tracks
            if "apcm" in (fa, fb) or fa == fb:
                continue  # APCM is settled from its enrollment (step 12)
            left = {ln.practitioner_id for ln in self.lines if ln.family == fa}
            right = {ln.practitioner_id for ln in self.lines if ln.family == fb}
            if not left or not right:
                continue
            if pair.scope == "same_practitioner":
                for who in sorted(left & right, key=lambda x: x or ""):
                    self._resolve(fa, fb, who)
            else:
                self._resolve(fa, fb, None)

    def _disputed(self, a: str, b: str) -> None:
        """Families of ``a`` and ``b`` billed by different practitioners: allowed, but
        flagged as disputed (D-2: ``disputed_rule:pcm_ccm_different_practitioners``)."""
        fa, fb = self.book.code(a).family, self.book.code(b).family
        left = {ln.practitioner_id for ln in self.lines if ln.family == fa}
        right = {ln.practitioner_id for ln in self.lines if ln.family == fb}
        if any(x != y for x in left for y in right):
            self.flags.add(f"disputed_rule:{fb}_{fa}_different_practitioners")

    def _resolve(self, fa: str, fb: str, who: str | None) -> None:
        """Keep the family of record (latest enrollment among the two, for ``who`` when the
        pair is per practitioner); without one, hold both."""

        def lines(family: str) -> list[Line]:
            return [
                ln
                for ln in self.lines
                if ln.family == family and (who is None or ln.practitioner_id == who)
            ]

        la, lb = lines(fa), lines(fb)
        if not la or not lb:
            return
        flag = self.book.conflict_flag(_base_of(self.book, la), _base_of(self.book, lb))
        self.flags.add(flag)
        rec = self._record((fa, fb), who)
        if rec is not None and rec[0] == fa:
            losers = lb
        elif rec is not None and rec[0] == fb:
            losers = la
        else:
            losers = la + lb
        for ln in losers:
            self._block(ln, [flag])

    # -- step 13 -----------------------------------------------------------------

    def _transition_flag(self) -> None:
        if self.facts.docs.transition_window and self.lines:
            self.flags.add("g0511_transition_option")


def _base_of(book: RuleBook, lines: list[Line]) -> str:
    """The base code among a family's lines (its first line if none is a base)."""
    return next((ln.code for ln in lines if book.code(ln.code).role == "base"), lines[0].code)

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

from projections.accounting import MonthTime, Pair, Pool, account
from projections.calendar import (
    first_day,
    last_day,
    local_day,
    month_of_date,
    months_spanned,
    next_month,
)
from projections.documentation import (
    complex_month,
    condition_count,
    consent_periods,
    enrollment_of_record,
    episodes,
    established,
    has_care_plan,
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
    progress: list[Progress] = field(default_factory=list)


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
        }


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
) -> dict[str, MonthBilling]:
    """Billing for each of ``months`` (default: all of the patient's months) under the
    rule books of ``catalog``."""
    ctx = PatientContext(patient, practice, catalog=catalog)
    wanted = ctx.months() if months is None else sorted(set(months))
    return {m: ctx.month(m) for m in wanted}


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


def _periods(
    patient: PatientState, family: str, days: set[date]
) -> list[tuple[date, date, int, int]]:
    """(start, end inclusive, index in episode, transmission days) of every 30-day period
    holding a reading (docs/rules.md §6.1, G1).

    Periods start at the program's enrollment date and are always 30 days long; a new
    enrollment opens a new episode (99453 again, D-12) when the running period ends, so
    device codes never come twice within 30 days. Readings before the first enrollment
    belong to no period; with no enrollment at all, periods start at the first reading.
    """
    if not days:
        return []
    ordered = sorted(days)
    starts = episodes(patient, family) or [ordered[0]]
    length, last = timedelta(days=30), timedelta(days=29)
    out: list[tuple[date, date, int, int]] = []
    p, k, j = starts[0], 0, 1
    while p <= ordered[-1]:
        end = p + last
        n = bisect_right(ordered, end) - bisect_left(ordered, p)
        if n:
            out.append((p, end, k, n))
        p, k = p + length, k + 1
        if j < len(starts) and starts[j] <= p:
            k = 0  # an enrollment during the period just ended: a new episode starts now
            while j < len(starts) and starts[j] <= p:
                j += 1
    return out


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
        self.periods = {fam: _periods(patient, fam, d) for fam, d in self.days.items()}
        self.consent_cache: dict[tuple[str, str], list[Interval] | None] = {}
        self.by_month = activities_by_month(patient, self.tz) if by_month is None else by_month

    def months(self) -> list[str]:
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

    def month(self, month: str) -> MonthBilling:
        book = self.catalog.for_month(month)
        mt = account(
            self.patient,
            month,
            self.tz,
            book.policy,
            self.by_month.get(month, []),
            self.consent_cache,
        )
        return _MonthEval(self, book, mt).run()

    def month_from_time(self, mt: MonthTime) -> MonthBilling:
        """Billing of ``mt.month`` from time already accounted elsewhere (the archive
        replay accounts simple months in SQL); the rules are the same as :meth:`month`."""
        return _MonthEval(self, self.catalog.for_month(mt.month), mt).run()


class _MonthEval:
    def __init__(self, ctx: PatientContext, book: RuleBook, mt: MonthTime) -> None:
        self.ctx = ctx
        self.patient = ctx.patient
        self.book = book
        self.policy = book.policy
        self.mt = mt
        self.month = mt.month
        self.tz = ctx.tz
        self.flags: set[str] = set(mt.flags)
        self.lines: list[Line] = []
        self.blocked: list[Blocked] = []
        self.progress: list[Progress] = []
        self._gates: dict[tuple[str, str | None], list[str]] = {}

    # -- driver --------------------------------------------------------------

    def run(self) -> MonthBilling:
        for (program, practitioner), pool in sorted(self.mt.pools.items()):
            if program in TIME_FAMILIES:
                self._time_family(program, practitioner, pool)
        for family in DEVICE_FAMILIES:
            self._device_family(family)
        self._apcm()
        self._one_practitioner("ccm")
        self._exclusive_pairs()
        self._transition_flag()
        if self.ctx.catalog.extrapolated(self.month):
            self.flags.add(f"rules_extrapolated:{self.book.year}")
        minutes: dict[str, float] = {}
        for (program, _), pool in self.mt.pools.items():
            t = pool.seconds(self.policy.concurrent_staff_time)[2]
            minutes[program] = minutes.get(program, 0.0) + t
        payment = 0.0
        for ln in self.lines:
            fee = self.book.fee(ln.code)
            if fee is not None:
                payment += fee * ln.units
        return MonthBilling(
            org_id=self.patient.org_id,
            patient_id=self.patient.patient_id,
            month=self.month,
            rule_year=self.book.year,
            minutes={k: round(v / 60, 2) for k, v in minutes.items()},
            billable=sorted(self.lines, key=lambda ln: (ln.code, ln.practitioner_id or "")),
            blocked=self.blocked,
            flags=self.flags,
            estimated_payment=round(payment, 2),
            progress=self.progress,
            pairs=self.mt.pairs,
            time=self.mt,
        )

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
            progress.append(Progress(track.family, practitioner, base.code, seconds, thr))
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
                progress.append(Progress(track.family, practitioner, addon.code, seconds, need))
        if option is not None:
            option.earned = earned
        return earned

    def _tracks(self, family: str) -> dict[str, Track]:
        return {t.name: t for t in self.book.tracks_for(family)}

    # -- step 6: documentation gates --------------------------------------------

    def _gate_reasons(self, family: str, practitioner: str | None) -> list[str]:
        key = (family, practitioner)
        cached = self._gates.get(key)
        if cached is None:
            cached = self._gates[key] = self._check_gate(family, practitioner)
        return list(cached)

    def _check_gate(self, family: str, practitioner: str | None) -> list[str]:
        gate = self.book.gates.get(family)
        if gate is None:
            return []
        p, m, reasons = self.patient, self.month, []
        if gate.consent:
            if practitioner is not None:
                periods = self.ctx.consent_periods(family, practitioner)
                lo, hi = self.mt.start, self.mt.end
                ok = periods is not None and any(a < hi and b > lo for a, b in periods)
            else:  # device lines with no practitioner of record: anyone's consent
                lo, hi = self.mt.start, self.mt.end
                ok = any(
                    a < hi and b > lo
                    for pr in {c.practitioner_id for c in p.consents if c.program == family}
                    for a, b in self.ctx.consent_periods(family, pr) or ()
                )
            if not ok:
                reasons.append("missing_consent")
        if gate.min_conditions and condition_count(p, m, self.tz) < gate.min_conditions:
            reasons.append("insufficient_chronic_conditions")
        if gate.care_plan and not has_care_plan(p, family, m):
            reasons.append("missing_care_plan")
        if gate.established_patient and not established(
            p, m, self.policy.established_patient_years
        ):
            reasons.append("rpm_not_established_patient")
        return reasons

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

    def _time_family(self, family: str, practitioner: str, pool: Pool) -> None:
        p_s, s_s, t_s, _ = pool.seconds(self.policy.concurrent_staff_time)
        secs: dict[Basis, int] = {"personal": p_s, "staff": s_s, "pooled": t_s}
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
            return complex_month(self.patient, self.month)
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
            self.progress.append(
                Progress("ccm", practitioner, cx.base, cx_s, self._threshold(cx.base))
            )
        if 0 < phys_s < self._threshold(phys.base):
            self.progress.append(
                Progress("ccm", practitioner, phys.base, phys_s, self._threshold(phys.base))
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
                Progress("pcm", practitioner, phys.base, phys_s, self._threshold(phys.base))
            )
        if staff_s < self._threshold(staff.base):
            self.flags.add(f"below_threshold:{staff.base}")
        return self._earn(staff, staff_s, practitioner)

    def _choose(self, options: list[_Option]) -> list[tuple[str, int]]:
        """First option in track order (descriptor policy) or the best paid (revenue)."""
        if not options:
            return []
        if self.policy.ccm_track_policy == "revenue":
            chosen = max(
                options, key=lambda o: sum((self.book.fee(c) or 0.0) * u for c, u in o.earned)
            )
        else:
            chosen = options[0]
        self.flags |= chosen.flags
        self.progress.extend(chosen.progress)
        return chosen.earned

    # -- step 10/11: device periods ---------------------------------------------

    def _device_family(self, family: str) -> None:
        days = self.ctx.days.get(family)
        if not days:
            return
        lo, hi = first_day(self.month), last_day(self.month)
        codes = [r for r in self.book.device_codes(family)]
        if family == "rtm":
            wanted = {self.policy.rtm_device_code, self.policy.rtm_device_code_low_days}
            codes = [r for r in codes if r.code in wanted]
        setup = [r for r in self.book.codes.values() if r.family == family and r.kind == "setup"]
        for start, end, index, n in self.ctx.periods[family]:
            if not lo <= end <= hi:
                continue
            enr = enrollment_of_record(self.patient, (family,), month_of_date(start))
            practitioner = enr.practitioner_id if enr is not None and enr.on <= start else None
            chosen = [
                r for r in codes if r.min_days <= n and (r.max_days is None or n <= r.max_days)
            ]
            if not chosen:
                self.flags.add("rpm_insufficient_days")
                continue
            earned = [(chosen[-1].code, 1)]
            if index == 0:
                earned += [(r.code, 1) for r in setup if n >= r.min_days]
            self._emit(family, practitioner, earned)

    # -- step 12: APCM -----------------------------------------------------------

    def _apcm(self) -> None:
        """Step 12: an APCM enrollment naming X makes CCM/PCM by X not billable that month,
        whether or not the APCM code itself is billable (the book's level for the
        condition count and QMB status, G13)."""
        enr = enrollment_of_record(self.patient, ("apcm",), self.month)
        if enr is None or first_day(self.month) < self.book.effective_from:
            return
        n = condition_count(self.patient, self.month, self.tz)
        rule = self.book.monthly_code("apcm", n, enr.qmb)
        if rule is None:
            return
        code = rule.code
        self._emit("apcm", enr.practitioner_id, [(code, 1)])
        barred = {
            self.book.code(other).family
            for pair in self.book.exclusives
            for mine, other in ((pair.a, pair.b), (pair.b, pair.a))
            if self.book.code(mine).family == "apcm" and self.book.code(other).family != "apcm"
        }
        for family in sorted(barred):
            mine = [
                ln
                for ln in self.lines
                if ln.family == family and ln.practitioner_id == enr.practitioner_id
            ]
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
        rec = enrollment_of_record(self.patient, (family,), self.month)
        keep = rec.practitioner_id if rec is not None and rec.practitioner_id in billing else None
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
        rec = enrollment_of_record(self.patient, (fa, fb), self.month, who)
        if rec is not None and rec.program == fa:
            losers = lb
        elif rec is not None and rec.program == fb:
            losers = la
        else:
            losers = la + lb
        for ln in losers:
            self._block(ln, [flag])

    # -- step 13 -----------------------------------------------------------------

    def _transition_flag(self) -> None:
        pol = self.policy
        if (
            self.ctx.practice.facility_type in ("fqhc", "rhc")
            and pol.g0511_transition_from is not None
            and pol.g0511_transition_to is not None
            and pol.g0511_transition_from <= first_day(self.month) <= pol.g0511_transition_to
            and self.lines
        ):
            self.flags.add("g0511_transition_option")


def _base_of(book: RuleBook, lines: list[Line]) -> str:
    """The base code among a family's lines (its first line if none is a base)."""
    return next((ln.code for ln in lines if book.code(ln.code).role == "base"), lines[0].code)

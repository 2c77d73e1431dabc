"""Claim lines of a patient-month: what a month close exports (pure: no I/O, no clock).

A claim line is one billable code of a patient-month for one billing practitioner, with
its units, date of service and estimated payment (the rule book's national fee x units,
priced by the practice's payment settings: non-facility or facility amount, QP conversion
factor or not; a patient-month's lines add up to its ``MonthBilling.estimated_payment``).

Its id is an HMAC-SHA256 of (org, patient, month, code, practitioner) keyed by the
``event_id`` of the ``month.closed`` that produced the line. Everything on a claim is
guessable (a patient id among a handful of candidates), so an unkeyed hash would give
the patient away to anyone who sees the id; the close's event id is in the org's own
log only, and ``caretally close`` makes it random (a UUID4). Every engine folding the
same log (the worker, a replay, ``caretally close`` and ``--export-only``) therefore
derives the same ids, with no secret to distribute; a reissued close is a new
``month.closed`` and so gives new ids. A ``month.closed`` a client sends with a
guessable ``event_id`` keys its lines with it: such ids are only as private as that id.

Date of service (docs/rules.md G16 and what it leaves open), in this order:

* RHC/FQHC practices (``facility_type`` ``rhc``/``fqhc``): **the month's last day**,
  basis ``rhc_fqhc_month_end``. G16 bullet 2 [S: S19] allows "a date after the minimum
  requirements are met, up to the month's last day"; the last day is in that window
  whatever requirement (time, device days, documentation) was met last.
* Time-based codes (CCM, PCM, RPM/RTM treatment management, BHI): **the practice-local
  date on which the counted time first met everything billed on the line's track**,
  basis ``time_met``. G16 bullet 1 [C: S2] lets the practitioner bill "once the minimum
  time has been met, using that date as the date of service". The counted intervals of
  the line's pool (the track's basis: the practitioner's personal time, or everyone's
  pooled time under the rule book's concurrency policy, G8) are walked in time order
  until they hold the base threshold plus the add-on units billed (G3). A base code
  and its add-on share that date: an add-on is reported with its base (G15), and
  neither may carry a date before its own time was met, so the only date right for both
  is the one on which the last add-on unit's time was met. Counted time never leaves
  the month, so the date is never after the month's last day.
  docs/rules.md is silent on a care plan recorded after that date; conservatively the date
  is then moved to the care plan's date (basis ``care_plan_on``) when the family's
  gate needs one (G12) and the earliest such plan falls inside the month. Consent
  needs no such step: minutes before consent are not counted (G10).
* Device supply and set-up codes (99453/99454/99445, 98975-98977/98984-98986): docs/rules.md
  names no date of service for them [U]; they are reported in the month in which their
  30-day period ends (§6.1, G1). Conservatively: **the last day of that period**
  (basis ``device_period_end``), when the whole period of service is over.
* APCM (G0556-G0558) and anything whose time cannot be traced: docs/rules.md is silent [U];
  conservatively **the month's last day** (basis ``month_end``).

Place of service and diagnoses (docs/claims.md): the CMS Place of Service code of the
practice's ``facility_type`` (office 11, FQHC 50, RHC 72), and the ICD-10-CM codes of the
``conditions.recorded`` list in effect for the month (the one the gates count: the latest
recorded before the month's end in the practice's time zone), in list order, at most 12
(an 837P claim's limit). ``needs_review`` names what a biller must look at before
submitting the line.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date
from math import ceil
from typing import Any

from projections.billing import Line, MonthBilling, PatientContext
from projections.calendar import first_day, last_day, local_date
from projections.documentation import conditions_on_record, enrollment_on
from projections.intervals import Interval, union
from projections.ledger import Ledger, PatientState, Practice
from projections.rules import SHIPPED_CATALOG, RuleBook, RuleCatalog, Track

# Columns of the claim file, in order (CSV header and JSON keys)
FIELDS = (
    "claim_line_id",
    "org_id",
    "patient_id",
    "month",
    "billing_practitioner_id",
    "family",
    "code",
    "units",
    "date_of_service",
    "date_of_service_basis",
    "fee",
    "estimated_payment",
    "payment_provisional",
    # appended after the first release's columns: CSV readers go by position
    "place_of_service",
    "diagnosis_codes",
    "diagnosis_codes_omitted",
    "needs_review",
)

PLACE_OF_SERVICE = {"office": "11", "fqhc": "50", "rhc": "72"}
"""``facility_type`` -> CMS Place of Service code (the CMS Place of Service code set)."""
MAX_DIAGNOSES = 12
"""Diagnosis codes an 837P claim holds (its HI segments, 2300 loop)."""

# needs_review reasons
NO_DIAGNOSIS = "no_diagnosis_on_record"
FEWER_DIAGNOSES = "fewer_diagnoses_than_required"
DIAGNOSES_CUT = "diagnosis_codes_cut"
CODES_NOT_KEPT = "diagnosis_codes_not_kept"  # a list is on record, its codes are not in the state

# (code, units, billing practitioner, claim line id): a line as the Projector remembers it
# at a close
ClaimRef = tuple[str, int, str | None, str]


@dataclass(frozen=True, slots=True)
class ClaimLine:
    claim_line_id: str
    org_id: str
    patient_id: str
    month: str
    practitioner_id: str | None  # None: no practitioner of record (device codes)
    family: str
    code: str
    units: int
    date_of_service: date
    basis: str  # why that date: time_met, care_plan_on, device_period_end, ...
    fee: float | None  # per unit; None: not priced under the PFS
    estimated_payment: float
    # priced with rules that are not final (rules_provisional / rules_extrapolated)
    payment_provisional: bool = False
    place_of_service: str = PLACE_OF_SERVICE["office"]
    # ICD-10-CM codes on record for the month, claim order (the first is the primary)
    diagnosis_codes: tuple[str, ...] = ()
    diagnosis_codes_omitted: int = 0  # distinct codes on record beyond MAX_DIAGNOSES
    needs_review: tuple[str, ...] = ()  # reasons, e.g. NO_DIAGNOSIS

    def row(self) -> dict[str, Any]:
        """The line as a claim-file record (keys: :data:`FIELDS`)."""
        return {
            "claim_line_id": self.claim_line_id,
            "org_id": self.org_id,
            "patient_id": self.patient_id,
            "month": self.month,
            "billing_practitioner_id": self.practitioner_id,
            "family": self.family,
            "code": self.code,
            "units": self.units,
            "date_of_service": self.date_of_service.isoformat(),
            "date_of_service_basis": self.basis,
            "fee": self.fee,
            "estimated_payment": self.estimated_payment,
            "payment_provisional": self.payment_provisional,
            "place_of_service": self.place_of_service,
            "diagnosis_codes": list(self.diagnosis_codes),
            "diagnosis_codes_omitted": self.diagnosis_codes_omitted,
            "needs_review": list(self.needs_review),
        }


def claim_line_id(
    org_id: str,
    patient_id: str,
    month: str,
    code: str,
    practitioner_id: str | None,
    occurrence: int = 1,
    *,
    close_id: str,
) -> str:
    """Id of a claim line billed at the close whose ``event_id`` is ``close_id`` (the
    key: see the module docstring). ``occurrence`` tells apart a code billed twice for
    one practitioner in a month (two device periods ending in it)."""
    if not close_id:
        raise ValueError("a claim line id needs the event_id of its month.closed")
    parts = [org_id, patient_id, month, code, practitioner_id or ""]
    if occurrence > 1:
        parts.append(str(occurrence))
    key = b"caretally claim line v2\x1f" + close_id.encode()
    message = "\x1f".join(parts).encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()[:24]


def _numbered(lines: Iterable[Line]) -> Iterator[tuple[Line, int]]:
    """Billable lines with the occurrence of their (code, practitioner), in order."""
    seen: dict[tuple[str, str | None], int] = {}
    for ln in lines:
        key = (ln.code, ln.practitioner_id)
        seen[key] = seen.get(key, 0) + 1
        yield ln, seen[key]


def _line_id(billing: MonthBilling, line: Line, n: int, close_id: str) -> str:
    return claim_line_id(
        billing.org_id,
        billing.patient_id,
        billing.month,
        line.code,
        line.practitioner_id,
        n,
        close_id=close_id,
    )


def claim_refs(billing: MonthBilling, close_id: str) -> tuple[ClaimRef, ...]:
    """The compact form of a patient-month's claim lines at the close ``close_id`` (no
    dates of service)."""
    return tuple(
        (
            ln.code,
            ln.units,
            ln.practitioner_id,
            _line_id(billing, ln, n, close_id),
        )
        for ln, n in _numbered(billing.billable)
    )


def claim_lines(billing: MonthBilling, ctx: PatientContext, close_id: str) -> list[ClaimLine]:
    """Claim lines of one patient-month at the close ``close_id``; ``ctx`` is the
    patient's context that produced ``billing`` (its device periods, documentation,
    practice and rule books)."""
    book = ctx.catalog.for_month(billing.month)
    dates = _DateOfService(billing, ctx, book)
    qp, facility = ctx.practice.pricing()
    pos = place_of_service(ctx.practice.facility_type)
    kept = diagnoses_of_record(ctx.patient, billing.month, ctx.tz)
    on_record = kept or ()
    codes = on_record[:MAX_DIAGNOSES]
    out = []
    for ln, n in _numbered(billing.billable):
        fee = book.fee(ln.code, qp=qp, facility=facility)
        dos, basis = dates.of(ln, n)
        review = []
        if kept is None:
            review.append(CODES_NOT_KEPT)
        elif not codes:
            review.append(NO_DIAGNOSIS)
        elif len(on_record) < diagnoses_required(book, ln):
            review.append(FEWER_DIAGNOSES)
        if len(on_record) > MAX_DIAGNOSES:
            review.append(DIAGNOSES_CUT)
        out.append(
            ClaimLine(
                claim_line_id=_line_id(billing, ln, n, close_id),
                org_id=billing.org_id,
                patient_id=billing.patient_id,
                month=billing.month,
                practitioner_id=ln.practitioner_id,
                family=ln.family,
                code=ln.code,
                units=ln.units,
                date_of_service=dos,
                basis=basis,
                fee=fee,
                estimated_payment=0.0 if fee is None else round(fee * ln.units, 2),
                payment_provisional=billing.payment_provisional,
                place_of_service=pos,
                diagnosis_codes=codes,
                diagnosis_codes_omitted=len(on_record) - len(codes),
                needs_review=tuple(review),
            )
        )
    return out


def diagnoses_required(book: RuleBook, line: Line) -> int:
    """Distinct diagnoses the line's code needs on the claim: its family gate's
    ``min_conditions`` or, when more, its level's (APCM G0557/G0558: 2 or more, G13; the
    APCM gate asks for none). Compared with the codes on record counted once each without
    the dot (:func:`diagnoses_of_record`), not with the gate's count of the spellings
    recorded (docs/claims.md)."""
    gate = book.gates.get(line.family)
    level = book.code(line.code).level
    return max(
        0 if gate is None else gate.min_conditions,
        0 if level is None else level.min_conditions,
    )


def place_of_service(facility_type: str) -> str:
    """The CMS Place of Service code of a practice's ``facility_type`` (docs/claims.md)."""
    try:
        return PLACE_OF_SERVICE[facility_type]
    except KeyError:
        raise ValueError(f"no place of service for facility_type {facility_type!r}") from None


def undotted(code: str) -> str:
    """An ICD-10-CM code as X12 writes it: without the dot (``E11.9`` -> ``E119``)."""
    return code.replace(".", "")


def diagnoses_of_record(patient: PatientState, month: str, tz: str) -> tuple[str, ...] | None:
    """The ICD-10-CM codes on record for ``month``: the ``conditions.recorded`` list the
    gates count (``projections.documentation.conditions_on_record``: the latest recorded
    before the month's end in ``tz``, log order breaking ties), in its order, each code once (its
    first spelling: ``E11.9`` and ``E119`` are one code). Empty when no list was recorded
    by then or the list is empty; None when the state does not keep the list's codes (a
    ledger restored from a snapshot written before the codes were kept; the archive replay
    reads them from the archived events' raw bytes)."""
    on_record = conditions_on_record(patient, month, tz)
    if on_record is None:
        return ()
    kept = patient.condition_codes.get(on_record[0])
    if kept is None:
        return None
    seen: set[str] = set()
    out = []
    for code in kept:
        key = undotted(code)
        if key not in seen:
            seen.add(key)
            out.append(code)
    return tuple(out)


def month_claims(
    ledger: Ledger,
    org_id: str,
    month: str,
    close_id: str | None = None,
    catalog: RuleCatalog = SHIPPED_CATALOG,
) -> tuple[list[ClaimLine], float]:
    """Claim lines of every patient-month of ``org_id`` in ``month`` (sorted by patient,
    code, practitioner) at the close ``close_id`` (default: the month's latest close in
    ``ledger``) under the rule books of ``catalog``, and the total of those months'
    ``estimated_payment``."""
    practice = ledger.practices.get(org_id) or Practice()  # no side effect on the ledger
    if close_id is None:
        close_id = practice.close_ids.get(month)
        if close_id is None:
            raise ValueError(f"{month} of org {org_id!r} has no month.closed in this ledger")
    lines: list[ClaimLine] = []
    total = 0.0
    for (org, _pid), patient in sorted(ledger.patients.items()):
        if org != org_id:
            continue
        ctx = PatientContext(patient, practice, catalog=catalog)
        if month not in ctx.months():
            continue
        billing = ctx.month(month)
        lines.extend(claim_lines(billing, ctx, close_id))
        total += billing.estimated_payment
    return lines, round(total, 2)


# -- date of service ---------------------------------------------------------------


def reach(intervals: list[Interval], need: int, once: bool = True) -> int | None:
    """The earliest instant by which ``intervals`` hold ``need`` seconds (None: never).

    ``once``: overlapping seconds count once (the union, G8's default); otherwise each
    interval counts in full (the ``sum`` policy), so time accrues faster where they
    overlap.
    """
    if need <= 0:
        return min((s for s, _ in intervals), default=None)
    have = 0
    if once:
        for s, e in union(intervals):
            if have + (e - s) >= need:
                return s + (need - have)
            have += e - s
        return None
    edges = sorted(
        [(s, 1) for s, e in intervals if e > s] + [(e, -1) for s, e in intervals if e > s]
    )
    rate, prev = 0, 0
    for t, step in edges:
        if rate > 0:
            gain = rate * (t - prev)
            if have + gain >= need:
                return prev + ceil((need - have) / rate)
            have += gain
        rate += step
        prev = t
    return None


class _DateOfService:
    """Dates of service of one patient-month's lines (see the module docstring)."""

    def __init__(self, billing: MonthBilling, ctx: PatientContext, book: RuleBook) -> None:
        self.billing = billing
        self.ctx = ctx
        self.book = book
        self.month = billing.month
        self.month_end = last_day(billing.month)
        self.facility = ctx.practice.facility_type
        self._periods: dict[tuple[str, str | None], list[date]] = {}

    def of(self, ln: Line, occurrence: int) -> tuple[date, str]:
        if self.facility in ("rhc", "fqhc"):
            return self.month_end, "rhc_fqhc_month_end"
        rule = self.book.code(ln.code)
        if rule.kind == "time":
            return self._time(ln)
        if rule.kind in ("device", "setup"):
            return self._device(ln, occurrence)
        return self.month_end, "month_end"

    # -- time-based codes ------------------------------------------------------------

    def _track(self, ln: Line) -> Track | None:
        for track in self.book.tracks_for(ln.family):
            if ln.code in (track.base, track.addon):
                return track
        return None

    def _time(self, ln: Line) -> tuple[date, str]:
        mt = self.billing.time
        if mt is None:  # e.g. a view restored from a snapshot keeps no accounting detail
            raise ValueError(
                f"claim dates of service for {self.month} need the month's accounted time; "
                "evaluate the month with the core (PatientContext.month), not a stored view"
            )
        track = self._track(ln)
        pool = None if ln.practitioner_id is None else mt.pools.get((ln.family, ln.practitioner_id))
        if track is None or pool is None:
            return self.month_end, "month_end"
        need = self.book.code(track.base).threshold_minutes * 60
        if track.addon is not None:
            addon = self.book.code(track.addon)
            units = sum(
                o.units
                for o in self.billing.billable
                if o.code == addon.code and o.practitioner_id == ln.practitioner_id
            )
            need += units * addon.step_minutes * 60
        staff = [iv for pieces in pool.staff.values() for iv in pieces]
        if track.basis == "personal":
            intervals = list(pool.personal)
        elif track.basis == "staff":
            intervals = staff
        else:
            intervals = list(pool.personal) + staff
        once = self.book.policy.concurrent_staff_time == "once"
        met = reach(intervals, need, once)
        if met is None:  # every billed unit's time is in its pool: this is a defect
            raise ValueError(
                f"{ln.code} in {self.month}: the pool's counted time never reaches {need} s"
            )
        dos, basis = local_date(met - 1, self.ctx.tz), "time_met"
        plan = self._care_plan_start(ln.family)
        if plan is not None and plan > dos:
            dos, basis = plan, "care_plan_on"
        return min(dos, self.month_end), basis

    def _care_plan_start(self, family: str) -> date | None:
        """The first day of the month with the care plan the family's gate needs, when
        that plan was recorded inside the month (None: no such constraint)."""
        gate = self.book.gates.get(family)
        if gate is None or not gate.care_plan:
            return None
        dates = [
            on
            for _, program, on, _ in self.ctx.patient.care_plans
            if program == family and on <= self.month_end
        ]
        if not dates or min(dates) < first_day(self.month):
            return None
        return min(dates)

    # -- device periods --------------------------------------------------------------

    def _device(self, ln: Line, occurrence: int) -> tuple[date, str]:
        """The end of the 30-day period the line was earned in: the ``occurrence``-th
        period ending this month that earns the code for the line's practitioner (the
        same choice :mod:`projections.billing` makes), else the latest such period."""
        ends = self._period_ends(ln)
        if not ends:
            return self.month_end, "month_end"
        end = ends[occurrence - 1] if occurrence <= len(ends) else ends[-1]
        return end, "device_period_end"

    def _period_ends(self, ln: Line) -> list[date]:
        key = (ln.code, ln.practitioner_id)
        found = self._periods.get(key)
        if found is not None:
            return found
        rule = self.book.code(ln.code)
        lo = first_day(self.month)
        found = []
        for start, end, index, days in self.ctx.periods.get(ln.family, ()):
            if not lo <= end <= self.month_end:
                continue
            enr = enrollment_on(self.ctx.patient, ln.family, start)
            who = enr.practitioner_id if enr is not None else None
            if who != ln.practitioner_id or days < rule.min_days:
                continue
            if rule.kind == "setup" and index != 0:
                continue
            if rule.kind == "device" and rule.max_days is not None and days > rule.max_days:
                continue
            found.append(end)
        self._periods[key] = found
        return found

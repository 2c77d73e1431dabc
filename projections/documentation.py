"""What the record documents for a patient-month: consent, care plan, conditions,
enrollment (program and practitioner of record), established patient, stays.

All lookups take the month and the practice time zone; none reads a clock.
"""

from __future__ import annotations

from datetime import date, timedelta

from projections.calendar import day_start, first_day, last_day, month_bounds, month_of_date
from projections.intervals import Interval, union
from projections.ledger import EnrollmentEntry, PatientState

FOREVER = 2**62
CONSENT_FAMILY = {"ccm": "ccm", "pcm": "pcm", "rpm": "rpm", "rtm": "rtm", "bhi": "bhi"}


def consent_periods(
    patient: PatientState, program: str, practitioner_id: str, tz: str
) -> list[Interval] | None:
    """Instants covered by consent for (program, practitioner); None if never consented.

    Consent is obtained once (D-9) and a revocation takes effect at the end of its
    calendar month (G10); a later consent opens a new period.
    """
    entries = sorted(
        (
            c
            for c in patient.consents
            if c.program == program and c.practitioner_id == practitioner_id
        ),
        key=lambda c: (c.on, c.seq),
    )
    if not entries:
        return None
    periods: list[Interval] = []
    opened: int | None = None
    for c in entries:
        if not c.revoked:
            if opened is None:
                opened = day_start(c.on, tz)
        elif opened is not None:
            periods.append((opened, month_bounds(month_of_date(c.on), tz)[1]))
            opened = None
    if opened is not None:
        periods.append((opened, FOREVER))
    return union(periods)


def has_care_plan(patient: PatientState, program: str, month: str) -> bool:
    end = last_day(month)
    return any(p == program and on <= end for _, p, on, _ in patient.care_plans)


def complex_month(patient: PatientState, month: str) -> bool:
    """A CCM care plan of moderate/high complexity recorded in the month (docs/rules.md §6.1)."""
    lo, hi = first_day(month), last_day(month)
    return any(
        p == "ccm" and lo <= on <= hi and cx in ("moderate", "high")
        for _, p, on, cx in patient.care_plans
    )


def conditions_on_record(patient: PatientState, month: str, tz: str) -> tuple[int, int] | None:
    """``(seq, count)`` of the chronic-condition list in effect for ``month``: the latest
    recorded before the month's end in ``tz`` (log order breaks ties); None if none was."""
    hi = month_bounds(month, tz)[1]
    latest: tuple[int, int, int] | None = None  # (recorded, seq, count)
    for seq, recorded, count in patient.conditions:
        if recorded < hi and (latest is None or (recorded, seq) > latest[:2]):
            latest = (recorded, seq, count)
    return None if latest is None else (latest[1], latest[2])


def condition_count(patient: PatientState, month: str, tz: str) -> int:
    """Chronic conditions on the latest list recorded on or before the month's end."""
    on_record = conditions_on_record(patient, month, tz)
    return on_record[1] if on_record else 0


def years_before(day: date, years: int) -> date:
    """The same calendar day ``years`` years earlier (Feb 29 -> Feb 28)."""
    try:
        return day.replace(year=day.year - years)
    except ValueError:  # Feb 29 in a leap year -> Feb 28
        return day.replace(year=day.year - years, day=28)


def established(patient: PatientState, month: str, years: int) -> bool:
    """Seen in a visit within ``years`` calendar years before the month's end (RPM, G11;
    RTM too under the proposed rule P2, docs/rules.md §7.2)."""
    end = last_day(month)
    since = years_before(end, years)
    return any(since <= on <= end for _, on, _ in patient.visits)


def initiating_visit(
    patient: PatientState, practitioner_id: str | None, start: date, years: int
) -> bool:
    """A visit by ``practitioner_id`` (anyone's when None) on or before ``start``, the
    start of an RPM/RTM episode, and within ``years`` years before it (the proposed rule
    P1, docs/rules.md §7.2)."""
    since = years_before(start, years)
    return any(
        since <= on <= start and (practitioner_id is None or who == practitioner_id)
        for who, on, _ in patient.visits
    )


def enrollment_of_record(
    patient: PatientState, programs: tuple[str, ...], month: str, practitioner_id: str | None = None
) -> EnrollmentEntry | None:
    """The latest enrollment on or before the month's end among ``programs``."""
    end = last_day(month)
    best: EnrollmentEntry | None = None
    for e in patient.enrollments:
        if e.program not in programs or e.on > end:
            continue
        if practitioner_id is not None and e.practitioner_id != practitioner_id:
            continue
        if best is None or (e.on, e.seq) > (best.on, best.seq):
            best = e
    return best


def enrollment_on(patient: PatientState, program: str, day: date) -> EnrollmentEntry | None:
    """The latest enrollment in ``program`` dated on or before ``day`` (the one that
    attributes a device period starting on ``day``, G14)."""
    best: EnrollmentEntry | None = None
    for e in patient.enrollments:
        if (
            e.program == program
            and e.on <= day
            and (best is None or (e.on, e.seq) > (best.on, best.seq))
        ):
            best = e
    return best


def episodes(patient: PatientState, program: str) -> list[date]:
    """Dates of the program's enrollments, each of which starts a device-monitoring
    episode (docs/rules.md §6.1, C-1); ``billing.device_periods`` places each episode's
    30-day grid (at its date, or after a running period that earned a device code)."""
    return sorted({e.on for e in patient.enrollments if e.program == program})


def inpatient_intervals(patient: PatientState, tz: str) -> list[Interval]:
    """Stay dates, admission through discharge inclusive (conservative: G17)."""
    return union(
        (day_start(a, tz), day_start(d + timedelta(days=1), tz)) for _, a, d in patient.stays
    )

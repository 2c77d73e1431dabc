"""The incremental kernel: what one patient's evaluation needs, kept between events.

:class:`~projections.billing.PatientContext` computes a patient's reading days, device
periods, activity index by month and consent periods from the whole record, and
:func:`~projections.accounting.account` accounts a month from all its activities. Doing
that on every event makes an event cost the size of the patient's record. A
:class:`PatientKernel` keeps them, and each month's :class:`MonthAccount`, and updates
only what an event touches:

* a first logging of an activity is appended to the accounts of the months it spans
  (``MonthAccount.append``: a bisect and a list insert, not a re-accounting, when it
  comes last in claim order); an amendment or a void re-accounts the months of both
  versions;
* a reading on a new local day recomputes the periods of its program only (and refreshes
  every month when that moved a period other than the one holding its day: an earlier
  reading, or a day that lets a period earn before a re-enrollment, C-1);
* a consent or a stay (which cut counted time) drops the accounts; other documentation
  keeps them and rebuilds the context's periods and consent cache;
* a month's billing is then judged from its facts through the shared
  :class:`~projections.billing.Verdicts` memo, so an event that moves no breakpoint
  costs the facts and a lookup.

Everything here is a cache of the ledger: dropping a kernel and building it again
gives the same billing (tests/property/test_kernel.py holds it to a from-scratch
evaluation).
"""

from __future__ import annotations

from bisect import insort
from collections.abc import Iterable
from datetime import date

from projections.accounting import MonthAccount
from projections.billing import (
    MonthBilling,
    PatientContext,
    Verdicts,
    activities_by_month,
    device_periods,
    reading_days,
)
from projections.calendar import local_day, month_of_date, months_spanned
from projections.ledger import QUARTER_HOUR, Activity, PatientState, Practice
from projections.rules import RuleCatalog


class PatientKernel:
    """One patient's incremental evaluation state under one practice time zone."""

    __slots__ = (
        "_first",
        "_ordered",
        "accounts",
        "by_month",
        "catalog",
        "ctx",
        "days",
        "patient",
        "practice",
        "tz",
    )

    def __init__(self, patient: PatientState, practice: Practice, catalog: RuleCatalog) -> None:
        self.patient = patient
        self.practice = practice
        self.catalog = catalog
        self.tz = practice.timezone
        self.days: dict[str, set[date]] = reading_days(patient, self.tz)
        self._ordered: dict[str, list[date]] = {}  # the days of ``days``, sorted (as needed)
        # the earliest reading's quarter-hour per program (one before it may move periods)
        self._first = {fam: min(q) for fam, q in patient.readings.items() if q}
        self.by_month: dict[str, list[Activity]] = activities_by_month(patient, self.tz)
        self.accounts: dict[str, MonthAccount] = {}
        self.ctx = self._context()

    def _context(self) -> PatientContext:
        return PatientContext(
            self.patient, self.practice, self.days, self.by_month, catalog=self.catalog
        )

    # -- what an event changes ---------------------------------------------------

    def reading(self, program: str, quarter: int) -> set[str] | None:
        """Record a reading's local day. The months whose billing it may change: none
        when its day had a reading already; else the month where the 30-day period
        holding it ends (its day only adds a transmission day to that period), or every
        month (None) when it is the program's ``earliest`` reading, which may move every
        period, or when it moved another period (a day that lets a period earn a device
        code before a re-enrollment keeps it whole and moves the new episode's grid after
        it, docs/rules.md C-1)."""
        low = self._first.get(program)
        earliest = low is None or quarter < low
        if earliest:
            self._first[program] = quarter
        day = local_day(quarter * QUARTER_HOUR, self.tz)
        days = self.days.setdefault(program, set())
        if day in days:
            return set()
        days.add(day)
        ordered = self._ordered.get(program)
        if ordered is None:
            ordered = self._ordered[program] = sorted(days)
        else:
            insort(ordered, day)
        ctx = self.ctx
        old = ctx.periods.get(program, [])
        before = _holding(old, day)
        periods = ctx.periods[program] = device_periods(
            self.patient, program, days, ordered, self.catalog
        )
        after = _holding(periods, day)
        if earliest or _others(old, before) != _others(periods, after):
            ctx.forget_periods()
            return None
        if after is None:  # before any period: only its month may be new
            ctx.add_months({month_of_date(day)})
            return {month_of_date(day)}
        end = month_of_date(after[1])
        if before is not None and before[:3] == after[:3] and ctx.has_months({month_of_date(day)}):
            book = self.catalog.for_month(end)
            if book.qualifies(program, before[3]) == book.qualifies(program, after[3]):
                return set()  # one more day in a period that qualifies for the same codes
        ctx.forget_docs({end})
        ctx.add_months({month_of_date(day), end})
        return {end}

    def activity(self, previous: Activity | None, current: Activity | None) -> None:
        """An activity was logged (``current``), amended (both) or voided (``previous``)."""
        by_month = self.by_month
        months_before = len(by_month)
        if previous is not None:
            for m in months_spanned(previous.start, previous.end, self.tz):
                kept = [a for a in by_month.get(m, ()) if a is not previous]
                if kept:
                    by_month[m] = kept
                else:
                    by_month.pop(m, None)
                self.accounts.pop(m, None)
        if current is not None:
            for m in months_spanned(current.start, current.end, self.tz):
                if m not in by_month:
                    by_month[m] = []
                    months_before = -1  # a month appeared
                by_month[m].append(current)
                account = self.accounts.get(m)
                if account is not None and (previous is not None or not account.append(current)):
                    del self.accounts[m]
        if len(by_month) != months_before:  # a month appeared or vanished
            self.ctx.forget_months()

    def documentation(self, cuts_time: bool) -> None:
        """Consent, care plan, conditions, enrollment, visit or stay recorded;
        ``cuts_time``: it may change counted time (a consent or a stay)."""
        if cuts_time:
            self.accounts.clear()
        self.ctx = self._context()

    # -- evaluation ------------------------------------------------------------------

    def months(self) -> list[str]:
        return self.ctx.months()

    def month(self, month: str, memo: Verdicts | None) -> MonthBilling:
        """The billing of ``month`` from its kept account (made when missing)."""
        account = self.accounts.get(month)
        if account is None:
            book = self.catalog.for_month(month)
            account = self.accounts[month] = MonthAccount(
                self.patient,
                month,
                self.tz,
                book.policy,
                self.by_month.get(month, []),
                self.ctx.consent_cache,
            )
        return self.ctx.bill(account.time, memo)


def _others(
    periods: list[tuple[date, date, int, int]], held: tuple[date, date, int, int] | None
) -> list[tuple[date, date, int, int]]:
    """``periods`` but ``held`` (the one holding a new day, whose count may change)."""
    return [p for p in periods if p is not held]


def _holding(
    periods: Iterable[tuple[date, date, int, int]], day: date
) -> tuple[date, date, int, int] | None:
    """The period (start, end, index, days) that holds ``day``, if any."""
    for period in periods:
        if period[0] <= day <= period[1]:
            return period
    return None

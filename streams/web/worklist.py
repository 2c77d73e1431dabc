"""The worklist of a month: each patient-month in one plain group, with its progress to
the next threshold and whether the pace so far gets there.

Groups, first match wins: *conflicts* (codes that exclude each other, several billing
practitioners, minutes counted twice, or a staff overlap alert), *blocked* (a code earned
but not billable, with the reasons), *ready* (something to bill), *near* (a track short
of its next threshold), *other* (nothing to bill and no threshold ahead, e.g. device
days only). Everything comes from the billing views the worker publishes; nothing here
computes billing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from projections.calendar import DEFAULT_TIMEZONE, epoch, local_date, month_bounds
from streams.http.state_cache import BillingEntry
from streams.web import words

GROUPS: tuple[tuple[str, str], ...] = (
    ("ready", "Ready to bill"),
    ("near", "Near a threshold"),
    ("blocked", "Blocked"),
    ("conflicts", "Conflicts"),
    ("other", "Other patient-months"),
)
STATUSES = tuple(name for name, _ in GROUPS)


@dataclass(frozen=True, slots=True)
class Track:
    """One threshold ahead: ``pace`` is None when the month is over or not begun."""

    code: str
    family: str
    practitioner_id: str
    have_min: float
    need_min: float
    to_go_min: float
    percent: int
    pace_gets_there: bool | None


@dataclass(slots=True)
class Row:
    patient_id: str
    status: str
    programs: list[str]
    practitioners: tuple[str, ...]
    minutes: dict[str, float]
    billable: list[dict[str, Any]]
    blocked: list[dict[str, Any]]  # {code, units, reasons: [Explained]}
    conflicts: list[str]
    notes: list[str]
    next: Track | None
    estimated_payment: float
    payment_provisional: bool
    rule_year: int | None
    late_activity: bool = False

    def matches(self, program: str, practitioner: str, status: str, query: str) -> bool:
        return (
            (not program or program in self.programs)
            and (not practitioner or practitioner in self.practitioners)
            and (not status or status == self.status)
            and (not query or query.lower() in self.patient_id.lower())
        )


@dataclass(slots=True)
class Worklist:
    month: str
    days_left: int | None  # None: the month is over (or not begun) in the practice's zone
    phase: str = "under way"  # or "over", "not begun"
    groups: dict[str, list[Row]] = field(default_factory=dict)
    programs: list[str] = field(default_factory=list)
    practitioners: list[str] = field(default_factory=list)
    total: int = 0  # patient-months before filters

    @property
    def shown(self) -> int:
        return sum(len(rows) for rows in self.groups.values())

    def payment(self, group: str) -> float:
        return round(sum(r.estimated_payment for r in self.groups.get(group, ())), 2)


def month_clock(month: str, tz: str, now: datetime) -> tuple[float | None, int | None]:
    """(fraction of the month gone, calendar days left including today) in zone ``tz``,
    or (None, None) when ``now`` is outside the month."""
    start, end = month_bounds(month, tz)
    t = epoch(now)
    if not start <= t < end:
        return None, None
    last_day = local_date(end - 1, tz)
    return (t - start) / (end - start), (last_day - local_date(t, tz)).days + 1


def _phase(month: str, tz: str, now: datetime) -> str:
    start, end = month_bounds(month, tz)
    t = epoch(now)
    return "not begun" if t < start else "over" if t >= end else "under way"


def _track(p: dict[str, Any], gone: float | None) -> Track:
    have, need = p["have_s"], p["need_s"]
    pace = None
    if gone is not None and gone > 0:
        pace = have / gone >= need
    return Track(
        p["code"],
        str(p.get("family", "")),
        str(p.get("practitioner_id", "")),
        round(have / 60, 2),
        round(need / 60, 2),
        round(max(need - have, 0) / 60, 2),
        min(100, int(100 * have / need)) if need else 100,
        pace,
    )


def row_of(entry: BillingEntry, now: datetime, conflict_alerts: set[str]) -> Row:
    v = entry.view
    gone, _ = month_clock(entry.month, entry.timezone, now)
    flags: list[str] = list(v.get("flags") or [])
    conflicts = [words.flag(f) for f in flags if f.startswith(words.CONFLICT_PREFIXES)]
    if entry.patient_id in conflict_alerts:
        conflicts.append("A staff member's time overlaps another patient's (see alerts)")
    notes = [words.flag(f) for f in flags if not f.startswith(words.CONFLICT_PREFIXES)]
    blocked = [
        {"code": b["code"], "units": b["units"], "reasons": [words.reason(r) for r in b["reasons"]]}
        for b in v.get("blocked") or []
    ]
    billable = list(v.get("billable") or [])
    short = [p for p in entry.progress if p["need_s"] > p["have_s"]]
    nxt = min(short, key=lambda p: (p["need_s"] - p["have_s"], p["code"]), default=None)
    programs = sorted({*(v.get("minutes") or {}), *(str(p.get("family")) for p in entry.progress)})
    if conflicts:
        status = "conflicts"
    elif blocked:
        status = "blocked"
    elif billable:
        status = "ready"
    elif nxt is not None:
        status = "near"
    else:
        status = "other"
    return Row(
        entry.patient_id,
        status,
        [p for p in programs if p and p != "None"],
        entry.practitioners,
        dict(v.get("minutes") or {}),
        billable,
        blocked,
        conflicts,
        notes,
        None if nxt is None else _track(nxt, gone),
        float(v.get("estimated_payment") or 0.0),
        bool(v.get("payment_provisional")),
        v.get("rule_year"),
    )


def build(
    entries: Iterable[BillingEntry],
    month: str,
    now: datetime,
    *,
    tz: str | None = None,
    program: str = "",
    practitioner: str = "",
    status: str = "",
    query: str = "",
    staff_overlaps: Iterable[str] = (),
    late: Iterable[str] = (),
) -> Worklist:
    """The worklist of ``month`` from its billing entries (``staff_overlaps``, ``late``:
    patients with such alerts in the month), filtered; rows nearest their threshold first."""
    overlaps, late_ids = set(staff_overlaps), set(late)
    rows = []
    zone = tz
    for entry in entries:
        zone = zone or entry.timezone
        row = row_of(entry, now, overlaps)
        row.late_activity = entry.patient_id in late_ids
        rows.append(row)
    zone = zone or DEFAULT_TIMEZONE
    out = Worklist(month, month_clock(month, zone, now)[1], _phase(month, zone, now))
    out.total = len(rows)
    out.programs = sorted({p for r in rows for p in r.programs})
    out.practitioners = sorted({p for r in rows for p in r.practitioners})
    for name in STATUSES:
        out.groups[name] = []
    for row in rows:
        if row.matches(program, practitioner, status, query):
            out.groups[row.status].append(row)
    for name, group in out.groups.items():
        if name == "near":
            group.sort(key=lambda r: (r.next.to_go_min if r.next else 1e9, r.patient_id))
        else:
            group.sort(key=lambda r: r.patient_id)
    return out

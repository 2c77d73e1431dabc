"""Alerts as data: the difference between a patient-month's billing before and after
an event, plus ``threshold_approaching`` as a pure function of state and a date.

``alert_id`` hashes the alert's cause (kind, patient-month, code, detail and the
causing event), so replaying the same log yields the same ids.
"""

from __future__ import annotations

import hashlib
from datetime import date

from projections.billing import DOCUMENTATION_REASONS, MonthBilling
from projections.calendar import last_day, month_of_date
from projections.rules import SHIPPED_CATALOG, RuleCatalog
from schemas.views import Alert


def alert_id(*parts: object) -> str:
    text = "\x1f".join("" if p is None else str(p) for p in parts)
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


def _alert(
    kind: str, after: MonthBilling, code: str | None, detail: str, key: str, cause: str | None
) -> Alert:
    return Alert(
        alert_id=alert_id(kind, after.org_id, after.patient_id, after.month, code, key, cause),
        kind=kind,  # type: ignore[arg-type]
        org_id=after.org_id,
        patient_id=after.patient_id,
        month=after.month,
        code=code,
        detail=detail,
        cause_event_id=cause,
    )


def diff(before: MonthBilling | None, after: MonthBilling, cause: str | None) -> list[Alert]:
    """Alerts for what changed in one patient-month."""
    out: list[Alert] = []
    old_units = before.units() if before else {}
    new_units = after.units()
    for code in sorted(old_units.keys() | new_units.keys()):
        a, b = old_units.get(code, 0), new_units.get(code, 0)
        if b > a:
            out.append(
                _alert(
                    "threshold_crossed",
                    after,
                    code,
                    f"{code} now billable: {b} unit(s)",
                    f"{a}->{b}",
                    cause,
                )
            )
        elif b < a:
            out.append(
                _alert(
                    "threshold_revoked",
                    after,
                    code,
                    f"{code} fell from {a} to {b} unit(s)",
                    f"{a}->{b}",
                    cause,
                )
            )
    old_flags = before.flags if before else set()
    for flag in sorted(after.flags - old_flags):
        if flag.startswith("cap_reached:"):
            code = flag.split(":", 1)[1]
            out.append(
                _alert(
                    "cap_reached",
                    after,
                    code,
                    f"{code} is at its monthly cap; further minutes earn nothing",
                    flag,
                    cause,
                )
            )
        elif flag.startswith("exclusive_conflict:"):
            pair = flag.split(":", 1)[1]
            out.append(
                _alert(
                    "exclusive_conflict",
                    after,
                    pair.split("+")[0],
                    f"codes {pair} cannot both be billed this month",
                    flag,
                    cause,
                )
            )
    old_gaps = _gaps(before) if before else set()
    for code, reasons in sorted(_gaps(after) - old_gaps):
        out.append(
            _alert(
                "documentation_gap",
                after,
                code,
                f"{code}: time met, billing blocked by {', '.join(reasons)}",
                ",".join(reasons),
                cause,
            )
        )
    old_pairs = {(p.kind, p.kept, p.other) for p in before.pairs} if before else set()
    for p in after.pairs:
        if (p.kind, p.kept, p.other) in old_pairs:
            continue
        what = "overlaps" if p.kind == "overlap" else "double counts"
        out.append(
            _alert(
                p.kind,
                after,
                None,
                f"activity {p.other} {what} activity {p.kept} by {p.seconds} s "
                f"({p.flag}); activity {p.kept} keeps the minutes",
                f"{p.kept}|{p.other}",
                cause,
            )
        )
    return out


def _gaps(billing: MonthBilling) -> set[tuple[str, tuple[str, ...]]]:
    return {
        (b.line.code, tuple(sorted(set(b.reasons))))
        for b in billing.blocked
        if DOCUMENTATION_REASONS.intersection(b.reasons)
    }


def approaching(
    billing: MonthBilling, today: date, catalog: RuleCatalog = SHIPPED_CATALOG
) -> list[Alert]:
    """``threshold_approaching`` for a month still open on ``today`` (practice-local).

    Within reach means at most ``approaching_within_minutes`` short of the next
    threshold with at most ``approaching_days_left`` days left (the policy of the
    month's book in ``catalog``, the catalog ``billing`` was evaluated with).
    """
    if month_of_date(today) != billing.month:
        return []
    policy = catalog.for_month(billing.month).policy
    days_left = (last_day(billing.month) - today).days
    if days_left > policy.approaching_days_left:
        return []
    out = []
    for p in billing.progress:
        short = p.need_s - p.have_s
        if 0 < short <= policy.approaching_within_minutes * 60:
            minutes = -(-short // 60)
            out.append(
                _alert(
                    "threshold_approaching",
                    billing,
                    p.code,
                    f"{p.code} needs {minutes} more minute(s) with {days_left} day(s) left",
                    f"{p.practitioner_id}|{today.isoformat()}",
                    None,
                )
            )
    return out

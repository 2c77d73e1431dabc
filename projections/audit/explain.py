"""The evidence in words and the rules cited: why a version's seconds were not counted,
what an amendment changed, and which rule-book entries (with their docs/rules.md §1
source ids) stand behind a month's billing. Nothing here decides: the reasons, lines and
flags come from the core; this module only names them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from projections.accounting import ActivityTime, MonthTime
from projections.audit.report import (
    AMENDED,
    VOIDED,
    Billing,
    Change,
    CodeLine,
    ConsentDoc,
    Exclusion,
    RuleRef,
    StayDoc,
    VoidInfo,
    to_minutes,
)
from projections.billing import MonthBilling
from projections.calendar import local_date
from projections.ledger import Activity
from projections.rules import RuleBook
from schemas.events import ActivityLogged


class ActivityVersion(Protocol):
    """One version of an activity as the audit fold keeps it."""

    number: int
    activity: Activity  # the ledger's object
    event: ActivityLogged


def exclusions(
    at: ActivityTime,
    mt: MonthTime,
    consents: Sequence[ConsentDoc],
    stays: Sequence[StayDoc],
    tz: str,
) -> list[Exclusion]:
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
                for c in consents
                if c.program == a.program and c.practitioner_id == a.practitioner_id
            ]
            detail = (
                f"outside {a.program} consent with {a.practitioner_id} "
                f"(consent on {', '.join(dates) or 'none'}; G10)"
            )
        elif reason == "inpatient_time_excluded":
            day0, day1 = local_date(a.start, tz), local_date(a.end, tz)
            stayed = [
                f"{s.setting} {s.admitted_on.isoformat()}..{s.discharged_on.isoformat()}"
                for s in stays
                if s.admitted_on <= day1 and s.discharged_on >= day0
            ]
            detail = f"{a.program} time during {', '.join(stayed)} (G17)"
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


def voided(void: VoidInfo, seconds: int) -> Exclusion:
    """A voided version's seconds in the month, with the void that took them."""
    return Exclusion(
        VOIDED,
        seconds,
        f"{void.reason} (void event {void.event_id}, recorded {void.recorded_at.isoformat()})",
    )


def amended(old: ActivityVersion, new: ActivityVersion, seconds: int) -> Exclusion:
    """A superseded version's seconds in the month, with the amendment that replaced it."""
    what = "; ".join(_change_text(c) for c in changes(old, new)) or "no change"
    return Exclusion(
        AMENDED,
        seconds,
        f"superseded by version {new.number} (event {new.event.event_id}, "
        f"recorded {new.event.recorded_at.isoformat()}): {what}",
    )


def _same(at: ActivityTime, a: Activity) -> bool:
    """The accounting's duplicate fingerprint: staff, start, length and program."""
    b = at.activity
    return (b.staff_id, b.start, b.end, b.program) == (a.staff_id, a.start, a.end, a.program)


_FIELDS: tuple[tuple[str, str], ...] = (
    ("staff_id", "staff"),
    ("role", "role"),
    ("practitioner_id", "practitioner"),
    ("program", "program"),
    ("face_to_face", "face-to-face"),
    ("interactive", "interactive"),
)


def changes(old: ActivityVersion, new: ActivityVersion) -> list[Change]:
    """What ``new`` changed of ``old``, field by field, as text."""
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


def _iso_start(v: ActivityVersion) -> str:
    return v.event.data.started_at.isoformat()


def _change_text(c: Change) -> str:
    return f"{c.field} {c.before} -> {c.after}"


def _source_key(source: str) -> tuple[str, int, str]:
    digits = source.lstrip("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
    return (source[: len(source) - len(digits)], int(digits) if digits.isdigit() else 0, source)


def billing(
    mb: MonthBilling, book: RuleBook, in_replay: bool, qp: bool = False, facility: bool = False
) -> Billing:
    """The month's billable and blocked lines priced from ``book`` for the practice's
    payment settings (``qp``: its clinicians are qualifying APM participants; ``facility``:
    facility amounts), and the rules that applied (codes, tracks, gates, exclusive pairs,
    the conversion factor used and the setting that chose it) with their sources."""

    def line(
        code: str, units: int, practitioner: str | None, family: str, reasons: list[str]
    ) -> CodeLine:
        rule = book.code(code)
        fee = book.fee(code, qp=qp, facility=facility)
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
    factor = book.conversion_factor_qp if qp else book.conversion_factor
    if billable:
        rules.append(
            RuleRef(
                "conversion_factor",
                pricing_text(factor, qp, facility),
                (book.conversion_factor_source,),
            )
        )
    sources = sorted({s for r in rules for s in r.sources}, key=_source_key)
    return Billing(
        rule_year=mb.rule_year,
        conversion_factor=factor,
        in_replay=in_replay,
        minutes=dict(sorted(mb.minutes.items())),
        billable=billable,
        blocked=blocked,
        flags=tuple(sorted(mb.flags)),
        estimated_payment=mb.estimated_payment,
        rules=tuple(rules),
        source_ids=tuple(sources),
    )


def pricing_text(factor: float, qp: bool, facility: bool) -> str:
    """The conversion factor used and the settings that chose it, e.g. ``33.5675
    (qualifying APM participant; facility amounts)``."""
    who = "qualifying APM participant" if qp else "non-qualifying APM participant"
    amounts = "facility amounts" if facility else "non-facility amounts"
    return f"{factor} ({who}; {amounts})"

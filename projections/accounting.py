"""Interval accounting for one patient-month: docs/rules.md §6.2 steps 1-5.

Activities are processed in log order (``Activity.seq``); each step removes seconds
from an activity's pieces and records why, so the audit can name the reason for
every minute not counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from projections.calendar import month_bounds
from projections.documentation import (
    CONSENT_FAMILY,
    FOREVER,
    consent_periods,
    inpatient_intervals,
)
from projections.intervals import Interval, intersect_all, subtract, total, union
from projections.ledger import Activity, PatientState
from projections.rules import Policy


@dataclass(slots=True)
class ActivityTime:
    """How one activity's seconds inside the month were treated."""

    activity: Activity
    in_month: int
    counted: int = 0
    excluded: dict[str, int] = field(default_factory=dict)  # reason -> seconds

    def exclude(self, reason: str, seconds: int) -> None:
        if seconds > 0:
            self.excluded[reason] = self.excluded.get(reason, 0) + seconds


@dataclass(slots=True)
class Pool:
    """Counted intervals of one program under one billing practitioner."""

    program: str
    practitioner_id: str
    personal: list[Interval] = field(default_factory=list)
    staff: dict[str, list[Interval]] = field(default_factory=dict)
    interactive: bool = False
    _memo: tuple[str, tuple[int, int, int, bool]] | None = None

    def seconds(self, concurrent: str = "once") -> tuple[int, int, int, bool]:
        """(personal P, other staff S, pooled T, whether different staff overlapped)."""
        if self._memo is not None and self._memo[0] == concurrent:
            return self._memo[1]
        result = self._seconds(concurrent)
        self._memo = (concurrent, result)
        return result

    def _seconds(self, concurrent: str) -> tuple[int, int, int, bool]:
        p = total(self.personal)  # one person's claimed pieces are already disjoint
        everyone = [iv for pieces in self.staff.values() for iv in pieces]
        s_union = total(union(everyone))
        t_union = total(union(self.personal + everyone))
        individual = p + sum(total(pieces) for pieces in self.staff.values())
        if concurrent == "sum":
            return p, sum(total(v) for v in self.staff.values()), individual, False
        return p, s_union, t_union, individual > t_union


@dataclass(slots=True)
class Pair:
    """Two activities of one person claiming the same seconds (overlap or double_count)."""

    kind: str
    flag: str
    kept: str
    other: str
    seconds: int


@dataclass(slots=True)
class MonthTime:
    month: str
    start: int
    end: int
    flags: set[str] = field(default_factory=set)
    pools: dict[tuple[str, str], Pool] = field(default_factory=dict)
    activities: list[ActivityTime] = field(default_factory=list)
    pairs: list[Pair] = field(default_factory=list)

    def pool(self, program: str, practitioner_id: str) -> Pool:
        key = (program, practitioner_id)
        p = self.pools.get(key)
        if p is None:
            p = self.pools[key] = Pool(program, practitioner_id)
        return p


_UNSET: list[Interval] = []


def _counting_window(
    cache: dict[tuple[str, str], list[Interval] | None],
    key: tuple[str, str],
    patient: PatientState,
    family: str,
    practitioner_id: str,
    tz: str,
) -> list[Interval] | None:
    """Instants whose minutes may count under consent for (family, practitioner).

    Minutes before a consent (or before a renewed one) do not count; minutes after a
    final revocation stay counted and the gate blocks them with ``missing_consent``
    (G10, docs/rules.md §6.3). None: never consented (no cut; the gate flags it).
    """
    if key not in cache:
        cache[key] = consent_periods(patient, family, practitioner_id, tz)
    periods = cache[key]
    if not periods:  # never consented, or only revocations: no cut
        return None
    if periods[-1][1] < FOREVER:
        periods = [*periods, (periods[-1][1], FOREVER)]
    return periods


def account(
    patient: PatientState,
    month: str,
    tz: str,
    policy: Policy,
    activities: list[Activity] | None = None,
    consent_cache: dict[tuple[str, str], list[Interval] | None] | None = None,
) -> MonthTime:
    """Counted time of ``patient`` in local ``month``; ``activities`` may be pre-filtered
    and ``consent_cache`` shared between the months of one patient."""
    lo, hi = month_bounds(month, tz)
    mt = MonthTime(month, lo, hi)
    source = patient.activities.values() if activities is None else activities
    acts = sorted((a for a in source if a.start < hi and a.end > lo), key=lambda a: a.seq)
    if not acts:
        return mt
    flags = mt.flags
    if consent_cache is None:
        consent_cache = {}
    inpatient = inpatient_intervals(patient, tz) if patient.stays else []
    counting: dict[tuple[str, str], list[Interval] | None] = {}
    fingerprints: set[tuple[str, int, int, str]] = set()
    claimed: dict[str, list[tuple[int, int, str, str]]] = {}

    # step 1, in log order: exact re-sends under a new event id (same staff, start,
    # length, program) count once
    kept: list[ActivityTime] = []
    for a in acts:
        at = ActivityTime(a, min(a.end, hi) - max(a.start, lo))
        mt.activities.append(at)
        if a.start < lo or a.end > hi:
            flags.add("cross_month_split")
        fp = (a.staff_id, a.start, a.end - a.start, a.program)
        if fp in fingerprints:
            at.exclude("duplicate_event", at.in_month)
            flags.add("duplicate_event")
            continue
        fingerprints.add(fp)
        kept.append(at)

    # steps 3-4 in claim order: a person's TCM time and excluded face-to-face time hold
    # their minutes whatever the log order (TCM minutes are never CCM minutes, G6; time
    # inside a face-to-face visit belongs to the visit, G7); then log order decides
    def claims_first(a: Activity) -> bool:
        return a.program == "tcm" or (policy.exclude_face_to_face and a.face_to_face)

    for at in sorted(kept, key=lambda at: (not claims_first(at.activity), at.activity.seq)):
        a = at.activity
        s, e = max(a.start, lo), min(a.end, hi)
        if policy.exclude_face_to_face and a.face_to_face:
            at.exclude("face_to_face_excluded", at.in_month)
            flags.add("face_to_face_excluded")
            if a.role != "non_clinical":
                claimed.setdefault(a.staff_id, []).append((s, e, a.program, a.activity_id))
            continue
        if a.role == "non_clinical":
            at.exclude("non_clinical_staff_excluded", at.in_month)
            flags.add("non_clinical_staff_excluded")
            continue
        pieces: list[Interval] = [(s, e)]
        family = CONSENT_FAMILY.get(a.program)
        if family is not None:
            key = (family, a.practitioner_id)
            allowed = counting.get(key, _UNSET)
            if allowed is _UNSET:
                allowed = counting[key] = _counting_window(
                    consent_cache, key, patient, family, a.practitioner_id, tz
                )
            if allowed and not any(cs <= s and e <= ce for cs, ce in allowed):
                pieces, cut = intersect_all(pieces, allowed)
                if cut:
                    at.exclude("consent_after_activity", cut)
                    flags.add("consent_after_activity")
        if inpatient and a.program in policy.inpatient_excluded_programs:
            for iv in inpatient:
                pieces, cut = subtract(pieces, iv)
                if cut:
                    at.exclude("inpatient_time_excluded", cut)
                    flags.add("inpatient_time_excluded")
        # step 4: one person's overlapping minutes count once; across programs the
        # earliest-received activity keeps them (G9)
        mine = claimed.setdefault(a.staff_id, [])
        for cs, ce, cprog, cid in mine:
            if not pieces:
                break
            pieces, cut = subtract(pieces, (cs, ce))
            if cut:
                if cprog == a.program:
                    flag, kind = "overlap", "overlap"
                else:
                    flag, kind = f"double_count:{cprog}+{a.program}", "double_count"
                flags.add(flag)
                at.exclude(flag, cut)
                mt.pairs.append(Pair(kind, flag, cid, a.activity_id, cut))
        mine.extend((ps, pe, a.program, a.activity_id) for ps, pe in pieces)
        at.counted = total(pieces)
        # step 5 input: pools per program and billing practitioner
        pool = mt.pool(a.program, a.practitioner_id)
        if a.personal:
            pool.personal.extend(pieces)
        else:
            pool.staff.setdefault(a.staff_id, []).extend(pieces)
        if a.interactive:
            pool.interactive = True

    for pool in mt.pools.values():
        if pool.seconds(policy.concurrent_staff_time)[3]:
            flags.add("concurrent_staff_time")
    return mt

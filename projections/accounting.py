"""Interval accounting for one patient-month: docs/rules.md §6.2 steps 1-5.

Activities are processed in log order (``Activity.seq``); each step removes seconds
from an activity's pieces and records why, so the audit can name the reason for
every minute not counted.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from dataclasses import dataclass, field

from projections.calendar import month_bounds
from projections.documentation import (
    CONSENT_FAMILY,
    FOREVER,
    consent_periods,
    inpatient_intervals,
)
from projections.intervals import Cover, Interval, intersect_all, subtract, total
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
    """Counted intervals of one program under one billing practitioner, with running
    measures kept as pieces are added (so reading its seconds costs nothing)."""

    program: str
    practitioner_id: str
    personal: list[Interval] = field(default_factory=list)
    staff: dict[str, list[Interval]] = field(default_factory=dict)
    interactive: bool = False
    personal_s: int = 0  # one person's claimed pieces are disjoint: their sum
    staff_sum_s: int = 0  # every other staff member's counted seconds, summed
    staff_cover: Cover = field(default_factory=Cover)  # ... and their union
    all_cover: Cover = field(default_factory=Cover)  # everyone's union

    def add(self, pieces: list[Interval], personal: bool, staff_id: str) -> None:
        """Count ``pieces`` (disjoint, claimed by one person) in the pool."""
        n = total(pieces)
        if personal:
            self.personal.extend(pieces)
            self.personal_s += n
        else:
            self.staff.setdefault(staff_id, []).extend(pieces)
            self.staff_sum_s += n
            for s, e in pieces:
                self.staff_cover.add(s, e)
        for s, e in pieces:
            self.all_cover.add(s, e)

    def seconds(self, concurrent: str = "once") -> tuple[int, int, int, bool]:
        """(personal P, other staff S, pooled T, whether different staff overlapped)."""
        p = self.personal_s
        individual = p + self.staff_sum_s
        if concurrent == "sum":
            return p, self.staff_sum_s, individual, False
        pooled = self.all_cover.measure
        return p, self.staff_cover.measure, pooled, individual > pooled


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
    return MonthAccount(patient, month, tz, policy, activities, consent_cache).time


class _Claims:
    """One person's claimed intervals in claim order, found by time through an index.

    A new activity is cut by every earlier claim it overlaps, in claim order (the
    earliest claim keeps the seconds, G9). Claims last at most ``longest`` seconds, so
    the ones overlapping [s, e) start in (s - longest, e): a bisect, not a scan.
    """

    __slots__ = ("by_start", "items", "longest")

    def __init__(self) -> None:
        self.items: list[tuple[int, int, str, str]] = []  # (start, end, program, activity)
        self.by_start: list[tuple[int, int]] = []  # (start, index in items), sorted
        self.longest = 0

    def add(self, s: int, e: int, program: str, activity_id: str) -> None:
        insort(self.by_start, (s, len(self.items)))
        self.items.append((s, e, program, activity_id))
        if e - s > self.longest:
            self.longest = e - s

    def overlapping(self, s: int, e: int) -> list[tuple[int, int, str, str]]:
        """Claims that overlap [s, e), in claim order."""
        by_start, items = self.by_start, self.items
        lo = bisect_right(by_start, (s - self.longest, len(items)))
        hi = bisect_left(by_start, (e, -1))
        found = sorted(i for cs, i in by_start[lo:hi] if items[i][1] > s)
        return [items[i] for i in found]


class MonthAccount:
    """docs/rules.md §6.2 steps 1-5 for one patient-month, as a procedure fed one
    activity at a time in claim order.

    :func:`account` feeds a month's activities at once. The fold keeps one per
    patient-month and :meth:`append` feeds it the activity an event just logged, when
    that activity comes last in claim order (the common case: a new activity is last in
    log order, and claim order is log order unless it claims its minutes first, G6/G7);
    then an event costs what it changes, not the month's size. Anything else (an
    amendment, a void, a new consent or stay) is accounted again from scratch by the
    caller. Both paths run the same steps in the same order, so they give the same
    :class:`MonthTime`.
    """

    __slots__ = (
        "claimed",
        "consent_cache",
        "counting",
        "fingerprints",
        "inpatient",
        "ordinary",
        "patient",
        "policy",
        "time",
        "tz",
    )

    def __init__(
        self,
        patient: PatientState,
        month: str,
        tz: str,
        policy: Policy,
        activities: list[Activity] | None = None,
        consent_cache: dict[tuple[str, str], list[Interval] | None] | None = None,
    ) -> None:
        lo, hi = month_bounds(month, tz)
        self.time = MonthTime(month, lo, hi)
        self.patient = patient
        self.tz = tz
        self.policy = policy
        self.consent_cache = {} if consent_cache is None else consent_cache
        self.inpatient = inpatient_intervals(patient, tz) if patient.stays else []
        self.counting: dict[tuple[str, str], list[Interval] | None] = {}
        self.fingerprints: set[tuple[str, int, int, str]] = set()
        self.claimed: dict[str, _Claims] = {}
        self.ordinary = False  # whether an activity not claiming first was accounted
        source = patient.activities.values() if activities is None else activities
        acts = sorted((a for a in source if a.start < hi and a.end > lo), key=lambda a: a.seq)
        kept = [at for at in map(self._step1, acts) if at is not None]
        # steps 3-4 in claim order: a person's TCM time and excluded face-to-face time hold
        # their minutes whatever the log order (TCM minutes are never CCM minutes, G6; time
        # inside a face-to-face visit belongs to the visit, G7); then log order decides
        for at in sorted(
            kept, key=lambda at: (not self._claims_first(at.activity), at.activity.seq)
        ):
            self._claim(at)

    def append(self, a: Activity) -> bool:
        """Account ``a``, logged after every activity of the month; False (nothing done)
        when it would not come last in claim order: account the month again."""
        lo, hi = self.time.start, self.time.end
        if not (a.start < hi and a.end > lo):
            return True
        if self.ordinary and self._claims_first(a):
            return False
        at = self._step1(a)
        if at is not None:
            self._claim(at)
        return True

    def _claims_first(self, a: Activity) -> bool:
        return a.program == "tcm" or (self.policy.exclude_face_to_face and a.face_to_face)

    def _step1(self, a: Activity) -> ActivityTime | None:
        """Step 1, in log order: exact re-sends under a new event id (same staff, start,
        length, program) count once. None: ``a`` is such a re-send."""
        mt = self.time
        lo, hi = mt.start, mt.end
        at = ActivityTime(a, min(a.end, hi) - max(a.start, lo))
        mt.activities.append(at)
        if a.start < lo or a.end > hi:
            mt.flags.add("cross_month_split")
        fp = (a.staff_id, a.start, a.end - a.start, a.program)
        if fp in self.fingerprints:
            at.exclude("duplicate_event", at.in_month)
            mt.flags.add("duplicate_event")
            return None
        self.fingerprints.add(fp)
        return at

    def _claim(self, at: ActivityTime) -> None:
        """Steps 3-5 for one activity, after every activity before it in claim order."""
        mt, policy = self.time, self.policy
        flags = mt.flags
        a = at.activity
        if not self._claims_first(a):
            self.ordinary = True
        s, e = max(a.start, mt.start), min(a.end, mt.end)
        if policy.exclude_face_to_face and a.face_to_face:
            at.exclude("face_to_face_excluded", at.in_month)
            flags.add("face_to_face_excluded")
            if a.role != "non_clinical":
                self._claims(a.staff_id).add(s, e, a.program, a.activity_id)
            return
        if a.role == "non_clinical":
            at.exclude("non_clinical_staff_excluded", at.in_month)
            flags.add("non_clinical_staff_excluded")
            return
        pieces: list[Interval] = [(s, e)]
        family = CONSENT_FAMILY.get(a.program)
        if family is not None:
            key = (family, a.practitioner_id)
            allowed = self.counting.get(key, _UNSET)
            if allowed is _UNSET:
                allowed = self.counting[key] = _counting_window(
                    self.consent_cache, key, self.patient, family, a.practitioner_id, self.tz
                )
            if allowed and not any(cs <= s and e <= ce for cs, ce in allowed):
                pieces, cut = intersect_all(pieces, allowed)
                if cut:
                    at.exclude("consent_after_activity", cut)
                    flags.add("consent_after_activity")
        if self.inpatient and a.program in policy.inpatient_excluded_programs:
            for iv in self.inpatient:
                pieces, cut = subtract(pieces, iv)
                if cut:
                    at.exclude("inpatient_time_excluded", cut)
                    flags.add("inpatient_time_excluded")
        # step 4: one person's overlapping minutes count once; across programs the
        # earliest-received activity keeps them (G9)
        mine = self._claims(a.staff_id)
        for cs, ce, cprog, cid in mine.overlapping(s, e):
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
        for ps, pe in pieces:
            mine.add(ps, pe, a.program, a.activity_id)
        at.counted = total(pieces)
        # step 5 input: pools per program and billing practitioner
        pool = mt.pool(a.program, a.practitioner_id)
        pool.add(pieces, a.personal, a.staff_id)
        if a.interactive:
            pool.interactive = True
        if pool.seconds(policy.concurrent_staff_time)[3]:
            flags.add("concurrent_staff_time")

    def _claims(self, staff_id: str) -> _Claims:
        mine = self.claimed.get(staff_id)
        if mine is None:
            mine = self.claimed[staff_id] = _Claims()
        return mine

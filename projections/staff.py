"""``staff_overlap`` alerts: one staff member's activities overlapping on two patients.

A pure fold (no I/O, no clock): :class:`StaffProjector` keeps, per ``(org_id,
staff_id)``, the current interval of every activity, sorted by start, and the
cross-patient pairs that currently overlap with their overlap in seconds. An
activity is identified by ``(org_id, patient_id, activity_id)``; re-sending it
replaces the earlier interval (an amendment) and a void removes it.

A pair is alerted when it starts to overlap or its overlap changes: two alerts, one
per patient, each in the month of the overlap's start in that side's time zone.
Removing or moving an interval clears its pairs silently, so a later re-overlap
alerts again. Same-patient overlaps are the billing core's business, not this one's.
Alert text names the staff member and activity ids, never a patient identifier.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from dataclasses import dataclass

from projections.alerts import alert_id
from projections.calendar import month_of
from schemas.views import Alert

Identity = tuple[str, str, str]  # org_id, patient_id, activity_id
Pair = tuple[Identity, Identity]  # sorted, so order-independent
Bucket = tuple[str, str]  # org_id, staff_id
_SortKey = tuple[int, str, str]  # start, patient_id, activity_id (org is the bucket's)


@dataclass(frozen=True, slots=True)
class StaffInterval:
    """The current ``[start, end)`` (epoch seconds, UTC) of one activity of a staff member."""

    org_id: str
    staff_id: str
    patient_id: str
    activity_id: str
    event_id: str
    start: int
    end: int
    timezone: str  # the practice's IANA zone: names an alert's month

    @property
    def identity(self) -> Identity:
        return (self.org_id, self.patient_id, self.activity_id)


@dataclass(frozen=True, slots=True)
class StaffVoid:
    """The activity is voided: its interval no longer exists."""

    org_id: str
    staff_id: str
    patient_id: str
    activity_id: str
    event_id: str

    @property
    def identity(self) -> Identity:
        return (self.org_id, self.patient_id, self.activity_id)


def pair_of(a: Identity, b: Identity) -> Pair:
    return (a, b) if a <= b else (b, a)


def pair_key(pair: Pair) -> str:
    """The pair's part of an ``alert_id``: both activity identities, in sorted order."""
    return "\x1e".join("\x1d".join(ident) for ident in pair)


def overlap_seconds(a: StaffInterval, b: StaffInterval) -> int:
    """Length of ``[a) ∩ [b)`` in seconds (0 when they only touch or are apart)."""
    return max(0, min(a.end, b.end) - max(a.start, b.start))


class StaffProjector:
    """Folds :class:`StaffInterval` / :class:`StaffVoid` items into ``staff_overlap`` alerts.

    State is plain dicts and lists (picklable as a snapshot). An item whose
    ``event_id`` was already applied to its activity (as an interval, or as a void) is a
    redelivery: a no-op.
    """

    def __init__(self) -> None:
        self._current: dict[Identity, StaffInterval] = {}
        self._seen: dict[Identity, list[str]] = {}  # event ids applied, per activity
        self._sorted: dict[Bucket, list[_SortKey]] = {}
        # longest interval a bucket ever held: the search window (<= 24 h by the wire contract)
        self._span: dict[Bucket, int] = {}
        self._alerted: dict[Bucket, dict[Pair, int]] = {}  # overlapping pair -> seconds

    # -- public ---------------------------------------------------------------

    def apply(self, item: StaffInterval | StaffVoid) -> list[Alert]:
        """Fold one item; the alerts it raises (``[]`` for a redelivery or a void)."""
        ident = item.identity
        # an amendment that moves an activity to another staff member sends a void (old
        # staff) and an interval (new staff) under one event id: each is seen apart
        mark = f"void:{item.event_id}" if isinstance(item, StaffVoid) else item.event_id
        seen = self._seen.setdefault(ident, [])
        if mark in seen:
            return []
        seen.append(mark)
        old = self._current.pop(ident, None)
        before = self._remove(old) if old is not None else {}
        if isinstance(item, StaffVoid):
            return []
        self._current[ident] = item
        return self._insert(item, before)

    def intervals(self, org_id: str, staff_id: str) -> list[StaffInterval]:
        """Current intervals of one staff member, sorted by (start, patient, activity)."""
        return [
            self._current[(org_id, p, a)] for _, p, a in self._sorted.get((org_id, staff_id), [])
        ]

    def alerted_pairs(self, org_id: str, staff_id: str) -> dict[Pair, int]:
        """Cross-patient pairs currently overlapping (and alerted), with overlap seconds."""
        return dict(self._alerted.get((org_id, staff_id), {}))

    # -- internals ------------------------------------------------------------

    def _overlapping(self, it: StaffInterval) -> list[tuple[StaffInterval, int]]:
        """Current intervals of ``it``'s staff on other patients overlapping it, in order."""
        bucket = (it.org_id, it.staff_id)
        keys = self._sorted.get(bucket, [])
        lo = bisect_left(keys, (it.start - self._span.get(bucket, 0),))
        hi = bisect_left(keys, (it.end,))
        out = []
        for _, patient, activity in keys[lo:hi]:
            if patient == it.patient_id:
                continue
            other = self._current[(it.org_id, patient, activity)]
            seconds = overlap_seconds(it, other)
            if seconds > 0:
                out.append((other, seconds))
        return out

    def _remove(self, old: StaffInterval) -> dict[Pair, int]:
        """Take ``old`` out of its bucket; the pairs it was in, with their seconds."""
        bucket = (old.org_id, old.staff_id)
        keys = self._sorted[bucket]
        key = (old.start, old.patient_id, old.activity_id)
        i = bisect_left(keys, key)
        assert keys[i] == key
        del keys[i]
        alerted = self._alerted.get(bucket, {})
        return {
            pair: alerted.pop(pair)
            for other, _ in self._overlapping(old)
            if (pair := pair_of(old.identity, other.identity)) in alerted
        }

    def _insert(self, it: StaffInterval, before: dict[Pair, int]) -> list[Alert]:
        """Put ``it`` in its bucket; alerts for pairs new or changed against ``before``."""
        bucket = (it.org_id, it.staff_id)
        self._span[bucket] = max(self._span.get(bucket, 0), it.end - it.start)
        alerted = self._alerted.setdefault(bucket, {})
        out: list[Alert] = []
        for other, seconds in self._overlapping(it):
            pair = pair_of(it.identity, other.identity)
            alerted[pair] = seconds
            if before.get(pair) != seconds:
                out.append(_alert(it, other, seconds, pair, it.event_id))
                out.append(_alert(other, it, seconds, pair, it.event_id))
        insort(self._sorted.setdefault(bucket, []), (it.start, it.patient_id, it.activity_id))
        return out


def _alert(
    side: StaffInterval, other: StaffInterval, seconds: int, pair: Pair, cause: str
) -> Alert:
    """The alert for ``side``'s patient about its overlap with ``other``."""
    month = month_of(max(side.start, other.start), side.timezone)
    key = pair_key(pair)
    return Alert(
        alert_id=alert_id("staff_overlap", side.org_id, side.patient_id, month, None, key, cause),
        kind="staff_overlap",
        org_id=side.org_id,
        patient_id=side.patient_id,
        month=month,
        code=None,
        detail=(
            f"staff {side.staff_id} logged activity {side.activity_id} here while logging "
            f"activity {other.activity_id} on another patient: {seconds} s "
            f"({seconds / 60:.1f} min) overlap"
        ),
        cause_event_id=cause,
    )

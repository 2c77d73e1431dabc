"""Property tests (hypothesis) of the accounting semantics.

References: docs/design.md ("Accounting semantics", "One semantics, several
engines", idempotent folds) and docs/rules.md §6.2 (evaluation order).

The logs come from ``support.strategies.gen_logs`` (what they hold: that module's
docstring); a few fixed regressions are kept as explicit examples.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

import orjson
import pytest
from hypothesis import event, example, given, note, settings
from hypothesis import strategies as st

from projections.calendar import epoch, month_bounds
from projections.engine import Projector, billing, fold, replay
from projections.intervals import measure, subtract, total, union
from projections.ledger import Ledger, Status
from schemas.events import Event, parse_event
from support.strategies import (
    APCM_GAP,
    APCM_VOID,
    END_OF_TIME,
    ICD,
    PREAMBLE_AT,
    REVOCATION_ONLY,
    SETTINGS,
    ZONES,
    GenLog,
    Raw,
    anchor_list,
    anchors,
    consent_data,
    enrollment_data,
    gen_logs,
    iso,
    one_in_5,
    pick,
)

# -- helpers -------------------------------------------------------------------------


def parse(raws: list[Raw]) -> list[Event]:
    return [parse_event(orjson.dumps(r)) for r in raws]


def views(events: list[Event], as_of: datetime | None = None) -> list[dict[str, Any]]:
    return [b.view() for b in replay(events, as_of=as_of)]


def _describe(bills: list[Any]) -> None:
    """Label generated cases so ``--hypothesis-show-statistics`` shows what was covered."""
    flags = set().union(*(b.flags for b in bills)) if bills else set()
    for f in sorted(flags):
        if f in ("cross_month_split", "overlap", "concurrent_staff_time", "duplicate_event"):
            event(f)
        elif f.startswith("double_count"):
            event("double_count")
    if any(b.billable for b in bills):
        event("something billable")


# -- 1. duplicates ------------------------------------------------------------------------


@SETTINGS
@given(log=gen_logs(), data=st.data())
def test_duplicate_events_change_nothing(log: GenLog, data: st.DataObject) -> None:
    """docs/design.md "every fold is idempotent (event ids ...)", docs/rules.md §6.2 step 1:
    re-inserting exact copies (same event_id and body) of events at later positions changes no
    view."""
    raws = log.merged()
    events = parse(raws)
    dup = list(events)
    for _ in range(data.draw(st.integers(1, 8))):
        i = data.draw(st.integers(0, len(events) - 1))
        j = data.draw(st.integers(dup.index(events[i]) + 1, len(dup)))
        dup.insert(j, events[i])
    bills = replay(events)
    _describe(bills)
    assert [b.view() for b in replay(dup)] == [b.view() for b in bills]


# -- 2. void == never logged ----------------------------------------------------------------


@SETTINGS
@given(log=gen_logs(), data=st.data())
def test_void_equals_never_logging(log: GenLog, data: st.DataObject) -> None:
    """docs/design.md "voiding removes it" (ledger: "voiding equals never logging"): appending
    ``activity.voided`` for an activity logged once and never amended or voided gives the
    same views as a log without that activity."""
    raws = log.merged()
    mentions: dict[tuple[str, str, str], int] = {}
    for r in raws:
        if r["type"] in ("activity.logged", "activity.voided"):
            key = (r["org_id"], r["patient_id"], r["data"]["activity_id"])
            mentions[key] = mentions.get(key, 0) + 1
    candidates = [
        i
        for i, r in enumerate(raws)
        if r["type"] == "activity.logged"
        and mentions[(r["org_id"], r["patient_id"], r["data"]["activity_id"])] == 1
    ]
    if not candidates:
        event("no single-logged activity")
        return
    i = data.draw(st.sampled_from(candidates))
    target = raws[i]
    void = {
        **{k: target[k] for k in ("schema_version", "org_id", "patient_id", "source")},
        "event_id": "void-under-test",
        "type": "activity.voided",
        "recorded_at": max(r["recorded_at"] for r in raws[len(log.preamble) :]),
        "data": {"activity_id": target["data"]["activity_id"], "reason": "entered in error"},
    }
    note(f"voided: {target}")
    with_void = parse([*raws, void])
    without = parse(raws[:i] + raws[i + 1 :])
    before = replay(parse(raws))
    _describe(before)
    assert views(with_void) == views(without)


# -- 3. splitting conserves seconds ----------------------------------------------------------


@st.composite
def single_activity(draw: st.DrawFn) -> tuple[str, list[Raw], int]:
    """A documented CCM patient with one clinical activity, usually across a local month
    edge (or a DST night), started at second or minute granularity."""
    tz = draw(st.sampled_from(ZONES))
    seconds = draw(st.integers(1, 3 * 3600))
    month_edges = anchor_list(tz)[:2]
    edge = pick(draw, month_edges * 3 + anchor_list(tz)[2:])  # mostly month edges
    if seconds > 1 and draw(one_in_5):  # straddles the edge (the other anchors: DST nights)
        lead = draw(st.integers(1, seconds - 1))
    else:
        lead = draw(st.integers(-7200, 0))
    start = edge - timedelta(seconds=lead)
    if draw(st.booleans()) and 0 < lead + start.second < seconds:  # minute granularity
        start -= timedelta(seconds=start.second)
    staff = draw(st.sampled_from(["RN-1", "DR-1"]))
    data: dict[str, Any] = {
        "activity_id": "a1",
        "staff_id": staff,
        "staff_role": "physician" if staff == "DR-1" else "clinical_staff",
        "practitioner_id": "DR-1",
        "program": "ccm",
        "activity": "care_coordination",
        "started_at": iso(start, draw(st.sampled_from(["UTC", tz]))),
        "interactive": draw(st.booleans()),
    }
    if draw(st.booleans()):
        data["ended_at"] = iso(start + timedelta(seconds=seconds), tz)
    else:
        data["minutes"] = seconds / 60
    base = {"schema_version": 1, "org_id": "o1", "source": "test", "recorded_at": PREAMBLE_AT}
    pat = {**base, "patient_id": "P-1"}
    raws: list[Raw] = [
        {**base, "event_id": "cfg", "type": "practice.configured", "data": {"timezone": tz}},
        {
            **pat,
            "event_id": "c1",
            "type": "conditions.recorded",
            "data": {"chronic": list(ICD[:2])},
        },
        {
            **pat,
            "event_id": "c2",
            "type": "consent.recorded",
            "data": consent_data("ccm", "DR-1", "2025-01-01"),
        },
        {
            **pat,
            "event_id": "c3",
            "type": "care_plan.recorded",
            "data": {"program": "ccm", "on": "2025-01-01", "complexity": "low"},
        },
        {
            **pat,
            "event_id": "c4",
            "type": "enrollment.recorded",
            "data": enrollment_data("ccm", "DR-1", "2025-01-01", False),
        },
        {**pat, "event_id": "a", "type": "activity.logged", "data": data},
    ]
    return tz, raws, seconds


@settings(max_examples=300, deadline=None)
@given(case=single_activity())
def test_month_split_conserves_seconds(case: tuple[str, list[Raw], int]) -> None:
    """docs/design.md "an activity across local midnight at a month's end is split. Seconds
    accumulate", docs/rules.md §6.2 step 2: a lone counted CCM activity's seconds, summed over
    the local months it touches, equal its length (also across DST nights)."""
    tz, raws, seconds = case
    bills = replay(parse(raws))
    months = [b.month for b in bills]
    if len(months) > 1:
        event("crosses a month edge")
    in_month = counted = pooled = 0
    for b in bills:
        assert b.time is not None
        lo, hi = month_bounds(b.month, tz)
        for at in b.time.activities:
            a = at.activity
            assert a.end - a.start == seconds
            assert at.in_month == min(a.end, hi) - max(a.start, lo) > 0  # the local month's share
            assert at.excluded == {}
            in_month += at.in_month
            counted += at.counted
        pooled += sum(pool.seconds()[2] for pool in b.time.pools.values())
        assert ("cross_month_split" in b.flags) == (len(months) > 1)
    assert in_month == counted == pooled == seconds
    total_minutes = sum(b.minutes.get("ccm", 0.0) for b in bills)
    assert abs(total_minutes - seconds / 60) <= 0.01 * len(bills) / 2 + 1e-9


# -- 4. permuting independent events ---------------------------------------------------------


@SETTINGS
@given(log=gen_logs(), picks=st.lists(st.integers(0, 7), max_size=400))
def test_interleaving_patients_changes_nothing(log: GenLog, picks: list[int]) -> None:
    """docs/design.md "The log's order decides ties" — and only ties: patients never interact in
    billing, so any interleaving of the patients' sub-logs (each kept in its own order, the
    practices' configuration first) gives the same views."""
    a = parse(log.merged())
    b = parse(log.interleaved(picks))
    assert sorted(e.event_id for e in a) == sorted(e.event_id for e in b)
    if [e.event_id for e in a] != [e.event_id for e in b]:
        event("another order")
    assert views(a) == views(b)


# -- 5, 6. as-of ------------------------------------------------------------------------------


@SETTINGS
@given(log=gen_logs())
def test_as_of_end_of_time_is_no_as_of(log: GenLog) -> None:
    """docs/design.md "Auditors replay the same log to any point in time": as of the end of time
    is the whole log."""
    events = parse(log.merged())
    assert views(events, as_of=END_OF_TIME) == views(events)


@SETTINGS
@given(log=gen_logs(), data=st.data())
def test_as_of_is_a_prefix(log: GenLog, data: st.DataObject) -> None:
    """docs/design.md "replay the log ... as it stood at any instant": as of T equals the log of
    the events recorded at or before T (a prefix, recorded_at being non-decreasing), showing
    the months that had begun at T."""
    events = parse(log.merged())
    stamps = sorted({e.recorded_at for e in events})
    t = data.draw(
        st.one_of(
            st.sampled_from(stamps),
            st.datetimes(datetime(2024, 12, 31), datetime(2025, 8, 1), timezones=st.just(UTC)),
        )
    )
    prefix = [e for e in events if e.recorded_at <= t]
    assert prefix == events[: len(prefix)]
    # ... less the months that had not begun at T (nothing in them was known yet)
    ledger = fold(prefix)
    begun = [
        v
        for v in views(prefix)
        if month_bounds(v["month"], ledger.practice(v["org_id"]).timezone)[0] <= epoch(t)
    ]
    assert views(events, as_of=t) == begun


# -- 7. two engines ----------------------------------------------------------------------------


@SETTINGS
@given(log=gen_logs())
@example(log=APCM_GAP)
@example(log=APCM_VOID)
@example(log=REVOCATION_ONLY)
def test_projector_equals_replay(log: GenLog) -> None:
    """docs/design.md "One semantics, several engines": stepping every event through the
    incremental Projector ends with the views a batch replay gives."""
    events = parse(log.merged())
    projector = Projector()
    for e in events:
        projector.step(e)
    expected = replay(events)
    _describe(expected)
    assert [b.view() for b in projector.billing()] == [b.view() for b in expected]


# -- 8. idempotent fold --------------------------------------------------------------------------


@SETTINGS
@given(log=gen_logs())
@example(log=REVOCATION_ONLY)
def test_folding_twice_is_idempotent(log: GenLog) -> None:
    """docs/design.md "every fold is idempotent (event ids, activity versions), so a restart or a
    redelivery never changes a total": a second pass of the whole log over the same Ledger
    is all duplicates and leaves every view unchanged."""
    events = parse(log.merged())
    ledger = fold(events)
    once = [b.view() for b in billing(ledger)]
    assert all(ledger.apply(e).status is Status.DUPLICATE for e in events)
    assert [b.view() for b in billing(ledger)] == once
    assert once == [b.view() for b in billing(fold(events, Ledger()))]


# -- 9. interval algebra ---------------------------------------------------------------------------

intervals = st.tuples(st.integers(-50, 50), st.integers(-50, 50))
proper = st.tuples(st.integers(-50, 50), st.integers(1, 40)).map(lambda t: (t[0], t[0] + t[1]))
# ``subtract``'s cut is always a proper interval in the engine (a stay, a claimed piece);
# an inverted cut (end < start) reports negative seconds removed and overlapping pieces.
cuts = st.one_of(proper, st.integers(-50, 50).map(lambda x: (x, x)))


@settings(max_examples=300, deadline=None)
@given(xs=st.lists(intervals, max_size=12))
def test_union_is_sorted_disjoint_and_no_longer(xs: list[tuple[int, int]]) -> None:
    """Interval algebra (docs/rules.md §6.2 steps 4-5 count one person's overlap once): ``union``
    is sorted, disjoint, non-adjacent and covers exactly the points of its inputs."""
    u = union(xs)
    assert all(s < e for s, e in u)
    assert all(a[1] < b[0] for a, b in pairwise(u))
    assert measure(xs) == total(u) <= sum(max(0, e - s) for s, e in xs)
    points = {p for s, e in xs for p in range(s, e)}
    assert points == {p for s, e in u for p in range(s, e)}


@settings(max_examples=300, deadline=None)
@given(xs=st.lists(proper, max_size=8), cut=cuts)
def test_subtract_conserves_length(xs: list[tuple[int, int]], cut: tuple[int, int]) -> None:
    """Interval algebra (docs/rules.md §6.2 steps 3-4 record every removed second): on disjoint
    pieces, ``subtract`` keeps plus removes exactly the original length, and keeps nothing
    inside the cut."""
    pieces = union(xs)
    kept, removed = subtract(pieces, cut)
    assert total(kept) + removed == total(pieces)
    assert removed >= 0
    cs, ce = cut
    assert all(e <= cs or s >= ce for s, e in kept)
    assert all(s < e for s, e in kept)
    assert all(a[1] <= b[0] for a, b in pairwise(kept))  # still sorted and disjoint
    assert {p for s, e in kept for p in range(s, e)} == {
        p for s, e in pieces for p in range(s, e) if not cs <= p < ce
    }


@pytest.mark.parametrize("tz", ZONES)
def test_anchors_cover_month_edges(tz: str) -> None:
    """The generator's edge anchors are the local month edges of the practice zone."""
    lo, hi = month_bounds("2025-03", tz)
    stamps = {int(a.timestamp()) for a in anchors(tz)}
    assert {lo, hi} <= stamps

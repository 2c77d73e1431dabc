"""``staff_overlap``: one staff member on two patients at once (docs/design.md "Alerts").

:class:`projections.staff.StaffProjector` is a pure fold of staff intervals and voids;
an overlap of two different patients raises one alert per patient, in the month of
the overlap's start in that patient's practice time zone, and never names a patient
in its text. Amendments replace, voids remove, redeliveries are no-ops.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from datetime import datetime
from itertools import combinations
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from projections.alerts import alert_id
from projections.calendar import month_of
from projections.staff import (
    Pair,
    StaffInterval,
    StaffProjector,
    StaffVoid,
    overlap_seconds,
    pair_key,
    pair_of,
)
from schemas.views import Alert

ORG = "org-1"
NY = "America/New_York"
P1, P2, P3 = "P-000123", "P-000456", "P-000789"  # distinctive: a leak cannot pass by accident


def at(text: str, tz: str = NY) -> int:
    """Epoch seconds of a local wall-clock time ``YYYY-MM-DDTHH:MM`` in ``tz``."""
    return int(datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(tz)).timestamp())


def iv(
    patient: str,
    activity: str,
    start: int,
    end: int,
    event: str | None = None,
    staff: str = "RN-1",
    tz: str = NY,
    org: str = ORG,
) -> StaffInterval:
    eid = event or f"ev-{activity}-{start}-{end}"
    return StaffInterval(org, staff, patient, activity, eid, start, end, tz)


def void(patient: str, activity: str, event: str, staff: str = "RN-1") -> StaffVoid:
    return StaffVoid(ORG, staff, patient, activity, event)


def feed(proj: StaffProjector, items: Sequence[StaffInterval | StaffVoid]) -> list[Alert]:
    return [a for item in items for a in proj.apply(item)]


def assert_no_phi(alerts: Sequence[Alert], *patients: str) -> None:
    for a in alerts:
        for p in patients:
            assert p not in a.detail, a.detail


T = at("2025-03-10T10:00")
MIN = 60
A = iv(P1, "a1", T, T + 30 * MIN)  # 10:00-10:30
B = iv(P2, "b1", T + 20 * MIN, T + 50 * MIN)  # 10:20-10:50: 10 min overlap with A
PAIR_AB = pair_of(A.identity, B.identity)


# -- the basic alert --------------------------------------------------------------------


def test_cross_patient_overlap_raises_one_alert_per_patient() -> None:
    proj = StaffProjector()
    assert proj.apply(A) == []
    alerts = proj.apply(B)
    assert [(a.kind, a.org_id, a.patient_id, a.month, a.code) for a in alerts] == [
        ("staff_overlap", ORG, P2, "2025-03", None),
        ("staff_overlap", ORG, P1, "2025-03", None),
    ]
    for a in alerts:
        assert a.cause_event_id == B.event_id
        assert "RN-1" in a.detail and "a1" in a.detail and "b1" in a.detail
        assert "600 s" in a.detail and "10.0 min" in a.detail
    assert len({a.alert_id for a in alerts}) == 2
    assert_no_phi(alerts, P1, P2)
    assert proj.alerted_pairs(ORG, "RN-1") == {PAIR_AB: 600}
    assert proj.intervals(ORG, "RN-1") == [A, B]


def test_overlap_starting_after_local_midnight_at_month_end_is_next_month() -> None:
    # A starts in March (local) and runs past midnight; the overlap starts in April,
    # local time, while still March 31 nowhere else that matters for the rule
    a = iv(P1, "a1", at("2025-03-31T23:30"), at("2025-04-01T00:30"))
    b = iv(P2, "b1", at("2025-04-01T00:10"), at("2025-04-01T00:40"))
    assert month_of(a.start, NY) == "2025-03"
    alerts = feed(StaffProjector(), [a, b])
    assert sorted((x.patient_id, x.month) for x in alerts) == [(P1, "2025-04"), (P2, "2025-04")]
    assert all("1200 s" in x.detail for x in alerts)


def test_month_is_local_to_each_side() -> None:
    # the overlap starts 2025-04-01T02:00Z: still March 31 in New York, April in UTC
    start = at("2025-04-01T02:00", "UTC")
    a = iv(P1, "a1", start - 3600, start + 3600, tz=NY)
    b = iv(P2, "b1", start, start + 1800, tz="UTC")
    alerts = feed(StaffProjector(), [a, b])
    assert sorted((x.patient_id, x.month) for x in alerts) == [(P1, "2025-03"), (P2, "2025-04")]


def test_touching_intervals_do_not_overlap() -> None:
    proj = StaffProjector()
    after = iv(P2, "b1", A.end, A.end + 600)
    before = iv(P3, "c1", A.start - 600, A.start)
    assert feed(proj, [A, after, before]) == []
    assert proj.alerted_pairs(ORG, "RN-1") == {}


def test_same_patient_overlap_is_not_a_staff_overlap() -> None:
    proj = StaffProjector()
    assert feed(proj, [A, iv(P1, "a2", A.start + 60, A.end + 60)]) == []
    assert proj.alerted_pairs(ORG, "RN-1") == {}


def test_other_staff_and_other_orgs_do_not_interact() -> None:
    proj = StaffProjector()
    other_staff = iv(P2, "b1", B.start, B.end, staff="RN-2")
    other_org = iv(P3, "c1", B.start, B.end, org="org-2")
    assert feed(proj, [A, other_staff, other_org]) == []


def test_one_interval_over_two_patients_raises_two_pairs() -> None:
    proj = StaffProjector()
    c = iv(P3, "c1", T - 10 * MIN, T + 60 * MIN)  # covers A (30 min) and B (30 min)
    feed(proj, [A, iv(P2, "b1", T + 40 * MIN, T + 70 * MIN)])
    alerts = proj.apply(c)
    assert sorted(x.patient_id for x in alerts) == sorted([P1, P3, P2, P3])
    assert len(proj.alerted_pairs(ORG, "RN-1")) == 2
    assert_no_phi(alerts, P1, P2, P3)


def test_a_long_earlier_interval_is_found() -> None:
    # the search window reaches back as far as the longest interval held (24 h here)
    proj = StaffProjector()
    day = iv(P1, "a1", T - 86400 + 60, T + 60)
    feed(
        proj,
        [day, *(iv(P3, f"c{i}", T - 80000 + 10 * i, T - 80000 + 10 * i + 5) for i in range(50))],
    )
    alerts = proj.apply(iv(P2, "b1", T, T + 600))
    assert sorted(x.patient_id for x in alerts) == [P1, P2]
    assert all("60 s" in x.detail for x in alerts)


# -- amendments, voids, redelivery ------------------------------------------------------


def test_amendment_away_and_back_re_alerts() -> None:
    proj = StaffProjector()
    first = feed(proj, [A, B])
    assert len(first) == 2
    away = iv(P2, "b1", T + 3 * 3600, T + 4 * 3600, event="ev-b1-v2")
    assert proj.apply(away) == []
    assert proj.alerted_pairs(ORG, "RN-1") == {}
    assert proj.intervals(ORG, "RN-1") == [A, away]
    back = iv(P2, "b1", B.start, B.end, event="ev-b1-v3")
    again = proj.apply(back)
    assert sorted(x.patient_id for x in again) == [P1, P2]
    assert all(x.cause_event_id == "ev-b1-v3" for x in again)
    assert {x.alert_id for x in again}.isdisjoint(x.alert_id for x in first)
    assert proj.alerted_pairs(ORG, "RN-1") == {PAIR_AB: 600}


def test_amendment_keeping_the_same_overlap_is_silent() -> None:
    proj = StaffProjector()
    feed(proj, [A, B])
    longer = iv(P2, "b1", B.start, B.end + 600, event="ev-b1-v2")  # still 600 s with A
    assert proj.apply(longer) == []
    same_again = iv(P2, "b1", B.start, B.end, event="ev-b1-v3")  # new event, same body
    assert proj.apply(same_again) == []
    assert proj.alerted_pairs(ORG, "RN-1") == {PAIR_AB: 600}


def test_amendment_changing_the_overlap_re_alerts() -> None:
    proj = StaffProjector()
    feed(proj, [A, B])
    alerts = proj.apply(iv(P2, "b1", T + 10 * MIN, B.end, event="ev-b1-v2"))
    assert sorted(x.patient_id for x in alerts) == [P1, P2]
    assert all("1200 s" in x.detail and "20.0 min" in x.detail for x in alerts)
    # amending the other side changes it again
    alerts = proj.apply(iv(P1, "a1", A.start, T + 15 * MIN, event="ev-a1-v2"))
    assert len(alerts) == 2 and all("300 s" in x.detail for x in alerts)
    assert proj.alerted_pairs(ORG, "RN-1") == {PAIR_AB: 300}


def test_amendment_to_another_staff_member_moves_the_interval() -> None:
    proj = StaffProjector()
    feed(proj, [A, B, iv(P3, "c1", B.start, B.end, staff="RN-2")])
    moved = iv(P2, "b1", B.start, B.end, event="ev-b1-v2", staff="RN-2")
    alerts = proj.apply(moved)  # leaves RN-1's pair with A, joins RN-2's c1 (P3)
    assert sorted(x.patient_id for x in alerts) == [P2, P3]
    assert proj.alerted_pairs(ORG, "RN-1") == {}
    assert proj.intervals(ORG, "RN-1") == [A]
    assert list(proj.alerted_pairs(ORG, "RN-2").values()) == [B.end - B.start]


def test_void_clears_the_pair_and_a_later_overlap_alerts_again() -> None:
    proj = StaffProjector()
    feed(proj, [A, B])
    assert proj.apply(void(P2, "b1", "ev-void-b1")) == []
    assert proj.alerted_pairs(ORG, "RN-1") == {}
    assert proj.intervals(ORG, "RN-1") == [A]
    relogged = iv(P2, "b1", B.start, B.end, event="ev-b1-v2")
    assert len(proj.apply(relogged)) == 2


def test_void_of_an_unknown_activity_is_harmless() -> None:
    proj = StaffProjector()
    proj.apply(A)
    assert proj.apply(void(P2, "nope", "ev-void-nope")) == []
    assert proj.intervals(ORG, "RN-1") == [A]


def test_redelivery_is_a_no_op() -> None:
    proj = StaffProjector()
    feed(proj, [A, B])
    snapshot = pickle.dumps(proj)
    assert proj.apply(B) == []
    assert proj.apply(A) == []
    assert pickle.dumps(proj) == snapshot
    # a redelivered void, and a late redelivery of an older version, change nothing either
    proj.apply(void(P2, "b1", "ev-void-b1"))
    snapshot = pickle.dumps(proj)
    assert proj.apply(void(P2, "b1", "ev-void-b1")) == []
    assert proj.apply(B) == []
    assert pickle.dumps(proj) == snapshot
    assert proj.intervals(ORG, "RN-1") == [A]


# -- determinism and snapshots ----------------------------------------------------------


def scenario() -> list[StaffInterval | StaffVoid]:
    c = iv(P3, "c1", T - 10 * MIN, T + 25 * MIN)
    return [
        A,
        B,
        c,
        iv(P2, "b1", T + 5 * MIN, B.end, event="ev-b1-v2"),
        void(P3, "c1", "ev-void-c1"),
        iv(P3, "c1", T, T + 60 * MIN, event="ev-c1-v2"),
        iv(P1, "a2", at("2025-03-31T23:50"), at("2025-04-01T00:20")),
        iv(P2, "b2", at("2025-04-01T00:05"), at("2025-04-01T00:10")),
    ]


def test_alert_ids_are_stable_across_fresh_projectors() -> None:
    first = feed(StaffProjector(), scenario())
    second = feed(StaffProjector(), scenario())
    assert first == second
    # 2 (a1|b1) + 4 (c1 with both) + 4 (b1 amended: both overlaps change) + 4 (c1 relogged)
    # + 2 (a2|b2, April in New York)
    assert len(first) == 16
    assert [a.month for a in first[-2:]] == ["2025-04", "2025-04"]
    assert len({a.alert_id for a in first}) == len(first)
    assert_no_phi(first, P1, P2, P3)


@pytest.mark.parametrize("order", ["AB", "BA"])
def test_alert_id_hashes_the_order_independent_pair_and_the_cause(order: str) -> None:
    first, second = (A, B) if order == "AB" else (B, A)
    alerts = feed(StaffProjector(), [first, second])
    key = pair_key(pair_of(B.identity, A.identity))
    assert key == pair_key(PAIR_AB)
    assert {a.alert_id for a in alerts} == {
        alert_id("staff_overlap", ORG, p, "2025-03", None, key, second.event_id) for p in (P1, P2)
    }


def test_pickled_projector_continues_identically() -> None:
    items = scenario()
    whole = StaffProjector()
    head = feed(whole, items[:4])
    restored = pickle.loads(pickle.dumps(whole))
    assert feed(restored, items[4:]) == feed(whole, items[4:])
    assert head  # the snapshot was taken with pairs alerted
    assert restored.alerted_pairs(ORG, "RN-1") == whole.alerted_pairs(ORG, "RN-1")


# -- property: the alerted pairs are exactly the overlapping cross-patient pairs --------

PATIENTS = (P1, P2, P3)
STAFF = ("RN-1", "RN-2")
ZONES = (NY, "UTC", "Asia/Kolkata")
BASE = at("2025-03-31T18:00")  # local month end falls inside the window
GRID = 300

version_st = st.one_of(
    st.none(),  # a void
    st.builds(
        lambda slot, length, staff: (BASE + slot * GRID, length, staff),
        st.integers(0, 60),
        st.one_of(st.integers(1, 24).map(lambda n: n * GRID), st.integers(1, 86400)),
        st.sampled_from(STAFF),
    ),
)
activity_st = st.tuples(
    st.sampled_from(PATIENTS),
    st.sampled_from(ZONES),
    st.lists(version_st, min_size=1, max_size=3),
)


def items_of(
    activities: list[tuple[str, str, list[tuple[int, int, str] | None]]], order: list[int]
) -> list[StaffInterval | StaffVoid]:
    """Each activity's versions in its own order, activities interleaved by ``order``."""
    nxt = [0] * len(activities)
    out: list[StaffInterval | StaffVoid] = []
    for k in order:
        patient, tz, versions = activities[k]
        v, version = nxt[k], versions[nxt[k]]
        nxt[k] += 1
        if version is None:
            out.append(StaffVoid(ORG, "RN-1", patient, f"act{k}", f"e{k}.{v}"))
        else:
            start, length, staff = version
            out.append(
                StaffInterval(
                    ORG, staff, patient, f"act{k}", f"e{k}.{v}", start, start + length, tz
                )
            )
    return out


def brute_force(items: Sequence[StaffInterval | StaffVoid]) -> dict[str, dict[Pair, int]]:
    """Per staff: every cross-patient pair of final intervals with a positive overlap."""
    final: dict[tuple[str, str, str], StaffInterval] = {}
    for item in items:
        if isinstance(item, StaffVoid):
            final.pop(item.identity, None)
        else:
            final[item.identity] = item
    out: dict[str, dict[Pair, int]] = {s: {} for s in STAFF}
    for a, b in combinations(final.values(), 2):
        sec = overlap_seconds(a, b)
        if sec > 0 and a.staff_id == b.staff_id and a.patient_id != b.patient_id:
            out[a.staff_id][pair_of(a.identity, b.identity)] = sec
    return out


def check_fold(items: list[StaffInterval | StaffVoid]) -> StaffProjector:
    """Fold ``items``, checking each step's alerts against the change in alerted pairs."""
    proj = StaffProjector()
    current: dict[tuple[str, str, str], StaffInterval] = {}
    for item in items:
        before = {s: proj.alerted_pairs(ORG, s) for s in STAFF}
        alerts = proj.apply(item)
        after = {s: proj.alerted_pairs(ORG, s) for s in STAFF}
        changed = {p: sec for s in STAFF for p, sec in after[s].items() if before[s].get(p) != sec}
        if isinstance(item, StaffVoid):
            current.pop(item.identity, None)
        else:
            current[item.identity] = item
        expected = []
        for pair, sec in changed.items():
            x, y = (current[i] for i in pair)
            assert item.identity in pair and overlap_seconds(x, y) == sec
            start = max(x.start, y.start)
            expected += [
                (x.patient_id, month_of(start, x.timezone)),
                (y.patient_id, month_of(start, y.timezone)),
            ]
        assert sorted((a.patient_id, a.month) for a in alerts) == sorted(expected)
        assert all(a.cause_event_id == item.event_id for a in alerts)
        assert_no_phi(alerts, *PATIENTS)
    return proj


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(activities=st.lists(activity_st, min_size=1, max_size=8), data=st.data())
def test_alerted_pairs_equal_brute_force_in_any_order(
    activities: list[tuple[str, str, list[tuple[int, int, str] | None]]], data: st.DataObject
) -> None:
    tokens = [k for k, (_, _, versions) in enumerate(activities) for _ in versions]
    finals = []
    for _ in range(2):
        items = items_of(activities, data.draw(st.permutations(tokens)))
        proj = check_fold(items)
        truth = brute_force(items)
        for staff in STAFF:
            assert proj.alerted_pairs(ORG, staff) == truth[staff]
            got = proj.intervals(ORG, staff)
            assert got == sorted(got, key=lambda i: (i.start, i.patient_id, i.activity_id))
        finals.append({s: proj.alerted_pairs(ORG, s) for s in STAFF})
    assert finals[0] == finals[1]


@pytest.mark.parametrize("n", [2000])
def test_many_intervals_per_staff_member_stay_consistent(n: int) -> None:
    # a busy month: back-to-back 10-minute calls across patients, every 7th one late by 5 min
    proj = StaffProjector()
    items = []
    for i in range(n):
        start = BASE + i * 600 + (300 if i % 7 == 0 else 0)
        items.append(iv(PATIENTS[i % 3], f"x{i}", start, start + 600, event=f"ev{i}"))
    alerts = feed(proj, items)
    truth = brute_force(items)["RN-1"]
    assert proj.alerted_pairs(ORG, "RN-1") == truth
    assert len(alerts) == 2 * len(truth)


def test_an_amendment_moving_an_activity_to_another_staff_member_is_not_a_redelivery() -> None:
    """The worker sends the void (old staff) and the new interval (new staff) under the
    amendment's one event id; on one partition both must apply."""
    proj = StaffProjector()
    feed(proj, [iv(PATIENTS[0], "a", BASE, BASE + 600, event="e1", staff="RN-2")])
    feed(proj, [iv(PATIENTS[1], "b", BASE, BASE + 600, event="e2", staff="RN-1")])
    moved = [
        StaffVoid(ORG, "RN-2", PATIENTS[0], "a", "e3"),
        iv(PATIENTS[0], "a", BASE, BASE + 600, event="e3", staff="RN-1"),
    ]
    alerts = feed(proj, moved)
    assert len(alerts) == 2  # one per patient of the new overlapping pair
    assert proj.alerted_pairs(ORG, "RN-1")

"""Alerts as the difference of billing state before/after each event (docs/design.md "Alerts").

The Projector steps events one at a time (``step(event) -> StepResult(outcome, alerts,
changed)``); alerts must be reproducible (same log → same alert ids), name their
patient-month, code and cause, and never carry the patient identifier in their text.
Rule ids refer to docs/rules.md.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from typing import Any

import pytest

from projections.alerts import approaching
from projections.claims import claim_line_id
from projections.engine import Projector
from schemas.views import Alert
from support.builders import Log

P = "P-000123"  # distinctive, so a leak into alert text cannot pass by accident
MARCH = "2025-03"


def ccm_log(consent: bool = True) -> Log:
    log = Log()
    log.practice()
    if consent:
        log.documented(P)
    else:
        log.conditions(P)
        log.care_plan(P)
        log.enrollment(P)
    return log


def run(log: Log) -> list[tuple[str, list[Alert]]]:
    """Step every event through a fresh Projector: (event_id, alerts) per event."""
    proj = Projector()
    return [(ev.event_id, proj.step(ev).alerts) for ev in log.events()]


def alerts_by_event(log: Log) -> dict[str, list[tuple[str, str | None, str]]]:
    """event_id -> [(kind, code, month)] for events that raised alerts."""
    return {eid: [(a.kind, a.code, a.month) for a in alerts] for eid, alerts in run(log) if alerts}


def all_alerts(log: Log) -> list[Alert]:
    return [a for _, alerts in run(log) for a in alerts]


# --- scenarios (also used for the cross-cutting checks at the bottom) -------------------------


def threshold_log() -> Log:
    log = ccm_log()
    log.activity(P, "a1", "2025-03-03T10:00:00-05:00", 15)
    log.activity(P, "a2", "2025-03-05T10:00:00-05:00", 10)  # 25 min: 99490
    log.void(P, "a2")  # back to 15 min
    return log


def cap_log() -> Log:
    log = ccm_log()
    log.activity(P, "a1", "2025-03-03T10:00:00-05:00", 70)  # 99490 + 99439 x2
    log.activity(P, "a2", "2025-03-05T10:00:00-05:00", 15)  # 85 min: a third unit is capped
    log.activity(P, "a3", "2025-03-06T10:00:00-05:00", 15)  # 100 min: still capped
    return log


def gap_log() -> Log:
    log = ccm_log(consent=False)
    log.activity(P, "a1", "2025-03-03T10:00:00-05:00", 25)
    log.activity(P, "a2", "2025-03-05T10:00:00-05:00", 5)  # unrelated to the gap
    log.visit(P)  # unrelated documentation
    log.consent(P)  # closes the gap
    return log


def conflict_log() -> Log:
    log = ccm_log()  # enrollment: ccm with DR-1
    log.care_plan(P, "pcm")
    log.consent(P, "pcm")
    log.activity(P, "a1", "2025-03-03T10:00:00-05:00", 25)
    log.activity(P, "p1", "2025-03-10T10:00:00-04:00", 35, program="pcm", staff="RN-9")
    return log


def pairs_log() -> Log:
    log = ccm_log()
    log.consent(P, "bhi")
    log.activity(P, "a1", "2025-03-03T10:00:00-05:00", 20)  # 10:00-10:20
    log.activity(P, "a2", "2025-03-03T10:10:00-05:00", 20)  # 10:10-10:30: overlap with a1
    log.activity(P, "b1", "2025-03-03T10:25:00-05:00", 30, program="bhi")  # 5 min of a2's
    return log


def late_log() -> Log:
    log = ccm_log()
    log.activity(P, "a1", "2025-03-03T10:00:00-05:00", 25)
    log.close(MARCH)
    log.activity(P, "a2", "2025-03-31T10:00:00-04:00", 10)  # lands in closed March
    log.activity(P, "a3", "2025-04-01T10:00:00-04:00", 10)  # April is open
    log.void(P, "a1")  # a void in closed March
    return log


SCENARIOS: dict[str, Callable[[], Log]] = {
    "threshold": threshold_log,
    "cap": cap_log,
    "gap": gap_log,
    "conflict": conflict_log,
    "pairs": pairs_log,
    "late": late_log,
}


# --- kinds ------------------------------------------------------------------------------------


def test_threshold_crossed_when_99490_is_met() -> None:
    """DESIGN "Alerts": ``threshold_crossed`` names the patient-month, code and cause (G3:
    99490 at 20 minutes)."""
    log = threshold_log()
    steps = run(log)
    # nothing before a2; at a2 exactly one alert
    assert [a for eid, alerts in steps[:-2] for a in alerts] == []
    eid, alerts = steps[-2]
    assert eid == log.raw[-2]["event_id"]
    [alert] = alerts
    assert (alert.kind, alert.code, alert.month) == ("threshold_crossed", "99490", MARCH)
    assert (alert.org_id, alert.patient_id) == ("o1", P)
    assert alert.cause_event_id == eid
    assert alert.detail == "99490 now billable: 1 unit(s)"


def test_threshold_revoked_after_void() -> None:
    """DESIGN "Alerts": ``threshold_revoked`` when a void takes time below 20 minutes."""
    log = threshold_log()
    eid, alerts = run(log)[-1]
    [alert] = alerts
    assert (alert.kind, alert.code, alert.month) == ("threshold_revoked", "99490", MARCH)
    assert alert.cause_event_id == eid == log.raw[-1]["event_id"]
    assert alert.detail == "99490 fell from 1 to 0 unit(s)"


def test_alert_ids_are_stable_across_replays() -> None:
    """DESIGN "Alerts": ``alert_id`` is a stable hash of the cause; replaying the same log in
    a new Projector yields the same alerts with the same ids."""
    for make in SCENARIOS.values():
        first = [a.model_dump() for a in all_alerts(make())]
        second = [a.model_dump() for a in all_alerts(make())]
        assert first and first == second
        ids = [a["alert_id"] for a in first]
        assert len(set(ids)) == len(ids)  # distinct causes, distinct ids


def test_cap_reached_when_99439_cap_exceeded() -> None:
    """docs/rules.md §3.1, §6.2 step 7(c): 99439 is capped at 2 units; ``cap_reached`` once when
    the minutes would earn a third, not again on more minutes."""
    log = cap_log()
    got = alerts_by_event(log)
    ids = [e["event_id"] for e in log.raw]
    assert got == {
        ids[-3]: [
            ("threshold_crossed", "99439", MARCH),
            ("threshold_crossed", "99490", MARCH),
        ],
        ids[-2]: [("cap_reached", "99439", MARCH)],
    }
    proj = log.projector()
    [b] = proj.billing()
    assert b.units() == {"99490": 1, "99439": 2}
    assert "cap_reached:99439" in b.flags


def test_documentation_gap_when_time_met_but_consent_missing() -> None:
    """DESIGN "Alerts", RULES G10: ``documentation_gap`` when time is met but billing is
    blocked; no second identical alert on later unrelated events; consent then crosses."""
    log = gap_log()
    ids = [e["event_id"] for e in log.raw]
    steps = dict(run(log))
    [gap] = steps[ids[-4]]
    assert (gap.kind, gap.code, gap.month) == ("documentation_gap", "99490", MARCH)
    assert gap.detail == "99490: time met, billing blocked by missing_consent"
    assert steps[ids[-3]] == []  # 5 more minutes: same gap, no new alert
    assert steps[ids[-2]] == []  # an unrelated visit
    [crossed] = steps[ids[-1]]  # consent recorded: now billable
    assert (crossed.kind, crossed.code) == ("threshold_crossed", "99490")


def test_exclusive_conflict_alert() -> None:
    """docs/rules.md §6.2 step 9: same-practitioner CCM + PCM → ``exclusive_conflict`` alert; the
    program of record (CCM) keeps billing, so no threshold_crossed for 99426."""
    log = conflict_log()
    eid, alerts = run(log)[-1]
    [alert] = alerts
    assert (alert.kind, alert.code, alert.month) == ("exclusive_conflict", "99426", MARCH)
    assert alert.detail == "codes 99426+99490 cannot both be billed this month"
    assert alert.cause_event_id == eid


def test_overlap_and_double_count_alerts_name_both_activities() -> None:
    """RULES G9, §6.2 step 4: ``overlap`` and ``double_count`` alerts name the kept and the
    cut activity."""
    log = pairs_log()
    ids = [e["event_id"] for e in log.raw]
    steps = dict(run(log))
    [overlap] = steps[ids[-2]]
    assert (overlap.kind, overlap.code, overlap.month) == ("overlap", None, MARCH)
    assert "a1" in overlap.detail and "a2" in overlap.detail
    assert "600 s" in overlap.detail
    double = [a for a in steps[ids[-1]] if a.kind == "double_count"]
    assert len(double) == 1
    assert "a2" in double[0].detail and "b1" in double[0].detail
    assert "double_count:ccm+bhi" in double[0].detail
    assert "300 s" in double[0].detail
    # b1 still has 25 BHI minutes: 99484 crosses in the same step
    assert sorted(a.kind for a in steps[ids[-1]]) == ["double_count", "threshold_crossed"]


def test_late_activity_in_closed_month() -> None:
    """docs/rules.md §6.3 ``late_activity``: an activity or void landing in a month closed with
    ``month.closed``; nothing for an open month. The alert names the claim line billed at
    close that it would change (tests/test_close.py has more)."""
    log = late_log()
    ids = [e["event_id"] for e in log.raw]
    got = alerts_by_event(log)
    assert got == {
        ids[-5]: [("threshold_crossed", "99490", MARCH)],
        ids[-3]: [("late_activity", "99490", MARCH)],
        ids[-1]: [("late_activity", "99490", MARCH), ("threshold_revoked", "99490", MARCH)],
    }
    late = [a for a in all_alerts(log) if a.kind == "late_activity"]
    line_id = claim_line_id("o1", P, MARCH, "99490", "DR-1", close_id=ids[-4])  # keyed by the close
    line = f"99490 by DR-1 (claim line {line_id})"
    assert [a.detail for a in late] == [
        f"activity a2 lands in closed month 2025-03; affects {line}: x1 at close, x1 now",
        f"void a1 lands in closed month 2025-03; affects {line}: x1 at close, x0 now",
    ]
    assert [a.cause_event_id for a in late] == [ids[-3], ids[-1]]


# --- threshold_approaching (a pure function of state and a date) -------------------------------


def _month_billing(minutes: float):  # -> MonthBilling
    log = ccm_log()
    log.activity(P, "a1", "2025-03-03T10:00:00-05:00", minutes)
    [b] = log.billing()
    return b


def test_threshold_approaching_within_reach_late_in_month() -> None:
    """DESIGN "Alerts", rule-book policy (7 days left, 10 minutes short): 15 minutes of CCM
    on March 27 (4 days left, 5 minutes short of 99490) is approaching."""
    [alert] = approaching(_month_billing(15), date(2025, 3, 27))
    assert (alert.kind, alert.code, alert.month, alert.patient_id) == (
        "threshold_approaching",
        "99490",
        MARCH,
        P,
    )
    assert alert.detail == "99490 needs 5 more minute(s) with 4 day(s) left"
    # a pure function: the same input gives the same alert
    assert approaching(_month_billing(15), date(2025, 3, 27)) == [alert]


@pytest.mark.parametrize(
    ("minutes", "today", "expected"),
    [
        (15, "2025-03-10", []),  # 21 days left
        (15, "2025-03-23", []),  # 8 days left
        (15, "2025-03-24", ["99490"]),  # 7 days left: the boundary
        (15, "2025-03-31", ["99490"]),  # the last day
        (15, "2025-04-01", []),  # the month is over
        (5, "2025-03-27", []),  # 15 minutes short
        (10, "2025-03-27", ["99490"]),  # exactly 10 short
        (35, "2025-03-27", ["99439"]),  # the next add-on threshold (40)
    ],
)
def test_threshold_approaching_bounds(minutes: float, today: str, expected: list[str]) -> None:
    """DESIGN "Alerts": only within ``approaching_within_minutes`` with at most
    ``approaching_days_left`` days left in the month."""
    got = approaching(_month_billing(minutes), date.fromisoformat(today))
    assert [a.code for a in got] == expected


# --- cross-cutting ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_alert_texts_carry_no_patient_id(name: str) -> None:
    """schemas.views.Alert.detail: "never contains patient identifiers" (PHI)."""
    log = SCENARIOS[name]()
    alerts = all_alerts(log)
    assert alerts
    for alert in alerts:
        assert alert.patient_id == P
        assert P not in alert.detail
    for minutes in (15, 35):
        for alert in approaching(_month_billing(minutes), date(2025, 3, 27)):
            assert P not in alert.detail


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_projector_views_equal_replay(name: str) -> None:
    """DESIGN "One semantics, several engines": the Projector's final views equal replay's."""
    log = SCENARIOS[name]()
    stepped = {(b.patient_id, b.month): b.view() for b in log.projector().billing()}
    assert stepped == log.replay()
    assert stepped  # every scenario leaves something to compare


def _rpm_patient(enrolled_on: str | None) -> Log:
    log = Log()
    log.practice()
    log.consent(P, "rpm")
    log.visit(P)
    if enrolled_on is not None:
        log.enrollment(P, "rpm", on=enrolled_on)
    return log


def _stepped(log: Log) -> dict[tuple[str, str], dict[str, Any]]:
    return {(b.patient_id, b.month): b.view() for b in log.projector().billing()}


def test_projector_equals_replay_when_an_earlier_first_reading_shifts_periods() -> None:
    """§6.1: without an enrollment the periods start at the first reading. A reading older
    than all others, arriving last, shifts every later period (here 99454 moves to April)."""
    log = _rpm_patient(None)
    for day in range(1, 21):
        log.reading(P, f"2025-03-{day:02d}T12:00:00Z")
    log.reading(P, "2025-02-01T12:00:00Z")  # periods now Feb 1-Mar 2, Mar 3-Apr 1
    replayed = log.replay()
    assert replayed[(P, "2025-04")]["billable"] == [{"code": "99454", "units": 1}]
    assert _stepped(log) == replayed


def test_projector_equals_replay_when_a_period_ends_two_months_later() -> None:
    """§6.1, G1: enrolled Jan 1, the second period is Jan 31 - Mar 1 and is reported in March;
    its 16th day is a late January 31 reading (not the patient's earliest)."""
    log = _rpm_patient("2025-01-01")
    log.reading(P, "2025-01-01T12:00:00Z")
    for day in range(1, 16):
        log.reading(P, f"2025-02-{day:02d}T12:00:00Z")
    log.reading(P, "2025-01-31T12:00:00Z")
    replayed = log.replay()
    assert replayed[(P, "2025-03")]["billable"] == [{"code": "99454", "units": 1}]
    assert _stepped(log) == replayed


def test_projector_views_equal_replay_on_a_mixed_log() -> None:
    """DESIGN: one semantics over a log mixing patients, programs, amendments, voids, device
    readings, a late time-zone change and a stay recorded after the activity."""
    log = Log()
    for pid in (P, "P-2"):
        log.documented(pid)
    log.consent(P, "bhi")
    log.consent(P, "rpm")
    log.enrollment(P, "rpm", on="2025-03-01")
    log.activity(P, "a1", "2025-03-31T23:50:00-04:00", 30)
    log.activity("P-2", "a1", "2025-03-10T10:00:00-04:00", 30, staff="RN-2")
    log.activity(P, "b1", "2025-03-12T10:00:00-04:00", 25, program="bhi", staff="BH-1")
    log.activity(P, "r1", "2025-03-13T10:00:00-04:00", 25, program="rpm", interactive=True)
    for day in range(1, 20):
        log.reading(P, f"2025-03-{day:02d}T12:00:00Z")
    log.activity("P-2", "a1", "2025-04-10T10:00:00-04:00", 30, staff="RN-2")  # moves month
    log.void(P, "b1")
    log.stay(P, "2025-03-31", "2025-04-01")
    log.practice(timezone="UTC")
    stepped = {(b.patient_id, b.month): b.view() for b in log.projector().billing()}
    assert stepped == log.replay()
    assert sorted(stepped) == [(P, "2025-03"), (P, "2025-04"), ("P-2", "2025-04")]

"""The worklist's groups, pace and days left, and the plain words the pages use."""

from __future__ import annotations

import typing
from datetime import UTC, datetime
from typing import Any

import pytest

from schemas.views import AlertKind
from streams.http.state_cache import BillingEntry
from streams.web import words
from streams.web.worklist import build, month_clock

TZ = "America/Chicago"


def entry(
    pid: str, view: dict[str, Any], progress: list[dict[str, Any]] | None = None
) -> BillingEntry:
    base = {
        "minutes": {"ccm": 10.0},
        "billable": [],
        "blocked": [],
        "flags": [],
        "estimated_payment": 0.0,
    }
    return BillingEntry("o1", pid, "2025-03", b"", {**base, **view}, progress or [], TZ, ("DR-1",))


def track(have_min: float, need_min: float = 20, code: str = "99490") -> dict[str, Any]:
    return {
        "family": "ccm",
        "practitioner_id": "DR-1",
        "code": code,
        "have_s": int(have_min * 60),
        "need_s": int(need_min * 60),
    }


@pytest.mark.parametrize(
    ("now", "gone", "days_left"),
    [
        (datetime(2025, 3, 1, 6, 0, tzinfo=UTC), 0.0, 31),  # 00:00 in Chicago: all 31 days
        (datetime(2025, 3, 31, 12, 0, tzinfo=UTC), None, 1),  # the last day counts
        (datetime(2025, 4, 1, 4, 59, tzinfo=UTC), None, 1),  # 23:59 on the 31st in Chicago
        (datetime(2025, 4, 1, 5, 0, tzinfo=UTC), None, None),  # April there: over
        (datetime(2025, 2, 28, 12, 0, tzinfo=UTC), None, None),  # not begun
        (datetime(2025, 3, 9, 7, 30, tzinfo=UTC), None, 23),  # 01:30 on the 9th (DST day)
    ],
)
def test_days_left_count_today_in_the_practices_zone(
    now: datetime, gone: float | None, days_left: int | None
) -> None:
    fraction, left = month_clock("2025-03", TZ, now)
    assert left == days_left
    if gone is not None:
        assert fraction == pytest.approx(gone, abs=1e-6)


def test_days_left_count_calendar_days_when_the_clock_goes_back() -> None:
    # 2026-11-01 00:30 in Chicago (CDT): 30 days of November are left, today included
    assert month_clock("2026-11", TZ, datetime(2026, 11, 1, 5, 30, tzinfo=UTC))[1] == 30


def test_pace_says_whether_the_minutes_so_far_reach_the_threshold_by_the_months_end() -> None:
    mid = datetime(2025, 3, 16, 17, 0, tzinfo=UTC)  # about half of March gone (Chicago, CDT)
    work = build(
        [entry("FAST", {}, [track(11)]), entry("SLOW", {}, [track(9)])], "2025-03", mid, tz=TZ
    )
    pace = {r.patient_id: r.next.pace_gets_there for r in work.groups["near"] if r.next}
    assert pace == {"FAST": True, "SLOW": False}
    assert [r.patient_id for r in work.groups["near"]] == ["FAST", "SLOW"]  # nearest first
    over = build(
        [entry("SLOW", {}, [track(9)])], "2025-03", datetime(2025, 5, 1, tzinfo=UTC), tz=TZ
    )
    assert over.days_left is None and over.groups["near"][0].next.pace_gets_there is None  # type: ignore[union-attr]


def test_each_patient_month_is_in_the_first_group_that_matches() -> None:
    rows = [
        entry(
            "CONFLICT",
            {"billable": [{"code": "99490", "units": 1}], "flags": ["multiple_practitioners:ccm"]},
        ),
        entry(
            "BLOCKED",
            {
                "billable": [{"code": "99490", "units": 1}],
                "blocked": [{"code": "99439", "units": 1, "reasons": ["missing_care_plan"]}],
            },
        ),
        entry("READY", {"billable": [{"code": "99490", "units": 1}]}, [track(25, 40, "99439")]),
        entry("NEAR", {}, [track(5)]),
        entry("OTHER", {"minutes": {}}),
    ]
    work = build(
        rows, "2025-03", datetime(2025, 3, 10, tzinfo=UTC), tz=TZ, staff_overlaps={"OTHER"}
    )
    got = {name: [r.patient_id for r in rs] for name, rs in work.groups.items()}
    assert got == {
        "ready": ["READY"],
        "near": ["NEAR"],
        "blocked": ["BLOCKED"],
        "conflicts": ["CONFLICT", "OTHER"],  # a staff overlap alert is a conflict too
        "other": [],
    }
    blocked = work.groups["blocked"][0].blocked[0]["reasons"][0]
    assert "care plan" in blocked.text and "care_plan.documented" in blocked.fix


def test_filters_keep_the_counts_of_the_whole_month() -> None:
    rows = [
        entry("A-1", {"billable": [{"code": "99490", "units": 1}]}),
        entry("B-2", {}, [track(5)]),
    ]
    work = build(rows, "2025-03", datetime(2025, 3, 10, tzinfo=UTC), tz=TZ, query="b-")
    assert (work.total, work.shown, [r.patient_id for r in work.groups["near"]]) == (2, 1, ["B-2"])
    assert build(rows, "2025-03", datetime(2025, 3, 10, tzinfo=UTC), program="rpm").shown == 0


def test_every_alert_kind_and_eligibility_reason_has_plain_words() -> None:
    assert set(words.ALERT_KINDS) == set(typing.get_args(AlertKind))
    eligibility = [
        "missing_consent",
        "consent_after_activity",
        "missing_care_plan",
        "insufficient_chronic_conditions",
        "complex_criteria_not_met",
        "rpm_insufficient_days",
        "rpm_no_interactive_communication",
        "rpm_not_established_patient",
        "rtm_not_established_patient",
        "missing_initiating_visit",
    ]  # docs/rules.md §6.3, eligibility
    assert all(words.reason(r).fix for r in eligibility)
    assert words.flag("exclusive_conflict:99424+99426") == (
        "Codes that cannot be billed together: 99424 and 99426"
    )
    assert words.flag("rules_provisional:2027").startswith("Priced with the provisional 2027")

"""Edge cases found in review, each pinned to the rule it protects.

Rule ids refer to docs/rules.md and docs/design.md.

Every scenario runs on each engine (the fold, the Projector stepped event by event, the
archive replay: the ``engine`` fixture, tests/unit/conftest.py); the wire-contract tests,
which never reach an engine, are marked ``single_engine`` and run once.
"""

from __future__ import annotations

from datetime import date

import pytest

from projections.alerts import approaching
from schemas.events import EventRejected
from support.builders import Log

pytestmark = pytest.mark.usefixtures("engine")  # every engine: tests/unit/conftest.py

P = "P-1"


def _daily_readings(log: Log, first: date, last: date, program: str = "rpm") -> None:
    for ordinal in range(first.toordinal(), last.toordinal() + 1):
        day = date.fromordinal(ordinal).isoformat()
        log.reading(P, f"{day}T08:00:00-05:00", program=program)


def test_rpm_and_rtm_without_a_program_of_record_are_both_held() -> None:
    """§4, §6.2 step 11: RPM management and RTM device codes in one month with no
    enrollment in either: neither is billed, both are blocked with the conflict."""
    log = Log()
    log.practice()
    log.visit(P)
    for program in ("rpm", "rtm"):
        log.consent(P, program)
    _daily_readings(log, date(2025, 3, 1), date(2025, 3, 20), program="rtm")  # ends Mar 30
    log.activity(P, "m1", "2025-03-10T10:00:00-04:00", 25, program="rpm", interactive=True)
    view = log.view(P, "2025-03")
    assert view["billable"] == []
    flag = "exclusive_conflict:98977+99457"
    assert view["blocked"] == [
        {"code": c, "units": 1, "reasons": [flag]} for c in ("98975", "98977", "99457")
    ]
    assert flag in view["flags"]


def test_rpm_management_against_rtm_device_keeps_the_program_of_record() -> None:
    """§4, §6.2 step 11: 99457 (RPM) and 98977 (RTM device) in one month: keep the family
    the patient is enrolled in; the other is blocked with exclusive_conflict."""
    log = Log()
    log.practice()
    log.visit(P)
    for program in ("rpm", "rtm"):
        log.consent(P, program)
    log.enrollment(P, "rtm", on="2025-02-01")
    _daily_readings(log, date(2025, 2, 1), date(2025, 2, 20), program="rtm")  # ends Mar 2
    log.activity(P, "m1", "2025-03-10T10:00:00-04:00", 25, program="rpm", interactive=True)
    view = log.view(P, "2025-03")
    assert view["billable"] == [{"code": "98975", "units": 1}, {"code": "98977", "units": 1}]
    assert view["blocked"] == [
        {"code": "99457", "units": 1, "reasons": ["exclusive_conflict:98977+99457"]}
    ]
    assert "exclusive_conflict:98977+99457" in view["flags"]


def test_device_periods_start_at_enrollment_and_never_overlap() -> None:
    """§6.1, §3.3, D-12: readings before the enrollment date belong to no period; one
    99453 + 99454 for the 30-day period that starts at the enrollment (2026 rules)."""
    log = Log()
    log.practice()
    log.visit(P)
    log.consent(P, "rpm")
    log.enrollment(P, "rpm", on="2026-03-20")
    _daily_readings(log, date(2026, 3, 1), date(2026, 4, 18))
    views = log.replay()
    assert views[(P, "2026-03")]["billable"] == []
    assert views[(P, "2026-04")]["billable"] == [
        {"code": "99453", "units": 1},
        {"code": "99454", "units": 1},
    ]


def test_re_enrollment_inside_a_period_that_earned_nothing_restarts_the_grid() -> None:
    """C-1, D-12: a new enrollment starts a new episode and a new 30-day grid at its own
    date when the running period has earned no device code by then (Mar 1-14: 14 days,
    below the 2025 16-day threshold); that period is cut short and bills nothing."""
    log = Log()
    log.practice()
    log.visit(P)
    log.consent(P, "rpm")
    log.enrollment(P, "rpm", on="2025-03-01")
    log.enrollment(P, "rpm", on="2025-03-15")
    _daily_readings(log, date(2025, 3, 1), date(2025, 4, 29))
    views = log.replay()
    # Mar 1 - Mar 14 (cut short), Mar 15 - Apr 13 (new episode), Apr 14 - May 13
    assert views[(P, "2025-03")]["billable"] == []
    assert views[(P, "2025-04")]["billable"] == [
        {"code": "99453", "units": 1},
        {"code": "99454", "units": 1},
    ]
    assert views[(P, "2025-05")]["billable"] == [{"code": "99454", "units": 1}]


def test_unattributed_device_codes_respect_a_revoked_consent() -> None:
    """G10: a consent revoked in January no longer covers May, even with no practitioner
    of record to attribute the device codes to."""
    log = Log()
    log.practice()
    log.visit(P)
    log.consent(P, "rpm", on="2025-01-02")
    log.consent(P, "rpm", on="2025-01-10", revoked=True)
    _daily_readings(log, date(2025, 5, 1), date(2025, 5, 20))
    view = log.view(P, "2025-05")
    assert view["billable"] == []
    assert {b["code"] for b in view["blocked"]} == {"99453", "99454"}
    assert all(b["reasons"] == ["missing_consent"] for b in view["blocked"])


def test_apcm_enrollment_bars_ccm_even_when_apcm_itself_is_blocked() -> None:
    """§6.2 step 12: an APCM enrollment naming DR-1 makes CCM by DR-1 not billable that
    month, whatever happens to the APCM code (here blocked: no APCM consent)."""
    log = Log()
    log.practice()
    log.documented(P)
    log.enrollment(P, "apcm", on="2025-03-01")
    log.activity(P, "a1", "2025-03-10T10:00:00-04:00", 25)
    view = log.view(P, "2025-03")
    assert view["billable"] == []
    assert {"code": "G0557", "units": 1, "reasons": ["missing_consent"]} in view["blocked"]
    assert {"code": "99490", "units": 1, "reasons": ["exclusive_conflict:G0557+99490"]} in view[
        "blocked"
    ]


@pytest.mark.parametrize("tcm_first", [True, False])
def test_tcm_minutes_are_never_ccm_minutes_whatever_the_log_order(tcm_first: bool) -> None:
    """§6.2 step 3, G6: one person's TCM time holds its minutes against CCM in either
    log order (the earliest-received rule applies only between the other programs)."""
    log = Log()
    log.practice()
    log.documented(P)
    entries = [("t1", "tcm"), ("c1", "ccm")] if tcm_first else [("c1", "ccm"), ("t1", "tcm")]
    for aid, program in entries:
        log.activity(P, aid, "2025-03-10T10:00:00-04:00", 25, program=program)
    view = log.view(P, "2025-03")
    assert view["minutes"] == {"ccm": 0.0, "tcm": 25.0}
    assert view["billable"] == []
    assert "double_count:tcm+ccm" in view["flags"]


@pytest.mark.parametrize("visit_first", [True, False])
def test_face_to_face_time_holds_the_persons_minutes(visit_first: bool) -> None:
    """G7, G9: minutes inside one person's (excluded) face-to-face visit cannot count for
    a care-management entry of the same person at the same time, in either log order."""
    log = Log()
    log.practice()
    log.documented(P)
    entries = [("f1", True), ("c1", False)] if visit_first else [("c1", False), ("f1", True)]
    for aid, f2f in entries:
        log.activity(P, aid, "2025-03-10T10:00:00-04:00", 25 if f2f else 24, face_to_face=f2f)
    view = log.view(P, "2025-03")
    assert view["minutes"] == {"ccm": 0.0}
    assert view["billable"] == []
    assert {"face_to_face_excluded", "overlap"} <= set(view["flags"])


@pytest.mark.parametrize(
    ("started", "kwargs"),
    [
        ("2025-03-10T10:00:00.9-04:00", {"ended_at": "2025-03-10T10:20:00.1-04:00"}),
        ("2025-03-10T10:00:00-04:00", {"minutes": 19.992}),
    ],
    ids=["sub-second ends", "fractional minutes"],
)
def test_thresholds_need_the_full_time_to_the_second(started: str, kwargs: dict) -> None:
    """G3: a 20-minute threshold needs 1200 s; 1199.2 s is not rounded up to it."""
    log = Log()
    log.practice()
    log.documented(P)
    log.activity(P, "a1", started, **kwargs)
    view = log.view(P, "2025-03")
    assert view["billable"] == []
    assert view["minutes"]["ccm"] < 20


@pytest.mark.single_engine
def test_sentinel_dates_are_rejected_with_the_field_named() -> None:
    """Wire contract: a stay 'discharged' on 9999-12-31 is refused, not a crash later."""
    log = Log()
    log.stay(P, "2025-01-01", "9999-12-31")
    with pytest.raises(
        EventRejected,
        match=r"data\.discharged_on: Input should be less than or equal to 2199-12-31",
    ):
        log.events()


@pytest.mark.single_engine
def test_u_chapter_icd10_codes_are_accepted() -> None:
    """U09.9 (post-COVID condition) is a valid chronic ICD-10-CM code."""
    log = Log()
    log.conditions(P, ["U09.9", "I10"])
    assert len(log.events()) == 1


def test_approaching_names_the_physician_and_complex_base_codes() -> None:
    """threshold_approaching can name 99491 (25 personal minutes) and 99487 (55 pooled
    minutes in a complex month), not only the track that is currently billed."""
    log = Log()
    log.practice()
    log.documented(P, complexity="high", plan_on="2025-03-02")
    log.activity(P, "p1", "2025-03-03T10:00:00-05:00", 25, staff="DR-1", role="physician")
    log.activity(P, "s1", "2025-03-04T10:00:00-05:00", 30)
    (billing,) = [b for b in log.billing() if b.month == "2025-03"]
    codes = {a.code for a in approaching(billing, date(2025, 3, 27))}
    assert {"99491", "99487"} <= codes


# --- documentation edges found by mutation testing ------------------------------------------


def _ccm_minutes(log: Log, minutes: float = 25, month: str = "2025-03") -> None:
    log.activity(P, f"a-{month}", f"{month}-10T10:00:00-04:00", minutes)


def test_revocation_on_the_first_still_covers_that_month() -> None:
    """G10: a revocation takes effect at the end of its calendar month, even when it is
    dated the 1st; the next month has no consent."""
    log = Log()
    log.practice()
    log.documented(P)
    log.consent(P, on="2025-03-01", revoked=True)
    _ccm_minutes(log, month="2025-03")
    _ccm_minutes(log, month="2025-04")
    views = log.replay()
    assert views[(P, "2025-03")]["billable"] == [{"code": "99490", "units": 1}]
    assert views[(P, "2025-04")]["flags"] == ["missing_consent"]


def test_repeated_condition_codes_count_once() -> None:
    """G13: CCM needs two or more distinct chronic conditions."""
    log = Log()
    log.practice()
    log.conditions(P, ["E11.9", "E11.9"])
    log.consent(P)
    log.care_plan(P)
    _ccm_minutes(log)
    view = log.view(P, "2025-03")
    assert view["billable"] == []
    assert view["blocked"] == [
        {"code": "99490", "units": 1, "reasons": ["insufficient_chronic_conditions"]}
    ]


def test_a_care_plan_for_another_program_does_not_satisfy_ccm() -> None:
    """G12: CCM needs a CCM care plan; a PCM or BHI plan does not count."""
    log = Log()
    log.practice()
    log.conditions(P)
    log.consent(P)
    log.care_plan(P, program="pcm")
    _ccm_minutes(log)
    assert log.view(P, "2025-03")["flags"] == ["missing_care_plan"]


@pytest.mark.parametrize(
    ("visit_on", "established"),
    [
        ("2025-04-02", False),  # after the month: not yet established in March
        ("2022-03-31", True),  # exactly three calendar years before the month's end
        ("2022-03-30", False),
    ],
)
def test_established_patient_window_is_three_calendar_years(
    visit_on: str, established: bool
) -> None:
    """G11 (RPM established patient), policy established_patient_years = 3 calendar years
    up to the month's end (a Feb 29 inside the window does not shorten it)."""
    log = Log()
    log.practice()
    log.visit(P, on=visit_on)
    log.consent(P, "rpm")
    log.activity(P, "m1", "2025-03-10T10:00:00-04:00", 25, program="rpm", interactive=True)
    view = log.view(P, "2025-03")
    if established:
        assert view["billable"] == [{"code": "99457", "units": 1}]
    else:
        assert "rpm_not_established_patient" in view["flags"]


def test_same_day_enrollments_resolve_to_the_later_logged() -> None:
    """§6.2 step 8: of two enrollments on the same day, the later in the log is of record."""
    log = Log()
    log.practice()
    log.conditions(P)
    log.care_plan(P)
    for dr in ("DR-1", "DR-2"):
        log.consent(P, practitioner=dr)
    log.enrollment(P, on="2025-03-01", practitioner="DR-1")
    log.enrollment(P, on="2025-03-01", practitioner="DR-2")
    log.activity(P, "a1", "2025-03-10T10:00:00-04:00", 25, practitioner="DR-1", staff="RN-1")
    log.activity(P, "a2", "2025-03-11T10:00:00-04:00", 45, practitioner="DR-2", staff="RN-2")
    (billing,) = [b for b in log.billing() if b.month == "2025-03"]
    assert {(ln.code, ln.practitioner_id) for ln in billing.billable} == {
        ("99490", "DR-2"),
        ("99439", "DR-2"),
    }


def test_conditions_recorded_at_the_next_months_midnight_do_not_count() -> None:
    """§6.1: the latest list recorded before the month's end (local midnight) applies."""
    log = Log()
    log.practice()
    log.conditions(P, ["E11.9"], recorded_at="2025-02-01T00:00:00Z")
    log.conditions(P, ["E11.9", "I10"], recorded_at="2025-04-01T04:00:00Z")  # 00:00 EDT
    log.consent(P)
    log.care_plan(P)
    _ccm_minutes(log)
    assert "insufficient_chronic_conditions" in log.view(P, "2025-03")["flags"]


def test_2026_fee_uses_the_2026_conversion_factor() -> None:
    """§5: 2026 payment = RVU x CF 33.4009, with the 2026 RVU of RVU26A (S27): 1.98 for
    99490, not 2025's 1.87 ($62.46)."""
    log = Log()
    log.practice()
    log.documented(P)
    log.activity(P, "a1", "2026-03-10T10:00:00-04:00", 25)
    view = log.view(P, "2026-03")
    assert view["estimated_payment"] == 66.13  # 1.98 x 33.4009
    assert view["payment_provisional"] is False

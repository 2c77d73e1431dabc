"""docs/rules.md §6.2, step by step: one test (or parametrized group) per evaluation step.

Section and rule ids (§6.2 step N, G1, G9, D-7, ...) refer to docs/rules.md.
Every scenario is built with :class:`support.builders.Log` and checked on the public view
(``caretally replay`` line): minutes per program, billable and blocked codes with units
and reasons, and flags named exactly as docs/rules.md §6.3.

Every scenario runs on each engine (the fold, the Projector stepped event by event, the
archive replay: the ``engine`` fixture, tests/unit/conftest.py). The few tests about one
engine's internals (the ledger's outcomes, Projector steps) are marked ``single_engine``
and run once.
"""

from __future__ import annotations

import copy
from datetime import date, datetime, timedelta
from typing import Any

import orjson
import pytest

from projections.engine import Projector, replay
from projections.ledger import Ledger, Status
from schemas.events import parse_event
from support.builders import Log

pytestmark = pytest.mark.usefixtures("engine")  # every engine: tests/unit/conftest.py

P = "P-1"
MARCH = (P, "2025-03")
APRIL = (P, "2025-04")


def ccm_log(tz: str = "America/New_York", facility_type: str = "office") -> Log:
    """A practice and a CCM patient whose every gate passes (consent since 2025-01-01)."""
    log = Log()
    log.practice(timezone=tz, facility_type=facility_type)
    log.documented(P)
    return log


def billable(view: dict[str, Any]) -> dict[str, int]:
    return {b["code"]: b["units"] for b in view["billable"]}


# --- step 1: de-duplicate ---------------------------------------------------------------


def test_step1_same_event_id_same_body_is_a_noop() -> None:
    """§6.2 step 1 / DESIGN wire contract: the same event_id again is a no-op, not a flag."""
    log = ccm_log()
    log.activity(P, "a1", "2025-03-03T10:00:00-05:00", 25)
    baseline = log.view(*MARCH)
    log.raw.append(copy.deepcopy(log.raw[-1]))  # a redelivery in the log itself
    view = log.view(*MARCH)
    assert view == baseline
    assert view["minutes"] == {"ccm": 25.0}
    assert view["billable"] == [{"code": "99490", "units": 1}]
    assert "duplicate_event" not in view["flags"]


@pytest.mark.single_engine
def test_step1_the_ledger_folds_a_redelivery_as_nothing() -> None:
    """§6.2 step 1: the ledger's outcome for the same event_id and body is DUPLICATE, with
    no reason, and nothing is folded (its sequence does not move)."""
    log = ccm_log()
    log.activity(P, "a1", "2025-03-03T10:00:00-05:00", 25)
    ledger = Ledger()
    for ev in log.events():
        assert ledger.apply(ev).status is Status.APPLIED
    seq = ledger.seq
    again = ledger.apply(parse_event(orjson.dumps(log.raw[-1])))
    assert again.status is Status.DUPLICATE
    assert again.reason == ""
    assert ledger.seq == seq  # nothing was folded
    assert list(ledger.patients[("o1", P)].activities) == ["a1"]


def test_step1_a_conflicting_body_in_the_log_leaves_the_first_standing() -> None:
    """§6.2 step 1 / DESIGN: a later event with the same event_id and another body changes
    nothing in the view (the first body stands)."""
    log = ccm_log()
    log.activity(P, "a1", "2025-03-03T10:00:00-05:00", 25)
    baseline = log.view(*MARCH)
    changed = copy.deepcopy(log.raw[-1])
    changed["data"]["minutes"] = 45
    log.raw.append(changed)
    view = log.view(*MARCH)
    assert view == baseline
    assert view["minutes"] == {"ccm": 25.0}  # 45 would earn 99439
    assert view["billable"] == [{"code": "99490", "units": 1}]


@pytest.mark.single_engine
def test_step1_same_event_id_different_body_is_a_conflict() -> None:
    """§6.2 step 1 / DESIGN: the same event_id with a different body is rejected."""
    log = ccm_log()
    log.activity(P, "a1", "2025-03-03T10:00:00-05:00", 25)
    ledger = Ledger()
    for ev in log.events():
        ledger.apply(ev)
    changed = copy.deepcopy(log.raw[-1])
    changed["data"]["minutes"] = 45
    out = ledger.apply(parse_event(orjson.dumps(changed)))
    assert out.status is Status.CONFLICT
    assert "event_id" in out.reason and "different body" in out.reason
    act = ledger.patients[("o1", P)].activities["a1"]
    assert act.end - act.start == 25 * 60  # the first body stands

    # the Projector reports the same outcome and emits nothing
    proj = log.projector()
    step = proj.step(parse_event(orjson.dumps(changed)))
    assert step.outcome.status is Status.CONFLICT
    assert step.alerts == [] and step.changed == []


def test_step1_resend_under_new_event_id_counts_once() -> None:
    """§6.2 step 1, G9: same staff + start + minutes + program under a new event_id (and a
    new activity_id) is an exact re-send: counted once, flag ``duplicate_event``."""
    log = ccm_log()
    log.activity(P, "a1", "2025-03-03T10:00:00-05:00", 25)
    log.activity(P, "a1-resent", "2025-03-03T10:00:00-05:00", 25)
    view = log.view(*MARCH)
    assert view["minutes"] == {"ccm": 25.0}  # 50 would earn 99439
    assert view["billable"] == [{"code": "99490", "units": 1}]
    assert view["flags"] == ["duplicate_event"]


def test_step1_same_start_other_program_is_not_a_resend() -> None:
    """§6.2 step 1 fingerprint includes the program: this is a double count (step 4)."""
    log = ccm_log()
    log.consent(P, "bhi")
    log.activity(P, "a1", "2025-03-03T10:00:00-05:00", 25)
    log.activity(P, "b1", "2025-03-03T10:00:00-05:00", 25, program="bhi")
    view = log.view(*MARCH)
    assert view["minutes"] == {"bhi": 0.0, "ccm": 25.0}
    assert view["flags"] == ["below_threshold:99484", "double_count:ccm+bhi"]


# --- step 2: explode and bucket by local month ------------------------------------------


@pytest.mark.parametrize(
    ("tz", "month"),
    [
        ("America/New_York", "2025-03"),  # 23:30 EDT on Mar 31
        ("America/Los_Angeles", "2025-03"),  # 20:30 PDT on Mar 31
        ("UTC", "2025-04"),  # 03:30 on Apr 1
        ("Europe/Berlin", "2025-04"),  # 05:30 CEST on Apr 1
    ],
)
def test_step2_month_is_assigned_in_practice_time_zone(tz: str, month: str) -> None:
    """§6.2 step 2, G2: a minute belongs to the month of the practice's IANA zone."""
    log = ccm_log(tz)
    log.activity(P, "a1", "2025-03-31T23:30:00-04:00", 20)
    views = log.replay()
    assert list(views) == [(P, month)]
    view = views[(P, month)]
    assert view["minutes"] == {"ccm": 20.0}
    assert view["billable"] == [{"code": "99490", "units": 1}]
    assert view["flags"] == []


@pytest.mark.parametrize(
    ("tz", "started", "ended", "march_min", "april_min"),
    [
        # 23:50 -> 00:20 local: 10 min in March, 20 in April
        ("America/New_York", "2025-03-31T23:50:00-04:00", "2025-04-01T00:20:00-04:00", 10.0, 20.0),
        # odd seconds: 12.5 min + 15 min
        ("America/New_York", "2025-03-31T23:47:30-04:00", "2025-04-01T00:15:00-04:00", 12.5, 15.0),
        # a half-hour offset zone: 23:35 -> 00:20 IST
        ("Asia/Kolkata", "2025-03-31T23:35:00+05:30", "2025-04-01T00:20:00+05:30", 25.0, 20.0),
    ],
)
def test_step2_cross_month_split_conserves_seconds(
    tz: str, started: str, ended: str, march_min: float, april_min: float
) -> None:
    """§6.2 step 2, G2: an activity across local midnight at month end is split minute by
    minute (``cross_month_split``); G1: the halves are not added across months."""
    log = ccm_log(tz)
    log.activity(P, "a1", started, ended_at=ended)
    length = (datetime.fromisoformat(ended) - datetime.fromisoformat(started)).total_seconds()
    views = log.replay()
    assert sorted(views) == [MARCH, APRIL]
    march, april = views[MARCH], views[APRIL]
    assert march["minutes"] == {"ccm": march_min}
    assert april["minutes"] == {"ccm": april_min}
    assert (march_min + april_min) * 60 == length
    assert "cross_month_split" in march["flags"]
    assert "cross_month_split" in april["flags"]
    # exact seconds, from the accounting itself
    secs = {b.month: b.time.pools[("ccm", "DR-1")].seconds()[2] for b in log.billing() if b.time}
    assert secs == {"2025-03": int(march_min * 60), "2025-04": int(april_min * 60)}
    assert sum(secs.values()) == length


def test_step2_split_halves_bill_separately() -> None:
    """G1: 10 minutes in March and 20 in April give 99490 in April only."""
    log = ccm_log()
    log.activity(P, "a1", "2025-03-31T23:50:00-04:00", 30)
    views = log.replay()
    assert views[MARCH]["billable"] == []
    assert views[MARCH]["flags"] == ["below_threshold:99490", "cross_month_split"]
    assert views[APRIL]["billable"] == [{"code": "99490", "units": 1}]
    assert views[APRIL]["flags"] == ["cross_month_split"]


@pytest.mark.parametrize(
    ("started", "kwargs"),
    [
        # spring forward: 01:50 EST -> 03:10 EDT is 20 minutes, not 80
        ("2025-03-09T01:50:00-05:00", {"ended_at": "2025-03-09T03:10:00-04:00"}),
        ("2025-03-09T01:50:00-05:00", {"minutes": 20}),
        # fall back: 01:50 EDT -> 01:10 EST is 20 minutes, not -40
        ("2025-11-02T01:50:00-04:00", {"ended_at": "2025-11-02T01:10:00-05:00"}),
    ],
)
def test_step2_dst_counts_elapsed_time(started: str, kwargs: dict[str, Any]) -> None:
    """G2: elapsed minutes on absolute instants; a 20-minute call across a DST change counts
    1200 s and meets 99490 exactly."""
    log = ccm_log()
    log.activity(P, "a1", started, **kwargs)
    [b] = log.billing()
    assert b.time is not None
    assert b.time.pools[("ccm", "DR-1")].seconds() == (0, 1200, 1200, False)
    assert b.view()["minutes"] == {"ccm": 20.0}
    assert b.units() == {"99490": 1}


def test_step2_seconds_accumulate_to_the_threshold() -> None:
    """DESIGN "Accounting semantics", G3: a 20-minute threshold needs 1200 s; 1199 s is short."""
    log = ccm_log()
    log.activity(P, "a1", "2025-03-03T10:00:00-05:00", ended_at="2025-03-03T10:19:59-05:00")
    view = log.view(*MARCH)
    assert view["billable"] == []
    assert view["flags"] == ["below_threshold:99490"]
    log.activity(P, "a2", "2025-03-04T10:00:00-05:00", ended_at="2025-03-04T10:00:01-05:00")
    view = log.view(*MARCH)
    assert view["minutes"] == {"ccm": 20.0}
    assert view["billable"] == [{"code": "99490", "units": 1}]


# --- step 3: exclusions ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "flag"),
    [
        ({"face_to_face": True}, "face_to_face_excluded"),  # G7, D-8
        ({"role": "non_clinical", "staff": "FD-1"}, "non_clinical_staff_excluded"),  # G4d
    ],
)
def test_step3_face_to_face_and_non_clinical_time_excluded(
    kwargs: dict[str, Any], flag: str
) -> None:
    """§6.2 step 3: face-to-face and non-clinical time never count."""
    log = ccm_log()
    log.activity(P, "a1", "2025-03-03T10:00:00-05:00", 25, **kwargs)
    log.activity(P, "a2", "2025-03-05T10:00:00-05:00", 15)
    view = log.view(*MARCH)
    assert view["minutes"] == {"ccm": 15.0}  # 40 would earn 99490 + 99439
    assert view["billable"] == []
    assert view["flags"] == ["below_threshold:99490", flag]


def _consent_on_the_10th() -> Log:
    """A CCM patient consented on March 10, with minutes on the 9th, across midnight into
    the 10th, and on the 10th."""
    log = Log()
    log.practice()
    log.conditions(P)
    log.consent(P, on="2025-03-10")
    log.care_plan(P)
    log.enrollment(P)
    log.activity(P, "a1", "2025-03-09T10:00:00-04:00", 20)  # the 9th: excluded
    log.activity(P, "a2", "2025-03-09T23:50:00-04:00", 20)  # 10 min on the 9th, 10 on the 10th
    log.activity(P, "a3", "2025-03-10T12:00:00-04:00", 15)  # the 10th: counts
    return log


def test_step3_minutes_before_consent_date_excluded() -> None:
    """§6.2 step 3, G10: minutes on dates before ``consent_on`` do not count
    (``consent_after_activity``); the consent day itself counts from local midnight."""
    [b] = _consent_on_the_10th().billing()
    view = b.view()
    assert view["minutes"] == {"ccm": 25.0}
    assert view["billable"] == [{"code": "99490", "units": 1}]
    assert view["flags"] == ["consent_after_activity"]


def test_step3_pre_consent_seconds_per_activity() -> None:
    """§6.2 step 3, G10: the seconds each activity loses before consent, from the
    accounting's per-activity detail (every engine keeps it: one accounting)."""
    [b] = _consent_on_the_10th().billing()
    assert b.time is not None
    excluded = {at.activity.activity_id: at.excluded for at in b.time.activities}
    assert excluded == {
        "a1": {"consent_after_activity": 1200},
        "a2": {"consent_after_activity": 600},
        "a3": {},
    }


def test_step3_inpatient_dates_excluded_for_ccm_not_bhi() -> None:
    """§6.2 step 3, G17: CCM time on stay dates (admitted..discharged inclusive) is excluded
    (``inpatient_time_excluded``); BHI time counts in any setting."""
    log = ccm_log()
    log.consent(P, "bhi")
    log.stay(P, "2025-03-05", "2025-03-07")
    log.activity(P, "a1", "2025-03-05T10:00:00-05:00", 20)  # admission day: excluded
    log.activity(P, "a2", "2025-03-07T23:50:00-05:00", 20)  # 10 on discharge day, 10 after
    log.activity(P, "a3", "2025-03-04T10:00:00-05:00", 15)  # before the stay
    log.activity(P, "b1", "2025-03-06T10:00:00-05:00", 20, program="bhi", staff="BH-1")
    view = log.view(*MARCH)
    assert view["minutes"] == {"bhi": 20.0, "ccm": 25.0}
    assert billable(view) == {"99484": 1, "99490": 1}
    assert view["flags"] == ["inpatient_time_excluded"]


def test_step3_snf_stay_also_excluded_for_ccm() -> None:
    """G17: hospital or SNF inpatient time does not count for CCM."""
    log = ccm_log()
    log.stay(P, "2025-03-05", "2025-03-07", setting="snf")
    log.activity(P, "a1", "2025-03-06T10:00:00-05:00", 25)
    view = log.view(*MARCH)
    assert view["minutes"] == {"ccm": 0.0}
    assert view["flags"] == ["below_threshold:99490", "inpatient_time_excluded"]


def test_step3_tcm_minutes_never_count_for_ccm() -> None:
    """§6.2 step 3, §3.6, G6: TCM minutes are never CCM minutes, even for the same staff."""
    log = ccm_log()
    log.activity(P, "t1", "2025-03-05T10:00:00-05:00", 30, program="tcm")
    log.activity(P, "c1", "2025-03-05T10:10:00-05:00", 30)  # 20 of its minutes are TCM's
    log.activity(P, "c2", "2025-03-06T10:00:00-05:00", 5)
    view = log.view(*MARCH)
    assert view["minutes"] == {"ccm": 15.0, "tcm": 30.0}
    assert view["billable"] == []  # TCM has no minute codes; CCM is short
    assert view["flags"] == ["below_threshold:99490", "double_count:tcm+ccm"]


# --- step 4: same-staff overlap -----------------------------------------------------------------


def test_step4_same_staff_overlap_within_program_is_unioned() -> None:
    """§6.2 step 4, G9: one person's overlapping intervals in one program merge (``overlap``)."""
    log = ccm_log()
    log.activity(P, "a1", "2025-03-03T10:00:00-05:00", 20)
    log.activity(P, "a2", "2025-03-03T10:10:00-05:00", 30)  # 10:10-10:40
    view = log.view(*MARCH)
    assert view["minutes"] == {"ccm": 40.0}  # a sum (50) would still be 99439 x1; union is 40
    assert view["billable"] == [{"code": "99439", "units": 1}, {"code": "99490", "units": 1}]
    assert view["flags"] == ["overlap"]
    [b] = log.billing()
    assert [(p.kind, p.kept, p.other, p.seconds) for p in b.pairs] == [("overlap", "a1", "a2", 600)]


@pytest.mark.parametrize("bhi_first", [False, True])
def test_step4_same_staff_across_programs_earliest_received_keeps(bhi_first: bool) -> None:
    """§6.2 step 4, G9, G6: across programs the earliest-received event keeps the minutes
    (``double_count:<a>+<b>``); swapping the log order flips which program keeps them."""
    log = ccm_log()
    log.consent(P, "bhi")

    def ccm() -> None:
        log.activity(P, "c1", "2025-03-03T10:00:00-05:00", 30)

    def bhi() -> None:
        log.activity(P, "b1", "2025-03-03T10:10:00-05:00", 30, program="bhi")

    for add in (bhi, ccm) if bhi_first else (ccm, bhi):
        add()
    view = log.view(*MARCH)
    if bhi_first:
        assert view["minutes"] == {"bhi": 30.0, "ccm": 10.0}
        assert view["billable"] == [{"code": "99484", "units": 1}]
        assert view["flags"] == ["below_threshold:99490", "double_count:bhi+ccm"]
    else:
        assert view["minutes"] == {"bhi": 10.0, "ccm": 30.0}
        assert view["billable"] == [{"code": "99490", "units": 1}]
        assert view["flags"] == ["below_threshold:99484", "double_count:ccm+bhi"]


def test_step4_amendment_keeps_its_place_in_the_log() -> None:
    """§6.2 step 4 with amendments: a re-logged activity keeps the position of its first
    logging, so amending the CCM entry does not hand its minutes to BHI."""
    log = ccm_log()
    log.consent(P, "bhi")
    log.activity(P, "c1", "2025-03-03T10:00:00-05:00", 30)
    log.activity(P, "b1", "2025-03-03T10:10:00-05:00", 30, program="bhi")
    log.activity(P, "c1", "2025-03-03T10:00:00-05:00", 35)  # amended after b1
    view = log.view(*MARCH)
    assert view["minutes"] == {"bhi": 5.0, "ccm": 35.0}
    assert view["flags"] == ["below_threshold:99484", "double_count:ccm+bhi"]


# --- step 5: different-staff concurrency ----------------------------------------------------------


@pytest.mark.parametrize(
    ("second_start", "second_minutes", "minutes", "codes"),
    [
        ("2025-03-03T10:00:00-05:00", 20, 20.0, {"99490": 1}),  # sum 40 would add 99439
        ("2025-03-03T10:10:00-05:00", 40, 50.0, {"99490": 1, "99439": 1}),  # sum 60: x2
    ],
)
def test_step5_concurrent_staff_counted_once(
    second_start: str, second_minutes: int, minutes: float, codes: dict[str, int]
) -> None:
    """§6.2 step 5, G8, D-7: two staff on the same patient and program at once count the
    wall-clock minutes once (``concurrent_staff_time``)."""
    log = ccm_log()
    log.activity(P, "a1", "2025-03-03T10:00:00-05:00", 20, staff="RN-1")
    log.activity(P, "a2", second_start, second_minutes, staff="RN-2")
    view = log.view(*MARCH)
    assert view["minutes"] == {"ccm": minutes}
    assert billable(view) == codes
    assert view["flags"] == ["concurrent_staff_time"]


# --- step 6: eligibility gates --------------------------------------------------------------------


def test_step6_no_consent_blocks_but_shows_time() -> None:
    """§6.2 step 6, G10: without consent nothing in the family is billable; time is shown,
    codes are ``blocked`` with ``missing_consent`` (and the add-on without its base, G15)."""
    log = Log()
    log.practice()
    log.conditions(P)
    log.care_plan(P)
    log.enrollment(P)
    log.activity(P, "a1", "2025-03-03T10:00:00-05:00", 45)
    view = log.view(*MARCH)
    assert view["minutes"] == {"ccm": 45.0}
    assert view["billable"] == []
    assert view["blocked"] == [
        {"code": "99439", "units": 1, "reasons": ["addon_without_base:99439", "missing_consent"]},
        {"code": "99490", "units": 1, "reasons": ["missing_consent"]},
    ]
    assert view["flags"] == ["addon_without_base:99439", "missing_consent"]
    assert view["estimated_payment"] == 0.0


def test_step6_consent_for_another_practitioner_does_not_cover() -> None:
    """G10: consent is per billing practitioner (repeat it when the practitioner changes)."""
    log = Log()
    log.practice()
    log.conditions(P)
    log.care_plan(P)
    log.consent(P, practitioner="DR-2")
    log.activity(P, "a1", "2025-03-03T10:00:00-05:00", 25, practitioner="DR-1")
    view = log.view(*MARCH)
    assert view["blocked"] == [{"code": "99490", "units": 1, "reasons": ["missing_consent"]}]


def test_step6_fewer_than_two_conditions_blocks_ccm() -> None:
    """§6.2 step 6, G13: CCM needs two or more chronic conditions."""
    log = Log()
    log.practice()
    log.conditions(P, ["E11.9"])
    log.consent(P)
    log.care_plan(P)
    log.enrollment(P)
    log.activity(P, "a1", "2025-03-03T10:00:00-05:00", 25)
    view = log.view(*MARCH)
    assert view["minutes"] == {"ccm": 25.0}
    assert view["billable"] == []
    assert view["blocked"] == [
        {"code": "99490", "units": 1, "reasons": ["insufficient_chronic_conditions"]}
    ]
    assert view["flags"] == ["insufficient_chronic_conditions"]


def test_step6_care_plan_needed_on_or_before_month_end() -> None:
    """§6.2 step 6, G12: no care plan → ``missing_care_plan``; a plan recorded on April 2
    covers April, not March."""
    log = Log()
    log.practice()
    log.conditions(P)
    log.consent(P)
    log.enrollment(P)
    log.activity(P, "a1", "2025-03-03T10:00:00-05:00", 25)
    assert log.view(*MARCH)["blocked"] == [
        {"code": "99490", "units": 1, "reasons": ["missing_care_plan"]}
    ]
    log.care_plan(P, on="2025-04-02")
    log.activity(P, "a2", "2025-04-03T10:00:00-04:00", 25)
    views = log.replay()
    assert views[MARCH]["billable"] == []
    assert views[MARCH]["flags"] == ["missing_care_plan"]
    assert views[APRIL]["billable"] == [{"code": "99490", "units": 1}]
    assert views[APRIL]["flags"] == []


def test_step6_rpm_needs_established_patient() -> None:
    """§6.2 step 6, G11: RPM needs an established patient (a visit);
    otherwise ``rpm_not_established_patient``."""
    log = Log()
    log.practice()
    log.consent(P, "rpm")
    log.enrollment(P, "rpm")
    log.activity(P, "r1", "2025-03-03T10:00:00-05:00", 25, program="rpm", interactive=True)
    view = log.view(*MARCH)
    assert view["minutes"] == {"rpm": 25.0}
    assert view["blocked"] == [
        {"code": "99457", "units": 1, "reasons": ["rpm_not_established_patient"]}
    ]
    assert view["flags"] == ["rpm_not_established_patient"]
    log.visit(P, on="2024-12-01")
    view = log.view(*MARCH)
    assert view["billable"] == [{"code": "99457", "units": 1}]
    assert view["blocked"] == []
    assert view["flags"] == []


def test_step6_revocation_takes_effect_at_month_end() -> None:
    """§6.2 step 6, G10: consent revoked on March 10 still covers March (effective at the end
    of the calendar month) but not April (``missing_consent``)."""
    log = ccm_log()
    log.consent(P, on="2025-03-10", revoked=True)
    log.activity(P, "a1", "2025-03-25T10:00:00-04:00", 25)  # after the revocation date
    log.activity(P, "a2", "2025-04-03T10:00:00-04:00", 25)
    views = log.replay()
    assert views[MARCH]["minutes"] == {"ccm": 25.0}
    assert views[MARCH]["billable"] == [{"code": "99490", "units": 1}]
    assert views[MARCH]["flags"] == []
    # after the revocation the minutes still show, and the time-met code is blocked: the
    # minutes are not "before consent" (``consent_after_activity`` means exactly that)
    assert views[APRIL]["minutes"] == {"ccm": 25.0}
    assert views[APRIL]["billable"] == []
    assert views[APRIL]["blocked"] == [
        {"code": "99490", "units": 1, "reasons": ["missing_consent"]}
    ]
    assert views[APRIL]["flags"] == ["missing_consent"]
    assert views[APRIL]["estimated_payment"] == 0.0


def test_step3_minutes_between_revocation_and_renewed_consent_are_pre_consent() -> None:
    """§6.2 step 3, G10: after a revocation (effective at the end of March) and a new consent
    on April 10, April minutes before the 10th are pre-consent; those after it count."""
    log = ccm_log()
    log.consent(P, on="2025-03-10", revoked=True)
    log.consent(P, on="2025-04-10")
    log.activity(P, "a1", "2025-04-03T10:00:00-04:00", 15)
    log.activity(P, "a2", "2025-04-12T10:00:00-04:00", 20)
    view = log.view(*APRIL)
    assert view["minutes"] == {"ccm": 20.0}
    assert view["billable"] == [{"code": "99490", "units": 1}]
    assert view["flags"] == ["consent_after_activity"]


# --- step 8: one practitioner ---------------------------------------------------------------------


def _two_practitioners(enrolled: str | None) -> Log:
    log = Log()
    log.practice()
    log.conditions(P)
    log.care_plan(P)
    for dr in ("DR-1", "DR-2"):
        log.consent(P, practitioner=dr)
    if enrolled is not None:
        log.enrollment(P, practitioner=enrolled)
    log.activity(P, "a1", "2025-03-03T10:00:00-05:00", 25, practitioner="DR-1", staff="RN-1")
    log.activity(P, "a2", "2025-03-04T10:00:00-05:00", 45, practitioner="DR-2", staff="RN-2")
    return log


MP = ["multiple_practitioners:ccm"]


@pytest.mark.parametrize(
    ("enrolled", "billed", "blocked", "payment"),
    [
        (
            "DR-2",
            [{"code": "99439", "units": 1}, {"code": "99490", "units": 1}],
            [{"code": "99490", "units": 1, "reasons": MP}],
            106.42,
        ),
        (
            "DR-1",
            [{"code": "99490", "units": 1}],
            [
                {"code": "99439", "units": 1, "reasons": MP},
                {"code": "99490", "units": 1, "reasons": MP},
            ],
            60.49,
        ),
        (
            None,
            [],
            [
                {"code": "99439", "units": 1, "reasons": MP},
                {"code": "99490", "units": 2, "reasons": MP},
            ],
            0.0,
        ),
        (  # enrolled with a third practitioner: neither of the two is of record
            "DR-3",
            [],
            [
                {"code": "99439", "units": 1, "reasons": MP},
                {"code": "99490", "units": 2, "reasons": MP},
            ],
            0.0,
        ),
    ],
)
def test_step8_only_practitioner_of_record_bills_ccm(
    enrolled: str | None, billed: list[Any], blocked: list[Any], payment: float
) -> None:
    """§6.2 step 8, G14: with two practitioners' billable CCM only the practitioner of record
    (enrollment) bills; without one, none bills. Flag ``multiple_practitioners:ccm``."""
    view = _two_practitioners(enrolled).view(*MARCH)
    assert view["minutes"] == {"ccm": 70.0}
    assert view["billable"] == billed
    assert view["blocked"] == blocked
    assert view["flags"] == MP
    assert view["estimated_payment"] == payment


@pytest.mark.parametrize(("enrolled", "kept"), [("DR-1", "99491"), ("DR-2", "99490")])
def test_step8_different_codes_also_flag_the_exclusive_pair(enrolled: str, kept: str) -> None:
    """§6.2 step 8 (plus ``exclusive_conflict:<codeA>+<codeB>``), §3.1c: 99491 by DR-1 and
    99490 by DR-2 in one month."""
    log = Log()
    log.practice()
    log.conditions(P)
    log.care_plan(P)
    for dr in ("DR-1", "DR-2"):
        log.consent(P, practitioner=dr)
    log.enrollment(P, practitioner=enrolled)
    log.activity(P, "a1", "2025-03-03T10:00:00-05:00", 35, staff="DR-1", role="physician")
    log.activity(P, "a2", "2025-03-04T10:00:00-05:00", 25, practitioner="DR-2", staff="RN-2")
    view = log.view(*MARCH)
    lost = "99490" if kept == "99491" else "99491"
    flags = ["exclusive_conflict:99491+99490", "multiple_practitioners:ccm"]
    assert view["billable"] == [{"code": kept, "units": 1}]
    assert view["blocked"] == [{"code": lost, "units": 1, "reasons": flags}]
    assert view["flags"] == flags


# --- step 9: PCM with CCM -------------------------------------------------------------------------


def _ccm_and_pcm(enrolled: str | None, pcm_practitioner: str = "DR-1") -> Log:
    log = Log()
    log.practice()
    log.conditions(P)
    log.care_plan(P)
    log.care_plan(P, "pcm")
    log.consent(P)
    log.consent(P, "pcm", practitioner=pcm_practitioner)
    if enrolled is not None:
        log.enrollment(P, enrolled)
    log.activity(P, "a1", "2025-03-03T10:00:00-05:00", 25)
    log.activity(
        P,
        "p1",
        "2025-03-04T10:00:00-05:00",
        35,
        program="pcm",
        practitioner=pcm_practitioner,
        staff="RN-2",
    )
    return log


CONFLICT = ["exclusive_conflict:99426+99490"]


@pytest.mark.parametrize(
    ("enrolled", "billed", "blocked"),
    [
        ("ccm", ["99490"], ["99426"]),
        ("pcm", ["99426"], ["99490"]),
        (None, [], ["99426", "99490"]),  # no program of record: hold both
    ],
)
def test_step9_same_practitioner_ccm_pcm_keeps_program_of_record(
    enrolled: str | None, billed: list[str], blocked: list[str]
) -> None:
    """§6.2 step 9, D-2: same practitioner CCM + PCM → keep the program of record, else hold
    both; ``exclusive_conflict:<pcm>+<ccm>``."""
    view = _ccm_and_pcm(enrolled).view(*MARCH)
    assert view["minutes"] == {"ccm": 25.0, "pcm": 35.0}
    assert view["billable"] == [{"code": c, "units": 1} for c in billed]
    assert view["blocked"] == [{"code": c, "units": 1, "reasons": CONFLICT} for c in blocked]
    assert view["flags"] == CONFLICT


def test_step9_different_practitioners_bill_both_flagged() -> None:
    """§6.2 step 9, D-2: CCM and PCM by different practitioners are both billed, with
    ``disputed_rule:pcm_ccm_different_practitioners``."""
    view = _ccm_and_pcm("ccm", pcm_practitioner="DR-2").view(*MARCH)
    assert view["billable"] == [{"code": "99426", "units": 1}, {"code": "99490", "units": 1}]
    assert view["blocked"] == []
    assert view["flags"] == ["disputed_rule:pcm_ccm_different_practitioners"]


@pytest.mark.parametrize(
    ("ccm_physician", "pcm_physician", "codes"),
    [
        (True, False, ["99426", "99491"]),
        (False, True, ["99424", "99490"]),
        (True, True, ["99424", "99491"]),
    ],
)
def test_step9_different_practitioners_flagged_for_every_code_pair(
    ccm_physician: bool, pcm_physician: bool, codes: list[str]
) -> None:
    """§6.2 step 9, D-2 apply to CCM + PCM as families, not only to 99490 + 99426."""
    log = Log()
    log.practice()
    log.conditions(P)
    log.care_plan(P)
    log.care_plan(P, "pcm")
    log.consent(P)
    log.consent(P, "pcm", practitioner="DR-2")
    ccm_staff: dict[str, Any] = {"staff": "DR-1", "role": "physician"} if ccm_physician else {}
    pcm_staff: dict[str, Any] = (
        {"staff": "DR-2", "role": "physician"} if pcm_physician else {"staff": "RN-2"}
    )
    log.activity(P, "a1", "2025-03-03T10:00:00-05:00", 35, **ccm_staff)
    log.activity(
        P, "p1", "2025-03-04T10:00:00-05:00", 35, program="pcm", practitioner="DR-2", **pcm_staff
    )
    view = log.view(*MARCH)
    assert view["billable"] == [{"code": c, "units": 1} for c in codes]
    assert view["flags"] == ["disputed_rule:pcm_ccm_different_practitioners"]


# --- step 10: RPM device periods ------------------------------------------------------------------


def _rpm_readings(start: str, days: list[int], tz: str = "America/New_York") -> Log:
    """RPM enrolled on ``start``; one reading at local noon on each ``start + d`` day."""
    log = Log()
    log.practice(timezone=tz)
    log.consent(P, "rpm", on="2025-01-01")
    log.visit(P, on="2024-12-01")
    log.enrollment(P, "rpm", on=start)
    s = date.fromisoformat(start)
    for d in days:
        log.reading(P, f"{s + timedelta(days=d)}T12:00:00Z")
    return log


def test_step10_16_days_bill_99454_and_99453_in_the_month_the_period_ends() -> None:
    """§6.2 step 10, G1, §6.1: ≥16 transmission days in the 30-day period from the RPM
    enrollment → 99454, plus 99453 in the episode's first period; reported in the month the
    period ends (Mar 10 + 29 days = Apr 8)."""
    log = _rpm_readings("2025-03-10", [*range(16), *range(30, 46)])
    views = log.replay()
    assert sorted(views) == [MARCH, APRIL, (P, "2025-05")]
    assert views[MARCH]["billable"] == []
    assert views[APRIL]["billable"] == [
        {"code": "99453", "units": 1},
        {"code": "99454", "units": 1},
    ]
    assert views[APRIL]["flags"] == []
    assert views[APRIL]["estimated_payment"] == 62.75
    # the second period (Apr 9 - May 8): 99454 only, no second set-up
    assert views[(P, "2025-05")]["billable"] == [{"code": "99454", "units": 1}]


def test_step10_fewer_than_16_days_in_2025() -> None:
    """§6.2 step 10 (2025): 10 days → ``rpm_insufficient_days``, nothing billed."""
    views = _rpm_readings("2025-03-10", list(range(10))).replay()
    assert views[APRIL]["billable"] == []
    assert views[APRIL]["blocked"] == []
    assert views[APRIL]["flags"] == ["rpm_insufficient_days"]


def test_step10_days_are_distinct_local_days_inside_the_period() -> None:
    """§6.1: distinct *local* days with a reading, per 30-day period. 15 days plus a second
    reading late on day 14 (already day 15 in UTC) plus day 30 (next period) is 15."""
    log = _rpm_readings("2025-03-10", list(range(15)))
    log.reading(P, "2025-03-25T03:30:00Z")  # 23:30 EDT on Mar 24: day 14 again, locally
    log.reading(P, "2025-04-09T12:00:00Z")  # day 30: the second period
    views = log.replay()
    assert views[APRIL]["billable"] == []
    assert views[APRIL]["flags"] == ["rpm_insufficient_days"]
    log.reading(P, "2025-04-08T12:00:00Z")  # day 29: the 16th day of the first period
    assert log.view(*APRIL)["billable"] == [
        {"code": "99453", "units": 1},
        {"code": "99454", "units": 1},
    ]


@pytest.mark.parametrize(
    ("days", "codes", "flags"),
    [
        (10, {"99445": 1, "99453": 1}, []),
        (2, {"99445": 1, "99453": 1}, []),
        (1, {}, ["rpm_insufficient_days"]),
        (16, {"99454": 1, "99453": 1}, []),
    ],
)
def test_step10_2026_low_day_band(days: int, codes: dict[str, int], flags: list[str]) -> None:
    """§6.2 step 10 (2026), §3.3: 2-15 days → 99445; 16+ → 99454; 99453 after 2 days."""
    views = _rpm_readings("2026-03-10", list(range(days))).replay()
    view = views[(P, "2026-04")]
    assert billable(view) == codes
    assert view["flags"] == flags


# --- step 11: RTM never with RPM ------------------------------------------------------------------


RTM_RPM = ["exclusive_conflict:98980+99457"]


@pytest.mark.parametrize(
    ("enrolled", "billed", "blocked"),
    [("rpm", ["99457"], ["98980"]), ("rtm", ["98980"], ["99457"]), (None, [], ["98980", "99457"])],
)
def test_step11_rtm_and_rpm_same_month(
    enrolled: str | None, billed: list[str], blocked: list[str]
) -> None:
    """§6.2 step 11, §3.3-§3.4: RTM never with RPM in the same period; the program of record
    is kept (``exclusive_conflict:98980+99457``, the exact RULES spelling)."""
    log = Log()
    log.practice()
    log.consent(P, "rpm")
    log.consent(P, "rtm")
    log.visit(P)
    if enrolled is not None:
        log.enrollment(P, enrolled)
    log.activity(P, "r1", "2025-03-03T10:00:00-05:00", 25, program="rpm", interactive=True)
    log.activity(
        P, "t1", "2025-03-04T10:00:00-05:00", 25, program="rtm", interactive=True, staff="PT-1"
    )
    view = log.view(*MARCH)
    assert view["minutes"] == {"rpm": 25.0, "rtm": 25.0}
    assert view["billable"] == [{"code": c, "units": 1} for c in billed]
    assert view["blocked"] == [{"code": c, "units": 1, "reasons": RTM_RPM} for c in blocked]
    assert view["flags"] == RTM_RPM


# --- step 13: RHC/FQHC ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("facility", "month", "minutes", "flags"),
    [
        ("fqhc", "2025-03", 25, ["g0511_transition_option"]),
        ("rhc", "2025-06", 25, ["g0511_transition_option"]),
        ("fqhc", "2025-07", 25, ["g0511_transition_option"]),
        ("fqhc", "2025-09", 25, ["g0511_transition_option"]),  # the window's last month (S29)
        ("fqhc", "2025-10", 25, []),
        ("rhc", "2026-01", 25, []),  # never in 2026 (D-11)
        ("office", "2025-03", 25, []),
        ("fqhc", "2025-03", 10, ["below_threshold:99490"]),  # nothing billable: no option
    ],
)
def test_step13_g0511_transition_option(
    facility: str, month: str, minutes: int, flags: list[str]
) -> None:
    """§6.2 step 13, §3.8, D-11: RHC/FQHC bill individual codes from 2025; January-September
    2025 (S29) also carry ``g0511_transition_option``."""
    log = ccm_log(facility_type=facility)
    log.activity(P, "a1", f"{month}-03T10:00:00-04:00", minutes)
    view = log.view(P, month)
    assert view["billable"] == ([{"code": "99490", "units": 1}] if minutes >= 20 else [])
    assert view["flags"] == flags


# --- bitemporal replay --------------------------------------------------------------------------


def _bitemporal_log() -> Log:
    log = ccm_log()
    log.activity(P, "a1", "2025-03-03T10:00:00-05:00", 15, recorded_at="2025-03-03T16:00:00Z")
    log.activity(P, "a2", "2025-03-05T10:00:00-05:00", 10, recorded_at="2025-03-05T16:00:00Z")
    log.void(P, "a2", recorded_at="2025-03-20T16:00:00Z")
    return log


@pytest.mark.parametrize(
    ("as_of", "minutes", "codes"),
    [
        ("2025-03-04T00:00:00Z", 15.0, {}),  # a2 not yet recorded
        ("2025-03-06T00:00:00Z", 25.0, {"99490": 1}),  # a2 known, void not yet
        ("2025-03-20T15:59:59Z", 25.0, {"99490": 1}),
        ("2025-03-20T16:00:00Z", 15.0, {}),  # the void, inclusive
        ("2025-03-21T00:00:00Z", 15.0, {}),
    ],
)
def test_bitemporal_as_of(as_of: str, minutes: float, codes: dict[str, int]) -> None:
    """DESIGN: auditors replay the log as it stood at any instant (events recorded after
    ``as_of`` are ignored), before and after a void."""
    views = _bitemporal_log().replay(as_of=datetime.fromisoformat(as_of))
    assert views[MARCH]["minutes"] == {"ccm": minutes}
    assert billable(views[MARCH]) == codes


def test_bitemporal_before_anything_is_empty() -> None:
    """DESIGN: as of an instant before every event, nothing is known."""
    assert _bitemporal_log().replay(as_of=datetime.fromisoformat("2024-12-31T00:00:00Z")) == {}


# --- amendments and voids ----------------------------------------------------------------------


def test_amendment_replaces_the_activity() -> None:
    """DESIGN wire contract: re-logging an activity_id replaces the earlier version."""
    log = ccm_log()
    log.activity(P, "a1", "2025-03-03T10:00:00-05:00", 15)
    assert log.view(*MARCH)["billable"] == []
    log.activity(P, "a1", "2025-03-03T10:00:00-05:00", 45)
    view = log.view(*MARCH)
    assert view["minutes"] == {"ccm": 45.0}  # not 60: the versions do not add
    assert view["billable"] == [{"code": "99439", "units": 1}, {"code": "99490", "units": 1}]
    assert view["flags"] == []  # an amendment is neither an overlap nor a duplicate


def test_amendment_can_move_an_activity_to_another_month() -> None:
    """DESIGN: the amended version replaces the old one everywhere, including its month."""
    log = ccm_log()
    log.activity(P, "a1", "2025-03-10T10:00:00-04:00", 25)
    log.activity(P, "a1", "2025-04-10T10:00:00-04:00", 25)
    views = log.replay()
    assert list(views) == [APRIL]
    assert views[APRIL]["billable"] == [{"code": "99490", "units": 1}]


def test_void_removes_the_activity() -> None:
    """DESIGN: voiding removes an activity (voiding equals never logging)."""
    log = ccm_log()
    log.activity(P, "a1", "2025-03-03T10:00:00-05:00", 25)
    log.activity(P, "a2", "2025-03-04T10:00:00-05:00", 10)
    log.void(P, "a1")
    view = log.view(*MARCH)
    assert view["minutes"] == {"ccm": 10.0}
    assert view["billable"] == []
    log.void(P, "a2")
    assert log.replay() == {}


def test_void_of_unknown_activity_is_harmless() -> None:
    """DESIGN: a void of an activity never logged changes nothing and emits nothing."""
    log = ccm_log()
    log.activity(P, "a1", "2025-03-03T10:00:00-05:00", 25)
    before = log.replay()
    log.void(P, "never-logged")
    assert log.replay() == before


@pytest.mark.single_engine
def test_void_of_unknown_activity_steps_to_nothing() -> None:
    """DESIGN: the Projector applies a void of an activity never logged with no previous
    version, no alert and no changed month."""
    log = ccm_log()
    log.activity(P, "a1", "2025-03-03T10:00:00-05:00", 25)
    log.void(P, "never-logged")
    proj = Projector()
    events = log.events()
    for ev in events[:-1]:
        proj.step(ev)
    step = proj.step(events[-1])
    assert step.outcome.status is Status.APPLIED
    assert step.outcome.previous is None
    assert step.alerts == [] and step.changed == []
    assert [b.view() for b in proj.billing()] == [b.view() for b in replay(events)]

"""Every row of the minute-to-code tables in docs/rules.md §3, at both edges, end to end.

Each case builds a fresh event log (``support.builders.Log``), replays it and checks the public
view of one patient-month: billable codes and units, blocked lines, the exact flag set
and, for 2025, the estimated payment against the national amounts of docs/rules.md §5.

Section and rule ids (§3.1, G3, D-4, step 7c ...) refer to docs/rules.md.
Seconds matter (G3 "each unit requires its full time"): 19.99 minutes is 1199 s and
does not meet a 20-minute threshold; the ``ended_at`` cases pin the same edges with
start/end instants instead of a minutes figure.

Every case runs on each engine (the fold, the Projector stepped event by event, the archive
replay: the ``engine`` fixture, tests/unit/conftest.py), all held to the same table.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from projections.billing import evaluate
from projections.engine import fold
from support.builders import Log

pytestmark = pytest.mark.usefixtures("engine")  # every engine: tests/unit/conftest.py

TZ = ZoneInfo("America/New_York")
MARCH_2025 = "2025-03"
MARCH_2026 = "2026-03"
DAYS = (3, 11, 19)  # one activity per day, so a case's activities never overlap
STAFF = ("RN-1", "MA-1", "CM-1")  # G5: staff minutes add up across people and days
DR = "DR-1"

# docs/rules.md §5, 2025 national non-facility amounts (CF 32.3465, S1).
FEES_2025 = {
    "99490": 60.49,
    "99439": 45.93,
    "99491": 82.16,
    "99437": 57.58,
    "99487": 131.65,
    "99489": 70.52,
    "99424": 80.87,
    "99425": 58.87,
    "99426": 61.78,
    "99427": 50.46,
    "99457": 47.87,
    "99458": 38.49,
    "99484": 53.05,
    "G0556": 15.20,
    "G0557": 48.84,
    "G0558": 107.07,
}


# -- building logs ------------------------------------------------------------------


def local(month: str, day: int, hour: int, minute: int = 0, second: int = 0) -> str:
    """ISO instant of a wall-clock time in the practice zone (DST-correct offset)."""
    y, m = int(month[:4]), int(month[5:7])
    return datetime(y, m, day, hour, minute, second, tzinfo=TZ).isoformat()


def split_seconds(total: int, parts: int) -> list[int]:
    """``total`` seconds in ``parts`` whole-second chunks (the first ones take the rest)."""
    parts = max(1, min(parts, len(DAYS)))
    base, rest = divmod(total, parts)
    return [base + (1 if i < rest else 0) for i in range(parts) if base or i < rest]


def log_time(
    log: Log,
    patient: str,
    minutes: float,
    *,
    parts: int = 1,
    personal: bool = False,
    program: str = "ccm",
    month: str = MARCH_2025,
    interactive: bool = False,
    practitioner: str = DR,
    role: str = "physician",
) -> None:
    """Log ``minutes`` (to the second) over 1-3 activities on different days.

    ``personal``: the billing practitioner's own time (staff_id == practitioner_id and
    role physician/qhp, G4c), logged in the afternoon; otherwise clinical staff in the
    morning, rotating through STAFF. ``interactive`` marks only the first activity.
    """
    if minutes <= 0:
        return
    chunks = split_seconds(round(minutes * 60), parts)
    for i, secs in enumerate(chunks):
        who: dict[str, Any] = (
            {"staff": practitioner, "role": role}
            if personal
            else {"staff": STAFF[i], "role": "clinical_staff"}
        )
        log.activity(
            patient,
            f"{program}-{'p' if personal else 's'}{i}",
            local(month, DAYS[i], 14 if personal else 9),
            secs / 60,
            practitioner=practitioner,
            program=program,
            interactive=interactive and i == 0,
            **who,
        )


def new_log() -> Log:
    log = Log()
    log.practice(timezone="America/New_York")
    return log


def month_view(log: Log, patient: str, month: str) -> dict[str, Any]:
    """The view the engine replays. A month the record says nothing of (no activity, no
    enrollment in it: billing.patient_months) is absent from every engine's replay, so
    the core evaluates it explicitly (only the no-activity row of the CCM table)."""
    views = log.replay()
    if (patient, month) in views:
        return views[(patient, month)]
    ledger = fold(log.events())
    state = ledger.patients[(log.org, patient)]
    return evaluate(state, ledger.practice(log.org), [month])[month].view()


def ccm_case(
    staff: float,
    physician: float = 0.0,
    parts: int = 1,
    *,
    complexity: str = "low",
    plan_on: str = "2025-01-01",
    role: str = "physician",
    practitioner: str = DR,
) -> dict[str, Any]:
    log = new_log()
    log.documented("P", "ccm", practitioner, complexity=complexity, plan_on=plan_on)
    log_time(log, "P", staff, parts=parts, practitioner=practitioner)
    log_time(log, "P", physician, parts=parts, personal=True, practitioner=practitioner, role=role)
    return month_view(log, "P", MARCH_2025)


# -- checking views -----------------------------------------------------------------


def billable(view: dict[str, Any]) -> dict[str, int]:
    return {b["code"]: b["units"] for b in view["billable"]}


def blocked(view: dict[str, Any]) -> dict[str, tuple[int, set[str]]]:
    return {b["code"]: (b["units"], set(b["reasons"])) for b in view["blocked"]}


def payment(codes: dict[str, int]) -> float:
    return round(sum(FEES_2025[c] * u for c, u in codes.items()), 2)


def check(
    view: dict[str, Any],
    codes: dict[str, int],
    flags: Iterable[str],
    *,
    blocked_lines: dict[str, tuple[int, set[str]]] | None = None,
    fees_2025: bool = True,
) -> None:
    assert billable(view) == codes
    assert set(view["flags"]) == set(flags)
    assert blocked(view) == (blocked_lines or {})
    if fees_2025:
        assert view["estimated_payment"] == pytest.approx(payment(codes), abs=0.005)


# ===================================================================================
# §3.1 CCM, non-complex, clinical staff + pooled practitioner time T (step 7c)
# ===================================================================================

BT_99490 = "below_threshold:99490"
CAP_99439 = "cap_reached:99439"
CX_NOT_MET = "complex_criteria_not_met"


def non_complex_flags(flags: set[str], pooled_minutes: float) -> set[str]:
    """Step 7a / §6.3: a month that is not complex raises complex_criteria_not_met as soon
    as the pooled CCM time T would have reached 99487's 60 minutes."""
    return flags | {CX_NOT_MET} if pooled_minutes >= 60 else flags


CCM_STAFF = [
    # (staff minutes, activities, codes, flags)
    pytest.param(0, 1, {}, set(), id="RULES 3.1 T 0-19 row: 0 min (no activity) -> none"),
    pytest.param(
        1 / 60, 1, {}, {BT_99490}, id="RULES 3.1 T 0-19 row: 1 s -> none, below_threshold"
    ),
    pytest.param(19, 2, {}, {BT_99490}, id="RULES 3.1 T 0-19 row: 19 min -> none"),
    pytest.param(1199 / 60, 1, {}, {BT_99490}, id="RULES 3.1/G3 T 0-19 row: 1199 s -> none"),
    pytest.param(19.99, 3, {}, {BT_99490}, id="RULES 3.1/G3 T 0-19 row: 19.99 min over 3 -> none"),
    pytest.param(20, 1, {"99490": 1}, set(), id="RULES 3.1 T 20-39 row: 20 min -> 99490"),
    pytest.param(20, 3, {"99490": 1}, set(), id="RULES 3.1/G5 T 20-39 row: 20 min over 3 staff"),
    pytest.param(39, 2, {"99490": 1}, set(), id="RULES 3.1 T 20-39 row: 39 min -> 99490"),
    pytest.param(39.99, 1, {"99490": 1}, set(), id="RULES 3.1/G3 T 20-39 row: 39.99 -> 99490"),
    pytest.param(
        40, 1, {"99490": 1, "99439": 1}, set(), id="RULES 3.1 T 40-59 row: 40 -> +99439x1"
    ),
    pytest.param(40, 3, {"99490": 1, "99439": 1}, set(), id="RULES 3.1 T 40-59 row: 40 over 3"),
    pytest.param(
        59, 2, {"99490": 1, "99439": 1}, set(), id="RULES 3.1 T 40-59 row: 59 -> +99439x1"
    ),
    pytest.param(59.99, 3, {"99490": 1, "99439": 1}, set(), id="RULES 3.1/G3 T 40-59 row: 59.99"),
    pytest.param(60, 1, {"99490": 1, "99439": 2}, set(), id="RULES 3.1 T 60+ row: 60 -> +99439x2"),
    pytest.param(
        79, 2, {"99490": 1, "99439": 2}, set(), id="RULES 3.1 T 60+ row: 79 -> x2, no cap"
    ),
    pytest.param(
        79.99, 3, {"99490": 1, "99439": 2}, set(), id="RULES 3.1/G3 T 60+ row: 79.99 no cap"
    ),
    pytest.param(
        80, 2, {"99490": 1, "99439": 2}, {CAP_99439}, id="RULES 3.1/step 7c T 80 -> x2 cap_reached"
    ),
    pytest.param(
        150,
        3,
        {"99490": 1, "99439": 2},
        {CAP_99439},
        id="RULES 3.1/step 7c T 150 -> x2 cap_reached",
    ),
]


@pytest.mark.parametrize(("staff", "parts", "codes", "flags"), CCM_STAFF)
def test_ccm_staff_track(staff: float, parts: int, codes: dict, flags: set) -> None:
    check(ccm_case(staff, parts=parts), codes, non_complex_flags(flags, staff))


# ===================================================================================
# §3.1 CCM, physician/QHP personal time P (step 7b; <30 pooled per G4b / step 7c)
# ===================================================================================

POOLED = "physician_time_pooled"
BT_99491 = "below_threshold:99491"
XC_99491_99490 = "exclusive_conflict:99491+99490"

CCM_PHYSICIAN = [
    # (staff minutes, physician minutes, activities, codes, flags)
    pytest.param(
        0, 10, 1, {}, {POOLED, BT_99491, BT_99490}, id="RULES 3.1 P<30 row: P10 pooled, T10 -> none"
    ),
    pytest.param(
        0, 19.99, 2, {}, {POOLED, BT_99491, BT_99490}, id="RULES 3.1/G3 P<30 row: P19.99 -> none"
    ),
    pytest.param(
        0, 20, 1, {"99490": 1}, {POOLED, BT_99491}, id="RULES 3.1/G4b P<30 row: P20 pooled -> 99490"
    ),
    pytest.param(0, 29, 2, {"99490": 1}, {POOLED, BT_99491}, id="RULES 3.1 P<30 row: P29 -> 99490"),
    pytest.param(
        0, 29.99, 3, {"99490": 1}, {POOLED, BT_99491}, id="RULES 3.1/G3 P<30 row: P29.99 -> 99490"
    ),
    pytest.param(
        10, 10, 1, {"99490": 1}, {POOLED, BT_99491}, id="RULES 3.1/G4b P10+S10 pooled T20 -> 99490"
    ),
    pytest.param(
        15,
        25,
        2,
        {"99490": 1, "99439": 1},
        {POOLED, BT_99491},
        id="RULES 3.1/G4b P25+S15 pooled T40 -> 99490+99439x1",
    ),
    pytest.param(
        51,
        29,
        3,
        {"99490": 1, "99439": 2},
        {POOLED, BT_99491, CAP_99439},
        id="RULES 3.1/step 7c P29+S51 pooled T80 -> 99439x2 cap_reached",
    ),
    pytest.param(0, 30, 1, {"99491": 1}, set(), id="RULES 3.1 P 30-59 row: P30 -> 99491"),
    pytest.param(0, 59, 2, {"99491": 1}, set(), id="RULES 3.1 P 30-59 row: P59 -> 99491"),
    pytest.param(0, 59.99, 3, {"99491": 1}, set(), id="RULES 3.1/G3 P 30-59 row: P59.99 -> 99491"),
    pytest.param(
        0, 60, 1, {"99491": 1, "99437": 1}, set(), id="RULES 3.1 P 60-89 row: P60 +99437x1"
    ),
    pytest.param(0, 89.99, 3, {"99491": 1, "99437": 1}, set(), id="RULES 3.1 P 60-89 row: P89.99"),
    pytest.param(0, 90, 2, {"99491": 1, "99437": 2}, set(), id="RULES 3.1 P 90-119 row: P90 x2"),
    pytest.param(0, 119, 3, {"99491": 1, "99437": 2}, set(), id="RULES 3.1 P 90-119 row: P119 x2"),
    pytest.param(
        0, 150, 3, {"99491": 1, "99437": 4}, set(), id="RULES 3.1/D-6 P150 -> 99437x4, no cap"
    ),
    pytest.param(
        19, 30, 1, {"99491": 1}, set(), id="RULES 3.1(b)/step 7b P30+S19 -> 99491, no conflict"
    ),
    pytest.param(
        20,
        30,
        2,
        {"99491": 1},
        {XC_99491_99490},
        id="RULES 3.1(b)/step 7b P30+S20 -> 99491, exclusive_conflict:99491+99490",
    ),
    pytest.param(
        45,
        60,
        3,
        {"99491": 1, "99437": 1},
        {XC_99491_99490},
        id="RULES 3.1(b)/step 7b P60+S45 -> 99491+99437, exclusive_conflict",
    ),
]


@pytest.mark.parametrize(("staff", "physician", "parts", "codes", "flags"), CCM_PHYSICIAN)
def test_ccm_physician_track(
    staff: float, physician: float, parts: int, codes: dict, flags: set
) -> None:
    view = ccm_case(staff, physician, parts)
    check(view, codes, non_complex_flags(flags, staff + physician))


@pytest.mark.parametrize(
    ("role", "staff_id", "minutes", "codes", "flags"),
    [
        pytest.param(
            "qhp", "DR-1", 30, {"99491": 1}, set(), id="RULES G4c/3 Who: QHP personal 30 -> 99491"
        ),
        pytest.param(
            "qhp",
            "DR-1",
            60,
            {"99491": 1, "99437": 1},
            set(),
            id="RULES G4c QHP personal 60 -> +99437",
        ),
        pytest.param(
            "physician",
            "DR-2",
            30,
            {"99490": 1},
            set(),
            id="RULES G4c another physician's 30 min is staff time -> 99490, not 99491",
        ),
    ],
)
def test_ccm_personal_time_is_only_the_billing_practitioners(
    role: str, staff_id: str, minutes: float, codes: dict, flags: set
) -> None:
    log = new_log()
    log.documented("P", "ccm", DR)
    log.activity(
        "P", "a1", local(MARCH_2025, 3, 14), minutes, staff=staff_id, role=role, practitioner=DR
    )
    check(month_view(log, "P", MARCH_2025), codes, non_complex_flags(flags, minutes))


# ===================================================================================
# §3.1 Complex CCM (step 7a; D-1 fallback, D-3 no cap)
# ===================================================================================

BT_99487 = "below_threshold:99487"
XC_99491_99487 = "exclusive_conflict:99491+99487"
PLAN_IN_MONTH = "2025-03-02"  # §6.1: complex when a moderate/high CCM plan is recorded IN the month

CCM_COMPLEX = [
    # (staff, physician, activities, codes, flags)
    pytest.param(19, 0, 1, {}, {BT_99487, BT_99490}, id="RULES 3.1 complex <60 row: T19 -> none"),
    pytest.param(
        20,
        0,
        2,
        {"99490": 1},
        {BT_99487},
        id="RULES 3.1/D-1 complex <60 row: T20 -> 99490 fallback",
    ),
    pytest.param(
        59,
        0,
        2,
        {"99490": 1, "99439": 1},
        {BT_99487},
        id="RULES 3.1/D-1 complex <60 row: T59 -> 99490+99439",
    ),
    pytest.param(
        59.99,
        0,
        3,
        {"99490": 1, "99439": 1},
        {BT_99487},
        id="RULES 3.1/D-1/G3 complex <60 row: T59.99 -> 99490+99439",
    ),
    pytest.param(60, 0, 1, {"99487": 1}, set(), id="RULES 3.1 complex 60-89 row: T60 -> 99487"),
    pytest.param(89, 0, 2, {"99487": 1}, set(), id="RULES 3.1 complex 60-89 row: T89 -> 99487"),
    pytest.param(89.99, 0, 3, {"99487": 1}, set(), id="RULES 3.1/G3 complex 60-89 row: T89.99"),
    pytest.param(90, 0, 1, {"99487": 1, "99489": 1}, set(), id="RULES 3.1 complex 90-119: T90 x1"),
    pytest.param(
        119, 0, 2, {"99487": 1, "99489": 1}, set(), id="RULES 3.1 complex 90-119: T119 x1"
    ),
    pytest.param(
        120, 0, 3, {"99487": 1, "99489": 2}, set(), id="RULES 3.1 complex 120-149: T120 x2"
    ),
    pytest.param(
        149, 0, 3, {"99487": 1, "99489": 2}, set(), id="RULES 3.1 complex 120-149: T149 x2"
    ),
    pytest.param(
        149.99, 0, 3, {"99487": 1, "99489": 2}, set(), id="RULES 3.1/G3 complex 120-149: T149.99 x2"
    ),
    pytest.param(
        150, 0, 3, {"99487": 1, "99489": 3}, set(), id="RULES 3.1/D-3 complex 150-179: x3"
    ),
    pytest.param(
        179, 0, 3, {"99487": 1, "99489": 3}, set(), id="RULES 3.1/D-3 complex 150-179: T179"
    ),
    pytest.param(
        180,
        0,
        3,
        {"99487": 1, "99489": 4},
        set(),
        id="RULES 3.1/D-3 complex T180 -> 99489x4 no cap",
    ),
    pytest.param(
        40, 20, 2, {"99487": 1}, {POOLED}, id="RULES step 7a complex P20+S40 T60 -> 99487 pooled"
    ),
    pytest.param(
        30,
        30,
        2,
        {"99487": 1},
        {POOLED, XC_99491_99487},
        id="RULES step 7a complex P30+S30 -> 99487, exclusive_conflict:99491+99487",
    ),
    pytest.param(
        0,
        90,
        3,
        {"99487": 1, "99489": 1},
        {POOLED, XC_99491_99487},
        id="RULES step 7a complex P90 only -> 99487+99489 (not 99491), exclusive_conflict",
    ),
]


@pytest.mark.parametrize(("staff", "physician", "parts", "codes", "flags"), CCM_COMPLEX)
def test_ccm_complex_track(
    staff: float, physician: float, parts: int, codes: dict, flags: set
) -> None:
    view = ccm_case(staff, physician, parts, complexity="high", plan_on=PLAN_IN_MONTH)
    check(view, codes, flags)


@pytest.mark.parametrize(
    ("complexity", "plan_on", "minutes", "codes", "flags"),
    [
        pytest.param(
            "moderate", PLAN_IN_MONTH, 60, {"99487": 1}, set(), id="RULES 6.1 moderate MDM counts"
        ),
        pytest.param(
            "low",
            PLAN_IN_MONTH,
            60,
            {"99490": 1, "99439": 2},
            {CX_NOT_MET},
            id="RULES 6.1/step 7 low complexity T60 -> complex_criteria_not_met, 99490+99439x2",
        ),
        pytest.param(
            "low",
            PLAN_IN_MONTH,
            59,
            {"99490": 1, "99439": 1},
            set(),
            id="RULES 6.1 low T59: no flag",
        ),
        pytest.param(
            "high",
            "2025-02-27",
            90,
            {"99490": 1, "99439": 2},
            {CX_NOT_MET, CAP_99439},
            id="RULES 6.1/G12 high plan recorded the month before: not complex -> 99490 path",
        ),
    ],
)
def test_ccm_complex_month_criteria(
    complexity: str, plan_on: str, minutes: float, codes: dict, flags: set
) -> None:
    check(ccm_case(minutes, complexity=complexity, plan_on=plan_on), codes, flags)


# ===================================================================================
# §3.2 PCM (step 9)
# ===================================================================================

BT_99426 = "below_threshold:99426"
BT_99424 = "below_threshold:99424"

PCM = [
    # (staff, physician, activities, codes, flags)
    pytest.param(29, 0, 1, {}, {BT_99426}, id="RULES 3.2 99426 <30: S29 -> none"),
    pytest.param(29.99, 0, 3, {}, {BT_99426}, id="RULES 3.2/G3 99426 <30: S29.99 -> none"),
    pytest.param(30, 0, 1, {"99426": 1}, set(), id="RULES 3.2 99426 30: S30 -> 99426"),
    pytest.param(59.99, 0, 2, {"99426": 1}, set(), id="RULES 3.2/G3 99426: S59.99 -> 99426"),
    pytest.param(60, 0, 2, {"99426": 1, "99427": 1}, set(), id="RULES 3.2 99427 at 60: S60 x1"),
    pytest.param(89, 0, 3, {"99426": 1, "99427": 1}, set(), id="RULES 3.2 99427: S89 x1"),
    pytest.param(90, 0, 3, {"99426": 1, "99427": 2}, set(), id="RULES 3.2 99427 at 90: S90 x2"),
    pytest.param(
        119.99, 0, 3, {"99426": 1, "99427": 2}, set(), id="RULES 3.2/G3 99427: S119.99 x2"
    ),
    pytest.param(120, 0, 3, {"99426": 1, "99427": 3}, set(), id="RULES 3.2 99427 at 120: x3"),
    pytest.param(150, 0, 3, {"99426": 1, "99427": 4}, set(), id="RULES 3.2 99427 no cap: S150 x4"),
    pytest.param(0, 30, 1, {"99424": 1}, set(), id="RULES 3.2 99424 30: P30 -> 99424"),
    pytest.param(0, 59.99, 2, {"99424": 1}, set(), id="RULES 3.2/G3 99424: P59.99 -> 99424"),
    pytest.param(0, 60, 2, {"99424": 1, "99425": 1}, set(), id="RULES 3.2 99425 at 60: P60 x1"),
    pytest.param(0, 90, 3, {"99424": 1, "99425": 2}, set(), id="RULES 3.2 99425 at 90: P90 x2"),
    pytest.param(0, 120, 3, {"99424": 1, "99425": 3}, set(), id="RULES 3.2 99425 no cap: P120 x3"),
    pytest.param(
        0,
        29.99,
        2,
        {},
        {POOLED, BT_99424, BT_99426},
        id="RULES 3.2/step 9 P29.99 pooled, T<30 -> none",
    ),
    pytest.param(
        20, 10, 1, {"99426": 1}, {POOLED, BT_99424}, id="RULES 3.2/step 9 P10+S20 pooled -> 99426"
    ),
    pytest.param(
        31,
        29,
        2,
        {"99426": 1, "99427": 1},
        {POOLED, BT_99424},
        id="RULES 3.2/step 9 P29+S31 pooled T60 -> 99426+99427",
    ),
    pytest.param(
        30,
        30,
        2,
        {"99424": 1},
        {"exclusive_conflict:99424+99426"},
        id="RULES 3.2 99424 not with 99426: P30+S30 -> 99424 only",
    ),
]


@pytest.mark.parametrize(("staff", "physician", "parts", "codes", "flags"), PCM)
def test_pcm_tracks(staff: float, physician: float, parts: int, codes: dict, flags: set) -> None:
    log = new_log()
    log.documented("P", "pcm")
    log_time(log, "P", staff, parts=parts, program="pcm")
    log_time(log, "P", physician, parts=parts, personal=True, program="pcm")
    check(month_view(log, "P", MARCH_2025), codes, flags)


def one_condition_patient(log: Log, program: str) -> None:
    """documented() records two conditions; this one has a single chronic condition."""
    log.conditions("P", ["I50.22"])
    log.consent("P", program)
    log.care_plan("P", program)
    log.enrollment("P", program)
    log.visit("P")


@pytest.mark.parametrize(
    ("program", "codes", "flags", "blocked_lines"),
    [
        pytest.param(
            "pcm", {"99426": 1}, set(), None, id="RULES G13/step 6 PCM needs 1 condition -> 99426"
        ),
        pytest.param(
            "ccm",
            {},
            {"insufficient_chronic_conditions"},
            {"99490": (1, {"insufficient_chronic_conditions"})},
            id="RULES G13/step 6 CCM needs 2 conditions -> 99490 blocked",
        ),
    ],
)
def test_condition_count_gate(
    program: str, codes: dict, flags: set, blocked_lines: dict | None
) -> None:
    log = new_log()
    one_condition_patient(log, program)
    log_time(log, "P", 30, program=program)
    check(month_view(log, "P", MARCH_2025), codes, flags, blocked_lines=blocked_lines)


# ===================================================================================
# §3.3 RPM treatment management (step 10)
# ===================================================================================

BT_99457 = "below_threshold:99457"
EDIT_99458 = "units_exceed_common_payer_edit:99458"
NO_INTERACTIVE = "rpm_no_interactive_communication"
ADDON_99458 = "addon_without_base:99458"


def rpm_case(
    minutes: float,
    parts: int,
    *,
    month: str = MARCH_2025,
    interactive: bool = True,
    established: bool = True,
) -> dict[str, Any]:
    log = new_log()
    if established:
        log.documented("P", "rpm")  # consent (rpm) + a visit within 3 years (G11)
    else:
        log.conditions("P")
        log.consent("P", "rpm")
        log.enrollment("P", "rpm")
    log_time(log, "P", minutes, parts=parts, program="rpm", month=month, interactive=interactive)
    return month_view(log, "P", month)


RPM_2025 = [
    # (minutes, activities, codes, flags)
    pytest.param(10, 1, {}, {BT_99457}, id="RULES 3.3 2025 0-19 row: 10 -> none"),
    pytest.param(19.99, 3, {}, {BT_99457}, id="RULES 3.3/G3 2025 0-19 row: 19.99 -> none"),
    pytest.param(20, 1, {"99457": 1}, set(), id="RULES 3.3 2025 20-39 row: 20 -> 99457"),
    pytest.param(39.99, 2, {"99457": 1}, set(), id="RULES 3.3/G3 2025 20-39 row: 39.99 -> 99457"),
    pytest.param(40, 2, {"99457": 1, "99458": 1}, set(), id="RULES 3.3 2025 40-59 row: 40 -> x1"),
    pytest.param(59, 3, {"99457": 1, "99458": 1}, set(), id="RULES 3.3 2025 40-59 row: 59 -> x1"),
    pytest.param(60, 3, {"99457": 1, "99458": 2}, set(), id="RULES 3.3 2025 60-79 row: 60 -> x2"),
    pytest.param(
        79.99, 3, {"99457": 1, "99458": 2}, set(), id="RULES 3.3 2025 60-79 row: 79.99 x2"
    ),
    pytest.param(
        80,
        3,
        {"99457": 1, "99458": 3},
        {EDIT_99458},
        id="RULES 3.3/D-4 2025 80+ row: 80 -> x3 flagged",
    ),
    pytest.param(
        100,
        3,
        {"99457": 1, "99458": 4},
        {EDIT_99458},
        id="RULES 3.3/D-4 2025 80+ row: 100 -> x4, no hard cap",
    ),
]


@pytest.mark.parametrize(("minutes", "parts", "codes", "flags"), RPM_2025)
def test_rpm_2025(minutes: float, parts: int, codes: dict, flags: set) -> None:
    check(rpm_case(minutes, parts), codes, flags)


@pytest.mark.parametrize(
    ("minutes", "flags", "blocked_lines"),
    [
        pytest.param(
            19, {BT_99457}, None, id="RULES step 10 no interactive, T19 -> below_threshold only"
        ),
        pytest.param(
            20,
            {NO_INTERACTIVE},
            {"99457": (1, {NO_INTERACTIVE})},
            id="RULES 3.3/step 10 no interactive, T20 -> 99457 blocked",
        ),
        pytest.param(
            45,
            {NO_INTERACTIVE, ADDON_99458},
            {
                "99457": (1, {NO_INTERACTIVE}),
                "99458": (1, {NO_INTERACTIVE, ADDON_99458}),
            },
            id="RULES 3.3/G15 no interactive, T45 -> 99457 blocked, 99458 addon_without_base",
        ),
    ],
)
def test_rpm_requires_interactive_communication(
    minutes: float, flags: set, blocked_lines: dict | None
) -> None:
    check(rpm_case(minutes, 3, interactive=False), {}, flags, blocked_lines=blocked_lines)


def test_rpm_requires_established_patient() -> None:
    """G11/step 6: RPM needs an established patient (no visit within 3 years here)."""
    reason = "rpm_not_established_patient"
    view = rpm_case(25, 2, established=False)
    check(view, {}, {reason}, blocked_lines={"99457": (1, {reason})})


BT_99470 = "below_threshold:99470"

RPM_2026 = [
    # (minutes, activities, codes, flags)
    pytest.param(9.99, 2, {}, {BT_99470}, id="RULES 3.3 2026 <10: 9.99 -> none"),
    pytest.param(10, 1, {"99470": 1}, set(), id="RULES 3.3 2026 10-19 row: 10 -> 99470"),
    pytest.param(19, 2, {"99470": 1}, set(), id="RULES 3.3 2026 10-19 row: 19 -> 99470"),
    pytest.param(19.99, 3, {"99470": 1}, set(), id="RULES 3.3/G3 2026 10-19 row: 19.99 -> 99470"),
    pytest.param(20, 1, {"99457": 1}, set(), id="RULES 3.3 2026 20+: 20 -> 99457, never 99470"),
    pytest.param(39.99, 2, {"99457": 1}, set(), id="RULES 3.3 2026 20+: 39.99 -> 99457"),
    pytest.param(40, 2, {"99457": 1, "99458": 1}, set(), id="RULES 3.3 2026 20+: 40 -> +99458x1"),
    pytest.param(60, 3, {"99457": 1, "99458": 2}, set(), id="RULES 3.3 2026 20+: 60 -> +99458x2"),
    pytest.param(
        80, 3, {"99457": 1, "99458": 3}, {EDIT_99458}, id="RULES 3.3/D-4 2026 20+: 80 -> x3 flagged"
    ),
]


@pytest.mark.parametrize(("minutes", "parts", "codes", "flags"), RPM_2026)
def test_rpm_2026(minutes: float, parts: int, codes: dict, flags: set) -> None:
    view = rpm_case(minutes, parts, month=MARCH_2026)
    check(view, codes, flags, fees_2025=False)
    got = set(billable(view))
    assert not ("99470" in got and got & {"99457", "99458"})  # §3.3, D-5: never together


def test_rpm_2026_short_code_requires_interactive() -> None:
    """§3.3 2026: 99470 also needs at least one interactive communication (step 10)."""
    view = rpm_case(15, 2, month=MARCH_2026, interactive=False)
    check(
        view, {}, {NO_INTERACTIVE}, blocked_lines={"99470": (1, {NO_INTERACTIVE})}, fees_2025=False
    )


# ===================================================================================
# §3.5 BHI 99484 (step 11)
# ===================================================================================


@pytest.mark.parametrize(
    ("minutes", "parts", "codes", "flags"),
    [
        pytest.param(19, 1, {}, {"below_threshold:99484"}, id="RULES 3.5/step 11 BHI 19 -> none"),
        pytest.param(19.99, 2, {}, {"below_threshold:99484"}, id="RULES 3.5/G3 BHI 19.99 -> none"),
        pytest.param(20, 1, {"99484": 1}, set(), id="RULES 3.5/step 11 BHI 20 -> 99484"),
        pytest.param(20, 3, {"99484": 1}, set(), id="RULES 3.5/G5 BHI 20 over 3 staff -> 99484"),
        pytest.param(60, 3, {"99484": 1}, set(), id="RULES 3.5 BHI 60 -> 99484 x1 (no add-on)"),
    ],
)
def test_bhi(minutes: float, parts: int, codes: dict, flags: set) -> None:
    log = new_log()
    log.documented("P", "bhi")
    log_time(log, "P", minutes, parts=parts, program="bhi")
    check(month_view(log, "P", MARCH_2025), codes, flags)


# ===================================================================================
# G3 to the second with ended_at instead of a minutes figure
# ===================================================================================


ENDED_AT = [
    # (program, complexity, plan_on, role, [(start, end)], codes, flags)
    pytest.param(
        "ccm",
        "low",
        [("2025-03-03T10:00:00-05:00", "2025-03-03T10:19:59-05:00")],
        "clinical_staff",
        {},
        {BT_99490},
        id="RULES G3 CCM ended_at 10:00:00-10:19:59 (1199 s) -> none",
    ),
    pytest.param(
        "ccm",
        "low",
        [("2025-03-03T10:00:00-05:00", "2025-03-03T10:20:00-05:00")],
        "clinical_staff",
        {"99490": 1},
        set(),
        id="RULES G3 CCM ended_at 10:00:00-10:20:00 (1200 s) -> 99490",
    ),
    pytest.param(
        "ccm",
        "low",
        [
            ("2025-03-03T10:00:00-05:00", "2025-03-03T10:06:40-05:00"),
            ("2025-03-11T10:00:00-04:00", "2025-03-11T10:06:40-04:00"),
            ("2025-03-19T10:00:00-04:00", "2025-03-19T10:06:39-04:00"),
        ],
        "clinical_staff",
        {},
        {BT_99490},
        id="RULES G3/G5 CCM ended_at 400+400+399 s = 1199 s -> none",
    ),
    pytest.param(
        "ccm",
        "low",
        [("2025-03-09T01:50:00-05:00", "2025-03-09T03:10:00-04:00")],
        "clinical_staff",
        {"99490": 1},
        set(),
        id="RULES G2/G3 CCM across spring-forward 01:50 EST-03:10 EDT = 20 min -> 99490",
    ),
    pytest.param(
        "ccm",
        "low",
        [("2025-03-03T14:00:00-05:00", "2025-03-03T14:29:59-05:00")],
        "physician",
        {"99490": 1},
        {POOLED, BT_99491},
        id="RULES G3 CCM physician ended_at 29:59 -> pooled 99490, not 99491",
    ),
    pytest.param(
        "ccm",
        "low",
        [("2025-03-03T14:00:00-05:00", "2025-03-03T14:30:00-05:00")],
        "physician",
        {"99491": 1},
        set(),
        id="RULES G3 CCM physician ended_at 30:00 -> 99491",
    ),
    pytest.param(
        "ccm",
        "high",
        [("2025-03-03T10:00:00-05:00", "2025-03-03T10:59:59-05:00")],
        "clinical_staff",
        {"99490": 1, "99439": 1},
        {BT_99487},
        id="RULES G3/D-1 complex ended_at 59:59 -> 99490+99439",
    ),
    pytest.param(
        "ccm",
        "high",
        [("2025-03-03T10:00:00-05:00", "2025-03-03T11:00:00-05:00")],
        "clinical_staff",
        {"99487": 1},
        set(),
        id="RULES G3 complex ended_at 60:00 -> 99487",
    ),
    pytest.param(
        "pcm",
        "low",
        [("2025-03-03T10:00:00-05:00", "2025-03-03T10:29:59-05:00")],
        "clinical_staff",
        {},
        {BT_99426},
        id="RULES G3 PCM ended_at 29:59 -> none",
    ),
    pytest.param(
        "bhi",
        "low",
        [("2025-03-03T10:00:00-05:00", "2025-03-03T10:20:00-05:00")],
        "clinical_staff",
        {"99484": 1},
        set(),
        id="RULES G3 BHI ended_at 20:00 -> 99484",
    ),
    pytest.param(
        "rpm",
        "low",
        [("2025-03-03T10:00:00-05:00", "2025-03-03T10:39:59-05:00")],
        "clinical_staff",
        {"99457": 1},
        set(),
        id="RULES G3 RPM ended_at 39:59 -> 99457 only",
    ),
]


@pytest.mark.parametrize(("program", "complexity", "spans", "role", "codes", "flags"), ENDED_AT)
def test_thresholds_to_the_second_with_ended_at(
    program: str,
    complexity: str,
    spans: list[tuple[str, str]],
    role: str,
    codes: dict,
    flags: set,
) -> None:
    log = new_log()
    log.documented("P", program, complexity=complexity, plan_on=PLAN_IN_MONTH)
    for i, (start, end) in enumerate(spans):
        personal = role != "clinical_staff"
        log.activity(
            "P",
            f"a{i}",
            start,
            ended_at=end,
            staff=DR if personal else STAFF[i],
            role=role,
            program=program,
            interactive=program == "rpm",
        )
    check(month_view(log, "P", MARCH_2025), codes, flags)


# ===================================================================================
# §3.7 APCM (G13 levels; step 12 exclusive with CCM/PCM by the same practitioner)
# ===================================================================================


def apcm_patient(log: Log, conditions: list[str] | None, qmb: bool = False) -> None:
    """Enrolled on March 1, so March is a month of the record that every engine replays."""
    if conditions is not None:
        log.conditions("P", conditions)
    log.consent("P", "apcm")
    log.enrollment("P", "apcm", on="2025-03-01", qmb=qmb)
    log.visit("P")


@pytest.mark.parametrize(
    ("conditions", "qmb", "code"),
    [
        pytest.param(None, False, "G0556", id="RULES 3.7/G13 APCM 0 conditions -> G0556"),
        pytest.param(["I10"], False, "G0556", id="RULES 3.7/G13 APCM 1 condition -> G0556"),
        pytest.param(["I10"], True, "G0556", id="RULES 3.7/G13 APCM 1 condition + QMB -> G0556"),
        pytest.param(
            ["I10", "E11.9"], False, "G0557", id="RULES 3.7/G13 APCM 2 conditions -> G0557"
        ),
        pytest.param(
            ["I10", "E11.9", "N18.3"], False, "G0557", id="RULES 3.7/G13 APCM 3 conditions -> G0557"
        ),
        pytest.param(
            ["I10", "E11.9"], True, "G0558", id="RULES 3.7/G13 APCM 2 conditions + QMB -> G0558"
        ),
    ],
)
def test_apcm_levels(conditions: list[str] | None, qmb: bool, code: str) -> None:
    """APCM has no time threshold: the month is evaluated with no activity at all."""
    log = new_log()
    apcm_patient(log, conditions, qmb)
    check(month_view(log, "P", MARCH_2025), {code: 1}, set())


def test_apcm_requires_consent() -> None:
    """G10/§3.7: APCM needs consent (program apcm)."""
    log = new_log()
    log.conditions("P")
    log.enrollment("P", "apcm", on="2025-03-01")
    view = month_view(log, "P", MARCH_2025)
    check(view, {}, {"missing_consent"}, blocked_lines={"G0557": (1, {"missing_consent"})})


APCM_CONFLICTS = [
    # (apcm practitioner, ccm/pcm program, complexity, staff, physician, codes, flags, blocked)
    pytest.param(
        DR,
        "ccm",
        "low",
        45,
        0,
        {"G0557": 1},
        {"exclusive_conflict:G0557+99490"},
        {
            "99490": (1, {"exclusive_conflict:G0557+99490"}),
            "99439": (1, {"exclusive_conflict:G0557+99490"}),
        },
        id="RULES 3.7/step 12 APCM + same-practitioner CCM 45 -> G0557; 99490+99439 blocked",
    ),
    pytest.param(
        DR,
        "ccm",
        "low",
        0,
        30,
        {"G0557": 1},
        {"exclusive_conflict:G0557+99491"},
        {"99491": (1, {"exclusive_conflict:G0557+99491"})},
        id="RULES 3.7/step 12 APCM + same-practitioner 99491 -> blocked",
    ),
    pytest.param(
        DR,
        "ccm",
        "high",
        60,
        0,
        {"G0557": 1},
        {"exclusive_conflict:G0557+99487"},
        {"99487": (1, {"exclusive_conflict:G0557+99487"})},
        id="RULES 3.7/step 12 APCM + same-practitioner 99487 -> blocked",
    ),
    pytest.param(
        DR,
        "pcm",
        "low",
        30,
        0,
        {"G0557": 1},
        {"exclusive_conflict:G0557+99426"},
        {"99426": (1, {"exclusive_conflict:G0557+99426"})},
        id="RULES 3.7/step 12 APCM + same-practitioner PCM 99426 -> blocked",
    ),
    pytest.param(
        DR,
        "pcm",
        "low",
        0,
        30,
        {"G0557": 1},
        {"exclusive_conflict:G0557+99424"},
        {"99424": (1, {"exclusive_conflict:G0557+99424"})},
        id="RULES 3.7/step 12 APCM + same-practitioner PCM 99424 -> blocked",
    ),
    pytest.param(
        "DR-2",
        "ccm",
        "low",
        45,
        0,
        {"G0557": 1, "99490": 1, "99439": 1},
        set(),
        None,
        id="RULES 3.7/step 12 APCM by DR-2, CCM by DR-1 -> both billed (per practitioner X)",
    ),
]


@pytest.mark.parametrize(
    ("apcm_by", "program", "complexity", "staff", "physician", "codes", "flags", "blocked_lines"),
    APCM_CONFLICTS,
)
def test_apcm_excludes_same_practitioner_ccm_pcm(
    apcm_by: str,
    program: str,
    complexity: str,
    staff: float,
    physician: float,
    codes: dict,
    flags: set,
    blocked_lines: dict | None,
) -> None:
    log = new_log()
    log.documented("P", program, DR, complexity=complexity, plan_on=PLAN_IN_MONTH)
    log.consent("P", "apcm", practitioner=apcm_by)
    log.enrollment("P", "apcm", practitioner=apcm_by)
    log_time(log, "P", staff, program=program)
    log_time(log, "P", physician, personal=True, program=program)
    check(month_view(log, "P", MARCH_2025), codes, flags, blocked_lines=blocked_lines)


# ===================================================================================
# §5/§8 estimated payment (national amounts, 2025)
# ===================================================================================


@pytest.mark.parametrize(
    ("minutes", "physician", "complexity", "amount"),
    [
        pytest.param(55, 0, "low", 106.42, id="RULES 8 SEED-0 55 min -> 99490+99439x1 = $106.42"),
        pytest.param(
            120, 0, "high", 272.69, id="RULES 8 SEED-3 99487+2x99489 = 131.65+2x70.52 = $272.69"
        ),
        pytest.param(
            150, 0, "high", 343.21, id="RULES 3.1/D-3 99487+3x99489 = 131.65+3x70.52 = $343.21"
        ),
        pytest.param(
            0, 59, "low", 82.16, id="RULES 6.2 step 7 note P59 -> 99491 $82.16 (descriptor)"
        ),
        pytest.param(90, 0, "low", 152.35, id="RULES 3.1 cap: 99490+2x99439 = $152.35"),
    ],
)
def test_estimated_payment(
    minutes: float, physician: float, complexity: str, amount: float
) -> None:
    view = ccm_case(minutes, physician, 2, complexity=complexity, plan_on=PLAN_IN_MONTH)
    assert view["estimated_payment"] == pytest.approx(amount, abs=0.005)

"""docs/rules.md §7.1, point by point: one table per clarification, each row citing its id.

Every row builds a fresh event log (``support.builders.Log``), replays it and checks the
public view (``caretally replay`` line) of the months it names: billable codes and units,
blocked lines with their reasons, and flags named exactly as docs/rules.md §6.3. Ids
(C-1, G10, D-12, §6.2 step 7 ...) refer to docs/rules.md.

Every row runs on each engine (the fold, the Projector stepped event by event, the
archive replay: the ``engine`` fixture, tests/unit/conftest.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

import pytest

from support.builders import Log

pytestmark = pytest.mark.usefixtures("engine")  # every engine: tests/unit/conftest.py

P = "P-1"
DR = "DR-1"


def billable(view: dict[str, Any]) -> dict[str, int]:
    return {b["code"]: b["units"] for b in view["billable"]}


def _days(first: str, last: str) -> list[date]:
    a, b = date.fromisoformat(first), date.fromisoformat(last)
    return [a + timedelta(days=k) for k in range((b - a).days + 1)]


# -- C-1: a new RPM/RTM enrollment starts a new episode -----------------------------------


@dataclass(frozen=True)
class Episode:
    """A C-1 row: enrollments (date, practitioner) in one device program, readings on
    every day of each range (logged in the order given), and the expected billable codes
    of each month that has a billing line (every other month has none)."""

    cite: str
    program: str
    enrollments: tuple[tuple[str, str], ...]
    readings: tuple[tuple[str, str], ...]
    months: dict[str, dict[str, int]]
    insufficient: tuple[str, ...] = ()  # months flagged rpm_insufficient_days
    practitioners: dict[str, str] = field(default_factory=dict)  # month -> device lines' DR


C1_ROWS = [
    Episode(
        "C-1: re-enrollment inside a period that earned nothing (14 days < 16, 2025): the "
        "period ends the day before (Mar 1-14, nothing), the new grid starts at once",
        "rpm",
        (("2025-03-01", DR), ("2025-03-15", DR)),
        (("2025-03-01", "2025-04-29"),),
        # Mar 15 - Apr 13: 30 days, new episode; Apr 14 - May 13: 16 days
        {"2025-03": {}, "2025-04": {"99453": 1, "99454": 1}, "2025-05": {"99454": 1}},
        insufficient=("2025-03",),
    ),
    Episode(
        "C-1: re-enrollment inside a period that earned a device code (19 days by Mar 19): "
        "the period runs to its end, the new episode starts the day after (Mar 31)",
        "rpm",
        (("2025-03-01", DR), ("2025-03-20", DR)),
        (("2025-03-01", "2025-04-29"),),
        {"2025-03": {"99453": 1, "99454": 1}, "2025-04": {"99453": 1, "99454": 1}},
    ),
    Episode(
        "C-1: as above, the readings before the re-enrollment logged last and backwards "
        "(the grid moves when the 16th day arrives)",
        "rpm",
        (("2025-03-01", DR), ("2025-03-20", DR)),
        (("2025-03-01", "2025-03-01"), ("2025-03-20", "2025-04-29"), ("2025-03-19", "2025-03-02")),
        {"2025-03": {"99453": 1, "99454": 1}, "2025-04": {"99453": 1, "99454": 1}},
    ),
    Episode(
        "C-1, D-12: 99453 again once per episode: the second period of the new episode "
        "bills 99454 alone",
        "rpm",
        (("2025-01-01", DR), ("2025-03-15", DR)),
        # Jan 1-30, Jan 31-Mar 1, Mar 2-14 (cut: 13 days), Mar 15-Apr 13, Apr 14-May 13
        (("2025-01-01", "2025-05-13"),),
        {
            "2025-01": {"99453": 1, "99454": 1},
            "2025-03": {"99454": 1},
            "2025-04": {"99453": 1, "99454": 1},
            "2025-05": {"99454": 1},
        },
        insufficient=("2025-03",),
    ),
    Episode(
        "C-1 (2026): 2 days before the re-enrollment already earn 99445: the period runs on "
        "(23 days, 99454), the new episode from Mar 31 bills 99445 + 99453 on 9 days",
        "rpm",
        (("2026-03-01", DR), ("2026-03-10", DR)),
        (("2026-03-01", "2026-03-02"), ("2026-03-10", "2026-04-08")),
        {"2026-03": {"99453": 1, "99454": 1}, "2026-04": {"99445": 1, "99453": 1}},
    ),
    Episode(
        "C-1 (2026): 1 day earns nothing: cut short (Mar 1-9), the new grid starts Mar 10",
        "rpm",
        (("2026-03-01", DR), ("2026-03-10", DR)),
        (("2026-03-01", "2026-03-01"), ("2026-03-10", "2026-04-08")),
        {"2026-03": {}, "2026-04": {"99453": 1, "99454": 1}},
        insufficient=("2026-03",),
    ),
    Episode(
        "C-1, G14: a re-enrollment by another practitioner after a period that earned: "
        "the running period stays the first practitioner's, the new episode the second's",
        "rpm",
        (("2025-03-01", DR), ("2025-03-20", "DR-2")),
        (("2025-03-01", "2025-04-29"),),
        {"2025-03": {"99453": 1, "99454": 1}, "2025-04": {"99453": 1, "99454": 1}},
        practitioners={"2025-03": DR, "2025-04": "DR-2"},
    ),
    Episode(
        "C-1, §3.4: RTM too: re-enrollment in a period that earned nothing restarts the grid",
        "rtm",
        (("2025-03-01", DR), ("2025-03-15", DR)),
        (("2025-03-01", "2025-04-29"),),
        {"2025-03": {}, "2025-04": {"98975": 1, "98977": 1}, "2025-05": {"98977": 1}},
        insufficient=("2025-03",),
    ),
    Episode(
        "C-1, §3.4 (2026): RTM after a period that earned 98985 on 2 days: it runs on, "
        "the new episode starts the day after",
        "rtm",
        (("2026-03-01", DR), ("2026-03-10", DR)),
        (("2026-03-01", "2026-03-02"), ("2026-03-10", "2026-04-08")),
        {"2026-03": {"98975": 1, "98977": 1}, "2026-04": {"98975": 1, "98985": 1}},
    ),
]


@pytest.mark.parametrize("row", C1_ROWS, ids=lambda r: r.cite[:64])
def test_c1_new_enrollment_starts_a_new_episode(row: Episode) -> None:
    """C-1, D-12, §6.1, §6.2 steps 10-11."""
    log = Log()
    log.practice()
    log.visit(P)
    for on, who in row.enrollments:
        log.consent(P, row.program, on="2025-01-01", practitioner=who)
        log.enrollment(P, row.program, on=on, practitioner=who)
    for first, last in row.readings:
        days = _days(first, last) if first <= last else _days(last, first)[::-1]
        for d in days:
            log.reading(P, f"{d.isoformat()}T12:00:00Z", program=row.program)
    views = log.replay()
    got = {m: billable(v) for (_, m), v in views.items() if v["billable"] or m in row.months}
    assert got == row.months
    for (_, month), view in views.items():
        assert view["blocked"] == []
        assert ("rpm_insufficient_days" in view["flags"]) == (month in row.insufficient)
    if row.practitioners:
        lines = {(b.month, ln.code): ln.practitioner_id for b in log.billing() for ln in b.billable}
        assert {m: {lines[(m, c)] for c in row.months[m]} for m in row.practitioners} == {
            m: {who} for m, who in row.practitioners.items()
        }


# -- C-2: the practice's time zone has no effective date ----------------------------------


@pytest.mark.parametrize(
    ("cite", "zones", "as_of", "month"),
    [
        ("C-2: one zone, New York: 23:30 on Mar 31 is March", ("America/New_York",), None, "03"),
        (
            "C-2: a later change to UTC applies to all the practice's time, as a correction",
            ("America/New_York", "UTC"),
            None,
            "04",
        ),
        (
            "C-2: an as-of read before the change still sees the old zone",
            ("America/New_York", "UTC"),
            "2025-04-05T00:00:00Z",
            "03",
        ),
    ],
)
def test_c2_time_zone_applies_to_all_time(
    cite: str, zones: tuple[str, ...], as_of: str | None, month: str
) -> None:
    """C-2, G2, §6.1."""
    log = Log()
    log.practice(timezone=zones[0], recorded_at="2025-01-01T00:00:00Z")
    log.documented(P)
    log.activity(P, "a1", "2025-03-31T23:30:00-04:00", 20, recorded_at="2025-04-01T12:00:00Z")
    for zone in zones[1:]:
        log.practice(timezone=zone, recorded_at="2025-04-10T00:00:00Z")
    at = None if as_of is None else datetime.fromisoformat(as_of)
    views = log.replay(as_of=at)
    assert [m for _, m in views] == [f"2025-{month}"], cite
    view = views[(P, f"2025-{month}")]
    assert billable(view) == {"99490": 1}
    assert view["minutes"] == {"ccm": 20.0}


# -- C-3: complex month, P >= 30 but T < 60 -------------------------------------------------


@pytest.mark.parametrize(
    ("cite", "personal", "staff", "codes", "flags"),
    [
        (
            "C-3: P 30, T 30: 7(a) fails, 7(b) bills 99491",
            30,
            0,
            {"99491": 1},
            ["below_threshold:99487"],
        ),
        (
            "C-3: P 45 + S 10 = T 55 < 60: 99491, staff time not billable below 20",
            45,
            10,
            {"99491": 1},
            ["below_threshold:99487"],
        ),
        (
            "C-3: P 30 + S 25 = T 55: 99491; staff 20+ is the exclusive 99490",
            30,
            25,
            {"99491": 1},
            ["below_threshold:99487", "exclusive_conflict:99491+99490"],
        ),
        (
            "C-3: P 20 < 30: falls to 7(c), T 45 bills 99490 + 99439",
            20,
            25,
            {"99490": 1, "99439": 1},
            ["below_threshold:99487", "below_threshold:99491", "physician_time_pooled"],
        ),
        (
            "C-3: P 10, T 15: 7(c) below 20, nothing",
            10,
            5,
            {},
            [
                "below_threshold:99487",
                "below_threshold:99490",
                "below_threshold:99491",
                "physician_time_pooled",
            ],
        ),
    ],
)
def test_c3_complex_month_under_60_minutes(
    cite: str, personal: int, staff: int, codes: dict[str, int], flags: list[str]
) -> None:
    """C-3, D-1, §6.2 step 7: a complex month (moderate CCM plan recorded in it)."""
    log = Log()
    log.practice()
    log.documented(P, complexity="moderate", plan_on="2025-03-02")
    log.activity(P, "p1", "2025-03-03T10:00:00-05:00", personal, staff=DR, role="physician")
    if staff:
        log.activity(P, "s1", "2025-03-04T10:00:00-05:00", staff)
    view = log.view(P, "2025-03")
    assert view["minutes"] == {"ccm": float(personal + staff)}
    assert billable(view) == codes, cite
    assert view["blocked"] == []
    assert view["flags"] == flags


# -- C-4: PCM with P >= 30 and S >= 30 --------------------------------------------------------


@pytest.mark.parametrize(
    ("cite", "personal", "staff", "codes", "flags"),
    [
        (
            "C-4: P 30 and S 30: 99424 wins, staff PCM time not billable",
            30,
            30,
            {"99424": 1},
            ["exclusive_conflict:99424+99426"],
        ),
        (
            "C-4: P 65 and S 45: 99424 + 99425, no 99426/99427",
            65,
            45,
            {"99424": 1, "99425": 1},
            ["exclusive_conflict:99424+99426"],
        ),
        ("C-4: P 30, S 25 (< 30): 99424 alone, no conflict", 30, 25, {"99424": 1}, []),
    ],
)
def test_c4_pcm_practitioner_track_wins(
    cite: str, personal: int, staff: int, codes: dict[str, int], flags: list[str]
) -> None:
    """C-4, §3.2, §6.2 step 9."""
    log = Log()
    log.practice()
    log.documented(P, "pcm")
    log.activity(
        P, "p1", "2025-03-03T10:00:00-05:00", personal, staff=DR, role="physician", program="pcm"
    )
    log.activity(P, "s1", "2025-03-04T10:00:00-05:00", staff, program="pcm")
    view = log.view(P, "2025-03")
    assert billable(view) == codes, cite
    assert view["blocked"] == []
    assert view["flags"] == flags


# -- C-5: stay boundaries are inclusive ----------------------------------------------------


@pytest.mark.parametrize("setting", ["inpatient", "snf"])
@pytest.mark.parametrize(
    ("cite", "day", "counted"),
    [
        ("C-5: the day before admission counts", "2025-03-04", True),
        ("C-5: the admission date is an inpatient date", "2025-03-05", False),
        ("C-5: a date inside the stay", "2025-03-06", False),
        ("C-5: the discharge date is an inpatient date", "2025-03-07", False),
        ("C-5: the day after discharge counts", "2025-03-08", True),
    ],
)
def test_c5_stay_boundaries_are_inclusive(setting: str, cite: str, day: str, counted: bool) -> None:
    """C-5, G17, §6.2 step 3: for ``inpatient`` and ``snf`` alike."""
    log = Log()
    log.practice()
    log.documented(P)
    log.stay(P, "2025-03-05", "2025-03-07", setting=setting)
    log.activity(P, "a1", f"{day}T10:00:00-05:00", 25)
    view = log.view(P, "2025-03")
    if counted:
        assert (view["minutes"], billable(view), view["flags"]) == ({"ccm": 25.0}, {"99490": 1}, [])
    else:
        assert (view["minutes"], billable(view)) == ({"ccm": 0.0}, {}), cite
        assert view["flags"] == ["below_threshold:99490", "inpatient_time_excluded"]


# -- C-6: minutes of a program that fails its gate still take part in steps 3-5 -------------


@pytest.mark.parametrize(
    ("cite", "ccm_consent", "minutes", "billed", "blocked", "flags"),
    [
        (
            "C-6: CCM without consent, received first, keeps the overlapping minutes: "
            "BHI loses them and CCM is blocked",
            False,
            {"bhi": 10.0, "ccm": 30.0},
            {},
            [{"code": "99490", "units": 1, "reasons": ["missing_consent"]}],
            ["below_threshold:99484", "double_count:ccm+bhi", "missing_consent"],
        ),
        (
            "C-6: the same with CCM consent: the same split, CCM billed",
            True,
            {"bhi": 10.0, "ccm": 30.0},
            {"99490": 1},
            [],
            ["below_threshold:99484", "double_count:ccm+bhi"],
        ),
    ],
)
def test_c6_gated_minutes_still_hold_their_time(
    cite: str,
    ccm_consent: bool,
    minutes: dict[str, float],
    billed: dict[str, int],
    blocked: list[dict[str, Any]],
    flags: list[str],
) -> None:
    """C-6, G6, G9, §6.2 steps 4 and 6."""
    log = Log()
    log.practice()
    log.conditions(P)
    log.care_plan(P)
    log.enrollment(P)
    if ccm_consent:
        log.consent(P, "ccm")
    log.consent(P, "bhi")
    log.activity(P, "c1", "2025-03-03T10:00:00-05:00", 30)
    log.activity(P, "b1", "2025-03-03T10:10:00-05:00", 30, program="bhi")
    view = log.view(P, "2025-03")
    assert view["minutes"] == minutes, cite
    assert billable(view) == billed
    assert view["blocked"] == blocked
    assert view["flags"] == flags


# -- C-7: consent follows the billing practitioner -------------------------------------------


@pytest.mark.parametrize(
    ("cite", "consents", "billing", "ok"),
    [
        ("C-7: consent by the billing practitioner covers", ("DR-1",), "DR-1", True),
        ("C-7: another practitioner's consent does not", ("DR-2",), "DR-1", False),
        ("C-7: a change of practitioner needs its own consent", ("DR-1",), "DR-2", False),
        ("C-7: both on record: the new practitioner is covered", ("DR-1", "DR-2"), "DR-2", True),
    ],
)
def test_c7_consent_follows_the_billing_practitioner(
    cite: str, consents: tuple[str, ...], billing: str, ok: bool
) -> None:
    """C-7, G10, D-9, §6.2 step 6."""
    log = Log()
    log.practice()
    log.conditions(P)
    log.care_plan(P)
    for who in consents:
        log.consent(P, "ccm", practitioner=who)
    log.enrollment(P, practitioner=billing)
    log.activity(P, "a1", "2025-03-03T10:00:00-05:00", 25, practitioner=billing)
    view = log.view(P, "2025-03")
    if ok:
        assert (billable(view), view["blocked"], view["flags"]) == ({"99490": 1}, [], []), cite
    else:
        assert billable(view) == {}, cite
        assert view["blocked"] == [{"code": "99490", "units": 1, "reasons": ["missing_consent"]}]
        assert view["flags"] == ["missing_consent"]

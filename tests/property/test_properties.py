"""Property tests (hypothesis) of the accounting semantics.

References: docs/design.md ("Accounting semantics", "One semantics, several
engines", idempotent folds) and docs/rules.md §6.2 (evaluation order).

The log strategy builds realistic small wire-contract logs: one practice (sometimes
two), one to four patients each, a random practice time zone, documentation
(conditions, consents and revocations, care plans, enrollments, visits, stays),
activities of every program by three staff members and two practitioners (with
face-to-face, interactive and non-clinical variants), device readings, exact
re-sends under new activity ids, amendments and voids. Start instants are biased
toward local month edges and US DST days so that splits and overlaps are common.
Each patient's events form a sub-log with non-decreasing ``recorded_at``; the log
is their stable merge by ``recorded_at`` after the practices' configuration.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import cache
from itertools import pairwise
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import orjson
import pytest
from hypothesis import HealthCheck, event, example, given, note, settings
from hypothesis import strategies as st

from projections.calendar import epoch, month_bounds
from projections.engine import Projector, billing, fold, replay
from projections.intervals import measure, subtract, total, union
from projections.ledger import Ledger, Status
from schemas.events import Event, parse_event

ZONES = ("America/New_York", "America/Los_Angeles", "UTC", "Asia/Kolkata")
STAFF = ("RN-1", "RN-2", "MA-1")
PRACTITIONERS = ("DR-1", "DR-2")
PROGRAMS = ("ccm", "ccm", "ccm", "pcm", "rpm", "rtm", "bhi", "tcm")
ICD = ("E11.9", "I10", "J44.9", "N18.3", "F32.9", "I50.9")
WINDOW_LO = datetime(2025, 2, 25, tzinfo=UTC)
WINDOW_HI = datetime(2025, 4, 5, 23, 59, 59, tzinfo=UTC)
RECORDED_FROM = datetime(2025, 2, 20, tzinfo=UTC)
PREAMBLE_AT = "2025-01-01T00:00:00Z"
END_OF_TIME = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)

Raw = dict[str, Any]
T = TypeVar("T")

SETTINGS = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# -- helpers -------------------------------------------------------------------------


def parse(raws: list[Raw]) -> list[Event]:
    return [parse_event(orjson.dumps(r)) for r in raws]


def views(events: list[Event], as_of: datetime | None = None) -> list[dict[str, Any]]:
    return [b.view() for b in replay(events, as_of=as_of)]


def iso(ts: datetime, display_zone: str = "UTC") -> str:
    return ts.astimezone(ZoneInfo(display_zone)).isoformat()


def local_midnight(d: date, tz: str) -> datetime:
    return datetime(d.year, d.month, d.day, tzinfo=ZoneInfo(tz)).astimezone(UTC)


def anchors(tz: str) -> list[datetime]:
    """Instants worth landing on: local month edges, local midnights around US DST
    (2025-03-09), and the US DST jumps themselves."""
    out = [
        local_midnight(date(2025, 3, 1), tz),
        local_midnight(date(2025, 4, 1), tz),
        local_midnight(date(2025, 3, 9), tz),
        local_midnight(date(2025, 3, 10), tz),
        datetime(2025, 3, 9, 7, tzinfo=UTC),  # 02:00 EST -> 03:00 EDT
        datetime(2025, 3, 9, 10, tzinfo=UTC),  # 02:00 PST -> 03:00 PDT
    ]
    return out


# -- strategies ------------------------------------------------------------------------
# Strategies are built once (module level or cached): building them inside draws is slow.


@cache
def _index(n: int) -> st.SearchStrategy[int]:
    return st.integers(0, n - 1)


def pick(draw: st.DrawFn, options: Sequence[T]) -> T:
    """``options[i]`` for a drawn ``i`` (shrinks toward the first option)."""
    return options[draw(_index(len(options)))]


@cache
def anchor_list(tz: str) -> tuple[datetime, ...]:
    return tuple(anchors(tz))


dates = st.dates(date(2025, 1, 15), date(2025, 4, 5))
visit_dates = st.dates(date(2022, 1, 1), date(2025, 4, 5))
stay_dates = st.dates(date(2025, 2, 20), date(2025, 4, 5))
reading_starts = st.dates(date(2025, 2, 1), date(2025, 4, 5))
reading_days = st.lists(
    st.tuples(st.integers(0, 60), st.integers(0, 86399)),
    min_size=1,
    max_size=24,
    unique_by=lambda t: t[0],
)
durations = st.one_of(
    st.integers(1, 180),
    st.integers(60, 3 * 3600),
    st.sampled_from([600, 1199, 1200, 1800, 2400, 3600, 5400]),
    st.integers(1, 180).map(lambda m: m * 60),
)
near_offsets = st.integers(-3600, 3600)
edge_offsets = st.integers(-4 * 3600, 2 * 3600)
window_offsets = st.integers(0, int((WINDOW_HI - WINDOW_LO).total_seconds()))
codes_lists = st.lists(st.sampled_from(ICD), max_size=4)
booleans = st.booleans()
one_in_3 = st.integers(0, 2)
one_in_4 = st.integers(0, 3)
one_in_5 = st.integers(0, 4)
one_in_8 = st.integers(0, 7)
ops_counts = st.integers(0, 14)
stay_lengths = st.integers(0, 5)
patient_counts = {n: st.integers(1, n) for n in range(1, 5)}
recorded_starts = st.integers(0, 5 * 86400)
recorded_steps = st.sampled_from([0, 1, 60, 3600, 86400, 3 * 86400])
ROLES = ("clinical_staff",) * 6 + ("non_clinical",)
WHO = (*STAFF, "practitioner")
KINDS = (
    ("activity",) * 8
    + ("amend", "amend", "void", "resend", "readings", "readings")
    + ("consent", "care_plan", "conditions", "enrollment", "enrollment", "visit", "stay")
)


Near = list[tuple[datetime, str, str, str, str]]  # earlier (start, staff, role, pract, program)


def instant(draw: st.DrawFn, tz: str) -> datetime:
    """A start instant in the window, biased to month edges and DST nights."""
    if draw(one_in_4):
        base = pick(draw, anchor_list(tz))
        offset = draw(edge_offsets)
    else:
        base = WINDOW_LO
        offset = draw(window_offsets)
    if draw(booleans):
        offset -= offset % 60  # minute granularity
    return base + timedelta(seconds=offset)


def activity_data(
    draw: st.DrawFn, tz: str, activity_id: str, near: Near, usual: str
) -> dict[str, Any]:
    """One activity body; ``usual`` is the patient's documented practitioner, billed most.
    A third of the time it starts within an hour of an earlier activity of the patient,
    often by the same person in the same program (overlap, double count, concurrency)."""
    practitioner = usual if draw(one_in_4) else pick(draw, PRACTITIONERS)
    who = pick(draw, WHO)
    if who == "practitioner":
        staff_id, role = practitioner, "physician"
    else:
        staff_id, role = who, pick(draw, ROLES)
    program = pick(draw, PROGRAMS)
    if near and draw(one_in_3) == 0:
        start, *same = pick(draw, near)
        start += timedelta(seconds=draw(near_offsets))
        if draw(booleans):
            staff_id, role, practitioner, program = same
    else:
        start = instant(draw, tz)
    near.append((start, staff_id, role, practitioner, program))
    seconds = draw(durations)
    display = pick(draw, ("UTC", tz, "Asia/Kolkata"))
    data: dict[str, Any] = {
        "activity_id": activity_id,
        "staff_id": staff_id,
        "staff_role": role,
        "practitioner_id": practitioner,
        "program": program,
        "activity": pick(draw, ("care_coordination", "medication_review")),
        "started_at": iso(start, display),
    }
    if draw(booleans):
        data["ended_at"] = iso(start + timedelta(seconds=seconds), display)
    else:
        data["minutes"] = seconds / 60
    if draw(one_in_8) == 0:
        data["face_to_face"] = True
    if draw(booleans):
        data["interactive"] = True
    return data


Spec = tuple[str, dict[str, Any]]  # (type, data) of one patient event


def patient_specs(draw: st.DrawFn, tz: str, pid: str) -> list[Spec]:
    """One patient's events in log order (without envelope)."""
    specs: list[Spec] = []
    pract = pick(draw, PRACTITIONERS)
    if draw(one_in_5) > 0:  # usually documented for CCM (like Log.documented)
        doc_on = pick(draw, ("2025-01-01", "2025-02-01", "2025-03-05"))
        specs += [
            ("conditions.recorded", {"chronic": ["E11.9", "I10"]}),
            ("consent.recorded", _consent("ccm", pract, doc_on)),
            ("care_plan.recorded", {"program": "ccm", "on": doc_on, "complexity": "low"}),
            ("enrollment.recorded", _enrollment("ccm", pract, doc_on, False)),
            ("visit.recorded", {"practitioner_id": pract, "on": "2024-12-01", "kind": "e_m"}),
        ]
    ids: list[str] = []  # activity ids ever logged
    near: Near = []
    for _ in range(draw(ops_counts)):
        kind = pick(draw, KINDS)
        if kind in ("amend", "void", "resend") and not ids:
            kind = "activity"
        if kind == "activity":
            aid = f"{pid}-a{len(ids) + 1}"
            ids.append(aid)
            specs.append(("activity.logged", activity_data(draw, tz, aid, near, pract)))
        elif kind == "amend":
            aid = pick(draw, ids)
            specs.append(("activity.logged", activity_data(draw, tz, aid, near, pract)))
        elif kind == "void":
            aid = pick(draw, ids)
            specs.append(("activity.voided", {"activity_id": aid, "reason": "entered in error"}))
        elif kind == "resend":  # same staff, start, length, program under a new activity id
            data = dict(pick(draw, [d for t, d in specs if t == "activity.logged"]))
            data["activity_id"] = aid = f"{pid}-a{len(ids) + 1}"
            ids.append(aid)
            specs.append(("activity.logged", data))
        elif kind == "readings":  # random order, so earlier readings may arrive later
            program = pick(draw, ("rpm", "rpm", "rtm"))
            first = draw(reading_starts)
            for k, sec in draw(reading_days):
                taken = local_midnight(first + timedelta(days=k), tz) + timedelta(seconds=sec)
                specs.append(
                    (
                        "device.reading",
                        {"device_id": "D-1", "program": program, "taken_at": iso(taken, tz)},
                    )
                )
        elif kind == "consent":
            revoked = draw(one_in_4) == 0
            data = _consent(
                pick(draw, ("ccm", "pcm", "rpm", "bhi")),
                pick(draw, PRACTITIONERS),
                draw(dates).isoformat(),
            )
            specs.append(("consent.revoked" if revoked else "consent.recorded", data))
        elif kind == "care_plan":
            data = {
                "program": pick(draw, ("ccm", "ccm", "pcm", "bhi", "rpm")),
                "on": draw(dates).isoformat(),
                "complexity": pick(draw, ("low", "moderate", "high")),
            }
            specs.append(("care_plan.recorded", data))
        elif kind == "conditions":
            specs.append(("conditions.recorded", {"chronic": draw(codes_lists)}))
        elif kind == "enrollment":
            data = _enrollment(
                pick(draw, ("ccm", "pcm", "rpm", "rtm", "bhi", "apcm", "apcm")),
                pick(draw, PRACTITIONERS),
                draw(dates).isoformat(),
                draw(booleans),
            )
            specs.append(("enrollment.recorded", data))
        elif kind == "visit":
            data = {
                "practitioner_id": pick(draw, PRACTITIONERS),
                "on": draw(visit_dates).isoformat(),
                "kind": pick(draw, ("e_m", "awv", "ippe", "tcm")),
            }
            specs.append(("visit.recorded", data))
        else:  # stay
            admitted = draw(stay_dates)
            data = {
                "setting": pick(draw, ("inpatient", "snf")),
                "admitted_on": admitted.isoformat(),
                "discharged_on": (admitted + timedelta(days=draw(stay_lengths))).isoformat(),
            }
            specs.append(("stay.recorded", data))
    return specs


def _consent(program: str, practitioner: str, on: str) -> dict[str, Any]:
    return {"program": program, "practitioner_id": practitioner, "method": "verbal", "on": on}


def _enrollment(program: str, practitioner: str, on: str, qmb: bool) -> dict[str, Any]:
    return {"program": program, "practitioner_id": practitioner, "on": on, "qmb": qmb}


@dataclass
class GenLog:
    """A generated log: the practices' configuration, then one sub-log per patient."""

    preamble: list[Raw]
    sublogs: list[list[Raw]]

    def merged(self) -> list[Raw]:
        """Stable merge of the sub-logs by ``recorded_at``: non-decreasing in log order."""
        return self.preamble + list(
            heapq.merge(*self.sublogs, key=lambda r: _instant(r["recorded_at"]))
        )

    def interleaved(self, picks: list[int]) -> list[Raw]:
        """Another interleaving: ``picks[i]`` chooses which pending sub-log goes next."""
        queues = [list(s) for s in self.sublogs if s]
        out = list(self.preamble)
        i = 0
        while queues:
            k = picks[i] % len(queues) if i < len(picks) else 0
            i += 1
            out.append(queues[k].pop(0))
            if not queues[k]:
                queues.pop(k)
        return out


def _instant(text: str) -> datetime:
    return datetime.fromisoformat(text)


@st.composite
def gen_logs(draw: st.DrawFn, max_patients: int = 4) -> GenLog:
    orgs = ["o1"] if draw(one_in_4) else ["o1", "o2"]
    preamble: list[Raw] = []
    sublogs: list[list[Raw]] = []
    for org in orgs:
        tz = pick(draw, ZONES)
        preamble.append(
            {
                "event_id": f"{org}-config",
                "type": "practice.configured",
                "schema_version": 1,
                "org_id": org,
                "recorded_at": PREAMBLE_AT,
                "source": "test",
                "data": {
                    "timezone": tz,
                    "facility_type": pick(draw, ("office", "fqhc")),
                },
            }
        )
        for p in range(draw(patient_counts[max_patients])):
            pid = f"P-{p + 1}"  # the same ids in two orgs are different patients
            at = RECORDED_FROM + timedelta(seconds=draw(recorded_starts))
            sub: list[Raw] = []
            for k, (type_, data) in enumerate(patient_specs(draw, tz, pid)):
                at += timedelta(seconds=draw(recorded_steps))
                sub.append(
                    {
                        "event_id": f"{org}-{pid}-e{k + 1}",
                        "type": type_,
                        "schema_version": 1,
                        "org_id": org,
                        "patient_id": pid,
                        "recorded_at": iso(at),
                        "source": "test",
                        "data": data,
                    }
                )
            sublogs.append(sub)
    return GenLog(preamble, sublogs)


def fixed_log(tz: str, events: list[tuple[str, str, dict[str, Any]]]) -> GenLog:
    """A hand-written log of org ``o1``: (patient, type, data) in log order."""
    preamble = [
        {
            "event_id": "o1-config",
            "type": "practice.configured",
            "schema_version": 1,
            "org_id": "o1",
            "recorded_at": PREAMBLE_AT,
            "source": "test",
            "data": {"timezone": tz},
        }
    ]
    subs: dict[str, list[Raw]] = {}
    for k, (pid, type_, data) in enumerate(events):
        subs.setdefault(pid, []).append(
            {
                "event_id": f"o1-x{k + 1}",
                "type": type_,
                "schema_version": 1,
                "org_id": "o1",
                "patient_id": pid,
                "recorded_at": iso(RECORDED_FROM + timedelta(minutes=k)),
                "source": "test",
                "data": data,
            }
        )
    return GenLog(preamble, list(subs.values()))


def _activity(aid: str, started_at: str, minutes: float, **extra: Any) -> dict[str, Any]:
    return {
        "activity_id": aid,
        "staff_id": "DR-1",
        "staff_role": "physician",
        "practitioner_id": "DR-1",
        "program": "ccm",
        "activity": "care_coordination",
        "started_at": started_at,
        "minutes": minutes,
        **extra,
    }


# Found by these properties (regressions kept as explicit examples):
# - Projector missed APCM months that an activity made appear (Feb between a January APCM
#   enrollment and a March activity) or vanish (a void), as it refreshed only the
#   activity's own months.
APCM_GAP = fixed_log(
    "America/New_York",
    [
        ("P-1", "enrollment.recorded", _enrollment("apcm", "DR-1", "2025-01-15", False)),
        ("P-1", "activity.logged", _activity("a1", "2025-03-01T05:00:00+00:00", 1 / 60)),
    ],
)
APCM_VOID = fixed_log(
    "UTC",
    [
        ("P-1", "enrollment.recorded", _enrollment("apcm", "DR-1", "2025-01-15", False)),
        ("P-1", "activity.logged", _activity("a1", "2025-04-03T10:00:00+00:00", 20)),
        ("P-1", "conditions.recorded", {"chronic": ["E11.9", "I10"]}),
        ("P-1", "activity.voided", {"activity_id": "a1", "reason": "entered in error"}),
    ],
)
# - A consent revocation with no consent before it crashed accounting (IndexError).
REVOCATION_ONLY = fixed_log(
    "UTC",
    [
        ("P-1", "consent.revoked", _consent("pcm", "DR-1", "2025-01-15")),
        ("P-1", "activity.logged", _activity("a1", "2025-03-01T05:00:00+00:00", 20, program="pcm")),
    ],
)


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
            "data": _consent("ccm", "DR-1", "2025-01-01"),
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
            "data": _enrollment("ccm", "DR-1", "2025-01-01", False),
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

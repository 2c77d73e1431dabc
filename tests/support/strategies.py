"""Hypothesis strategies for realistic small wire-contract logs (the property tests'
generators, shared with the archive-replay agreement and the fairness tests).

One practice (sometimes two), one to four patients each, a random practice time zone,
documentation (conditions, consents and revocations, care plans, enrollments, visits,
stays), activities of every program by three staff members and two practitioners (with
face-to-face, interactive and non-clinical variants), device readings, exact re-sends under
new activity ids, amendments and voids. Start instants are biased toward local month edges
and US DST days so that splits and overlaps are common. Each patient's events form a
sub-log with non-decreasing ``recorded_at``; the log is their stable merge by
``recorded_at`` after the practices' configuration.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import cache
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

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
            ("consent.recorded", consent_data("ccm", pract, doc_on)),
            ("care_plan.recorded", {"program": "ccm", "on": doc_on, "complexity": "low"}),
            ("enrollment.recorded", enrollment_data("ccm", pract, doc_on, False)),
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
            data = consent_data(
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
            data = enrollment_data(
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


def consent_data(program: str, practitioner: str, on: str) -> dict[str, Any]:
    return {"program": program, "practitioner_id": practitioner, "method": "verbal", "on": on}


def enrollment_data(program: str, practitioner: str, on: str, qmb: bool) -> dict[str, Any]:
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
        ("P-1", "enrollment.recorded", enrollment_data("apcm", "DR-1", "2025-01-15", False)),
        ("P-1", "activity.logged", _activity("a1", "2025-03-01T05:00:00+00:00", 1 / 60)),
    ],
)
APCM_VOID = fixed_log(
    "UTC",
    [
        ("P-1", "enrollment.recorded", enrollment_data("apcm", "DR-1", "2025-01-15", False)),
        ("P-1", "activity.logged", _activity("a1", "2025-04-03T10:00:00+00:00", 20)),
        ("P-1", "conditions.recorded", {"chronic": ["E11.9", "I10"]}),
        ("P-1", "activity.voided", {"activity_id": "a1", "reason": "entered in error"}),
    ],
)
# - A consent revocation with no consent before it crashed accounting (IndexError).
REVOCATION_ONLY = fixed_log(
    "UTC",
    [
        ("P-1", "consent.revoked", consent_data("pcm", "DR-1", "2025-01-15")),
        ("P-1", "activity.logged", _activity("a1", "2025-03-01T05:00:00+00:00", 20, program="pcm")),
    ],
)

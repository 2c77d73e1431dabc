"""The synthetic EHR traffic generator: valid, ordered, deterministic, and awkward enough."""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest

from schemas import parse_event
from streams.demo.synthetic import generate_events, generate_practice_log, write_ndjson

Event = dict[str, Any]

ALL_TYPES = {
    "practice.configured",
    "activity.logged",
    "activity.voided",
    "consent.recorded",
    "consent.revoked",
    "care_plan.recorded",
    "conditions.recorded",
    "enrollment.recorded",
    "visit.recorded",
    "stay.recorded",
    "device.reading",
    "month.closed",
}


@pytest.fixture(scope="module")
def log() -> list[Event]:
    """The default practice: 60 patients, March 2025 (spans the DST change)."""
    return list(generate_practice_log())


@pytest.fixture(scope="module")
def two_months() -> list[Event]:
    return list(generate_practice_log(seed=11, patients=40, months=("2025-10", "2025-11")))


@pytest.fixture(scope="module")
def big() -> list[Event]:
    return list(generate_events(20_000))


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _interval(data: dict[str, Any]) -> tuple[datetime, datetime]:
    start = _at(data["started_at"])
    if "ended_at" in data:
        return start, _at(data["ended_at"])
    return start, start + timedelta(minutes=data["minutes"])


def _activities(events: list[Event]) -> list[Event]:
    return [ev for ev in events if ev["type"] == "activity.logged"]


def _assert_valid_and_ordered(events: list[Event]) -> None:
    previous = None
    for ev in events:
        parse_event(orjson.dumps(ev))  # raises EventRejected with the reason
        recorded = _at(ev["recorded_at"])
        assert previous is None or recorded >= previous, ev
        previous = recorded


def test_practice_log_events_validate_and_are_ordered(
    log: list[Event], two_months: list[Event]
) -> None:
    _assert_valid_and_ordered(log)
    _assert_valid_and_ordered(two_months)


def test_generate_events_size_validity_and_order(big: list[Event]) -> None:
    assert 18_000 <= len(big) <= 22_000
    _assert_valid_and_ordered(big)


def test_deterministic() -> None:
    assert list(generate_practice_log(seed=3, patients=25)) == list(
        generate_practice_log(seed=3, patients=25)
    )
    assert list(generate_practice_log(seed=3, patients=25)) != list(
        generate_practice_log(seed=4, patients=25)
    )
    assert list(generate_events(3_000, seed=5)) == list(generate_events(3_000, seed=5))


def test_event_ids_unique_except_exact_resends(log: list[Event]) -> None:
    by_id: dict[str, Event] = {}
    resent = 0
    for ev in log:
        first = by_id.setdefault(ev["event_id"], ev)
        if first is not ev:
            assert first == ev, "a repeated event_id must carry an identical body"
            resent += 1
    assert resent >= 1


def test_practice_configured_first_per_org(log: list[Event], big: list[Event]) -> None:
    assert log[0]["type"] == "practice.configured"
    assert "patient_id" not in log[0]
    first: dict[str, Event] = {}
    for ev in big:
        first.setdefault(ev["org_id"], ev)
    assert len(first) == 3
    assert all(ev["type"] == "practice.configured" for ev in first.values())
    settings = [ev["data"] for ev in first.values()]
    assert any(s["timezone"] == "America/Los_Angeles" for s in settings)
    assert any(s["facility_type"] == "fqhc" for s in settings)


def test_contains_every_event_type(log: list[Event], two_months: list[Event]) -> None:
    assert {ev["type"] for ev in log} == ALL_TYPES - {"month.closed"}
    assert {ev["type"] for ev in two_months} == ALL_TYPES
    closed = [ev for ev in two_months if ev["type"] == "month.closed"]
    assert [ev["data"]["month"] for ev in closed] == ["2025-10"]


def test_generate_events_spans_2025_and_early_2026(big: list[Event]) -> None:
    months = Counter(ev["data"]["started_at"][:7] for ev in _activities(big))
    assert {f"2025-{m:02d}" for m in range(1, 13)} <= set(months)
    assert months["2026-01"] > 0
    assert months["2026-02"] > 0
    types = Counter(ev["type"] for ev in big)
    assert types["device.reading"] == max(types.values())


def test_amendments_voids_and_resends(log: list[Event]) -> None:
    acts = _activities(log)
    versions: dict[str, list[Event]] = defaultdict(list)
    for ev in acts:
        versions[ev["data"]["activity_id"]].append(ev)
    amended = [
        vs
        for vs in versions.values()
        if len({v["event_id"] for v in vs}) > 1 and vs[0]["data"] != vs[-1]["data"]
    ]
    assert amended, "an activity_id re-logged with changed minutes"
    voided = {ev["data"]["activity_id"] for ev in log if ev["type"] == "activity.voided"}
    assert voided and voided <= set(versions)
    # the same staff/start/minutes/program under a new event_id (and activity_id)
    seen: dict[tuple[Any, ...], str] = {}
    resends = 0
    for ev in acts:
        d = ev["data"]
        key = (ev["patient_id"], d["staff_id"], d["program"], *_interval(d))
        if key in seen and seen[key] != ev["event_id"]:
            resends += 1
        seen.setdefault(key, ev["event_id"])
    assert resends >= 1


def test_overlaps_within_and_across_programs(log: list[Event]) -> None:
    by_staff: dict[tuple[str, str], list[tuple[datetime, datetime, str, str]]] = defaultdict(list)
    for ev in _activities(log):
        d = ev["data"]
        by_staff[ev["patient_id"], d["staff_id"]].append(
            (*_interval(d), d["program"], d["activity_id"])
        )
    same = cross = 0
    for items in by_staff.values():
        items.sort()
        for i, (start, end, program, aid) in enumerate(items):
            for other_start, _, other_program, other_aid in items[i + 1 :]:
                if other_start >= end:
                    break
                if other_aid == aid or other_start == start:
                    continue  # versions and re-sends of one entry
                same += other_program == program
                cross += other_program != program
    assert same >= 1
    assert cross >= 1


def test_roles_flags_and_midnight_crossing(log: list[Event]) -> None:
    acts = [ev["data"] for ev in _activities(log)]
    assert any(d.get("face_to_face") for d in acts)
    assert any(d.get("interactive") for d in acts)
    assert any(d["staff_role"] == "non_clinical" for d in acts)
    assert any(
        d["staff_role"] == "physician" and d["staff_id"] == d["practitioner_id"] for d in acts
    )
    assert any("ended_at" in d for d in acts)
    assert any(isinstance(d.get("minutes"), float) for d in acts)
    assert {d["program"] for d in acts} >= {"ccm", "pcm", "rpm", "rtm", "bhi"}
    tz = ZoneInfo("America/New_York")
    crossing = [
        d
        for d in acts
        if (span := _interval(d))[0].astimezone(tz).month == 3 and span[1].astimezone(tz).month == 4
    ]
    assert crossing, "an activity across local midnight at the month's end"


def test_consent_late_and_missing(log: list[Event]) -> None:
    first_activity: dict[str, str] = {}
    for ev in _activities(log):
        day = ev["data"]["started_at"][:10]
        first_activity[ev["patient_id"]] = min(day, first_activity.get(ev["patient_id"], day))
    consent: dict[str, str] = {}
    for ev in log:
        if ev["type"] == "consent.recorded":
            consent.setdefault(ev["patient_id"], ev["data"]["on"])
    assert any(pid in consent and consent[pid] > day for pid, day in first_activity.items())
    assert any(pid not in consent for pid in first_activity)
    assert sum(pid in consent and consent[pid] <= day for pid, day in first_activity.items()) > (
        len(first_activity) // 2
    )


def test_complex_care_plans_and_clinical_context(log: list[Event]) -> None:
    plans = [ev["data"] for ev in log if ev["type"] == "care_plan.recorded"]
    assert any(
        p["program"] == "ccm" and p["complexity"] in ("moderate", "high") and p["on"] >= "2025-03"
        for p in plans
    )
    assert {p["complexity"] for p in plans} == {"low", "moderate", "high"}
    enrolled = {ev["data"]["program"] for ev in log if ev["type"] == "enrollment.recorded"}
    assert enrolled >= {"ccm", "pcm", "rpm", "bhi", "apcm"}
    visits = [ev for ev in log if ev["type"] == "visit.recorded"]
    assert any(v["data"]["kind"] == "e_m" for v in visits)
    stays = [ev["data"] for ev in log if ev["type"] == "stay.recorded"]
    assert stays and all(s["discharged_on"] >= s["admitted_on"] for s in stays)
    codes = {c for ev in log if ev["type"] == "conditions.recorded" for c in ev["data"]["chronic"]}
    assert {"E11.9", "I10"} & codes


def test_write_ndjson_round_trip(tmp_path: Path) -> None:
    events = list(generate_practice_log(patients=5))
    path = tmp_path / "log.ndjson"
    assert write_ndjson(iter(events), path) == len(events)
    lines = path.read_bytes().splitlines()
    assert [orjson.loads(line) for line in lines] == events

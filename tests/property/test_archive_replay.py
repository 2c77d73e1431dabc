"""One semantics, two engines: the DuckDB replay of the Parquet archive equals the fold.

The archive replay does idempotency, activity versions, month bucketing and the interval
accounting of simple months in SQL, then runs the core's rules per patient-month
(streams/archive/replay.py). These tests hold it to :func:`projections.engine.replay`
over the same events: on random logs (hypothesis, the generators of support.strategies),
with duplicates re-sent at random places, zero-second activities, event ids reused across
patients, over 1-4 partitions, in 1-3 shares, and as of random instants.
"""

from __future__ import annotations

import heapq
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import example, given, note
from hypothesis import strategies as st

from projections.engine import replay
from schemas.events import Event, EventRejected, parse_event
from streams.archive.replay import ArchiveReplay, replay_archive, replay_views
from streams.archive.store import write_events
from streams.demo.synthetic import generate_practice_log
from support.strategies import APCM_GAP, APCM_VOID, REVOCATION_ONLY, SETTINGS, GenLog, gen_logs


def _archive(root: Path, raws: list[bytes], partitions: int) -> list[Event]:
    events = [parse_event(r) for r in raws]
    write_events(root, zip(events, raws, strict=True), partitions=partitions, flush_rows=7)
    return events


def _fast(root: Path, as_of: datetime | None = None) -> list[dict[str, Any]]:
    return [b.view() for b in replay_archive(root, as_of=as_of, threads=1)[0]]


def _fold(events: list[Event], as_of: datetime | None = None) -> list[dict[str, Any]]:
    return [b.view() for b in replay(events, as_of=as_of)]


def _sharded(root: Path, shares: int, as_of: datetime | None) -> list[dict[str, Any]]:
    """The replay as ``shares`` worker processes would do it, in this process."""
    parts = []
    for k in range(shares):
        run = ArchiveReplay(root, as_of, threads=1, shard=(k, shares))
        try:
            parts.append([b.view() for b in run.billing()])
        finally:
            run.close()
    return list(heapq.merge(*parts, key=lambda v: (v["org_id"], v["patient_id"], v["month"])))


def _roughen(raws: list[dict[str, Any]], data: st.DataObject) -> list[dict[str, Any]]:
    """What the generators do not make: zero-second activities (a sub-second length,
    sometimes at a local midnight) and event ids reused by another patient (conflicts)."""
    raws = [dict(r) for r in raws]
    activities = [i for i, r in enumerate(raws) if r["type"] == "activity.logged"]
    for i in data.draw(st.lists(st.sampled_from(activities), max_size=2)) if activities else []:
        d = {k: v for k, v in raws[i]["data"].items() if k != "ended_at"}
        d["minutes"] = 0.001
        if data.draw(st.booleans(), label="at midnight"):
            d["started_at"] = d["started_at"][:11] + "00:00:00" + d["started_at"][19:]
        raws[i] = {**raws[i], "data": d}
    patients = [i for i, r in enumerate(raws) if r.get("patient_id")]
    if len(patients) > 1 and data.draw(st.booleans(), label="reuse an event id"):
        i, j = sorted(data.draw(st.lists(st.sampled_from(patients), min_size=2, max_size=2)))
        if raws[i].get("patient_id") != raws[j].get("patient_id"):
            raws[j] = {**raws[j], "event_id": raws[i]["event_id"]}
    return raws


@SETTINGS
@given(log=gen_logs(), data=st.data())
@example(log=APCM_GAP, data=None)
@example(log=APCM_VOID, data=None)
@example(log=REVOCATION_ONLY, data=None)
def test_archive_replay_equals_fold(log: GenLog, data: st.DataObject | None) -> None:
    merged = log.merged() if data is None else _roughen(log.merged(), data)
    raws = [orjson.dumps(r) for r in merged]
    partitions, shares = 1, 1
    as_of: datetime | None = None
    if data is not None:
        # re-sends of earlier events (same id, same bytes) anywhere later in the log
        for _ in range(data.draw(st.integers(0, 3), label="re-sends")):
            if raws:
                i = data.draw(st.integers(0, len(raws) - 1))
                j = data.draw(st.integers(i + 1, len(raws)))
                raws.insert(j, raws[i])
        partitions = data.draw(st.integers(1, 4), label="partitions")
        shares = data.draw(st.integers(1, 3), label="shares")
        if data.draw(st.booleans(), label="as_of?"):
            as_of = data.draw(
                st.datetimes(datetime(2025, 2, 20), datetime(2025, 4, 10), timezones=st.just(UTC)),
                label="as_of",
            )
    with tempfile.TemporaryDirectory() as tmp:
        try:
            events = _archive(Path(tmp), raws, partitions)
        except EventRejected:
            return  # a roughened event the wire contract refuses (never reaches the log)
        expected = _fold(events, as_of)
        note(f"{len(events)} events, {len(expected)} patient-months")
        assert _sharded(Path(tmp), shares, as_of) == expected


def test_shared_replay_over_two_processes_equals_fold(tmp_path: Path) -> None:
    """The sharded replay (a process per share of patients, practice events in every share)
    merges back into the fold's order and numbers, on a realistic practice log."""
    raws = [
        orjson.dumps(e)
        for e in generate_practice_log(seed=3, patients=40, months=("2025-03", "2025-04"))
    ]
    events = _archive(tmp_path, raws, partitions=4)
    views, stats = replay_views(tmp_path, workers=2)
    expected = _fold(events)
    assert list(views) == expected
    assert stats.patient_months == len(expected)
    assert stats.applied == len({(e.org_id, e.event_id) for e in events})
    assert stats.sql_accounted > 0  # the SQL accounting did take part


def test_empty_archive_replays_to_nothing(tmp_path: Path) -> None:
    (tmp_path / "_committed").mkdir()
    assert _fast(tmp_path) == []


def _event(eid: str, type_: str, pid: str | None, at: str, data: dict[str, Any]) -> bytes:
    body: dict[str, Any] = {
        "event_id": eid,
        "type": type_,
        "schema_version": 1,
        "org_id": "o1",
        "recorded_at": at,
        "source": "test",
        "data": data,
    }
    if pid is not None:
        body["patient_id"] = pid
    return orjson.dumps(body)


def test_an_event_id_reused_by_another_patient_is_refused_in_every_share(tmp_path: Path) -> None:
    """The fold refuses an ``event_id`` already used in the org, whoever the patient; the
    sharded replay must too, even when the two patients fall in different shares."""
    import duckdb

    shares = {
        pid: duckdb.sql(f"SELECT hash('o1', '{pid}') % 2").fetchall()[0][0]
        for pid in (f"P-{k}" for k in range(1, 9))
    }
    a = next(p for p, s in shares.items() if s == 0)
    b = next(p for p, s in shares.items() if s == 1)
    raws = [
        _event("cfg", "practice.configured", None, "2025-03-01T00:00:00Z", {}),
        _event("e1", "conditions.recorded", a, "2025-03-02T00:00:00Z", {"chronic": ["I10"]}),
        # the same id for another patient's activity: a conflict, refused by the fold
        _event(
            "e1",
            "activity.logged",
            b,
            "2025-03-03T00:00:00Z",
            {
                "activity_id": "a1",
                "staff_id": "RN-1",
                "staff_role": "clinical_staff",
                "practitioner_id": "DR-1",
                "program": "ccm",
                "activity": "call",
                "started_at": "2025-03-03T15:00:00Z",
                "minutes": 25,
            },
        ),
    ]
    events = _archive(tmp_path, raws, partitions=2)
    expected = _fold(events)
    assert not any(v["patient_id"] == b for v in expected)  # b's activity was refused
    assert _sharded(tmp_path, 2, None) == expected


def _call(aid: str, start: str, minutes: float, program: str = "ccm") -> dict[str, Any]:
    return {
        "activity_id": aid,
        "staff_id": "RN-1",
        "staff_role": "clinical_staff",
        "practitioner_id": "DR-1",
        "program": program,
        "activity": "call",
        "started_at": start,
        "minutes": minutes,
    }


@pytest.mark.parametrize(
    "activities",
    [
        # a zero-second activity before the consent: nothing cut, no consent flag
        [("a1", "2025-03-05T12:00:00Z", 0.001, "ccm"), ("a2", "2025-03-15T12:00:00Z", 30, "ccm")],
        # a zero-second activity at local midnight starting April (New York): in April's
        # months, with no time in it, as the fold has it
        [("a1", "2025-04-01T04:00:00Z", 0.001, "pcm"), ("a2", "2025-04-15T12:00:00Z", 30, "ccm")],
        [("a1", "2025-04-01T04:00:00Z", 0.001, "pcm")],
    ],
)
def test_zero_second_activities(
    tmp_path: Path, activities: list[tuple[str, str, float, str]]
) -> None:
    raws = [
        _event("cfg", "practice.configured", None, "2025-03-01T00:00:00Z", {}),
        _event(
            "c1",
            "consent.recorded",
            "P-1",
            "2025-03-01T01:00:00Z",
            {"program": "ccm", "practitioner_id": "DR-1", "method": "verbal", "on": "2025-03-10"},
        ),
    ]
    raws += [
        _event(f"e-{aid}", "activity.logged", "P-1", "2025-04-20T00:00:00Z", _call(aid, s, m, p))
        for aid, s, m, p in activities
    ]
    events = _archive(tmp_path, raws, partitions=1)
    assert _fast(tmp_path) == _fold(events)

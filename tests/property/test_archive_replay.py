"""One semantics, two engines: the DuckDB replay of the Parquet archive equals the fold.

The archive replay does idempotency, the volume bounds and activity versions in SQL,
builds each patient's ledger state from ordered streams and hands it to the core, which
accounts and bills every patient-month (streams/archive/replay.py). These tests hold it
to :func:`projections.engine.replay` over the same events: on random logs (hypothesis,
the generators of support.strategies), with duplicates re-sent at random places,
zero-second activities, event ids reused across patients, over 1-4 partitions, in 1-3
shares, and as of random instants; the patient states themselves equal the ledger's
(``seq`` up to order), and claim dates of service come from the accounted intervals.
"""

from __future__ import annotations

import heapq
import tempfile
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import example, given, note
from hypothesis import strategies as st

from projections.billing import PatientContext
from projections.claims import claim_lines
from projections.engine import fold, replay
from projections.ledger import MAX_READINGS, PatientState
from projections.rules import SHIPPED_CATALOG
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


def _sharded(
    root: Path, shares: int, as_of: datetime | None
) -> tuple[list[dict[str, Any]], dict[tuple[str, str], Any]]:
    """The replay as ``shares`` worker processes would do it, in this process: the views,
    and the patient states each share handed to the core (in :func:`_comparable` form)."""
    parts = []
    states: dict[tuple[str, str], Any] = {}
    for k in range(shares):
        run = ArchiveReplay(root, as_of, threads=1, shard=(k, shares))
        try:
            practices = run.practices()
            views = []
            for patient in run.patients():
                key = (patient.org_id, patient.patient_id)
                assert key not in states  # each patient in one share, once
                states[key] = _comparable(patient)
                views += [b.view() for b in run.bill(patient, practices[patient.org_id])]
            parts.append(views)
        finally:
            run.close()
    merged = heapq.merge(*parts, key=lambda v: (v["org_id"], v["patient_id"], v["month"]))
    return list(merged), states


def _comparable(p: PatientState) -> tuple[Any, ...]:
    """A patient state with each ``seq`` replaced by its rank among the patient's seqs (the
    core compares seqs of one patient only, so that rank is all a seq means), without the
    ledger's volume counts (bookkeeping for the bounds, which billing never reads)."""
    seqs = sorted(
        {a.seq for a in p.activities.values()}
        | {c.seq for c in p.consents}
        | {e.seq for e in p.enrollments}
        | {c[0] for c in p.care_plans}
        | {c[0] for c in p.conditions}
    )
    rank = {s: i for i, s in enumerate(seqs)}
    return (
        [
            (
                k,
                rank[a.seq],
                a.staff_id,
                a.role,
                a.practitioner_id,
                a.program,
                a.start,
                a.end,
                a.face_to_face,
                a.interactive,
            )
            for k, a in p.activities.items()
        ],
        [(rank[c.seq], c.program, c.practitioner_id, c.revoked, c.on) for c in p.consents],
        [(rank[c[0]], *c[1:]) for c in p.care_plans],
        [(rank[c[0]], *c[1:]) for c in p.conditions],
        [(rank[e.seq], e.program, e.practitioner_id, e.on, e.qmb) for e in p.enrollments],
        p.visits,
        p.stays,
        {k: v for k, v in p.readings.items() if v},
    )


def _ledger_states(events: list[Event], as_of: datetime | None) -> dict[tuple[str, str], Any]:
    """The fold's patient states with anything in them (a patient whose only events were
    voids of unknown activities has an empty record and no month, so no stream names it)."""
    ledger = fold(events, as_of=as_of)
    out = {}
    for key, p in ledger.patients.items():
        c = _comparable(p)
        if any(c):
            out[key] = c
    return out


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
        views, states = _sharded(Path(tmp), shares, as_of)
        assert states == _ledger_states(events, as_of)
        assert views == expected


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
    assert stats.patients == len({v["patient_id"] for v in expected}) > 0


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
        pid: duckdb.execute(f"SELECT hash('o1', '{pid}') % 2").fetchall()[0][0]
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
    assert _sharded(tmp_path, 2, None)[0] == expected


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


def _archive_claims(root: Path, close_id: str) -> dict[tuple[str, str, str], list[Any]]:
    """Claim lines of every archive-replayed patient-month, keyed by (org, patient, month)."""
    run = ArchiveReplay(root, threads=1)
    try:
        practices = run.practices()
        out = {}
        for patient in run.patients():
            ctx = PatientContext(patient, practices[patient.org_id])
            for b in run.bill(patient, practices[patient.org_id]):
                out[(b.org_id, b.patient_id, b.month)] = claim_lines(b, ctx, close_id)
        return out
    finally:
        run.close()


def _fold_claims(events: list[Event], close_id: str) -> dict[tuple[str, str, str], list[Any]]:
    ledger = fold(events)
    out = {}
    for (org, pid), patient in ledger.patients.items():
        ctx = PatientContext(patient, ledger.practice(org))
        for m in ctx.months():
            out[(org, pid, m)] = claim_lines(ctx.month(m), ctx, close_id)
    return out


def test_claim_dates_of_service_come_from_the_accounted_intervals(tmp_path: Path) -> None:
    """A CCM month met on the 12th: its claim's date of service is the 12th (``time_met``),
    read from the intervals the archive-replayed month carries, never the month's end."""
    doc = {"program": "ccm", "practitioner_id": "DR-1"}
    raws = [
        _event("cfg", "practice.configured", None, "2025-03-01T00:00:00Z", {}),
        _event(
            "d1",
            "conditions.recorded",
            "P-1",
            "2025-03-01T01:00:00Z",
            {"chronic": ["I10", "E11.9"]},
        ),
        _event(
            "d2",
            "consent.recorded",
            "P-1",
            "2025-03-01T01:00:01Z",
            {**doc, "method": "verbal", "on": "2025-03-01"},
        ),
        _event(
            "d3",
            "care_plan.recorded",
            "P-1",
            "2025-03-01T01:00:02Z",
            {"program": "ccm", "on": "2025-03-01", "complexity": "low"},
        ),
        _event(
            "d4", "enrollment.recorded", "P-1", "2025-03-01T01:00:03Z", {**doc, "on": "2025-03-01"}
        ),
    ]
    for aid, start, minutes in (
        ("a1", "2025-03-05T15:00:00Z", 15),
        ("a2", "2025-03-12T15:00:00Z", 10),  # 25 minutes: the 20-minute base is met here
        ("a3", "2025-03-20T15:00:00Z", 10),
    ):
        raws.append(
            _event(
                f"e-{aid}",
                "activity.logged",
                "P-1",
                "2025-03-25T00:00:00Z",
                _call(aid, start, minutes),
            )
        )
    events = _archive(tmp_path, raws, partitions=2)
    claims = _archive_claims(tmp_path, "close-1")
    lines = claims[("o1", "P-1", "2025-03")]
    assert [(ln.code, ln.date_of_service, ln.basis) for ln in lines] == [
        ("99490", date(2025, 3, 12), "time_met")
    ]
    assert claims == _fold_claims(events, "close-1")


def test_claims_of_a_replayed_practice_equal_the_folds(tmp_path: Path) -> None:
    """Every claim line (date of service and its basis included) of every archive-replayed
    patient-month equals the fold's, and no time-based line falls back to the month's end."""
    raws = [
        orjson.dumps(e)
        for e in generate_practice_log(seed=5, patients=40, months=("2025-03", "2025-04"))
    ]
    events = _archive(tmp_path, raws, partitions=3)
    claims = _archive_claims(tmp_path, "close-1")
    assert claims == _fold_claims(events, "close-1")
    lines = [ln for month in claims.values() for ln in month]
    time_lines = [
        ln for ln in lines if SHIPPED_CATALOG.for_month(ln.month).code(ln.code).kind == "time"
    ]
    assert time_lines
    assert {ln.basis for ln in time_lines} <= {"time_met", "care_plan_on"}
    assert any(ln.basis == "time_met" and ln.date_of_service.day < 28 for ln in time_lines)


def test_readings_over_the_bound_are_refused_in_log_order(tmp_path: Path) -> None:
    """The reading bound keeps a patient-month's first ``MAX_READINGS`` readings in log
    order (not in time order), as the ledger does: the refused one here is the only
    reading of its day, so a wrong pick shows in the reading quarters and the device days."""
    raws = [_event("cfg", "practice.configured", None, "2025-03-01T00:00:00Z", {})]
    start = datetime(2025, 3, 1, tzinfo=UTC)
    taken = [start + timedelta(minutes=4 * i) for i in range(MAX_READINGS - 1)]
    # in log order: the last day first, then the rest, then a re-send (not a new reading)
    taken[:0] = [datetime(2025, 3, 31, 12, tzinfo=UTC)]
    taken.append(datetime(2025, 3, 30, 12, tzinfo=UTC))  # one too many: refused
    for i, at in enumerate(taken):
        raws.append(
            _event(
                f"r{i}",
                "device.reading",
                "P-1",
                "2025-04-01T00:00:00Z",
                {"device_id": "D-1", "program": "rpm", "taken_at": at.isoformat()},
            )
        )
    raws.append(raws[5])
    events = _archive(tmp_path, raws, partitions=2)
    views, states = _sharded(tmp_path, 2, None)
    assert states == _ledger_states(events, None)
    assert views == _fold(events)
    assert _fast(tmp_path) == views
    assert replay_archive(tmp_path, threads=1)[1].over_limit == 1

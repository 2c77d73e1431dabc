"""The stream's logic without a broker: the ingress gate, one fold partition's outputs,
snapshots. What the agents send is exactly what these return."""

from __future__ import annotations

import pickle
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from projections.engine import replay
from schemas.events import parse_event
from streams.worker.app import staff_item
from streams.worker.gate import IngressGate, Verdict
from streams.worker.partition import ALERTS, BILLING, DEADLETTER, STAFF, FoldPartition, sweep_clock
from streams.worker.snapshots import Slot, SnapshotStore
from support.builders import Log

GOOD = orjson.dumps(Log().conditions("P-1"))


def test_gate_new_duplicate_conflict_and_invalid() -> None:
    gate = IngressGate()
    assert gate.decide(GOOD).verdict is Verdict.NEW
    assert gate.decide(GOOD + b"\n").verdict is Verdict.DUPLICATE  # whitespace around is not body
    other = orjson.dumps({**orjson.loads(GOOD), "source": "another-feed"})
    d = gate.decide(other)
    assert d.verdict is Verdict.REJECTED and d.reason and d.reason.startswith("conflicting")
    assert gate.decide(b"{nope").verdict is Verdict.REJECTED
    assert gate.decide(b"").reason == "empty record"
    assert gate.decide(None).verdict is Verdict.REJECTED


def test_gate_rebuilt_from_digests_decides_alike() -> None:
    first = IngressGate()
    d = first.decide(GOOD)
    second = IngressGate()
    second.learn(d.idem, d.body)
    assert second.decide(GOOD).verdict is Verdict.DUPLICATE


def test_gate_scopes_event_ids_per_org() -> None:
    gate = IngressGate()
    a = orjson.dumps(Log(org="A").conditions("P-1"))
    b = orjson.dumps(Log(org="B").conditions("P-1"))
    assert [gate.decide(x).verdict for x in (a, b)] == [Verdict.NEW, Verdict.NEW]


def test_practice_wide_events_are_marked_for_every_partition() -> None:
    log = Log()
    gate = IngressGate()
    assert gate.decide(orjson.dumps(log.practice())).practice_wide
    assert gate.decide(orjson.dumps(log.close("2025-03"))).practice_wide
    assert not gate.decide(orjson.dumps(log.conditions("P-1"))).practice_wide


def fold_all(raws: list[bytes]) -> tuple[FoldPartition, dict[bytes, bytes | None], list]:
    part = FoldPartition()
    billing: dict[bytes, bytes | None] = {}
    outs = []
    for raw in raws:
        for out in part.apply(raw):
            outs.append(out)
            if out.topic == BILLING:
                billing[out.key] = out.value  # type: ignore[index]
    return part, billing, outs


def test_billing_outputs_are_replay_lines_and_a_void_leaves_a_tombstone() -> None:
    log = Log()
    log.documented("P-1")
    log.activity("P-1", "a1", "2025-03-03T10:00:00-05:00", 25)
    raws = [orjson.dumps(e) for e in log.raw]
    _part, billing, outs = fold_all(raws)
    key = b"o1:P-1:2025-03"
    assert orjson.loads(billing[key]) == log.view("P-1", "2025-03")  # type: ignore[arg-type]
    assert any(o.topic == ALERTS for o in outs)
    progress = next(o for o in outs if o.key == key and o.topic == BILLING).headers
    assert progress and progress[0][0] == "progress"
    log.void("P-1", "a1")
    _part, billing, _ = fold_all([orjson.dumps(e) for e in log.raw])
    assert billing[key] is None  # nothing left in the month


def test_staff_records_follow_amendments_across_staff_and_voids() -> None:
    log = Log()
    log.activity("P-1", "a1", "2025-03-03T10:00:00-05:00", 20, staff="RN-1")
    log.activity("P-1", "a1", "2025-03-03T10:00:00-05:00", 20, staff="RN-2")  # re-assigned
    log.void("P-1", "a1")
    _part, _billing, outs = fold_all([orjson.dumps(e) for e in log.raw])
    staff = [(o.key, orjson.loads(o.value)["voided"]) for o in outs if o.topic == STAFF]
    assert staff == [
        (b"o1:RN-1", False),
        (b"o1:RN-1", True),
        (b"o1:RN-2", False),
        (b"o1:RN-2", True),
    ]
    item = staff_item(next(o.value for o in outs if o.topic == STAFF))  # type: ignore[arg-type]
    assert item.staff_id == "RN-1"


def test_a_record_that_is_not_an_event_is_dead_lettered() -> None:
    _part, _billing, outs = fold_all([b'{"type":"nope"}'])
    assert [o.topic for o in outs] == [DEADLETTER]
    assert outs[0].value == b'{"type":"nope"}' and outs[0].headers[0][0] == "reason"


def test_sweep_runs_once_per_practice_day_on_the_chosen_clock() -> None:
    log = Log()
    log.practice(timezone="America/Chicago")
    log.documented("P-1")
    log.activity("P-1", "a1", "2025-03-26T10:00:00-05:00", 15)  # 5 minutes short of 99490
    part, _b, _o = fold_all([orjson.dumps(e) for e in log.raw])
    now = datetime(2025, 3, 27, 4, 0, tzinfo=UTC)  # still the 26th in Chicago
    first = part.sweep(now)
    assert [orjson.loads(o.value)["kind"] for o in first] == ["threshold_approaching"]
    assert "5 more minute(s) with 5 day(s) left" in orjson.loads(first[0].value)["detail"]
    assert part.sweep(now) == []  # once a day
    assert part.sweep(datetime(2025, 3, 27, 12, tzinfo=UTC))  # the 27th: again
    wall = datetime(2026, 1, 1, tzinfo=UTC)
    assert sweep_clock([part], "wall", wall) == wall
    assert sweep_clock([part], "log", wall) == parse_event(orjson.dumps(log.raw[-1])).recorded_at
    assert sweep_clock([FoldPartition()], "log", wall) is None


def test_snapshot_round_trip_and_refusal_of_another_log(tmp_path: Path) -> None:
    log = Log()
    log.documented("P-1")
    part, _b, _o = fold_all([orjson.dumps(e) for e in log.raw])
    store = SnapshotStore(tmp_path, "fold", log_id="topic-1")
    store.save(3, Slot(part, next_offset=42, dirty=True))
    back = store.load(3)
    assert back is not None and back.next_offset == 42 and not back.dirty
    assert pickle.dumps(back.state.projector.views) == pickle.dumps(part.projector.views)
    assert SnapshotStore(tmp_path, "fold", log_id="topic-2").load(3) is None  # recreated topic
    (tmp_path / "fold-4.json").write_bytes(b"garbage")
    assert store.load(4) is None
    assert SnapshotStore(None, "fold", "x").load(3) is None


@settings(max_examples=25, deadline=None)
@given(
    st.lists(st.integers(min_value=0, max_value=7), min_size=1, max_size=30),
    st.integers(min_value=1, max_value=4),
)
def test_partitioned_folds_equal_one_replay(picks: list[int], parts: int) -> None:
    """Splitting the log by patient key (practice-wide events to every part) and folding
    each part alone gives the views of one replay of the whole log."""
    log = Log()
    log.practice(timezone="America/Los_Angeles")
    for i, p in enumerate(picks):
        pid = f"P-{p % 5}"
        if i % 7 == 0:
            log.documented(pid)
        log.activity(pid, f"a{i}", f"2025-03-{1 + i % 28:02d}T10:00:00-08:00", 5 + p)
        if p == 7:
            log.void(pid, f"a{i}")
    raws = [orjson.dumps(e) for e in log.raw]
    folds = [FoldPartition() for _ in range(parts)]
    billing: dict[bytes, bytes | None] = {}
    for raw, ev in zip(raws, log.raw, strict=True):
        targets = range(parts) if "patient_id" not in ev else [hash(ev["patient_id"]) % parts]
        for t in targets:
            for out in folds[t].apply(raw):
                if out.topic == BILLING:
                    billing[out.key] = out.value  # type: ignore[index]
    expected = {
        f"{b.org_id}:{b.patient_id}:{b.month}".encode(): orjson.dumps(b.view())
        for b in replay(parse_event(r) for r in raws)
    }
    assert {k: v for k, v in billing.items() if v is not None} == expected


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["reading", "reading", "activity", "amend", "void", "zone"]),
            st.integers(min_value=0, max_value=2),  # patient
            st.integers(min_value=0, max_value=40 * 24 - 1),  # hour of 2025-03-01 + 40 days
        ),
        min_size=1,
        max_size=40,
    )
)
def test_projector_caches_survive_zone_changes_and_same_day_readings(
    steps: list[tuple[str, int, int]],
) -> None:
    """The Projector's per-patient caches (reading days, activities by month) and its
    same-day-reading shortcut give replay's views, even when the practice's zone
    changes mid-log and readings arrive out of order."""
    from datetime import timedelta

    from projections.engine import Projector

    log = Log()
    log.practice(timezone="America/New_York")
    for p in range(3):
        log.documented(f"P-{p}", program="rpm")
    zones = ["Pacific/Honolulu", "Asia/Kolkata", "America/New_York"]
    base = datetime(2025, 3, 1, tzinfo=UTC)
    for i, (kind, p, hour) in enumerate(steps):
        pid, at = f"P-{p}", (base + timedelta(hours=hour)).isoformat()
        if kind == "reading":
            log.reading(pid, taken_at=at)
        elif kind == "activity":
            log.activity(pid, f"a{p}-{i % 3}", at, 10 + i % 7)
        elif kind == "amend":
            log.activity(pid, f"a{p}-{i % 3}", at, 25, staff="RN-2")
        elif kind == "void":
            log.void(pid, f"a{p}-{i % 3}")
        else:
            log.practice(timezone=zones[i % 3])
    projector = Projector()
    for ev in log.events():
        projector.step(ev)
    expected = {(b.patient_id, b.month): b.view() for b in replay(log.events())}
    got = {(b.patient_id, b.month): b.view() for b in projector.billing()}
    assert got == expected


def test_a_billing_line_that_breaks_the_contract_is_dead_lettered_not_published(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A fold bug (injected: the billing bytes gain a field the contract does not have)
    must not stop the worker: the line goes to the dead letters with the fields named, and
    the partition folds on."""
    from streams.worker import partition

    real = partition.billing_value

    def broken(b: Any) -> bytes | None:
        value = real(b)
        return None if value is None else value[:-1] + b',"secret_field":"P-1"}'

    monkeypatch.setattr(partition, "billing_value", broken)
    log = Log()
    log.documented("P-1")
    log.activity("P-1", "a1", "2025-03-03T10:00:00-05:00", 25)
    log.activity("P-2", "b1", "2025-03-03T10:00:00-05:00", 5)  # folding goes on
    with caplog.at_level("ERROR", logger="caretally.worker"):
        part, billing, outs = fold_all([orjson.dumps(e) for e in log.raw])
    assert billing == {}  # nothing published
    letters = [o for o in outs if o.topic == DEADLETTER]
    assert letters and all(o.key is not None and o.key.startswith(b"o1:P-") for o in letters)
    reasons = {dict(o.headers)["reason"] for o in letters}
    assert reasons == {b"billing_view_contract: secret_field"}
    assert ("o1", "P-2", "2025-03") in part.projector.views  # the fold went on
    assert "secret_field" in caplog.text and "P-1" not in caplog.text  # no values logged

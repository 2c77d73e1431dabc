"""The pipeline end to end on the embedded broker: a real ``caretally worker`` process,
fed through ``care.ingress.v1``, held to what ``caretally replay`` gives offline."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from streams.demo.client import Follower, produce
from streams.demo.live import expected_views
from streams.demo.synthetic import generate_events, generate_practice_log
from streams.kafka.broker import EmbeddedBroker
from streams.kafka.topics import Topics
from support.pipeline import PARTS, lines_of, offline_alert_ids, read_all, worker_for

pytestmark = pytest.mark.slow


async def feed_and_collect(
    broker: EmbeddedBroker,
    topics: Topics,
    lines: list[bytes],
    expected: dict[bytes, bytes],
    timeout: float = 120,
    **produce_kw: Any,
) -> Follower:
    async with Follower(broker.bootstrap, topics, PARTS) as follower:
        await produce(broker.bootstrap, topics.ingress, lines, **produce_kw)
        await follower.until(lambda got: got.views() == expected, timeout, quiet=1.0)
        return follower


def test_billing_topic_equals_offline_replay(
    broker: EmbeddedBroker, topics: Topics, tmp_path: Path
) -> None:
    lines = lines_of(list(generate_events(3000, seed=11, orgs=2)))
    expected = expected_views(lines)
    worker = worker_for(broker, topics, tmp_path).start()
    try:
        follower = asyncio.run(feed_and_collect(broker, topics, lines, expected))
    finally:
        assert worker.stop() == 0, (tmp_path / "worker.log").read_text()[-3000:]
    got = follower.got
    assert len(expected) > 100
    assert got.views() == expected
    # the alerts the core derives event by event, with the same ids (the stream adds its own
    # kinds on top: staff_overlap from the staff projection)
    streamed = {a["alert_id"]: a for a in got.alerts if a["kind"] != "staff_overlap"}
    offline = offline_alert_ids(lines)
    extra = Counter(streamed[i]["kind"] for i in set(streamed) - set(offline))
    missing = Counter(offline[i].kind for i in set(offline) - set(streamed))
    assert (extra, missing) == (Counter(), Counter())
    assert not got.deadletter
    text = (tmp_path / "worker.log").read_text()
    for e in generate_events(3000, seed=11, orgs=2):
        if e.get("patient_id"):
            assert e["patient_id"] not in text  # no PHI in the worker's log
            break


BAD = {
    "not json": b"{not json",
    "not an object": b"[1, 2]",
    "unknown type": b'{"event_id":"b1","type":"activity.painted","schema_version":1,'
    b'"org_id":"o","patient_id":"p","recorded_at":"2025-03-01T00:00:00Z","source":"x","data":{}}',
    "bad schema_version": b'{"event_id":"b2","type":"conditions.recorded","schema_version":9,'
    b'"org_id":"o","patient_id":"p","recorded_at":"2025-03-01T00:00:00Z","source":"x",'
    b'"data":{"chronic":["E11.9"]}}',
    "missing field": b'{"event_id":"b3","type":"conditions.recorded","schema_version":1,'
    b'"org_id":"o","patient_id":"p","source":"x","data":{"chronic":["E11.9"]}}',
    "wrong type": b'{"event_id":"b4","type":"conditions.recorded","schema_version":1,'
    b'"org_id":"o","patient_id":"p","recorded_at":"2025-03-01T00:00:00Z","source":"x",'
    b'"data":{"chronic":"E11.9"}}',
    "naive timestamp": b'{"event_id":"b5","type":"conditions.recorded","schema_version":1,'
    b'"org_id":"o","patient_id":"p","recorded_at":"2025-03-01T00:00:00","source":"x",'
    b'"data":{"chronic":["E11.9"]}}',
    "end before start": b'{"event_id":"b6","type":"activity.logged","schema_version":1,'
    b'"org_id":"o","patient_id":"p","recorded_at":"2025-03-02T00:00:00Z","source":"x",'
    b'"data":{"activity_id":"a","staff_id":"s","staff_role":"clinical_staff",'
    b'"practitioner_id":"d","program":"ccm","activity":"call",'
    b'"started_at":"2025-03-01T10:00:00Z","ended_at":"2025-03-01T09:00:00Z"}}',
    "longer than 24 h": b'{"event_id":"b7","type":"activity.logged","schema_version":1,'
    b'"org_id":"o","patient_id":"p","recorded_at":"2025-03-03T00:00:00Z","source":"x",'
    b'"data":{"activity_id":"a","staff_id":"s","staff_role":"clinical_staff",'
    b'"practitioner_id":"d","program":"ccm","activity":"call",'
    b'"started_at":"2025-03-01T10:00:00Z","ended_at":"2025-03-02T11:00:00Z"}}',
    "empty": b"   ",
}
GOOD = (
    b'{"event_id":"g1","type":"conditions.recorded","schema_version":1,"org_id":"o",'
    b'"patient_id":"p","recorded_at":"2025-03-01T00:00:00Z","source":"x",'
    b'"data":{"chronic":["E11.9","I10"]}}'
)
CONFLICT = GOOD.replace(b'"I10"', b'"J44.9"')


def test_dead_letter_keeps_raw_bytes_reason_and_source(
    broker: EmbeddedBroker, topics: Topics, tmp_path: Path
) -> None:
    ingress = [GOOD, *BAD.values(), GOOD, CONFLICT]  # an exact duplicate, then a conflict
    worker = worker_for(broker, topics, tmp_path).start()
    try:

        async def run() -> Follower:
            async with Follower(broker.bootstrap, topics, PARTS) as f:
                await produce(broker.bootstrap, topics.ingress, ingress)
                await f.until(lambda got: len(got.deadletter) >= len(BAD) + 1, 90, quiet=1.5)
                return f

        follower = asyncio.run(run())
        log = asyncio.run(read_all(broker.bootstrap, topics.events))
        sent = asyncio.run(read_all(broker.bootstrap, topics.ingress))
    finally:
        worker.stop()
    dead = follower.got.deadletter
    by_raw = {r.value: dict(r.headers) for r in dead}
    for name, raw in BAD.items():
        key = raw
        assert key in by_raw, f"{name} was not dead-lettered"
        h = by_raw[key]
        assert h["reason"], name
        assert h["source_topic"] == topics.ingress.encode()
        src = next(r for r in sent if r.value == raw)
        assert (int(h["source_partition"]), int(h["source_offset"])) == (src.partition, src.offset)
    assert by_raw[CONFLICT]["reason"].startswith(b"conflicting_duplicate")
    reasons = {name: by_raw[raw]["reason"].decode() for name, raw in BAD.items()}
    assert "recorded_at" in reasons["missing field"]
    assert "schema_version" in reasons["bad schema_version"]
    # nothing lost, nothing invented: ingress = log + dead letters + exact duplicates
    assert [r.value for r in log] == [GOOD]
    assert len(sent) == len(log) + len(dead) + 1


def test_worker_killed_mid_stream_restarts_to_the_same_result(
    broker: EmbeddedBroker, topics: Topics, tmp_path: Path
) -> None:
    lines = lines_of(list(generate_events(4000, seed=5, orgs=2)))
    expected = expected_views(lines)
    worker = worker_for(broker, topics, tmp_path, "--snapshot-interval", "0.5").start()

    third = len(lines) // 3
    first_part = expected_views(lines[:third])

    async def run() -> Follower:
        async with Follower(broker.bootstrap, topics, PARTS) as f:
            # producers batch (linger 20 ms) throughout; the kill lands while the worker
            # is folding the first third, the second third arrives while it is down, the
            # last while it restarts and rejoins
            await produce(broker.bootstrap, topics.ingress, lines[:third], linger_ms=20)
            assert await f.until(lambda got: len(got.billing) >= len(first_part) // 3, 120)
            worker.kill()
            await produce(broker.bootstrap, topics.ingress, lines[third : 2 * third], linger_ms=20)
            worker.start()
            await produce(
                broker.bootstrap, topics.ingress, lines[2 * third :], linger_ms=20, rate=500
            )
            await f.until(lambda got: got.views() == expected, 180, quiet=1.0)
            return f

    try:
        follower = asyncio.run(run())
    finally:
        worker.stop()
    assert follower.got.views() == expected
    assert any(Path(tmp_path / "state").rglob("fold-*.json"))
    # the log holds each accepted event once: the restarted gate rebuilt its index from it
    log = asyncio.run(read_all(broker.bootstrap, topics.events))
    ids = Counter(
        orjson.loads(r.value)["event_id"] for r in log if orjson.loads(r.value).get("patient_id")
    )
    assert ids and max(ids.values()) == 1


def test_staff_overlap_late_activity_and_the_daily_sweep(
    broker: EmbeddedBroker, topics: Topics, tmp_path: Path
) -> None:
    # the log's clock (newest recorded_at) stops on 2025-04-26, four days before April ends
    events = [
        e
        for e in generate_practice_log(seed=3, patients=25, months=("2025-03", "2025-04"))
        if e["recorded_at"] < "2025-04-26"
    ]
    closed = next(e for e in events if e["type"] == "month.closed")["data"]["month"]
    act = next(
        e
        for e in events
        if e["type"] == "activity.logged" and e["data"]["started_at"].startswith(closed)
    )
    late = {
        **act,
        "event_id": "late-1",
        "recorded_at": "2025-04-26T12:00:00Z",
        "data": {**act["data"], "activity_id": "late-activity-1"},
    }
    events.append(late)  # documented after its month was closed
    lines = lines_of(events)
    expected = expected_views(lines)
    worker = worker_for(
        broker, topics, tmp_path, "--sweep-interval", "0.5", "--sweep-clock", "log"
    ).start()
    try:
        follower = asyncio.run(feed_and_collect(broker, topics, lines, expected))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(
            a["kind"] == "threshold_approaching" for a in follower.got.alerts
        ):
            time.sleep(0.5)
    finally:
        worker.stop()
    kinds = Counter(a["kind"] for a in follower.got.alerts)
    assert follower.got.views() == expected
    assert kinds["staff_overlap"] >= 2 and kinds["staff_overlap"] % 2 == 0
    # the sweep's day is 2025-04-26 in the practice's zone; it runs once that day
    approach = [a for a in follower.got.alerts if a["kind"] == "threshold_approaching"]
    assert approach and {a["month"] for a in approach} <= {"2025-03", "2025-04"}
    assert any("4 day(s) left" in a["detail"] for a in approach)
    offline = Counter(a.kind for a in offline_alert_ids(lines).values())
    assert any(e["type"] == "month.closed" for e in events)
    assert kinds["late_activity"] == offline["late_activity"] >= 1
    ids = [a["alert_id"] for a in follower.got.alerts]
    assert len(ids) == len(set(ids))  # no repeats without a restart


def test_gate_and_fold_in_two_processes_give_the_same_billing(
    broker: EmbeddedBroker, topics: Topics, tmp_path: Path
) -> None:
    lines = lines_of(list(generate_events(1500, seed=21, orgs=2)))
    expected = expected_views(lines)
    gate = worker_for(broker, topics, tmp_path, "--role", "gate")
    gate.log_path = tmp_path / "gate.log"
    fold = worker_for(broker, topics, tmp_path, "--role", "fold")
    gate.start(), fold.start()
    try:
        follower = asyncio.run(feed_and_collect(broker, topics, lines, expected))
    finally:
        assert gate.stop() == 0 and fold.stop() == 0
    assert follower.got.views() == expected
    assert not follower.got.deadletter

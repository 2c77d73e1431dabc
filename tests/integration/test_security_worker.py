"""Security hardening (#9), follow-ups of items 1 and 10 in ``streams/worker/app.py``.

* The gate's dedupe index follows its log: after a broker restart and a restore that
  lacks an event, that event sent again reaches the new log (it was dropped as a
  duplicate against the old log's index).
* A worker that stops itself (the gate cannot go on) exits non-zero with its critical
  line; one stopped by SIGTERM from outside exits 0.
* A worker whose topics do not have the partition counts it is configured for refuses
  to start with a one-line error (it used to wait forever for partitions that do not
  exist).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from kafka import KafkaAdminClient
from kafka.admin import NewTopic

from streams.demo.client import Follower, WorkerProcess, produce
from streams.demo.live import expected_views
from streams.kafka.broker import EmbeddedBroker
from streams.kafka.records import event_key
from streams.kafka.topics import Topics, ensure_topics
from support.builders import Log
from support.pipeline import read_all, republish

PARTS = 3
CHECK_INTERVAL = 10.0  # streams.worker.app.LOG_CHECK_INTERVAL (not importable on the base)
FATAL_EXIT = 3

LOG = Log(org="o-restart")
FIRST = [  # in the old log and restored
    LOG.practice(),
    LOG.consent("P-A1"),
    LOG.conditions("P-A1"),
    LOG.care_plan("P-A1"),
    LOG.activity("P-A1", "a1", "2025-03-03T10:00:00-05:00", 25),
]
LOST = [  # in the old log, not restored (not archived before the broker died)
    LOG.consent("P-B7"),
    LOG.conditions("P-B7"),
    LOG.care_plan("P-B7"),
    LOG.activity("P-B7", "b1", "2025-03-04T10:00:00-05:00", 30),
]


def lines(events: list[dict[str, Any]]) -> list[bytes]:
    return [orjson.dumps(e) for e in events]


def tail(path: Path) -> str:
    return path.read_text(errors="replace")[-4000:] if path.exists() else ""


def start_worker(
    bootstrap: str, topics: Topics, tmp_path: Path, *extra: str, partitions: int = PARTS
) -> WorkerProcess:
    return WorkerProcess(
        bootstrap,
        topics,
        partitions,
        tmp_path / "state",
        "--app-id",
        f"app-{topics.prefix}",
        "--sweep-interval",
        "3600",
        *extra,
        log_path=tmp_path / "worker.log",
    ).start()


def log_values(bootstrap: str, topic: str) -> list[bytes]:
    return [r.value for r in asyncio.run(read_all(bootstrap, topic))]


class Rec:
    """A record to republish (value, key, partition; no headers)."""

    def __init__(self, value: bytes, key: bytes, partition: int) -> None:
        self.value, self.key, self.partition, self.headers = value, key, partition, ()


def wait_for(check: Any, timeout: float, every: float = 1.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(every)
    return False


# -- 1. the gate's index follows a new log ------------------------------------------------


@pytest.mark.slow
def test_an_event_the_restored_log_lacks_is_accepted_again_after_a_broker_restart(
    tmp_path: Path,
) -> None:
    topics = Topics(prefix="gate-restart.")
    first, lost = lines(FIRST), lines(LOST)
    expected = expected_views(first + lost)
    assert {k.split(b":")[1] for k in expected} == {b"P-A1", b"P-B7"}

    async def first_life(bootstrap: str) -> list[Any]:
        async with Follower(bootstrap, topics, PARTS) as f:
            await produce(bootstrap, topics.ingress, first + lost)
            assert await f.until(lambda got: got.views() == expected, 120, quiet=1.0)
        return await read_all(bootstrap, topics.events)

    async def second_life(bootstrap: str) -> Follower:
        async with Follower(bootstrap, topics, PARTS) as f:
            await f.until(lambda got: got.views() == expected, 120, quiet=1.0)
            return f

    broker = EmbeddedBroker(log_path=tmp_path / "tansu.log").start()
    worker = None
    try:
        ensure_topics(broker.bootstrap, topics, PARTS)
        worker = start_worker(broker.bootstrap, topics, tmp_path, "--snapshot-interval", "0.5")
        old_log = asyncio.run(first_life(broker.bootstrap))
        restored = [r for r in old_log if r.value in first]
        assert {r.value for r in restored} == set(first) and len(restored) == len(first) + 2
        broker.stop()  # memory storage: the topics, offsets and group are gone
        broker.start()  # same port; the worker keeps running
        ensure_topics(broker.bootstrap, topics, PARTS)  # as `caretally restore` does
        asyncio.run(republish(broker.bootstrap, topics.events, restored))
        asyncio.run(produce(broker.bootstrap, topics.ingress, lost))  # the EHR sends again

        def lost_in_log() -> bool:
            return set(lost) <= set(log_values(broker.bootstrap, topics.events))

        reached = wait_for(lost_in_log, 90)
        new_log = log_values(broker.bootstrap, topics.events)
        follower = asyncio.run(second_life(broker.bootstrap))
        running = worker.proc is not None and worker.proc.poll() is None
    finally:
        if worker is not None:
            worker.stop()
        broker.stop()
    assert reached, "events sent again after the restart were dropped as duplicates of the old log"
    assert sorted(new_log) == sorted([*(r.value for r in restored), *lost])  # each once
    assert running, tail(tmp_path / "worker.log")
    assert follower.got.views() == expected, tail(tmp_path / "worker.log")


# -- 2. the exit status ------------------------------------------------------------------


def recreate_with(bootstrap: str, topic: str, partitions: int) -> None:
    """The topic deleted and created again with another partition count (a new log)."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.delete_topics([topic])
        assert wait_for(lambda: topic not in admin.list_topics(), 20, every=0.2)
        admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        admin.close()


def committed(bootstrap: str, group: str, topic: str) -> int:
    """The group's committed offset of the one-partition ``topic`` (-1: none)."""
    from kafka import TopicPartition as KafkaTP

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        offsets = admin.list_group_offsets({group: [KafkaTP(topic, 0)]})[group]
    finally:
        admin.close()
    return max((o.offset for o in offsets.values()), default=-1)


@pytest.mark.slow
def test_a_gate_that_stops_itself_exits_3_and_commits_nothing_after_its_last_batch(
    broker: EmbeddedBroker, topics: Topics, tmp_path: Path
) -> None:
    """The log recreated with 1 partition under a gate run with 3: it cannot route the
    next batch (nor rebuild its index: partitions 1 and 2 do not exist), so it holds the
    batch and stops itself."""
    ensure_topics(broker.bootstrap, topics, PARTS)
    one, two = orjson.dumps(LOG.conditions("P-X1")), orjson.dumps(LOG.conditions("P-X2"))
    worker = start_worker(broker.bootstrap, topics, tmp_path, "--role", "gate")
    try:
        asyncio.run(produce(broker.bootstrap, topics.ingress, [one]))
        assert wait_for(lambda: one in log_values(broker.bootstrap, topics.events), 90)
        recreate_with(broker.bootstrap, topics.events, 1)
        time.sleep(CHECK_INTERVAL + 1)  # the next batch is checked against the log
        asyncio.run(produce(broker.bootstrap, topics.ingress, [two]))
        assert worker.proc is not None
        assert wait_for(lambda: worker.proc.poll() is not None, 90), "the gate did not stop"
    finally:
        code = worker.stop()
    out = tail(tmp_path / "worker.log")
    assert code == FATAL_EXIT, out
    assert "CRITICAL" in out and topics.events in out and "--partitions" in out, out
    assert "P-X2" not in out  # no PHI in the critical line
    assert committed(broker.bootstrap, f"app-{topics.prefix}-gate", topics.ingress) == 1


@pytest.mark.slow
def test_a_fold_whose_log_comes_back_with_another_partition_count_exits_3(
    broker: EmbeddedBroker, topics: Topics, tmp_path: Path
) -> None:
    """Its refold would read partitions that do not exist, forever."""
    ensure_topics(broker.bootstrap, topics, PARTS)
    raws = lines(FIRST)
    key = event_key(LOG.org, "P-A1")
    worker = start_worker(
        broker.bootstrap, topics, tmp_path, "--role", "fold", "--snapshot-interval", "0.5"
    )
    try:
        asyncio.run(republish(broker.bootstrap, topics.events, [Rec(r, key, 0) for r in raws]))
        assert wait_for(lambda: log_values(broker.bootstrap, topics.billing), 90)
        recreate_with(broker.bootstrap, topics.events, 1)
        assert worker.proc is not None
        assert wait_for(lambda: worker.proc.poll() is not None, 90), "the fold did not stop"
    finally:
        code = worker.stop()
    out = tail(tmp_path / "worker.log")
    assert code == FATAL_EXIT, out
    assert "CRITICAL" in out and topics.events in out and "--partitions" in out, out


@pytest.mark.slow
def test_a_worker_stopped_by_sigterm_exits_0(
    broker: EmbeddedBroker, topics: Topics, tmp_path: Path
) -> None:
    ensure_topics(broker.bootstrap, topics, PARTS)
    one = orjson.dumps(LOG.conditions("P-X3"))
    worker = start_worker(broker.bootstrap, topics, tmp_path, "--role", "gate")
    try:
        asyncio.run(produce(broker.bootstrap, topics.ingress, [one]))
        assert wait_for(lambda: one in log_values(broker.bootstrap, topics.events), 90)
    finally:
        code = worker.stop()
    assert code == 0, tail(tmp_path / "worker.log")


# -- 3. partition counts that do not fit ----------------------------------------------------


def create(bootstrap: str, topic: str, partitions: int) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        admin.close()


def worker_cli(bootstrap: str, topics: Topics, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """``caretally worker --partitions 3``; a worker that does not refuse runs on until
    the (generous) timeout, which fails the test."""
    return subprocess.run(
        WorkerProcess(bootstrap, topics, PARTS, tmp_path / "state").args,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ},
    )


@pytest.mark.parametrize(("which", "count"), [("events", 2), ("events", 8), ("staff", 2)])
def test_a_topic_with_another_partition_count_is_refused_at_start(
    broker: EmbeddedBroker, topics: Topics, tmp_path: Path, which: str, count: int
) -> None:
    name = getattr(topics, which)
    create(broker.bootstrap, name, count)
    ensure_topics(broker.bootstrap, topics, PARTS)  # the others as the worker makes them
    done = worker_cli(broker.bootstrap, topics, tmp_path)
    assert done.returncode == 1, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"error: topic {name} has {count} partition"), line
    assert "--partitions 3" in line, line

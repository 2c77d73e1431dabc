"""Issue #9 item 1 (and part of 13): an ingress record the gate cannot forward must not
crash it and lose its batch; a failed send must never let the batch be committed.

For every ingress record, exactly one of: in the log, dead-lettered, counted duplicate.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from builders import Log
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.demo.client import WorkerProcess
from streams.kafka.broker import EmbeddedBroker
from streams.kafka.records import header, key_of
from streams.kafka.topics import Topics, ensure_topics
from streams.worker.gate import IngressGate, Verdict

try:  # so the broker tests also run (and fail) on the code before the fix
    from streams.kafka.limits import (
        DEADLETTER_EXCERPT_BYTES,
        EVENT_MAX_BYTES,
        PRODUCER_MAX_REQUEST_BYTES,
    )
except ImportError:  # pragma: no cover - the pristine base
    EVENT_MAX_BYTES, PRODUCER_MAX_REQUEST_BYTES = 1_000_000, 1_064_960
    DEADLETTER_EXCERPT_BYTES = 16 * 1024

PARTS = 3
LOG = Log(org="o-sec")
GOOD = orjson.dumps(LOG.conditions("P-1"))


def event(i: int) -> bytes:
    return orjson.dumps({**orjson.loads(GOOD), "event_id": f"e-{i}", "patient_id": f"P-{i}"})


def padded(raw: bytes, size: int) -> bytes:
    """A valid event of exactly ``size`` bytes: whitespace inside the JSON object."""
    return b"{" + b" " * (size - len(raw)) + raw[1:]


# --- the decision, over raw bytes ------------------------------------------------------------

JUST_OVER = padded(GOOD, EVENT_MAX_BYTES + 1)


def test_an_event_over_the_limit_is_refused_as_too_large() -> None:
    gate = IngressGate()
    d = gate.decide(JUST_OVER)
    assert (d.verdict, d.reason) == (Verdict.REJECTED, "too_large")
    assert gate.decide(padded(GOOD, EVENT_MAX_BYTES)).verdict is Verdict.NEW  # at the limit


records = st.one_of(
    st.integers(0, 20).map(event),  # valid events, re-sent when drawn twice
    st.integers(0, 20).map(lambda i: event(i).replace(b"I10", b"J44.9")),  # conflicting
    st.binary(max_size=64),  # anything, non-UTF-8 included
    st.sampled_from([b"", b"  \n", b"\xff\xfe{", JUST_OVER, b"[1]", b"{}"]),
    st.integers(0, 20).map(lambda i: event(i)[:-1] + b',"event_id":"dup"}'),  # duplicate key
    st.integers(0, 5).map(lambda i: padded(event(i), EVENT_MAX_BYTES + 1 + i)),
    st.just(orjson.dumps(LOG.practice())),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(records, st.one_of(st.none(), st.binary(max_size=16))), max_size=12))
def test_every_record_gets_exactly_one_outcome_and_writes_that_fit(
    batch: list[tuple[bytes, bytes | None]],
) -> None:
    from streams.worker.gate import Source, Target

    gate = IngressGate()
    logged: dict[int, int] = {}
    for offset, (value, key) in enumerate(batch):
        routed = gate.route(value, key, Source("in", 0, offset), PARTS)
        kinds = [w.target for w in routed.writes]
        if routed.outcome == "log":
            assert kinds in ([Target.LOG], [Target.LOG] * PARTS)
            assert routed.decision.idem not in logged
            logged[routed.decision.idem] = routed.decision.body
        elif routed.outcome == "deadletter":
            assert kinds == [Target.DEADLETTER]
            assert header(routed.writes[0].headers, "reason")
        else:
            assert routed.outcome == "duplicate" and kinds == []
            assert logged[routed.decision.idem] == routed.decision.body
        for w in routed.writes:
            size = len(w.key or b"") + len(w.value) + sum(len(k) + len(v) for k, v in w.headers)
            assert size + 1024 <= PRODUCER_MAX_REQUEST_BYTES
        if len(value.strip()) > EVENT_MAX_BYTES:
            (dead,) = routed.writes
            assert header(dead.headers, "reason") == b"too_large"
            assert len(dead.value) <= DEADLETTER_EXCERPT_BYTES
            digest = hashlib.sha256(value).hexdigest().encode()
            assert header(dead.headers, "digest") == b"sha256:" + digest


# --- the real worker on the real broker ---------------------------------------------------


async def send_raw(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", max_request_size=PRODUCER_MAX_REQUEST_BYTES
    )
    await producer.start()
    try:
        futures = [await producer.send(topic, v, key=key_of(v)) for v in values]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def read(bootstrap: str, topic: str, parts: int) -> list[Any]:
    from test_pipeline import read_all

    return asyncio.run(read_all(bootstrap, topic, parts))


def wait_for(check: Any, timeout: float) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(1.0)
    return False


def worker(broker: EmbeddedBroker, topics: Topics, tmp: Path, parts: int, name: str) -> Any:
    return WorkerProcess(
        broker.bootstrap,
        topics,
        parts,
        tmp / "state",
        "--app-id",
        f"app-{topics.prefix}",
        "--role",
        "gate",
        log_path=tmp / f"{name}.log",
    )


@pytest.mark.slow
def test_a_1_mib_record_mid_batch_is_dead_lettered_and_nothing_is_lost(
    broker: EmbeddedBroker, topics: Topics, tmp_path: Path
) -> None:
    # just under the producer's old default limit: with the gate's headers it did not fit
    big = padded(event(10_000), 1_048_576 - 40)
    valid = [event(i) for i in range(400)]
    ingress = [*valid[:200], big, *valid[200:], *valid[:5]]  # 5 exact re-sends at the end
    ensure_topics(broker.bootstrap, topics, PARTS)
    w = worker(broker, topics, tmp_path, PARTS, "worker").start()
    try:
        asyncio.run(send_raw(broker.bootstrap, topics.ingress, ingress))

        def accounted() -> bool:
            n_log = len(read(broker.bootstrap, topics.events, PARTS))
            n_dead = len(read(broker.bootstrap, topics.deadletter, PARTS))
            return n_log + n_dead + 5 >= len(ingress)

        wait_for(accounted, 45)
    finally:
        w.stop()
    log = read(broker.bootstrap, topics.events, PARTS)
    dead = read(broker.bootstrap, topics.deadletter, PARTS)
    assert sorted(r.value for r in log) == sorted(valid)
    assert len(log) + len(dead) + 5 == len(ingress)
    (letter,) = dead
    assert header(letter.headers, "reason") == b"too_large"
    assert len(letter.value) <= DEADLETTER_EXCERPT_BYTES and big.startswith(letter.value)
    assert header(letter.headers, "digest") == b"sha256:" + hashlib.sha256(big).hexdigest().encode()
    assert header(letter.headers, "source_offset") == b"200"

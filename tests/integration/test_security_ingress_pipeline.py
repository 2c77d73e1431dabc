"""Issue #9 item 1 on a real broker: a record the gate cannot forward, mid-batch, is
dead-lettered by a real worker and nothing of its batch is lost (the gate's decisions over
raw bytes: tests/unit/test_security_ingress.py)."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from streams.demo.client import WorkerProcess
from streams.kafka.broker import EmbeddedBroker
from streams.kafka.limits import DEADLETTER_EXCERPT_BYTES, PRODUCER_MAX_REQUEST_BYTES
from streams.kafka.partitioning import IngressPartitioner
from streams.kafka.records import header, key_of
from streams.kafka.topics import Topics, ensure_topics
from support.pipeline import read_all
from support.sized_events import event, padded

PARTS = 3


async def send_raw(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        max_request_size=PRODUCER_MAX_REQUEST_BYTES,
        partitioner=IngressPartitioner(),  # ingress is partitioned by org
    )
    await producer.start()
    try:
        futures = [await producer.send(topic, v, key=key_of(v)) for v in values]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def read(bootstrap: str, topic: str, parts: int) -> list[Any]:
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

"""The pipeline as tests drive it: a ``caretally worker`` process on a test's topics, the
offline fold to hold it to, and raw reads and writes of a topic."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from projections.engine import Projector
from schemas.events import EventRejected, parse_event
from schemas.views import Alert
from streams.demo.client import WorkerProcess
from streams.kafka.broker import EmbeddedBroker
from streams.kafka.limits import PRODUCER_MAX_REQUEST_BYTES
from streams.kafka.topics import Topics, ensure_topics

PARTS = 3


def lines_of(events: Iterable[dict[str, Any]]) -> list[bytes]:
    return [orjson.dumps(e) for e in events]


def offline_alert_ids(lines: list[bytes]) -> dict[str, Alert]:
    """The alerts the core derives from ``lines`` event by event, by alert id."""
    projector = Projector()
    ids = {}
    for line in lines:
        with contextlib.suppress(EventRejected):
            ids.update((a.alert_id, a) for a in projector.step(parse_event(line), line).alerts)
    return ids


def worker_for(broker: EmbeddedBroker, topics: Topics, tmp_path: Path, *extra: str) -> Any:
    """A worker (not started) on ``topics``, created with :data:`PARTS` partitions."""
    ensure_topics(broker.bootstrap, topics, PARTS)
    return WorkerProcess(
        broker.bootstrap,
        topics,
        PARTS,
        tmp_path / "state",
        "--app-id",
        f"app-{topics.prefix}",
        "--sweep-interval",
        "3600",
        *extra,
        log_path=tmp_path / "worker.log",
    )


async def read_all(bootstrap: str, topic: str, parts: int = PARTS) -> list[Any]:
    """Every record of ``topic`` from the beginning, until three polls come back empty."""
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest")
    await c.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(parts)]
        c.assign(tps)
        await c.seek_to_beginning(*tps)
        out: list[Any] = []
        idle = 0
        while idle < 3:
            got = await c.getmany(timeout_ms=300)
            idle = 0 if got else idle + 1
            for recs in got.values():
                out.extend(recs)
        return out
    finally:
        await c.stop()


async def republish(bootstrap: str, topic: str, records: list[Any]) -> None:
    """What ``caretally restore`` does: the same bytes, keys, headers, partitions, order."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", max_request_size=PRODUCER_MAX_REQUEST_BYTES
    )
    await producer.start()
    try:
        futures = [
            await producer.send(
                topic, r.value, key=r.key, partition=r.partition, headers=list(r.headers)
            )
            for r in records
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()

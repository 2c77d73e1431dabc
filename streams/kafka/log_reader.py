"""Reading stretches of a topic directly (no consumer group), with aiokafka.

Used to rebuild state from the log: the ingress gate's index at start, and a fold
partition's tail between its snapshot and where the worker's group resumes. "The end"
is the fetch highwater, never ListOffsets: Tansu answers LATEST wrongly after batched
produce (docs/kafka-notes.md §0.2).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any

from streams.kafka.clients import LOG_READER, AioTopicPartition, Connection, aio_consumer


async def read_range(
    kafka: Connection, topic: str, partition: int, start: int, stop: int
) -> AsyncIterator[Any]:
    """Records of one partition with ``start <= offset < stop``, in order."""
    if stop <= start:
        return
    consumer = aio_consumer(kafka, LOG_READER)
    tp = AioTopicPartition(topic, partition)
    await consumer.start()
    try:
        consumer.assign([tp])
        consumer.seek(tp, start)
        while True:
            batch = await consumer.getmany(tp, timeout_ms=1000)
            for record in batch.get(tp, ()):
                if record.offset >= stop:
                    return
                if record.offset >= start:
                    yield record
            if await consumer.position(tp) >= stop:
                return
    finally:
        await consumer.stop()


async def read_to_end(
    kafka: Connection, topic: str, partitions: Iterable[int]
) -> AsyncIterator[Any]:
    """Every record of the given partitions from the start to the end seen on arrival
    (the last stable offset; the highwater when the broker gives none)."""
    consumer = aio_consumer(kafka, LOG_READER)
    tps = [AioTopicPartition(topic, p) for p in partitions]
    await consumer.start()
    try:
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        pending = set(tps)
        while pending:
            batch = await consumer.getmany(*pending, timeout_ms=300)
            for records in batch.values():
                for record in records:
                    yield record
            for tp in list(pending):
                # read_committed: the readable end is the last stable offset (an open
                # transaction's records past it are not ours to wait for)
                high = consumer.last_stable_offset(tp)
                if high is None:
                    high = consumer.highwater(tp)
                if high is not None and await consumer.position(tp) >= high:
                    pending.discard(tp)
    finally:
        await consumer.stop()

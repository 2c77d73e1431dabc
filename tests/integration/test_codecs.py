"""Kafka's four codecs on the embedded broker: ``caretally ingest --compression`` writes
batches in that codec whose records our readers (aiokafka's ``read_to_end``, kafka-python
with ``ARCHIVE_CONSUMER``) return byte for byte, and events another producer compressed
(kafka-python's, aiokafka's: what confluent-kafka, Java and Go clients send too) are
logged and billed by a real worker."""

from __future__ import annotations

import asyncio
import struct
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.client import AIOKafkaClient
from aiokafka.protocol.fetch import FetchRequest
from kafka import KafkaProducer

from streams.demo.client import Follower
from streams.demo.live import expected_views
from streams.kafka.broker import EmbeddedBroker
from streams.kafka.clients import ARCHIVE_CONSUMER, kafka_consumer
from streams.kafka.clients import TopicPartition as KafkaTopicPartition
from streams.kafka.log_reader import read_to_end
from streams.kafka.records import key_of
from streams.kafka.topics import Topics, partition_counts
from support.ingest import Ingress, assert_in_ingress, ingest, practice_lines
from support.pipeline import PARTS, read_all, worker_for

CODECS = ("gzip", "snappy", "lz4", "zstd")
CODEC_NAMES = ("none", *CODECS)
"""By the codec id in the low three bits of a record batch's attributes (Kafka protocol)."""

FETCH_BYTES = 8 << 20


def parse_codecs(raw: bytes) -> list[str]:
    """The codec of each whole v2 record batch in a fetched record set, read from the
    batch header itself (base offset, length, leader epoch, magic, CRC, attributes)."""
    out, pos = [], 0
    while pos + 23 <= len(raw):
        _base, length = struct.unpack_from(">qi", raw, pos)
        if pos + 12 + length > len(raw):  # a partial batch at the end of the fetch
            break
        assert raw[pos + 16] == 2, "not a v2 record batch"
        (attributes,) = struct.unpack_from(">h", raw, pos + 21)
        out.append(CODEC_NAMES[attributes & 0x07])
        pos += 12 + length
    return out


async def batch_codecs(bootstrap: str, topic: str) -> Counter[str]:
    """How the batches of every partition of ``topic`` are compressed, as the broker
    serves them (one raw fetch per partition from offset 0)."""
    client = AIOKafkaClient(bootstrap_servers=bootstrap)
    await client.bootstrap()
    try:
        client.add_topic(topic)
        await client.force_metadata_update()
        codecs: Counter[str] = Counter()
        for partition in sorted(client.cluster.partitions_for_topic(topic) or ()):
            node = client.cluster.leader_for_partition(TopicPartition(topic, partition))
            request = FetchRequest(100, 1, FETCH_BYTES, 0, [(topic, [(partition, 0, FETCH_BYTES)])])
            response = await client.send(node, request)
            for _topic, partitions in response.topics:
                for _partition, error, _highwater, *data in partitions:
                    assert error == 0, error
                    codecs.update(parse_codecs(bytes(data[-1])))
        return codecs
    finally:
        await client.close()


def assert_compressed_with(codecs: Counter[str], codec: str) -> None:
    """Batches in ``codec``; a producer sends a batch uncompressed only when compressing
    did not make it smaller (one short record)."""
    assert codecs[codec] > 0, codecs
    assert set(codecs) <= {codec, "none"}, codecs


def ingress_partitions(broker: EmbeddedBroker, topics: Topics) -> int:
    count = partition_counts(broker.bootstrap, [topics.ingress])[topics.ingress]
    assert count > 0
    return count


async def read_with_log_reader(bootstrap: str, topic: str, partitions: int) -> list[Any]:
    records = [r async for r in read_to_end(bootstrap, topic, range(partitions))]
    return sorted(records, key=lambda r: (r.partition, r.offset))


def read_with_archive_consumer(
    broker: EmbeddedBroker, topic: str, partitions: int, expected: int
) -> list[Any]:
    """kafka-python as the archiver reads: until ``expected`` arrived, then one more poll."""
    consumer = kafka_consumer(broker.bootstrap, ARCHIVE_CONSUMER, group_id=None)
    try:
        tps = [KafkaTopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        seen: list[Any] = []
        deadline = time.monotonic() + 15
        while len(seen) < expected:
            assert time.monotonic() < deadline, f"only {len(seen)} of {expected} arrived"
            for records in consumer.poll(timeout_ms=300).values():
                seen.extend(records)
        for records in consumer.poll(timeout_ms=300).values():
            seen.extend(records)
        return sorted(seen, key=lambda r: (r.partition, r.offset))
    finally:
        consumer.close()


@pytest.mark.parametrize("codec", CODECS)
def test_ingest_compression_reads_back_byte_for_byte(
    broker: EmbeddedBroker, topics: Topics, tmp_path: Path, codec: str
) -> None:
    lines = practice_lines(patients=2, seed=21)
    path = tmp_path / "events.ndjson"
    path.write_bytes(b"\n".join(lines) + b"\n")

    result = ingest(broker, topics, str(path), "--compression", codec)

    assert result.exit_code == 0, result.output
    assert f"sent {len(lines):,} line(s)" in result.stdout
    assert_compressed_with(asyncio.run(batch_codecs(broker.bootstrap, topics.ingress)), codec)
    parts = ingress_partitions(broker, topics)
    expected = [(key_of(line), line) for line in lines]
    by_log_reader = asyncio.run(read_with_log_reader(broker.bootstrap, topics.ingress, parts))
    assert_in_ingress(Ingress(by_log_reader, parts), expected)
    by_kafka_python = read_with_archive_consumer(broker, topics.ingress, parts, len(lines))
    assert_in_ingress(Ingress(by_kafka_python, parts), expected)


def test_ingest_compression_defaults_to_none(
    broker: EmbeddedBroker, topics: Topics, tmp_path: Path
) -> None:
    lines = practice_lines(patients=1, seed=22)
    path = tmp_path / "events.ndjson"
    path.write_bytes(b"\n".join(lines) + b"\n")

    result = ingest(broker, topics, str(path))

    assert result.exit_code == 0, result.output
    codecs = asyncio.run(batch_codecs(broker.bootstrap, topics.ingress))
    assert set(codecs) == {"none"}, codecs


def test_ingest_refuses_an_unknown_codec(topics: Topics, tmp_path: Path) -> None:
    path = tmp_path / "events.ndjson"
    path.write_bytes(practice_lines(patients=1)[0] + b"\n")

    result = ingest(None, topics, str(path), "--compression", "brotli")

    assert result.exit_code == 2
    assert "'brotli' is not one of 'none', 'gzip', 'snappy', 'lz4', 'zstd'" in result.stderr


# -- a real worker reads what other producers compressed ---------------------------------------


def send_with_kafka_python(bootstrap: str, topic: str, lines: list[bytes], codec: str) -> None:
    producer = KafkaProducer(
        bootstrap_servers=bootstrap, compression_type=codec, acks="all", linger_ms=50
    )
    try:
        futures = [producer.send(topic, value=line, key=key_of(line)) for line in lines]
        producer.flush(timeout=30)
        for future in futures:
            future.get(timeout=0)  # raises the send's error, if any
    finally:
        producer.close(timeout=5)


async def send_with_aiokafka(bootstrap: str, topic: str, lines: list[bytes], codec: str) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, compression_type=codec, acks="all", linger_ms=50
    )
    await producer.start()
    try:
        sent = [await producer.send(topic, value=line, key=key_of(line)) for line in lines]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


@pytest.mark.slow
@pytest.mark.parametrize("codec", CODECS)
def test_worker_logs_and_bills_events_compressed_by_any_producer(
    broker: EmbeddedBroker, topics: Topics, tmp_path: Path, codec: str
) -> None:
    lines = practice_lines(patients=2, seed=23)
    patients = sorted({p for p in (orjson.loads(x).get("patient_id") for x in lines) if p})
    assert len(patients) == 2
    # the practice's configuration and one patient from kafka-python, then the other
    # patient from aiokafka: each key's events in order, as from one EHR feed
    by_kafka_python = [x for x in lines if orjson.loads(x).get("patient_id") != patients[1]]
    by_aiokafka = [x for x in lines if orjson.loads(x).get("patient_id") == patients[1]]
    expected = expected_views(lines)
    assert len(expected) >= 2

    worker = worker_for(broker, topics, tmp_path).start()

    def finished(got: Any) -> bool:
        return got.views() == expected or worker.proc.poll() is not None  # or it died

    try:

        async def run() -> tuple[Follower, bool]:
            async with Follower(broker.bootstrap, topics, PARTS) as follower:
                send_with_kafka_python(broker.bootstrap, topics.ingress, by_kafka_python, codec)
                await send_with_aiokafka(broker.bootstrap, topics.ingress, by_aiokafka, codec)
                done = await follower.until(finished, 90, quiet=1.0)
                return follower, done

        follower, done = asyncio.run(run())
        log = asyncio.run(read_all(broker.bootstrap, topics.events))
    finally:
        code = worker.stop()
    worker_log = (tmp_path / "worker.log").read_text()[-3000:]
    assert code == 0, worker_log
    assert done, (follower.got.views(), follower.got.deadletter, worker_log)
    assert follower.got.views() == expected
    assert not follower.got.deadletter
    assert {r.value for r in log} == set(lines)
    assert_compressed_with(asyncio.run(batch_codecs(broker.bootstrap, topics.ingress)), codec)

"""``caretally ingest`` as tests run and check it: the command in-process, and what it put
on ingress and the dead-letter topic, read back record by record."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from click.testing import CliRunner, Result
from kafka import KafkaConsumer, TopicPartition

from streams.cli.main import cli
from streams.demo.synthetic import generate_practice_log
from streams.kafka.broker import EmbeddedBroker
from streams.kafka.limits import DEADLETTER_EXCERPT_BYTES
from streams.kafka.partitioning import home_partition, org_of_key
from streams.kafka.records import header
from streams.kafka.topics import Topics

PARTS = 3


def ingest(broker: EmbeddedBroker | None, topics: Topics, *args: str, **kw: Any) -> Result:
    where = ["--bootstrap", broker.bootstrap] if broker else []
    argv = ["ingest", "--input", *args, *where, "--topic-prefix", topics.prefix]
    argv += ["--partitions", str(PARTS)]
    return CliRunner().invoke(cli, argv, catch_exceptions=False, **kw)


@dataclass
class Ingress:
    records: list[Any]  # in (partition, offset) order
    partitions: int

    def partition_of(self, key: bytes) -> int:
        """Where ``caretally ingest`` puts ``key``: its org part's partition (murmur2, as
        Kafka's default partitioner hashes a key of ``org_id``)."""
        return home_partition(org_of_key(key), self.partitions)


def read_ingress(broker: EmbeddedBroker, topics: Topics, expected: int) -> Ingress:
    """The records on ingress: read until ``expected`` arrived (never trusting end offsets
    on Tansu), then one more poll to catch any surplus."""
    return read_topic(broker, topics.ingress, expected)


def read_deadletter(broker: EmbeddedBroker, topics: Topics, expected: int) -> list[Any]:
    """The records on the dead-letter topic, as :func:`read_ingress`, in source order."""
    records = read_topic(broker, topics.deadletter, expected).records
    return sorted(records, key=lambda r: int(header(r.headers, "source_offset") or 0))


def hex_digest(*chunks: bytes) -> bytes:
    h = hashlib.sha256()
    for chunk in chunks:
        h.update(chunk)
    return b"sha256:" + h.hexdigest().encode()


def assert_too_large_letter(
    letter: Any, origin: str, line: int, key: bytes | None, whole: bytes
) -> None:
    """``letter`` is the dead letter of too-large line ``line`` of ``origin`` whose bytes
    (surrounding whitespace stripped) are ``whole``: the gate's and HTTP's format."""
    assert header(letter.headers, "reason") == b"too_large"
    assert header(letter.headers, "source_topic") == f"ingest:{origin}".encode()
    assert header(letter.headers, "source_partition") == b"-1"
    assert header(letter.headers, "source_offset") == str(line).encode()
    assert header(letter.headers, "size") == str(len(whole)).encode()
    assert header(letter.headers, "digest") == hex_digest(whole)
    assert letter.value == whole[:DEADLETTER_EXCERPT_BYTES]
    assert letter.key == key


def read_topic(broker: EmbeddedBroker, topic: str, expected: int) -> Ingress:
    """The records on ``topic``: read until ``expected`` arrived, then one more poll."""
    consumer = KafkaConsumer(
        bootstrap_servers=broker.bootstrap,
        group_id=None,
        enable_auto_commit=False,
        request_timeout_ms=10_000,
        bootstrap_timeout_ms=5_000,
    )
    try:
        numbers = consumer.partitions_for_topic(topic)
        assert numbers, f"no topic {topic}"
        parts = [TopicPartition(topic, p) for p in sorted(numbers)]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        seen: list[Any] = []
        deadline = time.monotonic() + 15
        while len(seen) < expected:
            assert time.monotonic() < deadline, f"only {len(seen)} of {expected} arrived"
            for records in consumer.poll(timeout_ms=300).values():
                seen.extend(records)
        for records in consumer.poll(timeout_ms=300).values():
            seen.extend(records)
        return Ingress(sorted(seen, key=lambda r: (r.partition, r.offset)), len(parts))
    finally:
        consumer.close()


def practice_lines(patients: int = 6, seed: int = 5) -> list[bytes]:
    return [
        orjson.dumps(e)
        for e in generate_practice_log(seed=seed, patients=patients, months=("2025-03",))
    ]


def assert_in_ingress(ingress: Ingress, lines: Sequence[tuple[bytes | None, bytes]]) -> None:
    """Exactly ``lines`` (key, value) are on ingress, each key's lines in file order (all
    of them, on a one-partition ingress), each keyed record where the partitioner puts it."""
    records = ingress.records
    if ingress.partitions == 1:
        assert [(r.key, r.value) for r in records] == list(lines)
    assert sorted((r.key or b"", r.value) for r in records) == sorted(
        (k or b"", v) for k, v in lines
    )
    for key in {k for k, _ in lines if k is not None}:
        in_file = [v for k, v in lines if k == key]
        assert [r.value for r in records if r.key == key] == in_file
        assert {r.partition for r in records if r.key == key} == {ingress.partition_of(key)}


# --- NDJSON ----------------------------------------------------------------------------------

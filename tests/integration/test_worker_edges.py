"""``caretally worker`` at its edges (issue 12).

Health: ``/healthz``, ``/readyz`` and ``/metrics`` with the broker up, then with it gone
(a broker of the test's own, stopped mid-test: never the session's), a log that stays
small while the broker is away, and a clean exit on SIGTERM without it.

Undecodable input: a record batch on ingress that the broker stores but no client can
decode (flagged zstd over bytes that are not zstd, its CRC right) is dead-lettered raw,
and the events before and after it on the same partition still reach the log and billing.
"""

from __future__ import annotations

import asyncio
import http.client
import re
import signal
import struct
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import for_code
from aiokafka.protocol.produce import ProduceRequest
from aiokafka.record.default_records import (
    DefaultRecordBase,
    DefaultRecordBatch,
    DefaultRecordBatchBuilder,
)
from aiokafka.record.util import calc_crc32c
from prometheus_client.parser import text_string_to_metric_families

from streams.demo.client import Follower, produce
from streams.demo.live import expected_views
from streams.demo.synthetic import generate_practice_log
from streams.kafka.broker import EmbeddedBroker
from streams.kafka.partitioning import IngressPartitioner, ingress_partition
from streams.kafka.records import event_key, key_of
from streams.kafka.topics import Topics
from support.http import eventually
from support.pipeline import PARTS, lines_of, offline_alert_ids, read_all, worker_for

pytestmark = pytest.mark.slow

ORG = "practice-17"  # generate_practice_log's org
PROBLEM = re.compile(r"\b(WARNING|ERROR|CRITICAL)\b")
SUPPRESSED = re.compile(r"\((\d+) similar lines suppressed in the last 10 s\)")

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


# --- HTTP ----------------------------------------------------------------------------------


def request(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def probe(port: int, path: str) -> tuple[int, dict[str, Any]]:
    """(status, JSON body) of /healthz or /readyz; (0, {}) when nothing answers."""
    try:
        status, body = request(port, path)
    except OSError:
        return 0, {}
    return status, orjson.loads(body)


def scrape(port: int) -> Samples:
    status, body = request(port, "/metrics")
    assert status == 200
    samples: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def lags(samples: Samples) -> dict[tuple[str, str], float]:
    """``caretally_consumer_lag_records`` by (topic, partition)."""
    out = {}
    for (name, labels), v in samples.items():
        if name == "caretally_consumer_lag_records":
            d = dict(labels)
            out[(d["topic"], d["partition"])] = v
    return out


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    """A broker for this test alone, free to stop mid-test."""
    broker = EmbeddedBroker(log_path=tmp_path / "tansu.log").start()
    try:
        yield broker
    finally:
        broker.stop()


def practice_lines() -> list[bytes]:
    """One practice's month (one org, so one ingress partition), with alerts of 3 kinds."""
    return lines_of(generate_practice_log(seed=5, patients=2, months=("2025-03",)))


# --- health, broker up then down -----------------------------------------------------------


def test_health_and_metrics_follow_the_broker_and_sigterm_exits_cleanly_without_it(
    own_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    topics = Topics(prefix=f"t{uuid.uuid4().hex[:10]}.")
    # snapshots every second: the fold's periodic look at the topics (a kafka-python admin
    # on a thread) then also runs while the broker is away, as in a long outage
    worker = worker_for(own_broker, topics, tmp_path, "--snapshot-interval", "1").start()
    log_path = tmp_path / "worker.log"

    def log_lines() -> list[str]:
        return log_path.read_text(errors="replace").splitlines()

    port = worker.web_port
    good = practice_lines()
    alerts = Counter(a.kind for a in offline_alert_ids(good).values())
    assert len(alerts) >= 2  # the feed is one that alerts
    try:
        eventually(lambda: probe(port, "/readyz")[0] == 200, 90)
        status, health = probe(port, "/healthz")
        assert (status, health["ready"], health["kafka"]) == (200, True, "up")
        # the gate reads ingress; the fold, the log and the staff topic
        assert health["assigned_partitions"] == {"gate": PARTS, "fold": 2 * PARTS}

        asyncio.run(produce(own_broker.bootstrap, topics.ingress, [*good, b"{not json"]))

        def processed() -> bool:
            s = scrape(port)
            return (
                value(s, "caretally_records_in_total", topic=topics.events) >= len(good)
                and value(s, "caretally_dead_letters_total", reason="invalid") >= 1
                and all(value(s, "caretally_alerts_total", kind=k) >= n for k, n in alerts.items())
                and bool(lags(s))
                and not any(lags(s).values())
            )

        eventually(processed, 90)
        s = scrape(port)
        assert value(s, "caretally_records_in_total", topic=topics.ingress) >= len(good) + 1
        assert value(s, "caretally_dead_letters_total", reason="invalid") == 1
        for kind, n in alerts.items():
            assert value(s, "caretally_alerts_total", kind=kind) == n, kind
        lag = lags(s)
        for topic in (topics.ingress, topics.events):
            assert {p for t, p in lag if t == topic} == {str(p) for p in range(PARTS)}, lag
        for role in ("gate", "fold"):
            assert value(s, "caretally_batch_seconds_count", role=role) >= 1, role
        assert (value(s, "caretally_kafka_up"), value(s, "caretally_ready")) == (1, 1)

        at_stop = len(log_lines())
        own_broker.stop(timeout=1.0)
        eventually(lambda: probe(port, "/healthz")[1].get("kafka") == "down", 20)
        status, health = probe(port, "/healthz")
        assert (status, health["live"], health["ready"], health["kafka"]) == (
            200,
            True,
            False,
            "down",
        )
        eventually(lambda: probe(port, "/readyz")[0] == 503, 20)
        assert probe(port, "/readyz")[1]["ready"] is False
        s = scrape(port)
        assert (value(s, "caretally_kafka_up"), value(s, "caretally_ready")) == (0, 0)

        mark = len(log_lines())
        time.sleep(5.0)  # a window to count log lines in, not a timing assertion
        problems = [line for line in log_lines()[mark:] if PROBLEM.search(line)]
        assert len(problems) < 30, "\n".join(problems)

        def suppressed() -> int:
            found = (SUPPRESSED.search(line) for line in log_lines()[at_stop:])
            return sum(int(m.group(1)) for m in found if m)

        # the clients retry every 100 ms: what the repeat filter held back is the proof
        eventually(lambda: suppressed() >= 100, 30)
        down = [line for line in log_lines()[at_stop:] if PROBLEM.search(line)]
        print(
            f"\nbroker down: {len(problems)} warning/error line(s) in a 5 s window; "
            f"{len(down)} since the stop, {suppressed()} similar ones suppressed"
        )
        assert worker.proc is not None and worker.proc.poll() is None  # still alive

        started = time.monotonic()
        worker.proc.send_signal(signal.SIGTERM)
        code = worker.proc.wait(30)
        print(f"SIGTERM to exit, broker down: {time.monotonic() - started:.2f} s")
        text = log_path.read_text(errors="replace")
        assert code == 0, text[-3000:]
        assert "Traceback" not in text, text[-5000:]
        assert "P-000001" not in text  # no patient id in the log
    finally:
        worker.kill()


# --- an undecodable record batch on ingress ------------------------------------------------


CODECS = {"gzip": DefaultRecordBase.CODEC_GZIP, "zstd": DefaultRecordBase.CODEC_ZSTD}


def undecodable_batch(key: bytes, codec: str) -> bytes:
    """A v2 batch of one record that no client can decode: a real batch's header, flagged
    ``codec``, over bytes that are not compressed with it, its length and CRC (crc32c from
    the attributes on) made right, so only decompression fails. Tansu refuses an unknown
    codec id (5-7) with UNKNOWN_SERVER_ERROR and does not inflate the known ones, so it
    takes this one. gzip fails with ``BadGzipFile``, the others with cramjam's error."""
    builder = DefaultRecordBatchBuilder(2, 0, 0, -1, -1, -1, 1 << 20)
    builder.append(0, 1_740_787_200_000, key, b'{"event_id":"never-read"}', [])
    header = DefaultRecordBase.HEADER_STRUCT.size
    batch = bytearray(bytes(builder.build())[:header]) + b"\x00 this is not zstd \xff" * 8
    length_at, after_length = struct.calcsize(">q"), DefaultRecordBase.AFTER_LEN_OFFSET
    struct.pack_into(">i", batch, length_at, len(batch) - after_length)
    attributes_at = DefaultRecordBase.ATTRIBUTES_OFFSET
    (attributes,) = struct.unpack_from(">h", batch, attributes_at)
    flagged = (attributes & ~DefaultRecordBase.CODEC_MASK) | CODECS[codec]
    struct.pack_into(">h", batch, attributes_at, flagged)
    crc = calc_crc32c(bytes(batch[attributes_at:]))
    struct.pack_into(">I", batch, DefaultRecordBase.CRC_OFFSET, crc)
    return bytes(batch)


async def send_raw_batch(bootstrap: str, topic: str, partition: int, batch: bytes) -> int:
    """Produce ``batch`` as it is (a ProduceRequest, acks=all); its offset on ``topic``."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        await producer.partitions_for(topic)
        node = producer.client.cluster.leader_for_partition(TopicPartition(topic, partition))
        request = ProduceRequest(None, -1, 10_000, [(topic, [(partition, batch)])])
        response = await producer.client.send(node, request)
    finally:
        await producer.stop()
    [(_, [answer])] = response.topics
    error, offset = answer[1], answer[2]
    assert error == 0, f"the broker refused the batch: {for_code(error).__name__} ({error})"
    return int(offset)


@pytest.mark.parametrize("codec", sorted(CODECS))
@pytest.mark.parametrize("worker_running", [True, False], ids=["live", "catching-up"])
def test_an_undecodable_batch_is_dead_lettered_raw_and_its_partition_goes_on(
    broker: EmbeddedBroker, topics: Topics, tmp_path: Path, worker_running: bool, codec: str
) -> None:
    lines = practice_lines()
    before, after = lines[: len(lines) // 2], lines[len(lines) // 2 :]
    partition = ingress_partition(ORG, PARTS)  # every line's, and the batch's
    place = IngressPartitioner()
    assert {place(key_of(x), list(range(PARTS)), []) for x in lines} == {partition}
    bad = undecodable_batch(event_key(ORG, "P-000001"), codec)
    check = DefaultRecordBatch(bad)
    assert check.validate_crc()  # only the codec is wrong ...
    with pytest.raises(Exception):  # noqa: B017  ... and no client can read it
        list(check)

    worker = worker_for(broker, topics, tmp_path)  # creates the topics
    bootstrap = broker.bootstrap

    def died() -> bool:  # no use waiting for a worker that is gone
        return worker.proc is not None and worker.proc.poll() is not None

    async def run() -> tuple[Follower, int]:
        async with Follower(bootstrap, topics, PARTS) as follower:
            if worker_running:  # the worker has read up to the batch when it arrives
                worker.start()
                await produce(bootstrap, topics.ingress, before)
                done = await follower.until(
                    lambda got: got.views() == expected_views(before) or died(), 120, quiet=1.0
                )
                assert done, "the events before the batch were not folded"
            else:  # the worker meets the batch among records it has not read yet
                await produce(bootstrap, topics.ingress, before)
            offset = await send_raw_batch(bootstrap, topics.ingress, partition, bad)
            await produce(bootstrap, topics.ingress, after)
            if not worker_running:
                worker.start()
            expected = expected_views(lines)
            done = await follower.until(
                lambda got: (got.views() == expected and bool(got.deadletter)) or died(),
                120,
                quiet=2.0,
            )
            assert done or died(), "the events after the batch were not folded"
            return follower, offset

    try:
        follower, offset = asyncio.run(run())
        assert not died(), (tmp_path / "worker.log").read_text(errors="replace")[-3000:]
        samples = scrape(worker.web_port)
        log = asyncio.run(read_all(bootstrap, topics.events))
    finally:
        code = worker.stop()
    text = (tmp_path / "worker.log").read_text(errors="replace")
    assert code == 0, text[-3000:]

    assert follower.got.views() == expected_views(lines), text[-3000:]
    # every event in the log (a practice-wide one on each partition), none twice
    assert {r.value for r in log} == set(lines)
    assert max(Counter((r.partition, r.value) for r in log).values()) == 1

    [dead] = follower.got.deadletter
    headers = dict(dead.headers)
    assert headers["reason"].startswith(b"undecodable record batch"), headers["reason"]
    assert headers["source_topic"] == topics.ingress.encode()
    assert int(headers["source_partition"]) == partition
    assert int(headers["source_offset"]) == offset
    # the batch as the broker keeps it: ours, with the base offset it was given
    assert "digest" not in headers  # small: the whole of it, not an excerpt
    assert dead.value[8:] == bad[8:]
    assert struct.unpack_from(">q", dead.value)[0] == offset
    assert value(samples, "caretally_dead_letters_total", reason="undecodable") == 1
    assert "Traceback" not in text, text[-5000:]

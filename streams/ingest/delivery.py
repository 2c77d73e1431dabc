"""How ``caretally ingest`` delivers: the producer, its acknowledgements and their account.

:func:`deliver` sends every record of a source to the ingress topic with kafka-python's
idempotent producer (``acks=all``, each record on its org's partition:
``streams.kafka.partitioning``), dead-letters the lines too large to send (as the gate
would: :func:`too_large_letter`), waits until each send is acknowledged or has failed,
and closes the producer even when the broker is gone (``close_kafka_producer``).
:class:`Delivery` counts the acknowledgements, :class:`Stats` the lines;
:func:`delivery_problems` says, in one message, what did not arrive.
``caretally restore`` sends with the same settings (:func:`producer_settings`).
``--compression`` (:data:`COMPRESSIONS`) picks the codec the producer compresses each batch
with; every consumer caretally runs reads all four (aiokafka and Faust decode them with
cramjam, kafka-python with python-snappy, lz4 and zstandard).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from streams.files.logfile import Oversize, too_large_reason
from streams.ingest.sources import STDIN_NAME, DecompressedTooLarge, Outgoing, Source
from streams.kafka.clients import (
    INGEST_PRODUCER,
    Connection,
    KafkaError,
    MessageSizeTooLargeError,
    close_kafka_producer,
    describe,
    kafka_producer,
)
from streams.kafka.partitioning import kafka_python_ingress_partitioner
from streams.kafka.topics import Topics
from streams.worker import gate as ingress_gate
from streams.worker.gate import TOO_LARGE, Write, deadletter_write

DEFAULT_DELIVERY_TIMEOUT = 30.0  # seconds (--delivery-timeout)
COMPRESSIONS = ("none", "gzip", "snappy", "lz4", "zstd")
"""The codecs of ``caretally ingest --compression`` (kafka-python's ``compression_type``;
``none`` is its None)."""
DEFAULT_COMPRESSION = "none"


class Progress(Protocol):
    """What the sender reports as it goes (the command prints it)."""

    def say(self, message: str) -> None: ...

    def rejected(self, line: int, reason: str) -> None: ...

    def advance(self, completed: int, lines: int) -> None: ...


def ingest_origin(name: str) -> str:
    """A too-large dead letter's ``source_topic``: ``ingest:`` and the input's base name
    (``-`` for stdin); never its directories."""
    return "ingest:" + ("-" if name == STDIN_NAME else os.path.basename(name))


def too_large_letter(line: int, key: bytes | None, big: Oversize, origin: str) -> Write:
    """The dead letter of a line rejected for its size: ``deadletter_write`` of its
    excerpt, with the ``digest`` and ``size`` of the whole line measured while reading."""
    source = ingress_gate.Source(origin, -1, line)
    write = deadletter_write(TOO_LARGE, key, big.excerpt, source)
    headers = [(k, v) for k, v in write.headers if k not in ("digest", "size")]
    headers += [("digest", f"sha256:{big.sha256}".encode()), ("size", str(big.size).encode())]
    return replace(write, headers=headers)


class Delivery:
    """Counts broker acknowledgements and failures (callbacks run on the sender thread);
    ``unanswered``: records still pending after ``waited`` seconds of flushing, failed
    when the producer is then closed by force."""

    def __init__(self) -> None:
        self.acked = 0
        self.failed = 0
        self.first_error: str | None = None
        self.waited: float | None = None  # set when the flush timed out
        self.unanswered = 0

    def ok(self, _metadata: Any) -> None:
        self.acked += 1

    def fail(self, exc: BaseException) -> None:
        if self.waited is not None:
            self.unanswered += 1
            return
        self.failed += 1
        if self.first_error is None:
            self.first_error = describe(exc)


def producer_settings(
    delivery_timeout: float, compression: str = DEFAULT_COMPRESSION
) -> dict[str, Any]:
    """``INGEST_PRODUCER`` with a delivery timeout of ``delivery_timeout`` seconds and the
    codec ``compression`` (one of :data:`COMPRESSIONS`); the request and blocking timeouts
    are shortened to fit in the delivery timeout (kafka-python requires
    ``delivery_timeout_ms >= linger_ms + request_timeout_ms``)."""
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression {compression!r} is not one of {', '.join(COMPRESSIONS)}")
    settings = dict(INGEST_PRODUCER)
    settings["compression_type"] = None if compression == "none" else compression
    delivery_ms = max(int(delivery_timeout * 1000), settings["linger_ms"] + 1)
    settings["delivery_timeout_ms"] = delivery_ms
    settings["request_timeout_ms"] = min(
        settings["request_timeout_ms"], delivery_ms - settings["linger_ms"]
    )
    settings["max_block_ms"] = min(settings["max_block_ms"], delivery_ms)
    return settings


def make_producer(
    kafka: Connection,
    delivery_timeout: float = DEFAULT_DELIVERY_TIMEOUT,
    compression: str = DEFAULT_COMPRESSION,
) -> Any:
    """kafka-python's idempotent producer, placing each keyed record on its org's
    partition (as the gate expects of ingress; the too-large dead letters it also sends
    go by org too), compressing with ``compression``; a send not acknowledged within
    ``delivery_timeout`` seconds fails. It connects as it is built (:class:`KafkaError`)."""
    settings = producer_settings(delivery_timeout, compression)
    return kafka_producer(kafka, settings, partitioner=kafka_python_ingress_partitioner())


@dataclass
class Stats:
    """Lines read and their local verdicts; ``too_large``: rejected for their size here and
    never sent (counted in ``rejected``), each dead-lettered (``dead_lettered``: handed to
    the producer); ``unmapped``: input entries that are no event (FHIR entries that could
    not be mapped), rejected and dead-lettered the same way; ``not_sent``: refused by the
    producer as too large (not expected: its limit is above ours); ``errors`` end the
    ingest as failed; ``stopped_at``: the line at which sending stopped early (a delivery
    or send failed), the rest of the input unread."""

    lines: int = 0
    valid: int = 0
    rejected: int = 0
    sent_bytes: int = 0
    too_large: int = 0
    unmapped: int = 0
    dead_lettered: int = 0
    not_sent: int = 0

    @property
    def handed(self) -> int:
        """Lines given to the producer and accepted by it (each to be acknowledged)."""
        return self.lines - self.too_large - self.unmapped - self.not_sent

    errors: list[str] = field(default_factory=list)
    stopped_at: int | None = None


@dataclass(frozen=True)
class Targets:
    """Where records go: events to ``ingress``; too-large lines to ``deadletter``, their
    acknowledgements counted in ``dead``."""

    ingress: str
    deadletter: str
    dead: Delivery


def send_all(
    records: Iterator[Outgoing],
    producer: Any,
    targets: Targets,
    reporter: Progress,
    source: Source,
    delivery: Delivery,
    stats: Stats,
) -> None:
    """Send every record, counting into ``stats``; stop early if a delivery fails."""
    send = producer.send
    topic, dead = targets.ingress, targets.dead
    ok, fail = delivery.ok, delivery.fail
    position = source.position
    origin = ingest_origin(source.name)
    for record in records:
        if delivery.failed or dead.failed:
            stats.stopped_at = record.line
            break
        if record.too_large or record.letter_only:
            stats.lines += 1
            stats.rejected += 1
            if record.letter_only:  # an input entry that is no event (FHIR not mapped)
                stats.unmapped += 1
                reason = record.reason or "not an event"
                reporter.rejected(record.line, reason)
                place = ingress_gate.Source(origin, -1, record.line)
                letter = deadletter_write(reason, record.key, record.value, place)
            else:
                stats.too_large += 1
                reporter.rejected(record.line, record.reason or too_large_reason())
                if record.oversize is None:  # not expected: every too-large record is measured
                    continue
                letter = too_large_letter(record.line, record.key, record.oversize, origin)
            try:
                sent = send(
                    targets.deadletter, value=letter.value, key=letter.key, headers=letter.headers
                )
            except KafkaError as exc:
                stats.errors.append(f"dead-lettering line {record.line} failed: {describe(exc)}")
                stats.stopped_at = record.line
                break
            sent.add_callback(dead.ok)
            sent.add_errback(dead.fail)
            stats.dead_lettered += 1
            continue
        try:
            future = send(topic, value=record.value, key=record.key)
        except MessageSizeTooLargeError:
            future = None
            stats.not_sent += 1
            reporter.say(
                f"{source.name}:{record.line}: not sent: {len(record.value):,} bytes is over "
                f"the producer's limit of {INGEST_PRODUCER['max_request_size']:,}"
            )
        except KafkaError as exc:
            stats.errors.append(f"sending line {record.line} failed: {describe(exc)}")
            stats.stopped_at = record.line
            break
        stats.lines += 1
        if record.reason is None:
            stats.valid += 1
        else:
            stats.rejected += 1
            reporter.rejected(record.line, record.reason)
        if future is None:
            continue
        future.add_callback(ok)
        future.add_errback(fail)
        stats.sent_bytes += len(record.value)
        if stats.lines % 512 == 0:
            reporter.advance(position() if position else stats.sent_bytes, stats.lines)
    reporter.advance(position() if position else stats.sent_bytes, stats.lines)


def delivery_problems(stats: Stats, delivery: Delivery, sent: int, name: str) -> list[str]:
    """What went wrong in sending, as one message: how many of the lines handed to the
    producer the broker acknowledged, how many failed (and why) or had no answer, and
    where sending stopped. Empty if every line was acknowledged."""
    if delivery.acked == sent and not delivery.failed and not stats.errors:
        return []
    pieces = []
    if delivery.acked < sent:
        lost = []
        if delivery.failed:
            lost.append(f"{delivery.failed:,} failed ({delivery.first_error})")
        if delivery.unanswered:
            lost.append(f"{delivery.unanswered:,} had no answer within {delivery.waited:g} s")
        missing = sent - delivery.acked - delivery.failed - delivery.unanswered
        if missing > 0:  # not expected: every future completes, or is failed on close
            lost.append(f"{missing:,} had no outcome")
        pieces.append(
            f"the broker acknowledged {delivery.acked:,} of the {sent:,} line(s) sent; "
            + " and ".join(lost)
        )
    pieces.extend(stats.errors)
    if stats.stopped_at is not None:
        pieces.append(
            f"sending stopped at line {stats.stopped_at:,} of {name}, the rest was not sent"
        )
    return ["; ".join(pieces)]


def deadletter_problems(stats: Stats, dead: Delivery, topic: str) -> list[str]:
    """Too-large lines whose dead letter the broker did not acknowledge (they are then
    neither sent nor dead-lettered), as one message; empty if all were."""
    if dead.acked == stats.dead_lettered and not dead.failed:
        return []
    lost = stats.dead_lettered - dead.acked
    why = f" ({dead.first_error})" if dead.first_error else ""
    return [
        f"{lost:,} of the {stats.dead_lettered:,} too-large line(s) were not dead-lettered "
        f"to {topic}{why}"
    ]


@dataclass
class Outcome:
    """What :func:`deliver` did: the lines' account, the acknowledgements of the events
    (``delivery``) and of the too-large lines' dead letters (``dead``), and why it ended
    early, if it did (``interrupted`` by Ctrl-C, or a ``read_error``)."""

    stats: Stats
    delivery: Delivery
    dead: Delivery
    elapsed: float
    interrupted: bool = False
    read_error: str | None = None

    @property
    def delivered(self) -> bool:
        """Every line handed to the producer was acknowledged, and nothing else failed."""
        d = self.delivery
        return d.acked == self.stats.handed and not d.failed and not self.stats.errors

    def problems(self, name: str, deadletter: str) -> list[str]:
        """What went wrong, one message per kind (empty if nothing did)."""
        out = delivery_problems(self.stats, self.delivery, self.stats.handed, name)
        out += deadletter_problems(self.stats, self.dead, deadletter)
        if self.read_error:
            out.append(self.read_error)
        if self.stats.not_sent:
            out.append(f"{self.stats.not_sent:,} line(s) were not sent")
        return out


def deliver(
    producer: Any,
    records: Iterator[Outgoing],
    topics: Topics,
    source: Source,
    progress: Progress,
    delivery_timeout: float = DEFAULT_DELIVERY_TIMEOUT,
) -> Outcome:
    """Send ``records`` (read from ``source``) to ``topics.ingress``, dead-letter the
    too-large ones to ``topics.deadletter``, wait for every acknowledgement (at most
    ``delivery_timeout`` and a second more), and close ``producer`` (from
    :func:`make_producer`) whatever happens. Ctrl-C stops the sending, not the account."""
    delivery, dead = Delivery(), Delivery()
    targets = Targets(topics.ingress, topics.deadletter, dead)
    started = time.perf_counter()
    outcome = Outcome(Stats(), delivery, dead, 0.0)
    try:
        send_all(records, producer, targets, progress, source, delivery, outcome.stats)
    except KeyboardInterrupt:
        outcome.interrupted = True
    except DecompressedTooLarge as exc:
        outcome.read_error = (
            f"reading {source.name} stopped after line {outcome.stats.lines:,}: {exc}"
        )
    except (OSError, EOFError) as exc:
        outcome.read_error = f"reading {source.name} failed: {describe(exc)}"
    wait = delivery_timeout + 1  # each record is answered or expired by then
    try:
        producer.flush(timeout=wait)
    except KafkaError:
        delivery.waited = dead.waited = wait
    finally:
        close_kafka_producer(producer, flushed=delivery.waited is None)
    outcome.elapsed = time.perf_counter() - started
    return outcome

"""``caretally ingest FILE``: send a file of events (NDJSON or CSV) to the ingress topic.

Every non-empty line (NDJSON) or row (CSV, converted by ``streams.ingest.csv_events``) goes to
``care.ingress.v1`` under ``event_key(org_id, patient_id)``: ingress is the untrusted
input, and the worker dead-letters what it rejects, with the reason. Each line is also
validated here, so the sender learns at once which lines will be dead-lettered and why.

The input is read with bounded memory: a line (or CSV row, or the event it converts to)
longer than ``EVENT_MAX_BYTES`` is rejected here as ``too_large`` and never sent as an
event, skipped without being held whole; gzip input may decompress to at most
``--max-decompressed`` bytes, so a gzip bomb ends the ingest with a clear error instead
of exhausting memory or time.

Each too-large line or row is dead-lettered instead, as the gate and HTTP do it
(``streams.worker.gate.deadletter_write``): one record on ``care.deadletter.v1`` whose
value is the first ``DEADLETTER_EXCERPT_BYTES`` of it, with headers ``reason``
``too_large``, ``digest`` (``sha256:`` and the hex SHA-256 of all its bytes) and
``size`` (their count), both hashed while the line is skipped; surrounding whitespace
and the line ending are not counted, as for a line that is sent (for a CSV row that
converts to a too-large event: that event's JSON). Its source headers say where it came
from: ``source_topic`` ``ingest:FILE`` (the file's base name; ``ingest:-`` for stdin),
``source_partition`` -1 and ``source_offset`` the line number (a CSV row's first line).
It is keyed ``org_id:patient_id`` when both can be read from the excerpt (complete
top-level JSON members, or complete CSV cells), else it has no key.
The producer is kafka-python's idempotent one (``acks=all``); every send is confirmed
before the command reports success. A line the broker has not acknowledged within
``--delivery-timeout`` seconds fails the ingest, with how many lines were acknowledged.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, BinaryIO, Literal, NoReturn

import click

from schemas.events import EVENT_TYPES, EventRejected, parse_event
from streams.cli.options import bootstrap_option, prefix_option
from streams.files.logfile import Oversize, read_lines, too_large_reason
from streams.ingest.csv_events import CsvHeaderError, mapping_summary, read_csv_events
from streams.kafka.limits import (
    DEADLETTER_EXCERPT_BYTES,
    EVENT_MAX_BYTES,
    PRODUCER_MAX_REQUEST_BYTES,
)
from streams.kafka.records import event_key, key_of
from streams.kafka.topics import DEFAULT_PARTITIONS
from streams.worker import gate as ingress_gate
from streams.worker.gate import TOO_LARGE, Write, deadletter_write

EXIT_FAILED = 1  # broker unreachable, a send failed, the input could not be read
EXIT_BAD_LINES = 3  # as ``caretally replay`` (streams.cli.main.EXIT_BAD_LINES)
EXIT_INTERRUPTED = 130
MAX_REPORTED = 20
GZIP_MAGIC = b"\x1f\x8b"
STDIN_NAME = "<stdin>"
READ_BUFFER = 1 << 20
DEFAULT_DELIVERY_TIMEOUT = 30.0  # seconds (--delivery-timeout)
DEFAULT_MAX_DECOMPRESSED = 4_000_000_000  # bytes (--max-decompressed): ~10M events

Format = Literal["ndjson", "csv"]

PRODUCER_SETTINGS: dict[str, Any] = {
    "client_id": "caretally-ingest",
    "acks": "all",
    "linger_ms": 10,
    "batch_size": 256 * 1024,
    "compression_type": None,
    "allow_auto_create_topics": False,  # ensure_topics creates them with their settings
    "bootstrap_timeout_ms": 5_000,
    "request_timeout_ms": 15_000,
    "max_block_ms": 15_000,
    "delivery_timeout_ms": int(DEFAULT_DELIVERY_TIMEOUT * 1000),  # see producer_settings
    "max_request_size": PRODUCER_MAX_REQUEST_BYTES,  # an event at the limit always fits
}


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One line to send: its line number, bytes, key, and why it is invalid (if it is);
    ``too_large``: rejected for its size and dead-lettered as ``oversize`` describes it,
    not sent (``value`` is then empty)."""

    line: int
    value: bytes
    key: bytes | None
    reason: str | None
    too_large: bool = False
    oversize: Oversize | None = None


def oversized(
    line: int, oversize: Oversize, key: bytes | None, reason: str | None = None
) -> Outgoing:
    """A line or row rejected for its size: reported, counted, dead-lettered, never sent."""
    return Outgoing(line, b"", key, reason or too_large_reason(), True, oversize)


_JSON = json.JSONDecoder()
_WHITESPACE = " \t\n\r"
_KEY_FIELDS = ("org_id", "patient_id", "type")
PRACTICE_WIDE_TYPES = frozenset(
    name
    for name, model in EVENT_TYPES.items()
    if model.model_fields["patient_id"].annotation is type(None)
)
"""Event types without a patient (keyed ``org_id:``): practice.configured, month.closed."""


def _utf8_prefix(excerpt: bytes) -> str | None:
    """The excerpt as text, less a character cut at its end; None if it is not UTF-8."""
    try:
        return excerpt.decode()
    except UnicodeDecodeError as exc:
        if exc.end != len(excerpt) or exc.reason != "unexpected end of data":
            return None
        return excerpt[: exc.start].decode()


def _top_level_members(text: str) -> Iterator[tuple[str, Any]]:
    """The complete top-level members of the start of a JSON object, in order; stops at
    the first that is cut (or malformed). Each value is parsed whole: the text is short."""
    i = len(text) - len(text.lstrip(_WHITESPACE))
    if not text.startswith("{", i):
        return
    i += 1
    while True:
        i += len(text[i:]) - len(text[i:].lstrip(_WHITESPACE))
        name, i = _JSON.raw_decode(text, i)
        i += len(text[i:]) - len(text[i:].lstrip(_WHITESPACE))
        if not isinstance(name, str) or not text.startswith(":", i):
            return
        i += 1
        i += len(text[i:]) - len(text[i:].lstrip(_WHITESPACE))
        value, i = _JSON.raw_decode(text, i)
        yield name, value
        i += len(text[i:]) - len(text[i:].lstrip(_WHITESPACE))
        if not text.startswith(",", i):
            return
        i += 1


def excerpt_key(excerpt: bytes) -> bytes | None:
    """The event key of a too-large NDJSON line, from its excerpt: ``org_id:patient_id``
    when both are complete top-level members of it (the wire contract puts them before
    ``data``), or ``org_id:`` when ``type`` is one without a patient; else None."""
    text = _utf8_prefix(excerpt)
    found: dict[str, Any] = {}
    try:
        for name, value in _top_level_members(text or ""):
            if name in _KEY_FIELDS:
                found[name] = value  # the last of a repeated name, as orjson reads it
    except (ValueError, RecursionError):
        pass  # cut short: what was complete stands
    org, patient = found.get("org_id"), found.get("patient_id")
    known = "patient_id" in found or found.get("type") in PRACTICE_WIDE_TYPES
    if not isinstance(org, str) or not org or not known:
        return None
    return event_key(org, patient if isinstance(patient, str) else None)


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


def ndjson_records(stream: BinaryIO) -> Iterator[Outgoing]:
    """Each non-empty line as sent, validated; a line over ``EVENT_MAX_BYTES`` is not read
    whole but rejected as too large."""
    for number, raw in read_lines(stream, EVENT_MAX_BYTES):
        if isinstance(raw, Oversize):
            yield oversized(number, raw, excerpt_key(raw.excerpt))
            continue
        try:
            event = parse_event(raw)
        except EventRejected as exc:
            yield Outgoing(number, raw, key_of(raw), exc.reason)
        else:
            yield Outgoing(number, raw, event_key(event.org_id, event.patient_id), None)


def csv_records(stream: BinaryIO) -> Iterator[Outgoing]:
    """Each CSV row converted to JSON, validated; the header is read at once."""
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="surrogateescape", newline="")
    rows = read_csv_events(text)  # raises CsvHeaderError now

    def convert() -> Iterator[Outgoing]:
        try:
            for row in rows:
                if row.too_large and row.oversize is not None:
                    yield oversized(row.line, row.oversize, row.key, row.error)
                    continue
                if len(row.value) > EVENT_MAX_BYTES:
                    event = Oversize.of(row.value)
                    yield oversized(row.line, event, row.key, too_large_reason(what="event"))
                    continue
                reason = row.error
                if reason is None:
                    try:
                        parse_event(row.value)
                    except EventRejected as exc:
                        reason = exc.reason
                yield Outgoing(row.line, row.value, row.key, reason)
        finally:
            with contextlib.suppress(ValueError):  # already closed
                text.detach()  # else the wrapper closes the file when collected

    return convert()


@dataclass
class Source:
    """An opened input: a decompressed, peekable byte stream and how far into the file we are."""

    name: str
    stream: BinaryIO
    size: int | None = None
    position: Callable[[], int] | None = None


class DecompressedTooLarge(Exception):
    """Gzip input decompressed to more than ``--max-decompressed`` bytes."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"it decompresses to more than {limit:,} bytes (--max-decompressed); "
            "a gzip bomb, or raise the limit"
        )


class BoundedRead(io.RawIOBase):
    """A raw reader over ``inner`` that raises :class:`DecompressedTooLarge` once more than
    ``limit`` bytes came out of it (at most one read's worth beyond the limit)."""

    def __init__(self, inner: io.BufferedIOBase, limit: int) -> None:
        super().__init__()
        self._inner = inner
        self._limit = limit
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self._inner.readinto(buffer)
        self.count += n
        if self.count > self._limit:
            raise DecompressedTooLarge(self._limit)
        return n


def open_source(
    path: str, stack: contextlib.ExitStack, max_decompressed: int = DEFAULT_MAX_DECOMPRESSED
) -> Source:
    """Open FILE or stdin (``-``); gzip is recognised by its magic bytes, and reading it
    raises :class:`DecompressedTooLarge` past ``max_decompressed`` bytes.

    Reads go through 1 MiB buffers: a read that reaches the OS releases the GIL, and the
    producer's sender thread may then hold it for a whole switch interval (5 ms), so small
    reads would cap the rate at a few thousand lines a second.
    """
    if path == "-":
        stdin: Any = click.get_binary_stream("stdin")
        try:
            raw: Any = stack.enter_context(
                open(stdin.fileno(), "rb", buffering=READ_BUFFER, closefd=False)  # noqa: SIM115
            )
        except (AttributeError, OSError, ValueError):  # not a real file (tests)
            raw = stdin if hasattr(stdin, "peek") else io.BufferedReader(stdin, READ_BUFFER)
        name, size, position = STDIN_NAME, None, None
    else:
        raw = stack.enter_context(open(path, "rb", buffering=READ_BUFFER))  # noqa: SIM115
        name, size, position = path, os.fstat(raw.fileno()).st_size, raw.tell
    stream = raw
    if raw.peek(2)[:2] == GZIP_MAGIC:
        unzipped = stack.enter_context(gzip.GzipFile(fileobj=raw, mode="rb"))
        bounded = BoundedRead(unzipped, max_decompressed)
        stream = stack.enter_context(io.BufferedReader(bounded, READ_BUFFER))
    return Source(name, stream, size, position)


def detect_format(source: Source) -> Format:
    """From the file name (``.csv``, ``.ndjson``, ``.jsonl``, ``.json``, each maybe ``.gz``),
    else from the first byte: ``{`` is NDJSON, anything else CSV."""
    base = source.name.lower().removesuffix(".gz")
    if base.endswith(".csv"):
        return "csv"
    if base.endswith((".ndjson", ".jsonl", ".json")):
        return "ndjson"
    head = source.stream.peek(4096)[:4096].lstrip(b"\xef\xbb\xbf \t\r\n")  # type: ignore[attr-defined]
    return "ndjson" if not head or head.startswith(b"{") else "csv"


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


def describe(exc: BaseException) -> str:
    """``Type: message`` on one line (kafka-python's errors already start with their type)."""
    name = type(exc).__name__
    text = " ".join(str(exc).split())
    if not text or text == name:
        return name
    return text if text.startswith(f"{name}: ") else f"{name}: {text}"


def producer_settings(delivery_timeout: float) -> dict[str, Any]:
    """``PRODUCER_SETTINGS`` with a delivery timeout of ``delivery_timeout`` seconds; the
    request and blocking timeouts are shortened to fit in it (kafka-python requires
    ``delivery_timeout_ms >= linger_ms + request_timeout_ms``)."""
    settings = dict(PRODUCER_SETTINGS)
    delivery_ms = max(int(delivery_timeout * 1000), settings["linger_ms"] + 1)
    settings["delivery_timeout_ms"] = delivery_ms
    settings["request_timeout_ms"] = min(
        settings["request_timeout_ms"], delivery_ms - settings["linger_ms"]
    )
    settings["max_block_ms"] = min(settings["max_block_ms"], delivery_ms)
    return settings


def make_producer(bootstrap: str, delivery_timeout: float = DEFAULT_DELIVERY_TIMEOUT) -> Any:
    """kafka-python's idempotent producer, with a partitioner that remembers each key's
    partition (murmur2 in pure Python is a tenth of the send cost); a send not acknowledged
    within ``delivery_timeout`` seconds fails."""
    from kafka import KafkaProducer
    from kafka.partitioner import DefaultPartitioner

    class KeyCachingPartitioner(DefaultPartitioner):  # type: ignore[misc]
        """The default (murmur2) partitioner, memoised per topic, partition count and key."""

        def __init__(self) -> None:
            self.cache: dict[tuple[str, int, bytes], int] = {}

        def partition(self, topic, key, serialized_key, value, serialized_value, cluster):  # type: ignore[no-untyped-def]
            if serialized_key is None:
                return super().partition(topic, key, None, value, serialized_value, cluster)
            slot = (topic, len(cluster.partitions_for_topic(topic) or ()), serialized_key)
            found = self.cache.get(slot)
            if found is None:
                if len(self.cache) > 1_000_000:
                    self.cache.clear()
                found = super().partition(
                    topic, key, serialized_key, value, serialized_value, cluster
                )
                self.cache[slot] = found
            return found

    return KafkaProducer(
        bootstrap_servers=bootstrap,
        partitioner=KeyCachingPartitioner(),
        **producer_settings(delivery_timeout),
    )


def close_producer(producer: Any, flushed: bool) -> None:
    """Close the producer; if records are still unanswered (``flushed`` is False), fail
    them and stop its sender thread at once.

    kafka-python's ``close(timeout)`` flushes first and raises when that times out,
    leaving the sender thread to retry a dead broker for ever (once an idempotent
    producer has to re-initialise its producer id, no batch expires any more).
    """
    from kafka.errors import KafkaError

    if flushed:
        with contextlib.suppress(KafkaError):
            producer.close(timeout=5)
            return
    sender = getattr(producer, "_sender", None)
    if sender is not None:  # kafka-python 3: close() has no other way to give up
        sender.force_close()  # fails the pending records ("closed forcefully")
        sender.join(5)
    with contextlib.suppress(KafkaError):
        producer.close(timeout=0)


class Reporter:
    """Prints rejected lines (the first ``MAX_REPORTED``) and progress on stderr."""

    def __init__(self, name: str, show_progress: bool, total: int | None) -> None:
        self.name = name
        self.shown = 0
        self.started = time.perf_counter()
        self.progress: Any = None
        self.task: Any = None
        if show_progress:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                Progress,
                TaskProgressColumn,
                TextColumn,
                TimeElapsedColumn,
            )

            self.progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(bar_width=16),
                TaskProgressColumn(),
                TextColumn("{task.fields[lines]:>9,} lines {task.fields[rate]:>6,.0f}/s"),
                TimeElapsedColumn(),
                console=Console(stderr=True),
            )
            label = os.path.basename(name)
            label = label if len(label) <= 24 else label[:23] + "…"
            self.task = self.progress.add_task(label, total=total, lines=0, rate=0.0)

    def __enter__(self) -> Reporter:
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()

    def say(self, message: str) -> None:
        if self.progress is not None:
            self.progress.console.print(message, markup=False, highlight=False, soft_wrap=True)
        else:
            click.echo(message, err=True)

    def rejected(self, line: int, reason: str) -> None:
        if self.shown < MAX_REPORTED:
            self.shown += 1
            self.say(f"{self.name}:{line}: rejected: {reason}")

    def advance(self, completed: int, lines: int) -> None:
        if self.progress is not None:
            rate = lines / max(time.perf_counter() - self.started, 1e-3)
            self.progress.update(self.task, completed=completed, lines=lines, rate=rate)


@dataclass
class Stats:
    """Lines read and their local verdicts; ``too_large``: rejected for their size here and
    never sent (counted in ``rejected``), each dead-lettered (``dead_lettered``: handed to
    the producer); ``not_sent``: refused by the producer as too
    large (not expected: its limit is above ours); ``errors`` end the ingest as failed;
    ``stopped_at``: the line at which sending stopped early (a delivery or send failed),
    the rest of the input unread."""

    lines: int = 0
    valid: int = 0
    rejected: int = 0
    sent_bytes: int = 0
    too_large: int = 0
    dead_lettered: int = 0
    not_sent: int = 0

    @property
    def handed(self) -> int:
        """Lines given to the producer and accepted by it (each to be acknowledged)."""
        return self.lines - self.too_large - self.not_sent

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
    reporter: Reporter,
    source: Source,
    delivery: Delivery,
    stats: Stats,
) -> None:
    """Send every record, counting into ``stats``; stop early if a delivery fails."""
    from kafka.errors import KafkaError, MessageSizeTooLargeError

    send = producer.send
    topic, dead = targets.ingress, targets.dead
    ok, fail = delivery.ok, delivery.fail
    position = source.position
    origin = ingest_origin(source.name)
    for record in records:
        if delivery.failed or dead.failed:
            stats.stopped_at = record.line
            break
        if record.too_large:
            stats.lines += 1
            stats.rejected += 1
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
                f"the producer's limit of {PRODUCER_SETTINGS['max_request_size']:,}"
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


SIZE_UNITS: dict[str, int] = {
    "": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40,
}  # fmt: skip


class ByteSize(click.ParamType):
    """A size in bytes: ``4000000000``, ``4GB``, ``500MB``, ``2GiB`` (decimal or binary)."""

    name = "bytes"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        text = str(value).strip().lower().replace("_", "")
        number = text.rstrip("kmgtib")
        unit = text[len(number) :]
        try:
            size = float(number) * SIZE_UNITS[unit]
        except (KeyError, ValueError):
            self.fail(f"{value!r} is not a size (e.g. 4GB, 500MB, 2GiB)", param, ctx)
        if size < 1:
            self.fail("must be at least 1 byte", param, ctx)
        return int(size)


def _help() -> str:
    return f"""Send a file of events to the ingress topic (care.ingress.v1).

    FILE is NDJSON (one wire-contract event per line) or CSV (one event per row), plain
    or gzip-compressed; `-` reads stdin. Every non-empty line is sent as it is, keyed
    org_id:patient_id; the worker dead-letters the invalid ones with their reason.
    Each line is also validated here: rejected lines are listed on stderr (the first
    {MAX_REPORTED}) as FILE:LINE: rejected: REASON. A line (or CSV row, or the event
    it becomes) longer than {EVENT_MAX_BYTES:,} bytes is rejected as too_large and not
    sent as an event: it is dead-lettered here instead (care.deadletter.v1, reason
    too_large), as its first {DEADLETTER_EXCERPT_BYTES:,} bytes with headers digest
    (sha256:HEX of all its bytes, surrounding whitespace not counted), size,
    source_topic ingest:FILE (base name; ingest:- for stdin), source_partition -1 and
    source_offset LINE; keyed org_id:patient_id when the excerpt shows both (org_id:
    when it shows a practice-wide type), else unkeyed.

    Exit code: 0 if every line was valid, 3 if some were rejected (they are sent all
    the same, except too large ones, which are dead-lettered), 2 for usage errors, 1
    if the broker is unreachable or a send failed (a line not acknowledged within
    --delivery-timeout seconds fails the ingest, which then stops; the error says how
    many lines were acknowledged; so does a too-large line's dead letter), or if gzip
    input decompresses past --max-decompressed.

    {mapping_summary()}

    \b
    Examples:
      caretally ingest events.ndjson
      caretally ingest events.ndjson.gz --bootstrap kafka:9092
      caretally ingest activities.csv --topic-prefix staging.
      my-ehr-export --since yesterday | caretally ingest - --no-progress

    \b
    A CSV file:
      event_id,type,org_id,patient_id,recorded_at,source,data.chronic
      c-1,conditions.recorded,practice-17,P-000123,2025-03-14T20:02:11Z,ehr-main,E11.9;I10
    """


@click.command(
    short_help="Send an NDJSON or CSV file of events to the ingress topic.", help=_help()
)
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["auto", "ndjson", "csv"]),
    default="auto",
    show_default=True,
    help="auto: by the file name (.csv, .ndjson, .jsonl, .json), else by content.",
)
@bootstrap_option
@prefix_option
@click.option(
    "--partitions",
    default=DEFAULT_PARTITIONS,
    show_default=True,
    type=click.IntRange(1),
    help="Partitions of each topic, if it must be created.",
)
@click.option(
    "--delivery-timeout",
    default=DEFAULT_DELIVERY_TIMEOUT,
    show_default=True,
    type=click.FloatRange(min=0.1),
    metavar="SECONDS",
    help="A line the broker has not acknowledged within this time (retries included) "
    "fails the ingest.",
)
@click.option(
    "--max-decompressed",
    default=DEFAULT_MAX_DECOMPRESSED,
    show_default=True,
    type=ByteSize(),
    metavar="SIZE",
    help="Gzip input may decompress to at most this many bytes (e.g. 4GB, 500MB); "
    "past it the ingest stops with an error.",
)
@click.option(
    "--no-progress",
    is_flag=True,
    help="No progress bar (there is none unless stderr is a terminal).",
)
def ingest(
    file: str,
    fmt: str,
    bootstrap: str | None,
    topic_prefix: str | None,
    partitions: int,
    delivery_timeout: float,
    max_decompressed: int,
    no_progress: bool,
) -> None:
    """Send FILE to care.ingress.v1 (the help text is ``_help()``)."""
    from streams.kafka import bootstrap as bs
    from streams.kafka.broker import reachable, split_bootstrap
    from streams.kafka.topics import Topics

    address, _named = bs.resolve(bootstrap)
    try:
        split_bootstrap(address)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--bootstrap") from None
    topics = Topics.from_env(topic_prefix)

    with contextlib.ExitStack() as stack:
        try:
            source = open_source(file, stack, max_decompressed)
            kind: Format = detect_format(source) if fmt == "auto" else fmt  # type: ignore[assignment]
            records = (csv_records if kind == "csv" else ndjson_records)(source.stream)
        except CsvHeaderError as exc:
            raise click.UsageError(f"{source.name}: CSV header: {exc}") from None
        except DecompressedTooLarge as exc:
            _fail(f"{file}: {exc}; nothing was sent")
        except (OSError, EOFError) as exc:
            raise click.UsageError(f"cannot read {file}: {describe(exc)}") from None

        if not reachable(address, timeout=2.0):
            _fail(
                f"no Kafka broker answers at {address} "
                "(start one with `caretally broker`, or pass --bootstrap)"
            )
        logging.getLogger("kafka").setLevel(logging.CRITICAL)  # errors are reported below
        from kafka.errors import KafkaError

        from streams.kafka.topics import ensure_topics

        try:
            producer = make_producer(address, delivery_timeout)
        except KafkaError as exc:
            _fail(f"cannot connect to Kafka at {address}: {describe(exc)}")
        try:
            ensure_topics(address, topics, partitions)
        except KafkaError as exc:
            producer.close(timeout=1)
            _fail(f"cannot create the topics at {address}: {describe(exc)}")

        delivery, dead = Delivery(), Delivery()
        targets = Targets(topics.ingress, topics.deadletter, dead)
        show = not no_progress and sys.stderr.isatty()
        started = time.perf_counter()
        interrupted = False
        read_error: str | None = None
        with Reporter(source.name, show, source.size) as reporter:
            stats = Stats()
            try:
                send_all(records, producer, targets, reporter, source, delivery, stats)
            except KeyboardInterrupt:
                interrupted = True
            except DecompressedTooLarge as exc:
                read_error = f"reading {source.name} stopped after line {stats.lines:,}: {exc}"
            except (OSError, EOFError) as exc:
                read_error = f"reading {source.name} failed: {describe(exc)}"
            wait = delivery_timeout + 1  # each record is answered or expired by then
            try:
                producer.flush(timeout=wait)
            except KafkaError:
                delivery.waited = dead.waited = wait
            finally:
                close_producer(producer, flushed=delivery.waited is None)
        elapsed = time.perf_counter() - started

    sent = stats.handed
    if stats.rejected > MAX_REPORTED:
        click.echo(f"... and {stats.rejected - MAX_REPORTED:,} more rejected line(s)", err=True)
    problems = delivery_problems(stats, delivery, sent, source.name)
    problems += deadletter_problems(stats, dead, topics.deadletter)
    if read_error:
        problems.append(read_error)
    if stats.not_sent:
        problems.append(f"{stats.not_sent:,} line(s) were not sent")

    if delivery.acked == sent and not delivery.failed and not stats.errors:
        rate = delivery.acked / elapsed if elapsed > 0 else 0.0
        verdict = f"{stats.valid:,} valid, {stats.rejected:,} rejected"
        notes = []
        if stats.too_large:
            notes.append(
                f"{stats.too_large:,} too large: dead-lettered to {topics.deadletter}, "
                "not sent as events"
            )
        if stats.rejected > stats.too_large:
            others = stats.rejected - stats.too_large
            them = f"the other {others:,}" if stats.too_large else "them"
            notes.append(f"the worker will dead-letter {them} to {topics.deadletter}")
        if notes:
            verdict += f" ({'; '.join(notes)})"
        click.echo(
            f"sent {delivery.acked:,} line(s) to {topics.ingress}: {verdict}; "
            f"{stats.sent_bytes / 1e6:,.1f} MB in {elapsed:.1f} s ({rate:,.0f} lines/s)"
        )
    if stats.lines == 0 and not problems:
        click.echo(f"warning: {source.name} holds no events", err=True)
    if interrupted:
        click.echo(
            f"interrupted after {stats.lines:,} line(s) ({delivery.acked:,} acknowledged); "
            f"the rest of {source.name} was not sent",
            err=True,
        )
        sys.exit(EXIT_INTERRUPTED)
    if problems:
        _fail("; ".join(problems) + " (the ingest is incomplete)")
    if stats.rejected:
        sys.exit(EXIT_BAD_LINES)


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


def _fail(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(EXIT_FAILED)

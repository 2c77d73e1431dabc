"""``caretally ingest``: send a file of events (NDJSON or CSV) to the ingress topic.

This module parses, calls and prints: the input is read by ``streams.ingest.sources``,
sent and accounted for by ``streams.ingest.delivery``.

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
The producer is kafka-python's idempotent one (``acks=all``), compressing each batch with
``--compression`` (none by default); every send is confirmed before the command reports
success. A line the broker has not acknowledged within ``--delivery-timeout`` seconds
fails the ingest, with how many lines were acknowledged.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
import time
from typing import Any

import click

from streams.cli.exits import EXIT_BAD_LINES, EXIT_INTERRUPTED, fail
from streams.cli.kafka_options import KafkaOptions, connect, kafka_options
from streams.cli.options import (
    input_format_option,
    input_option,
    no_progress_option,
    org_option,
    partitions_option,
    renamed,
    require,
)
from streams.ingest.csv_events import CsvHeaderError, mapping_summary
from streams.ingest.delivery import COMPRESSIONS, DEFAULT_COMPRESSION, DEFAULT_DELIVERY_TIMEOUT
from streams.ingest.sources import (
    DEFAULT_MAX_DECOMPRESSED,
    INGEST_FORMATS,
    DecompressedTooLarge,
    FhirNeedsOrg,
    open_source,
    records_of,
)
from streams.kafka.limits import DEADLETTER_EXCERPT_BYTES, EVENT_MAX_BYTES
from streams.kafka.topics import DEFAULT_PARTITIONS

MAX_REPORTED = 20
INPUT_TYPE = click.Path(dir_okay=False, allow_dash=True)


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

    --input is NDJSON (one wire-contract event per line), CSV (one event per row) or
    FHIR R4 (a Bundle, or NDJSON of resources, mapped to events as docs/fhir.md says; it
    needs --org), plain or gzip-compressed; `-` reads stdin (--input-format says which,
    or it is told from the content: JSON with a resourceType is FHIR, else from the file
    name, else the content). A FHIR entry that cannot be mapped is rejected and
    dead-lettered here (care.deadletter.v1, its JSON and the reason), not sent. Every
    non-empty line is sent as it is, keyed org_id:patient_id; the worker dead-letters the
    invalid ones with their reason.
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
      caretally ingest --input events.ndjson
      caretally ingest --input events.ndjson.gz --bootstrap kafka:9092 --compression zstd
      caretally ingest --input activities.csv --topic-prefix staging.
      my-ehr-export --since yesterday | caretally ingest --input - --no-progress
      caretally ingest --input bundle.json --input-format fhir --org practice-17

    \b
    A CSV file:
      event_id,type,org_id,patient_id,recorded_at,source,data.chronic
      c-1,conditions.recorded,practice-17,P-000123,2025-03-14T20:02:11Z,ehr-main,E11.9;I10
    """


@click.command(
    short_help="Send an NDJSON, CSV or FHIR R4 file of events to the ingress topic.", help=_help()
)
@input_option(
    "an NDJSON, CSV or FHIR file, plain or gzip-compressed; - for stdin.",
    type=INPUT_TYPE,
)
@functools.partial(
    input_format_option,
    formats=INGEST_FORMATS,
    note="fhir: FHIR R4 (needs --org); auto takes JSON whose first object has a "
    "resourceType for FHIR.",
)
@functools.partial(
    org_option,
    required=False,
    note="FHIR input only, and needed there: FHIR resources do not name the practice.",
)
@kafka_options
@partitions_option(DEFAULT_PARTITIONS)
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
    "--compression",
    type=click.Choice(COMPRESSIONS),
    default=DEFAULT_COMPRESSION,
    show_default=True,
    help="How the producer compresses each batch it sends to Kafka (not how --input is "
    "compressed: that is found by itself). JSON events shrink several-fold, for some CPU "
    "here and in each consumer: use zstd (smallest) or lz4 (fastest) to send a big file "
    "to a broker across a network, none when the broker is on this machine. Consumers "
    "(caretally's worker and archiver included) decompress any of them and read the "
    "events byte for byte as sent.",
)
@no_progress_option
@renamed("FILE", "--input", "input_path", type=INPUT_TYPE)
@renamed("--format", "--input-format", "input_format", type=click.Choice(INGEST_FORMATS))
def ingest(
    input_path: str | None,
    input_format: str,
    org_id: str | None,
    kafka: KafkaOptions,
    partitions: int,
    delivery_timeout: float,
    max_decompressed: int,
    compression: str,
    no_progress: bool,
) -> None:
    """Send --input to care.ingress.v1 (the help text is ``_help()``)."""
    require(input_path, "--input")
    assert input_path is not None
    file = input_path
    from streams.fhir.convert import FhirInputError
    from streams.ingest.delivery import deliver, make_producer
    from streams.ingest.fhir_input import FhirInputTooLarge
    from streams.kafka.clients import KafkaError, describe

    kafka.settings()  # a usage error before anything is read
    with contextlib.ExitStack() as stack:
        try:
            source = open_source(file, stack, max_decompressed, click.get_binary_stream("stdin"))
            records = records_of(source, input_format, org_id)
        except CsvHeaderError as exc:
            raise click.UsageError(f"{source.name}: CSV header: {exc}") from None
        except FhirNeedsOrg as exc:
            raise click.UsageError(f"{source.name}: {exc}") from None
        except FhirInputError as exc:
            raise click.UsageError(f"{source.name}: not FHIR R4 this can read: {exc}") from None
        except FhirInputTooLarge as exc:
            fail(f"{source.name}: {exc}; nothing was sent")
        except DecompressedTooLarge as exc:
            fail(f"{file}: {exc}; nothing was sent")
        except (OSError, EOFError) as exc:
            raise click.UsageError(f"cannot read {file}: {describe(exc)}") from None

        ctx = connect(kafka, partitions=partitions)
        topics = ctx.topics
        logging.getLogger("kafka").setLevel(logging.CRITICAL)  # errors are reported below
        try:
            producer = make_producer(ctx.settings, delivery_timeout, compression)
        except KafkaError as exc:
            fail(f"cannot connect to Kafka at {ctx.settings.describe()}: {describe(exc)}")
        show = not no_progress and sys.stderr.isatty()
        with Reporter(source.name, show, source.size) as reporter:
            outcome = deliver(producer, records, topics, source, reporter, delivery_timeout)

    stats, delivery, elapsed = outcome.stats, outcome.delivery, outcome.elapsed
    if stats.rejected > MAX_REPORTED:
        click.echo(f"... and {stats.rejected - MAX_REPORTED:,} more rejected line(s)", err=True)
    problems = outcome.problems(source.name, topics.deadletter)

    if outcome.delivered:
        rate = delivery.acked / elapsed if elapsed > 0 else 0.0
        verdict = f"{stats.valid:,} valid, {stats.rejected:,} rejected"
        notes = []
        if stats.too_large:
            notes.append(
                f"{stats.too_large:,} too large: dead-lettered to {topics.deadletter}, "
                "not sent as events"
            )
        if stats.unmapped:
            notes.append(
                f"{stats.unmapped:,} FHIR entr{'y' if stats.unmapped == 1 else 'ies'} not "
                f"mapped: dead-lettered to {topics.deadletter}"
            )
        if stats.rejected > stats.too_large + stats.unmapped:
            others = stats.rejected - stats.too_large - stats.unmapped
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
    if outcome.interrupted:
        click.echo(
            f"interrupted after {stats.lines:,} line(s) ({delivery.acked:,} acknowledged); "
            f"the rest of {source.name} was not sent",
            err=True,
        )
        sys.exit(EXIT_INTERRUPTED)
    if problems:
        fail("; ".join(problems) + " (the ingest is incomplete)")
    if stats.rejected:
        sys.exit(EXIT_BAD_LINES)

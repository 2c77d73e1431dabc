"""Where ``--input`` events come from (``ingest``, ``replay``, ``audit``): a file, stdin or
gzip, NDJSON or CSV.

:func:`open_source` opens the input (gzip recognised by its magic bytes and bounded by
``max_decompressed``), :func:`detect_format` tells NDJSON from CSV, and
:func:`ndjson_records` / :func:`csv_records` yield each line or row as an
:class:`Outgoing`: its bytes, key and local verdict (:func:`event_lines`: its bytes alone,
for reading without sending). Memory stays bounded: a line longer
than ``EVENT_MAX_BYTES`` is never held whole but measured and excerpted (``Oversize``).
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO, Literal

from schemas.events import EVENT_TYPES, EventRejected, parse_event
from streams.files.logfile import (
    GZIP_MAGIC,
    Line,
    Oversize,
    ndjson_lines,
    read_lines,
    too_large_reason,
)
from streams.ingest.csv_events import read_csv_events
from streams.kafka.limits import EVENT_MAX_BYTES
from streams.kafka.records import event_key, key_of

STDIN_NAME = "<stdin>"
READ_BUFFER = 1 << 20
DEFAULT_MAX_DECOMPRESSED = 4_000_000_000  # bytes (--max-decompressed): ~10M events

Format = Literal["ndjson", "csv", "fhir"]
INPUT_FORMATS = ("auto", "ndjson", "csv")
INGEST_FORMATS = (*INPUT_FORMATS, "fhir")  # FHIR R4 is mapped to events by ingest alone
CONVERT_FIRST = (
    "it is FHIR: send it with `caretally ingest --input-format fhir --org ORG`, or make "
    "wire-contract events of it with `caretally convert --from fhir FILE --org ORG`"
)


class FhirNeedsOrg(ValueError):
    """FHIR input without ``--org``: FHIR resources do not name caretally's org."""


class NotEvents(ValueError):
    """Input a command cannot read as events (FHIR where events are expected)."""


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One line to send: its line number, bytes, key, and why it is invalid (if it is);
    ``too_large``: rejected for its size and dead-lettered as ``oversize`` describes it,
    not sent (``value`` is then empty); ``letter_only``: an input entry that is no event
    (a FHIR entry that could not be mapped), dead-lettered here with ``reason``."""

    line: int
    value: bytes
    key: bytes | None
    reason: str | None
    too_large: bool = False
    oversize: Oversize | None = None
    letter_only: bool = False  # dead-letter ``value`` with ``reason``; never send it as an event


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
    path: str,
    stack: contextlib.ExitStack,
    max_decompressed: int = DEFAULT_MAX_DECOMPRESSED,
    stdin: BinaryIO | None = None,
) -> Source:
    """Open FILE or stdin (``-``: ``stdin``, the process's binary stdin by default); gzip
    is recognised by its magic bytes, and reading it raises :class:`DecompressedTooLarge`
    past ``max_decompressed`` bytes.

    Reads go through 1 MiB buffers: a read that reaches the OS releases the GIL, and the
    producer's sender thread may then hold it for a whole switch interval (5 ms), so small
    reads would cap the rate at a few thousand lines a second.
    """
    if path == "-":
        binary: Any = stdin if stdin is not None else sys.stdin.buffer
        try:
            raw: Any = stack.enter_context(
                open(binary.fileno(), "rb", buffering=READ_BUFFER, closefd=False)  # noqa: SIM115
            )
        except (AttributeError, OSError, ValueError):  # not a real file (tests)
            raw = binary if hasattr(binary, "peek") else io.BufferedReader(binary, READ_BUFFER)
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


def _is_fhir(head: bytes) -> bool:
    """Whether the start of a JSON input is a FHIR resource: a complete top-level member
    ``resourceType`` (wire-contract events have none: unknown keys are refused)."""
    text = _utf8_prefix(head[:4096]) or ""
    try:
        return any(name == "resourceType" for name, _ in _top_level_members(text))
    except (ValueError, RecursionError):
        return False


def detect_format(source: Source) -> Format:
    """From the file name (``.csv``, ``.ndjson``, ``.jsonl``, ``.json``, each maybe ``.gz``),
    else from the first byte: ``{`` is NDJSON, anything else CSV; JSON whose first object
    has a ``resourceType`` is FHIR."""
    base = source.name.lower().removesuffix(".gz")
    if base.endswith(".csv"):
        return "csv"
    named = base.endswith((".ndjson", ".jsonl", ".json"))
    try:
        head = source.stream.peek(4096)[:4096].lstrip(b"\xef\xbb\xbf \t\r\n")  # type: ignore[attr-defined]
    except (OSError, EOFError):
        if not named:
            raise
        return "ndjson"  # the read error is reported where the lines are read
    if head.startswith(b"{") and _is_fhir(head):
        return "fhir"
    if named:
        return "ndjson"
    return "ndjson" if not head or head.startswith(b"{") else "csv"


def records_of(
    source: Source, input_format: str = "auto", org_id: str | None = None
) -> Iterator[Outgoing]:
    """The records of ``source`` read as ``input_format`` (``auto``: :func:`detect_format`);
    a CSV header is read at once (``CsvHeaderError``), and so is FHIR input, mapped for the
    org ``org_id`` (:class:`FhirNeedsOrg` without it; ``FhirInputError`` if it is no FHIR)."""
    kind = detect_format(source) if input_format == "auto" else input_format
    if kind == "fhir":
        if org_id is None:
            raise FhirNeedsOrg("FHIR input needs --org ORG: FHIR resources do not name the org")
        from streams.ingest.fhir_input import fhir_records

        return fhir_records(source.stream, org_id)
    return (csv_records if kind == "csv" else ndjson_records)(source.stream)


def event_lines(source: Source, input_format: str = "auto") -> Iterator[Line]:
    """Each line (NDJSON) or row (CSV, converted to the event's JSON) of ``source`` as a
    :data:`~streams.files.logfile.Line`: its bytes, unvalidated, or why it was rejected
    unread; for the commands that read events without sending them (``replay``,
    ``audit``). A CSV header is read at once (``CsvHeaderError``)."""
    kind = detect_format(source) if input_format == "auto" else input_format
    if kind == "fhir":
        raise NotEvents(CONVERT_FIRST)
    if kind != "csv":
        return ndjson_lines(source.stream)
    text = io.TextIOWrapper(
        source.stream, encoding="utf-8-sig", errors="surrogateescape", newline=""
    )
    rows = read_csv_events(text)

    def convert() -> Iterator[Line]:
        try:
            for row in rows:
                if row.error is not None:
                    yield row.line, row.error
                elif len(row.value) > EVENT_MAX_BYTES:
                    yield row.line, too_large_reason(what="event")
                else:
                    yield row.line, row.value
        finally:
            with contextlib.suppress(ValueError):  # already closed
                text.detach()  # else the wrapper closes the file when collected

    return convert()

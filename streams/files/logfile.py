"""Reading an NDJSON event log from disk, line by line (memory bounded by state, not file).

Lines are read with a bound (``EVENT_MAX_BYTES`` plus a line ending): a longer line is
skipped to its end in chunks, never held whole, and reported as ``too_large`` with its
line number, so one huge line (a gzip bomb, a corrupted file) cannot exhaust memory.
While it is skipped it is measured (:class:`Oversize`: an excerpt, the SHA-256 and size
of the whole line), so ``caretally ingest`` can dead-letter it as the gate would.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

from projections.ledger import Ledger, Status
from schemas.events import EventRejected, parse_event
from streams.kafka.limits import DEADLETTER_EXCERPT_BYTES, EVENT_MAX_BYTES

LINE_ENDING_ROOM = 2
"""Bytes a line may have beyond the limit for its ending (``\\r\\n``)."""
SKIP_CHUNK = 1 << 20
"""How much of an overlong line is read at a time while skipping it."""
PROGRESS_LINES = 10_000
"""Lines between two progress reports of :func:`reporting`."""
GZIP_MAGIC = b"\x1f\x8b"
"""The first two bytes of a gzip file."""


@dataclass(frozen=True, slots=True)
class BadLine:
    line: int
    reason: str


@dataclass(slots=True)
class FoldStats:
    lines: int = 0
    applied: int = 0
    duplicates: int = 0
    skipped_as_of: int = 0
    bad: int = 0


def too_large_reason(limit: int = EVENT_MAX_BYTES, what: str = "line") -> str:
    """The rejection reason of a line (row, event) longer than ``limit``; no part of it."""
    return f"too_large: {what} longer than {limit:,} bytes"


@dataclass(frozen=True, slots=True)
class Oversize:
    """A line (or CSV row, or event) over the limit, as its dead letter describes it: the
    first ``DEADLETTER_EXCERPT_BYTES`` of it, and the SHA-256 (hex) and size in bytes of
    all of it; surrounding whitespace (the line ending included) is not counted, as for a
    line that is sent."""

    excerpt: bytes
    sha256: str
    size: int

    @classmethod
    def of(cls, value: bytes) -> Oversize:
        """Of bytes held whole (a line that only the stripping showed to be too long)."""
        value = value.strip()
        return cls(value[:DEADLETTER_EXCERPT_BYTES], hashlib.sha256(value).hexdigest(), len(value))


class Measure:
    """:class:`Oversize` of a line fed in chunks, in bounded memory: the hash goes on while
    the bytes are dropped. Leading whitespace is skipped; for trailing whitespace, the
    hash as of the last byte that is not whitespace is kept (``hashlib`` copies)."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self._size = 0
        self._kept = self._hash.copy()  # the hash up to the last non-whitespace byte
        self._kept_size = 0
        self._excerpt = bytearray()

    def feed(self, chunk: bytes) -> None:
        if not self._size:
            chunk = chunk.lstrip()
        if not chunk:
            return
        if len(self._excerpt) < DEADLETTER_EXCERPT_BYTES:
            self._excerpt += chunk[: DEADLETTER_EXCERPT_BYTES - len(self._excerpt)]
        end = len(chunk.rstrip())
        if end:
            self._hash.update(chunk[:end])
            self._size += end
            self._kept, self._kept_size = self._hash.copy(), self._size
        self._hash.update(chunk[end:])
        self._size += len(chunk) - end

    def result(self) -> Oversize:
        excerpt = bytes(self._excerpt[: self._kept_size])
        return Oversize(excerpt, self._kept.hexdigest(), self._kept_size)


def skip_rest_of_line(stream: BinaryIO, measure: Measure | None = None) -> None:
    """Read past the end of the current line without holding it (feeding ``measure``)."""
    while True:
        chunk = stream.readline(SKIP_CHUNK)
        if measure is not None:
            measure.feed(chunk)
        if not chunk or chunk.endswith(b"\n"):
            return


def read_lines(
    stream: BinaryIO, limit: int = EVENT_MAX_BYTES
) -> Iterator[tuple[int, bytes | Oversize]]:
    """Each non-empty line, whitespace stripped, with its 1-based number; an
    :class:`Oversize` instead of the bytes for a line longer than ``limit`` (skipped, at
    most ``limit`` + 2 bytes of it ever in memory)."""
    cap = limit + LINE_ENDING_ROOM
    readline = stream.readline
    number = 0
    while raw := readline(cap):
        number += 1
        if len(raw) == cap and not raw.endswith(b"\n"):
            measure = Measure()
            measure.feed(raw)
            del raw
            skip_rest_of_line(stream, measure)
            yield number, measure.result()
            continue
        line = raw.strip()
        if len(line) > limit:
            yield number, Oversize.of(line)
        elif line:
            yield number, line


Line = tuple[int, bytes | str]
"""A line's number, and its bytes, or why it was rejected without being read whole (a line
too large; a CSV row that converts to no event)."""


def ndjson_lines(stream: BinaryIO, limit: int = EVENT_MAX_BYTES) -> Iterator[Line]:
    """Each non-empty line of an NDJSON stream as a :data:`Line`."""
    for number, line in read_lines(stream, limit):
        yield number, line if isinstance(line, bytes) else too_large_reason(limit)


def reporting(
    lines: Iterable[Line], position: Callable[[], int], on_progress: Callable[[int], None]
) -> Iterator[Line]:
    """``lines``, giving ``on_progress`` the ``position()`` every ``PROGRESS_LINES`` lines."""
    for i, line in enumerate(lines, 1):
        if not i % PROGRESS_LINES:
            on_progress(position())
        yield line
    on_progress(position())


def fold_lines(
    lines: Iterable[Line],
    ledger: Ledger | None = None,
    as_of: datetime | None = None,
    on_bad: Callable[[BadLine], None] | None = None,
) -> tuple[Ledger, FoldStats]:
    """Fold events in the order of ``lines``; bad lines go to ``on_bad`` and are skipped."""
    ledger = ledger if ledger is not None else Ledger()
    stats = FoldStats()
    apply = ledger.apply
    for number, line in lines:
        stats.lines += 1
        if isinstance(line, str):
            stats.bad += 1
            if on_bad is not None:
                on_bad(BadLine(number, line))
            continue
        try:
            event = parse_event(line)
        except EventRejected as exc:
            stats.bad += 1
            if on_bad is not None:
                on_bad(BadLine(number, exc.reason))
            continue
        if as_of is not None and event.recorded_at > as_of:
            stats.skipped_as_of += 1
            continue
        outcome = apply(event, line)
        if outcome.status is Status.APPLIED:
            stats.applied += 1
        elif outcome.status is Status.DUPLICATE:
            stats.duplicates += 1
        else:
            stats.bad += 1
            if on_bad is not None:
                on_bad(BadLine(number, outcome.reason))
    return ledger, stats


def fold_file(
    path: str | Path,
    ledger: Ledger | None = None,
    as_of: datetime | None = None,
    on_bad: Callable[[BadLine], None] | None = None,
) -> tuple[Ledger, FoldStats]:
    """Fold an NDJSON log in file order; bad lines go to ``on_bad`` and are skipped."""
    with open(path, "rb") as stream:
        return fold_lines(ndjson_lines(stream), ledger, as_of, on_bad)

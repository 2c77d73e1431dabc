"""Reading an NDJSON event log from disk, line by line (memory bounded by state, not file).

Lines are read with a bound (``EVENT_MAX_BYTES`` plus a line ending): a longer line is
skipped to its end in chunks, never held whole, and reported as ``too_large`` with its
line number, so one huge line (a gzip bomb, a corrupted file) cannot exhaust memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

from projections.ledger import Ledger, Status
from schemas.events import EventRejected, parse_event
from streams.limits import EVENT_MAX_BYTES

LINE_ENDING_ROOM = 2
"""Bytes a line may have beyond the limit for its ending (``\\r\\n``)."""
SKIP_CHUNK = 1 << 20
"""How much of an overlong line is read at a time while skipping it."""


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


def skip_rest_of_line(stream: BinaryIO) -> None:
    """Read past the end of the current line without holding it."""
    while True:
        chunk = stream.readline(SKIP_CHUNK)
        if not chunk or chunk.endswith(b"\n"):
            return


def read_lines(
    stream: BinaryIO, limit: int = EVENT_MAX_BYTES
) -> Iterator[tuple[int, bytes | None]]:
    """Each non-empty line, whitespace stripped, with its 1-based number; ``None`` instead
    of the bytes for a line longer than ``limit`` (skipped, at most ``limit`` + 2 bytes of
    it ever in memory)."""
    cap = limit + LINE_ENDING_ROOM
    readline = stream.readline
    number = 0
    while raw := readline(cap):
        number += 1
        if len(raw) == cap and not raw.endswith(b"\n"):
            skip_rest_of_line(stream)
            yield number, None
            continue
        line = raw.strip()
        if len(line) > limit:
            yield number, None
        elif line:
            yield number, line


def iter_lines(
    stream: BinaryIO,
    limit: int = EVENT_MAX_BYTES,
    on_too_large: Callable[[int], None] | None = None,
) -> Iterator[tuple[int, bytes]]:
    """Each non-empty line with its number, as :func:`read_lines`; a line longer than
    ``limit`` is skipped and its number given to ``on_too_large`` (when given)."""
    for number, line in read_lines(stream, limit):
        if line is not None:
            yield number, line
        elif on_too_large is not None:
            on_too_large(number)


def fold_file(
    path: str | Path,
    ledger: Ledger | None = None,
    as_of: datetime | None = None,
    on_bad: Callable[[BadLine], None] | None = None,
) -> tuple[Ledger, FoldStats]:
    """Fold an NDJSON log in file order; bad lines go to ``on_bad`` and are skipped."""
    ledger = ledger if ledger is not None else Ledger()
    stats = FoldStats()
    apply = ledger.apply

    def too_large(number: int) -> None:
        stats.lines += 1
        stats.bad += 1
        if on_bad is not None:
            on_bad(BadLine(number, too_large_reason()))

    with open(path, "rb") as stream:
        for number, line in iter_lines(stream, on_too_large=too_large):
            stats.lines += 1
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

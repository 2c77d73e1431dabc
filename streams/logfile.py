"""Reading an NDJSON event log from disk, line by line (memory bounded by state, not file)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

from projections.ledger import Ledger, Status
from schemas.events import EventRejected, parse_event


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


def iter_lines(stream: BinaryIO) -> Iterator[tuple[int, bytes]]:
    for number, raw in enumerate(stream, start=1):
        line = raw.strip()
        if line:
            yield number, line


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
    with open(path, "rb") as stream:
        for number, line in iter_lines(stream):
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

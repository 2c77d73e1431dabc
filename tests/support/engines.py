"""The three engines that compute billing from a log, behind one call, for scenario tests.

* ``fold``: :func:`projections.engine.replay` (fold the whole log, evaluate every month);
* ``projector``: :class:`projections.engine.Projector` stepped event by event with each
  event's wire bytes, then :meth:`~projections.engine.Projector.billing`;
* ``archive``: the events written to a temporary Parquet archive
  (:func:`streams.archive.store.write_events`) and replayed by DuckDB
  (:func:`streams.archive.replay.replay_archive`).

All three must give the same billing for the same log (docs/design.md "One semantics,
several engines"); the ``engine`` fixture of tests/unit/conftest.py runs every
table-driven scenario on each.
"""

from __future__ import annotations

import os
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Protocol

from projections.billing import MonthBilling
from projections.calendar import epoch, month_bounds
from projections.engine import Projector, replay
from schemas.events import Event
from streams.archive.replay import replay_archive
from streams.archive.store import write_events

# the archive engine writes (and fsyncs) a fresh archive per call: in memory when we can
_SCRATCH = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None


class Engine(Protocol):
    name: str

    def billing(
        self, events: list[Event], raws: list[bytes], as_of: datetime | None = None
    ) -> list[MonthBilling]:
        """Every patient-month's billing of the log ``events`` (wire bytes ``raws``, same
        order) as known at ``as_of``, sorted by org, patient, month."""
        ...


class Fold:
    name = "fold"

    def billing(
        self, events: list[Event], raws: list[bytes], as_of: datetime | None = None
    ) -> list[MonthBilling]:
        return replay(events, as_of=as_of)


class Stepped:
    """The Projector, as the worker runs it. ``as_of`` as :func:`projections.engine.billing`:
    events recorded after it are not stepped, and months that had not begun at it (in
    the practice's zone) are left out."""

    name = "projector"

    def billing(
        self, events: list[Event], raws: list[bytes], as_of: datetime | None = None
    ) -> list[MonthBilling]:
        projector = Projector()
        for event, raw in zip(events, raws, strict=True):
            if as_of is None or event.recorded_at <= as_of:
                projector.step(event, raw)
        out = projector.billing()
        if as_of is None:
            return out
        cutoff = epoch(as_of)
        ledger = projector.ledger
        return [
            b for b in out if month_bounds(b.month, ledger.practice(b.org_id).timezone)[0] <= cutoff
        ]


class Archive:
    """Write the log to a fresh Parquet archive (one partition, the canonical order is the
    log order) and replay it in this process, single-threaded."""

    name = "archive"

    def billing(
        self, events: list[Event], raws: list[bytes], as_of: datetime | None = None
    ) -> list[MonthBilling]:
        if not events:
            return []  # an empty archive has no Parquet file to read
        with tempfile.TemporaryDirectory(prefix="caretally-engine-", dir=_SCRATCH) as tmp:
            root = Path(tmp)
            write_events(root, zip(events, raws, strict=True))
            billings, _ = replay_archive(root, as_of=as_of, threads=1)
        return billings


FOLD: Engine = Fold()
ENGINES: dict[str, Engine] = {e.name: e for e in (FOLD, Stepped(), Archive())}

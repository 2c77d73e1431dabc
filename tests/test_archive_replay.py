"""One semantics, two engines: the DuckDB replay of the Parquet archive equals the fold.

The archive replay does idempotency, activity versions, month bucketing and the interval
accounting of simple months in SQL, then runs the core's rules per patient-month
(streams/archive_replay.py). These tests hold it to :func:`projections.engine.replay`
over the same events: on random logs (hypothesis, the generators of test_properties),
with duplicates re-sent at random places, over 1-4 partitions, and as of random instants.
"""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from hypothesis import example, given, note
from hypothesis import strategies as st
from test_properties import (
    APCM_GAP,
    APCM_VOID,
    REVOCATION_ONLY,
    SETTINGS,
    GenLog,
    gen_logs,
)

from projections.engine import replay
from schemas.events import Event, parse_event
from streams.archive_replay import replay_archive, replay_views
from streams.archive_store import write_events
from streams.synthetic import generate_practice_log


def _archive(root: Path, raws: list[bytes], partitions: int) -> list[Event]:
    events = [parse_event(r) for r in raws]
    write_events(root, zip(events, raws, strict=True), partitions=partitions, flush_rows=7)
    return events


def _fast(root: Path, as_of: datetime | None = None) -> list[dict[str, Any]]:
    return [b.view() for b in replay_archive(root, as_of=as_of, threads=1)[0]]


def _fold(events: list[Event], as_of: datetime | None = None) -> list[dict[str, Any]]:
    return [b.view() for b in replay(events, as_of=as_of)]


@SETTINGS
@given(log=gen_logs(), data=st.data())
@example(log=APCM_GAP, data=None)
@example(log=APCM_VOID, data=None)
@example(log=REVOCATION_ONLY, data=None)
def test_archive_replay_equals_fold(log: GenLog, data: st.DataObject | None) -> None:
    raws = [orjson.dumps(r) for r in log.merged()]
    partitions = 1
    as_of: datetime | None = None
    if data is not None:
        # re-sends of earlier events (same id, same bytes) anywhere later in the log
        for _ in range(data.draw(st.integers(0, 3), label="re-sends")):
            if raws:
                i = data.draw(st.integers(0, len(raws) - 1))
                j = data.draw(st.integers(i + 1, len(raws)))
                raws.insert(j, raws[i])
        partitions = data.draw(st.integers(1, 4), label="partitions")
        if data.draw(st.booleans(), label="as_of?"):
            as_of = data.draw(
                st.datetimes(datetime(2025, 2, 20), datetime(2025, 4, 10), timezones=st.just(UTC)),
                label="as_of",
            )
    with tempfile.TemporaryDirectory() as tmp:
        events = _archive(Path(tmp), raws, partitions)
        expected = _fold(events, as_of)
        note(f"{len(events)} events, {len(expected)} patient-months")
        assert _fast(Path(tmp), as_of) == expected


def test_shared_replay_over_two_processes_equals_fold(tmp_path: Path) -> None:
    """The sharded replay (a process per share of patients, practice events in every share)
    merges back into the fold's order and numbers, on a realistic practice log."""
    raws = [
        orjson.dumps(e)
        for e in generate_practice_log(seed=3, patients=40, months=("2025-03", "2025-04"))
    ]
    events = _archive(tmp_path, raws, partitions=4)
    views, stats = replay_views(tmp_path, workers=2)
    expected = _fold(events)
    assert list(views) == expected
    assert stats.patient_months == len(expected)
    assert stats.applied == len({(e.org_id, e.event_id) for e in events})
    assert stats.sql_accounted > 0  # the SQL accounting did take part


def test_empty_archive_replays_to_nothing(tmp_path: Path) -> None:
    (tmp_path / "_committed").mkdir()
    assert _fast(tmp_path) == []

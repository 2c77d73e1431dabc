"""#9 items 6 and 12: one tenant cannot stall billing for the others.

* a bound per patient-month on activity versions and readings, in the core, so the
  worker's fold, ``caretally replay`` and the archive replay refuse the same events
  (``over_limit``, no patient id in the reason);
* per-org token buckets on ``POST /v1/events`` (all events; practice-wide ones tighter);
* the fold yields to the event loop, so SIGTERM stops a worker in the middle of a burst;
* a ``practice.configured`` that repeats the org's settings re-evaluates nothing;
* end to end: org A's burst does not hold back org B's alert beyond a stated bound.

The rate limits on a real server and broker, the burst and SIGTERM through a real worker:
tests/integration/test_security_fairness_pipeline.py.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import orjson
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

import projections.ledger as ledger_module
from projections.engine import Projector, replay
from projections.ledger import Ledger, Status
from schemas.events import parse_event
from streams.archive.replay import replay_archive
from streams.archive.store import write_events
from streams.cli.main import cli
from streams.kafka.records import header
from streams.worker.partition import DEADLETTER, FoldPartition
from support.builders import Log, one_minute_activities
from support.strategies import SETTINGS, GenLog, gen_logs

# the documented bounds (projections/ledger.py); the defaults let this file run on a tree
# without them, where every test below fails on its assertions
ACTIVITY_BOUND: int = getattr(ledger_module, "MAX_ACTIVITY_VERSIONS", 200)
READING_BOUND: int = getattr(ledger_module, "MAX_READINGS", 10_000)
EXTRA = 3


def _bounded_log() -> Log:
    log = Log()
    log.practice()
    log.documented("P-1")
    one_minute_activities(log, "P-1", ACTIVITY_BOUND + EXTRA)
    log.activity("P-1", "april", "2025-04-02T10:00:00Z", 5)  # another month: not bounded
    log.activity("P-2", "other", "2025-03-02T10:00:00Z", 5)  # another patient: not bounded
    return log


# -- the bound, in the core ------------------------------------------------------------------


def test_replay_refuses_activity_versions_beyond_the_bound(tmp_path: Path) -> None:
    log = _bounded_log()
    path = tmp_path / "log.ndjson"
    path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in log.raw))
    result = CliRunner().invoke(cli, ["replay", "--input", str(path), "--format", "json"])
    refused = [ln for ln in result.stderr.splitlines() if "rejected" in ln and ": over_limit" in ln]
    assert len(refused) == EXTRA, result.stderr[-2000:]
    assert all("P-1" not in ln for ln in refused)  # the reason names no patient (PHI)
    assert result.exit_code == 3
    views = {(v["patient_id"], v["month"]): v for v in map(orjson.loads, result.stdout.split())}
    assert views[("P-1", "2025-03")]["minutes"]["ccm"] == ACTIVITY_BOUND
    assert views[("P-1", "2025-04")]["minutes"]["ccm"] == 5
    assert views[("P-2", "2025-03")]["minutes"]["ccm"] == 5


def test_the_fold_dead_letters_what_is_over_the_bound() -> None:
    part = FoldPartition()
    dead = []
    for raw in map(orjson.dumps, _bounded_log().raw):
        dead += [o for o in part.apply(raw) if o.topic == DEADLETTER]
    assert len(dead) == EXTRA
    for out in dead:
        reason = (header(list(out.headers), "reason") or b"").decode()
        assert reason.startswith("over_limit:") and "2025-03" in reason
        assert "P-1" not in reason


def test_amendments_count_as_versions_and_readings_have_their_own_bound() -> None:
    log = Log()
    for i in range(ACTIVITY_BOUND + 1):  # one activity amended over and over
        log.activity("P-1", "a1", f"2025-03-03T10:{i % 60:02d}:00Z", 1 + i % 7)
    for i in range(READING_BOUND + 2):  # one reading a minute from March 1st (UTC)
        log.reading("P-1", f"2025-03-{1 + i // 1440:02d}T{i // 60 % 24:02d}:{i % 60:02d}:00Z")
    log.reading("P-1", "2025-04-01T00:00:00Z")  # the next month is not at the bound
    ledger = Ledger()
    statuses = [ledger.apply(e).status for e in log.events()]
    versions, readings = statuses[: ACTIVITY_BOUND + 1], statuses[ACTIVITY_BOUND + 1 :]
    assert versions.count(Status.APPLIED) == ACTIVITY_BOUND and versions[-1] is not Status.APPLIED
    assert readings.count(Status.APPLIED) == READING_BOUND + 1
    assert readings[-1] is Status.APPLIED


def test_the_archive_replay_refuses_the_same_events(tmp_path: Path) -> None:
    log = _bounded_log()
    # re-sent events are duplicates, not versions: they never count toward the bound
    raws = [orjson.dumps(e) for e in log.raw]
    raws[10:10] = raws[-5:-3]
    events = [parse_event(r) for r in raws]
    write_events(tmp_path / "archive", zip(events, raws, strict=True), partitions=2, flush_rows=50)
    archived, stats = replay_archive(tmp_path / "archive", threads=1)
    folded = [b.view() for b in replay(events)]
    assert [b.view() for b in archived] == folded
    assert {(v["patient_id"], v["month"]): v["minutes"]["ccm"] for v in folded}[
        ("P-1", "2025-03")
    ] == ACTIVITY_BOUND
    assert getattr(stats, "over_limit", None) == EXTRA
    # `caretally replay` of the archive (in two processes) says so, and exits 3
    args = ["replay", "--input", str(tmp_path / "archive"), "--workers", "2"]
    result = CliRunner().invoke(cli, args)
    assert f"rejected {EXTRA} event(s): over_limit" in result.stderr
    assert result.exit_code == 3


# -- item 12: unchanged practice settings --------------------------------------------------


def test_repeating_the_practice_settings_re_evaluates_nothing() -> None:
    log = Log()
    log.practice(timezone="America/Chicago")
    for pid in ("P-1", "P-2"):
        log.documented(pid)
        log.activity(pid, "a1", "2025-03-03T10:00:00-06:00", 25)
    projector = log.projector()
    before = dict(projector.views)
    again = Log(org="o1")
    again.practice(timezone="America/Chicago", event_id="o1-config-again")
    result = projector.step(again.events()[0])
    assert result.outcome.status is Status.APPLIED
    assert result.changed == [] and result.alerts == []
    # nothing was evaluated again: every view is the very object it was
    assert all(projector.views[k] is v for k, v in before.items())
    # a real change still re-evaluates every patient of the org
    moved = Log(org="o1")
    moved.practice(timezone="America/Los_Angeles", event_id="o1-config-moved")
    projector.step(moved.events()[0])
    assert all(projector.views[k] is not v for k, v in before.items() if k in projector.views)


@SETTINGS
@given(log=gen_logs(), positions=st.lists(st.integers(min_value=0), max_size=4))
def test_repeated_settings_change_nothing(log: GenLog, positions: list[int]) -> None:
    """Folding with repeats of an org's settings equals folding without them."""
    raws = log.merged()
    with_repeats = list(raws)
    for k, pos in enumerate(positions):
        config = log.preamble[pos % len(log.preamble)]
        at = pos % (len(with_repeats) - len(log.preamble) + 1) + len(log.preamble)
        recorded = with_repeats[at - 1]["recorded_at"]
        with_repeats.insert(
            at, {**config, "event_id": f"{config['event_id']}-again-{k}", "recorded_at": recorded}
        )

    def run(rs: list[dict[str, Any]]) -> tuple[Any, list[str], list[Any]]:
        projector, alerts, repeats = Projector(), [], []
        for r in rs:
            step = projector.step(parse_event(orjson.dumps(r)))
            alerts += [a.alert_id for a in step.alerts]
            if "-again-" in r["event_id"]:
                repeats.append((step.changed, step.alerts))
        return [b.view() for b in projector.billing()], alerts, repeats

    views, alerts, _ = run(raws)
    views_r, alerts_r, repeats = run(with_repeats)
    assert views_r == views and alerts_r == alerts
    assert all(changed == [] and not alerted for changed, alerted in repeats)


def test_serve_has_the_rate_limit_options() -> None:
    out = CliRunner().invoke(cli, ["serve", "--help"]).output
    assert "--rate-limit EVENTS_PER_MINUTE" in out and "--practice-rate-limit" in out


# -- the fold lets the event loop run ---------------------------------------------------------


def test_a_long_fold_loop_lets_other_tasks_run() -> None:
    """What the fold agent awaits after each record: over a second of work in one
    coroutine, a heartbeat-like task still gets its turns (none without the pause)."""
    from streams.worker.app import LoopPause

    async def main() -> int:
        ticks = 0

        async def heartbeat() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        beat = asyncio.create_task(heartbeat())
        await asyncio.sleep(0)
        pause = LoopPause()
        part = FoldPartition()
        deadline = time.monotonic() + 1.0
        raws = [orjson.dumps(e) for e in _bounded_log().raw]
        while time.monotonic() < deadline:  # folding the same log again: cheap duplicates
            for raw in raws:
                part.apply(raw)
                await pause()
        beat.cancel()
        return ticks

    assert asyncio.run(main()) >= 5

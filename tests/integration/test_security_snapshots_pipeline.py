"""Security hardening (#9), items 4 and 10, through a real worker on a real broker: a
pickle planted in the state folder is never opened (it used to run as the worker), and a
worker left running while the broker restarts (new, empty topics) and the log is restored
refolds the new log instead of skipping every offset it had passed. The codec and the
state folders without a broker: tests/unit/test_security_snapshots.py.
"""

from __future__ import annotations

import asyncio
import os
import pickle
from pathlib import Path
from typing import Any

import pytest

from streams.demo.client import Follower, WorkerProcess, produce
from streams.demo.live import expected_views
from streams.demo.synthetic import generate_practice_log
from streams.kafka.broker import EmbeddedBroker
from streams.kafka.topics import Topics, ensure_topics
from support.pipeline import PARTS, lines_of, read_all, republish


def app_id(topics: Topics) -> str:
    return f"app-{topics.prefix}"


def worker_folder(state: Path, topics: Topics) -> Path:
    """Where ``caretally worker --state-dir state`` keeps this pipeline's snapshots."""
    return state / f"{app_id(topics)}@{topics.prefix.rstrip('.')}"


def start_worker(bootstrap: str, topics: Topics, tmp_path: Path, *extra: str) -> WorkerProcess:
    ensure_topics(bootstrap, topics, PARTS)
    return WorkerProcess(
        bootstrap,
        topics,
        PARTS,
        tmp_path / "state",
        "--app-id",
        app_id(topics),
        "--sweep-interval",
        "3600",
        *extra,
        log_path=tmp_path / "worker.log",
    ).start()


def tail(path: Path) -> str:
    return path.read_text(errors="replace")[-3000:] if path.exists() else ""


# -- a planted pickle is never executed -------------------------------------------------


class _Planted:
    """Unpickling this creates ``marker`` (an attacker's code would do anything else)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.marker, "w"))


@pytest.mark.slow
def test_a_planted_pickle_snapshot_is_never_executed_and_the_worker_refolds(
    broker: EmbeddedBroker, topics: Topics, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    folder = worker_folder(tmp_path / "state", topics)
    folder.mkdir(parents=True, mode=0o700)
    os.chmod(tmp_path / "state", 0o700)
    os.chmod(folder, 0o700)
    payload = pickle.dumps(_Planted(marker), protocol=5)
    for p in range(PARTS):
        for name in (f"fold-{p}.pickle", f"staff-{p}.pickle", f"fold-{p}.json"):
            (folder / name).write_bytes(payload)
            os.chmod(folder / name, 0o600)
    lines = lines_of(generate_practice_log(seed=3, patients=12))
    expected = expected_views(lines)

    async def run() -> Follower:
        async with Follower(broker.bootstrap, topics, PARTS) as f:
            await produce(broker.bootstrap, topics.ingress, lines)
            await f.until(lambda got: got.views() == expected, 120, quiet=1.0)
            return f

    worker = start_worker(broker.bootstrap, topics, tmp_path)
    try:
        follower = asyncio.run(run())
    finally:
        worker.stop()
    assert not marker.exists(), "a planted pickle ran as the worker"
    assert follower.got.views() == expected, tail(tmp_path / "worker.log")
    assert not list(folder.glob("*.pickle"))  # old pickles (PHI) are removed, not read


# -- a broker restart: the worker follows the new log ------------------------------------


@pytest.mark.slow
def test_a_worker_running_across_a_broker_restart_refolds_the_restored_log(
    tmp_path: Path,
) -> None:
    topics = Topics(prefix="restart.")
    lines = lines_of(generate_practice_log(seed=9, patients=15))
    expected = expected_views(lines)
    assert len(expected) > 10

    async def first_life(bootstrap: str) -> list[Any]:
        async with Follower(bootstrap, topics, PARTS) as f:
            await produce(bootstrap, topics.ingress, lines)
            assert await f.until(lambda got: got.views() == expected, 120, quiet=1.0)
        return await read_all(bootstrap, topics.events)

    async def second_life(bootstrap: str, log: list[Any]) -> Follower:
        await republish(bootstrap, topics.events, log)
        async with Follower(bootstrap, topics, PARTS) as f:
            await f.until(lambda got: got.views() == expected, 150, quiet=1.0)
            return f

    broker = EmbeddedBroker(log_path=tmp_path / "tansu.log").start()
    worker = None
    try:
        worker = start_worker(broker.bootstrap, topics, tmp_path, "--snapshot-interval", "0.5")
        log = asyncio.run(first_life(broker.bootstrap))
        assert len(log) >= len(lines) - 5
        broker.stop()  # memory storage: the topics, offsets and group are gone
        broker.start()  # same port; the worker keeps running
        ensure_topics(broker.bootstrap, topics, PARTS)  # as `caretally restore` does
        follower = asyncio.run(second_life(broker.bootstrap, log))
        assert worker.proc is not None and worker.proc.poll() is None, tail(tmp_path / "worker.log")
    finally:
        if worker is not None:
            worker.stop()
        broker.stop()
    assert follower.got.views() == expected, tail(tmp_path / "worker.log")

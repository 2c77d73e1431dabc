"""``caretally restore``: the archive re-published into a fresh broker gives the same log
(offset for offset with the same partition count), the same billing through a worker,
and the same order of practice-wide events whatever the partition count (that order
without a broker: tests/unit/test_restore_order.py)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from kafka import KafkaProducer

from streams.archive.archiver import ArchiveError, archive_once, fetch_highwaters, lock_archive
from streams.archive.restore import NotEmpty, restore
from streams.demo.client import Follower, WorkerProcess, produce
from streams.demo.live import expected_views
from streams.kafka.broker import EmbeddedBroker
from streams.kafka.topics import Topics, ensure_topics
from support.archive import (
    PARTS,
    archived,
    assert_exactly_once,
    lines_of,
    read_log,
    read_records,
    write_log,
)


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streams.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# -- against brokers ----------------------------------------------------------------------


def replay_cli(lines: list[bytes], tmp_path: Path) -> dict[bytes, Any]:
    """``caretally replay`` of the lines, keyed like care.billing.v1."""
    path = tmp_path / "events.ndjson"
    path.write_bytes(b"\n".join(lines) + b"\n")
    run = cli("replay", "--input", str(path))
    assert run.returncode == 0, run.stderr
    views = [orjson.loads(line) for line in run.stdout.splitlines()]
    return {f"{v['org_id']}:{v['patient_id']}:{v['month']}".encode(): v for v in views}


def worker(bootstrap: str, topics: Topics, parts: int, tmp_path: Path, name: str) -> Any:
    return WorkerProcess(
        bootstrap,
        topics,
        parts,
        tmp_path / f"state-{name}",
        "--app-id",
        f"app-{name}-{topics.prefix}",
        "--sweep-interval",
        "3600",
        log_path=tmp_path / f"worker-{name}.log",
    )


async def billing(
    bootstrap: str,
    topics: Topics,
    parts: int,
    expected: dict[bytes, bytes],
    lines: list[bytes] | None = None,
    timeout: float = 90,
) -> dict[bytes, bytes]:
    """Feed ``lines`` to ingress (if any), then read care.billing.v1 until it holds
    ``expected`` (and nothing new comes for a second)."""
    async with Follower(bootstrap, topics, parts) as follower:
        if lines:
            await produce(bootstrap, topics.ingress, lines)
        await follower.until(lambda got: got.views() == expected, timeout, quiet=1.0)
        return follower.got.views()


@pytest.mark.slow
def test_restore_into_a_fresh_broker_reproduces_billing(
    broker: EmbeddedBroker, topics: Topics, tmp_path: Path
) -> None:
    lines = lines_of(2500, seed=23)
    expected = expected_views(lines)
    replayed = replay_cli(lines, tmp_path)
    assert {k: orjson.loads(v) for k, v in expected.items()} == replayed
    assert sum(orjson.loads(x)["type"] == "month.closed" for x in lines) > 10

    # broker A: the pipeline, then the archive of its log
    ensure_topics(broker.bootstrap, topics, PARTS)
    first = worker(broker.bootstrap, topics, PARTS, tmp_path, "a").start()
    try:
        billing_a = asyncio.run(billing(broker.bootstrap, topics, PARTS, expected, lines))
    finally:
        assert first.stop() == 0, (tmp_path / "worker-a.log").read_text()[-3000:]
    root = tmp_path / "archive"
    stats = archive_once(broker.bootstrap, topics, root)
    ends = fetch_highwaters(broker.bootstrap, topics.events, range(PARTS))
    assert stats.rows == sum(ends.values())

    # broker B: empty; restored with another partition count, then a worker
    with EmbeddedBroker(log_path=tmp_path / "tansu-b.log") as fresh:
        run = cli(
            "restore",
            "--input",
            str(root),
            "--bootstrap",
            fresh.bootstrap,
            "--topic-prefix",
            topics.prefix,
            "--partitions",
            "2",
        )
        assert run.returncode == 0, run.stderr
        assert "restored" in run.stdout and "2 partition(s) instead of 3" in run.stdout
        log_b = read_records(fresh.bootstrap, topics.events, 2)
        second = worker(fresh.bootstrap, topics, 2, tmp_path, "b").start()
        try:
            billing_b = asyncio.run(billing(fresh.bootstrap, topics, 2, expected))
            # the gate of B rebuilt its index from the restored headers: re-sent events
            # are dropped as duplicates, a new one gets in (once)
            new = orjson.loads(lines[-1])
            new.update(event_id="after-restore-1")
            before = len(log_b)
            asyncio.run(produce(fresh.bootstrap, topics.ingress, [*lines[:300], orjson.dumps(new)]))
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                grown = sum(fetch_highwaters(fresh.bootstrap, topics.events, range(2)).values())
                if grown > before:
                    break
                time.sleep(0.2)
            time.sleep(1.0)
            grown = sum(fetch_highwaters(fresh.bootstrap, topics.events, range(2)).values())
        finally:
            assert second.stop() == 0, (tmp_path / "worker-b.log").read_text()[-3000:]
    assert billing_a == expected
    assert billing_b == billing_a
    assert grown == before + 1
    # the restored log: the archived bytes, each practice-wide event once per partition
    archived_raw = {raw for _p, _o, raw in archived(root)}
    assert {r.value for r in log_b.values()} == archived_raw
    for r in log_b.values():
        headers = dict(r.headers)
        assert len(headers["idem"]) == 8 and len(headers["body"]) == 8
    wide = [r for r in log_b.values() if orjson.loads(r.value).get("patient_id") is None]
    assert len(wide) == 2 * len({r.value for r in wide})


def test_same_partition_count_restores_the_log_offset_for_offset(
    broker: EmbeddedBroker, topics: Topics, tmp_path: Path
) -> None:
    lines = lines_of(1500, seed=31)
    ensure_topics(broker.bootstrap, topics, PARTS)
    write_log(broker.bootstrap, topics, lines[:1000])
    root = tmp_path / "archive"
    archive_once(broker.bootstrap, topics, root, flush_rows=97)
    original = read_records(broker.bootstrap, topics.events)
    with EmbeddedBroker(log_path=tmp_path / "tansu-b.log") as fresh:
        held = lock_archive(root)  # an archiver still writing the archive: refused
        try:
            with pytest.raises(ArchiveError, match="another archiver"):
                restore(fresh.bootstrap, topics, root)
        finally:
            os.close(held)
        stats = restore(fresh.bootstrap, topics, root)
        assert stats.identical and stats.adopted and stats.partitions == PARTS
        restored = read_records(fresh.bootstrap, topics.events)
        assert restored.keys() == original.keys()
        for k, r in original.items():
            assert (restored[k].key, restored[k].value) == (r.key, r.value), k
            assert dict(restored[k].headers) == dict(r.headers), k
        # the archive adopted the restored log: archiving goes on into the same directory
        write_log(fresh.bootstrap, topics, lines[1000:])
        more = archive_once(fresh.bootstrap, topics, root)
        assert more.rows > 400
        assert_exactly_once(root, read_log(fresh.bootstrap, topics.events))
    with pytest.raises(ArchiveError, match="archives another"):
        archive_once(broker.bootstrap, topics, root)


def test_refuses_a_log_that_is_not_empty(
    broker: EmbeddedBroker, topics: Topics, tmp_path: Path
) -> None:
    ensure_topics(broker.bootstrap, topics, PARTS)
    write_log(broker.bootstrap, topics, lines_of(200, seed=8))
    root = tmp_path / "archive"
    archive_once(broker.bootstrap, topics, root)
    target = Topics(prefix=topics.prefix + "restored.")
    ensure_topics(broker.bootstrap, target, PARTS)
    p = KafkaProducer(bootstrap_servers=broker.bootstrap)
    p.send(target.events, key=b"o:p", value=b"{}", partition=2).get(10)
    p.close()
    args = ["--input", str(root), "--bootstrap", broker.bootstrap]
    run = cli("restore", *args, "--topic-prefix", target.prefix)
    assert run.returncode == 2
    assert "already holds 1 record" in run.stderr and "--force" in run.stderr
    assert sum(fetch_highwaters(broker.bootstrap, target.events, range(PARTS)).values()) == 1
    with pytest.raises(NotEmpty):
        restore(broker.bootstrap, target, root)
    # --force appends all the same
    run = cli("restore", *args, "--topic-prefix", target.prefix, "--force")
    assert run.returncode == 0, run.stderr
    assert "offsets differ" in run.stdout
    ends = fetch_highwaters(broker.bootstrap, target.events, range(PARTS))
    assert sum(ends.values()) == 1 + len(archived(root))
    # an existing topic keeps its partition count; a folder that is no archive is refused
    run = cli("restore", *args, "--topic-prefix", target.prefix, "--partitions", "5")
    assert run.returncode == 1 and "cannot be given 5" in run.stderr
    (tmp_path / "empty").mkdir()
    run = cli("restore", "--input", str(tmp_path / "empty"), "--bootstrap", broker.bootstrap)
    assert run.returncode == 2 and "is not an archive" in run.stderr
    # unreachable broker: a clear message, exit 1
    run = cli("restore", "--input", str(root), "--bootstrap", "127.0.0.1:1")
    assert run.returncode == 1 and "no Kafka broker answers at 127.0.0.1:1" in run.stderr

"""The archiver against the embedded broker: exactly once into the archive across kills,
leftovers of an interrupted flush, guards against another log, dead letters."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from kafka import KafkaConsumer, TopicPartition

from streams.archive.archiver import (
    SOURCE_FILE,
    ArchiveError,
    Archiver,
    archive_once,
    fetch_highwaters,
)
from streams.archive.store import (
    COMMITTED,
    archive_files,
    committed,
    next_offsets,
    read_raw,
)
from streams.kafka.broker import EmbeddedBroker
from streams.kafka.topics import Topics, ensure_topics
from support.archive import (
    PARTS,
    archived,
    assert_exactly_once,
    lines_of,
    producer,
    read_log,
    write_log,
)

pytestmark = pytest.mark.slow


class ArchiverProcess:
    """``caretally archive`` as a child process (``--follow`` unless ``once``)."""

    def __init__(
        self, bootstrap: str, topics: Topics, root: Path, log_path: Path, once: bool = False
    ) -> None:
        self.args = [
            sys.executable,
            "-m",
            "streams.cli.main",
            "archive",
            "--once" if once else "--follow",
            "--bootstrap",
            bootstrap,
            "--topic-prefix",
            topics.prefix,
            "--archive",
            str(root),
            "--flush-rows",
            "23",
            "--flush-seconds",
            "0.05",
            "--group",
            f"archiver-{topics.prefix}",
        ]
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ArchiverProcess:
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                self.args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        return self

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


def in_flight(root: Path) -> bool:
    """A flush is being written: a temporary file exists somewhere in the archive."""
    try:
        for org in os.scandir(root):
            if org.name.startswith("org=") or org.name == COMMITTED:
                folders = [org.path] if org.name == COMMITTED else [m.path for m in os.scandir(org)]
                for folder in folders:
                    for f in os.scandir(folder):
                        if f.name.endswith(".tmp"):
                            return True
    except FileNotFoundError:  # a folder appeared or went meanwhile
        pass
    return False


def leftovers(root: Path) -> list[Path]:
    """Files of flushes that never committed (what a kill mid-flush leaves)."""
    done = {f.name for f in committed(root)}
    out = [p for p in root.glob("org=*/month=*/*") if p.name.split(".")[0] not in done]
    return out + list((root / COMMITTED).glob(".*.tmp"))


def test_archive_exactly_once_across_kills(
    broker: EmbeddedBroker, topics: Topics, tmp_path: Path
) -> None:
    ensure_topics(broker.bootstrap, topics, PARTS)
    lines = lines_of(4000, seed=17)
    root = tmp_path / "archive"
    output = tmp_path / "archiver.log"
    failed: list[BaseException] = []

    def grow() -> None:  # the log grows while archivers run, are killed and restarted
        try:
            for i in range(0, len(lines), 250):
                write_log(broker.bootstrap, topics, lines[i : i + 250])
                time.sleep(0.25)
        except BaseException as exc:
            failed.append(exc)

    def kill_after_flushes(archiver: ArchiverProcess, flushes: int, mid_flush: bool) -> bool:
        """Kill once ``flushes`` more flushes committed: at once, or the moment a flush is
        being written; True if the kill left an uncommitted flush behind."""
        before = len(committed(root))
        deadline = time.monotonic() + 30
        while len(committed(root)) < before + flushes and archiver.proc.poll() is None:  # type: ignore[union-attr]
            assert time.monotonic() < deadline, output.read_text()
            time.sleep(0.005)
        if mid_flush:
            deadline = time.monotonic() + 3
            while not in_flight(root) and time.monotonic() < deadline:
                pass
        archiver.kill()
        return bool(leftovers(root))

    feed = threading.Thread(target=grow)
    feed.start()
    landed = 0
    follow: ArchiverProcess | None = None
    try:
        # --once runs (no group to rejoin, so quick to restart), killed five times
        for kill in range(5):
            once = ArchiverProcess(broker.bootstrap, topics, root, output, once=True).start()
            landed += kill_after_flushes(once, 2, mid_flush=kill % 2 == 1)
        # then the group member following the log, killed mid-flush (a rejoin after a
        # kill takes ~10 s on Tansu: the dead member's session has to expire first)
        follow = ArchiverProcess(broker.bootstrap, topics, root, output).start()
        landed += kill_after_flushes(follow, 3, mid_flush=True)
        follow.start()
        feed.join(60)
        ends = fetch_highwaters(broker.bootstrap, topics.events, range(PARTS))
        deadline = time.monotonic() + 40
        while next_offsets(root) != ends and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        feed.join(60)
        code = follow.stop() if follow is not None else None
    assert not failed, failed
    text = output.read_text()
    assert code == 0, text
    assert "next offset" in text.rsplit("archiving", 1)[-1]  # the summary on a clean stop
    log = read_log(broker.bootstrap, topics.events)
    assert len(log) > 3500
    assert_exactly_once(root, log)
    assert not leftovers(root)
    print(f"kills that left an uncommitted flush behind: {landed} of 6")


def test_leftovers_of_an_interrupted_flush_are_removed_and_never_read(
    broker: EmbeddedBroker, topics: Topics, tmp_path: Path
) -> None:
    ensure_topics(broker.bootstrap, topics, PARTS)
    lines = lines_of(1200, seed=5)
    write_log(broker.bootstrap, topics, lines[:600])
    root = tmp_path / "archive"
    first = archive_once(broker.bootstrap, topics, root, flush_rows=50)
    assert first.rows > 600 and first.removed == 0
    nxt = next_offsets(root)

    # what a kill mid-flush leaves: a whole file of the next flush (no commit marker), a
    # half-written temporary, and a commit marker's temporary
    good = archive_files(root)[0]
    folder = good.parent
    orphan = folder / f"p0-{nxt[0]}-{nxt[0] + 9}.parquet"
    orphan.write_bytes(good.read_bytes())  # a valid Parquet file: readable if not ignored
    (folder / f".p1-{nxt[1]}-{nxt[1] + 9}.parquet.tmp").write_bytes(b"PAR1 half")
    (root / COMMITTED / f".p0-{nxt[0]}-{nxt[0] + 9}.tmp").write_text("10\n")
    assert orphan not in archive_files(root)
    assert sum(1 for _ in read_raw(root)) == first.rows
    assert pq.ParquetFile(orphan).metadata.num_rows > 0

    write_log(broker.bootstrap, topics, lines[600:])
    second = archive_once(broker.bootstrap, topics, root, flush_rows=50)
    assert second.removed == 3
    assert not leftovers(root)
    assert second.partitions[0][0] == nxt[0]  # resumed where the committed archive ended
    assert_exactly_once(root, read_log(broker.bootstrap, topics.events))


def test_once_stops_at_the_end_and_follow_drains_on_finish(
    broker: EmbeddedBroker, topics: Topics, tmp_path: Path
) -> None:
    ensure_topics(broker.bootstrap, topics, PARTS)
    lines = lines_of(900, seed=9)
    root = tmp_path / "archive"
    empty = archive_once(broker.bootstrap, topics, root)
    assert empty.rows == 0 and empty.partitions == {p: (0, 0) for p in range(PARTS)}

    write_log(broker.bootstrap, topics, lines[:300])
    archiver = Archiver(broker.bootstrap, topics, root, group_id=f"g-{topics.prefix}").start()
    write_log(broker.bootstrap, topics, lines[300:])
    stats = archiver.finish(drain=True, timeout=60)
    log = read_log(broker.bootstrap, topics.events)
    assert stats.rows == len(log)
    assert_exactly_once(root, log)
    # the group's committed offsets follow the archive (so lag tools see it)
    c = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=f"g-{topics.prefix}")
    committed_offsets = {
        p: c.committed(TopicPartition(topics.events, p), timeout_ms=10_000) for p in range(PARTS)
    }
    c.close()
    assert committed_offsets == next_offsets(root)
    # one writer per archive
    with pytest.raises(ArchiveError, match="another archiver"):
        holder = Archiver(broker.bootstrap, topics, root)
        holder._take_lock()
        try:
            Archiver(broker.bootstrap, topics, root).run()
        finally:
            holder._release_lock()


def test_refuses_an_archive_of_another_log(
    broker: EmbeddedBroker, topics: Topics, tmp_path: Path
) -> None:
    ensure_topics(broker.bootstrap, topics, PARTS)
    write_log(broker.bootstrap, topics, lines_of(300, seed=2))
    root = tmp_path / "archive"
    archive_once(broker.bootstrap, topics, root)
    # the same topic name on a restarted (empty) embedded broker: a new topic id
    with EmbeddedBroker(log_path=tmp_path / "tansu.log") as fresh:
        ensure_topics(fresh.bootstrap, topics, PARTS)
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "streams.cli.main",
                "archive",
                "--once",
                "--bootstrap",
                fresh.bootstrap,
                "--topic-prefix",
                topics.prefix,
                "--archive",
                str(root),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert run.returncode == 1, run.stderr
    assert "archives another" in run.stderr and "caretally restore" in run.stderr
    # another topic (prefix) into the same archive
    other = Topics(prefix=topics.prefix + "x.")
    ensure_topics(broker.bootstrap, other, PARTS)
    with pytest.raises(ArchiveError, match="not " + other.events):
        archive_once(broker.bootstrap, other, root)
    # an archive ahead of its log (written without _source.json, e.g. by hand)
    (root / SOURCE_FILE).unlink()
    with pytest.raises(ArchiveError, match="log ends at 0"):
        archive_once(broker.bootstrap, other, root)


def test_a_record_that_does_not_parse_is_dead_lettered_not_dropped(
    broker: EmbeddedBroker, topics: Topics, tmp_path: Path
) -> None:
    ensure_topics(broker.bootstrap, topics, PARTS)
    lines = lines_of(200, seed=4)
    write_log(broker.bootstrap, topics, lines[:100])
    p = producer(broker.bootstrap)
    p.send(topics.events, key=b"o:p", value=b'{"not": "an event"}', partition=1).get(10)
    p.close()
    write_log(broker.bootstrap, topics, lines[100:])
    root = tmp_path / "archive"
    stats = archive_once(broker.bootstrap, topics, root)
    log = read_log(broker.bootstrap, topics.events)
    assert stats.deadlettered == 1 and stats.rows == len(log) - 1
    bad = next(k for k, v in log.items() if v == b'{"not": "an event"}')
    rows = {(p, o) for p, o, _ in archived(root)}
    assert rows == set(log) - {bad}
    assert next_offsets(root)[1] == max(o for p, o in log if p == 1) + 1  # no gap to redo
    c = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=None)
    tps = [TopicPartition(topics.deadletter, q) for q in range(PARTS)]
    c.assign(tps)
    for tp in tps:
        c.seek(tp, 0)
    dead: list[Any] = []
    deadline = time.monotonic() + 20
    while not dead and time.monotonic() < deadline:
        for recs in c.poll(timeout_ms=200).values():
            dead.extend(recs)
    c.close()
    assert [r.value for r in dead] == [b'{"not": "an event"}']
    headers = dict(dead[0].headers)
    assert headers["source_topic"] == topics.events.encode()
    assert (int(headers["source_partition"]), int(headers["source_offset"])) == bad
    assert headers["reason"].startswith(b"archiver: ")


def test_follow_waits_for_a_log_the_worker_has_not_created_yet(
    broker: EmbeddedBroker, topics: Topics, tmp_path: Path
) -> None:
    """README's order (worker and archive started together): the archiver started first
    waits for care.events.v1 instead of exiting, then archives it."""
    root = tmp_path / "archive"
    proc = ArchiverProcess(broker.bootstrap, topics, root, tmp_path / "archiver.log").start()
    try:
        deadline = time.monotonic() + 20
        while b"waiting for it" not in (tmp_path / "archiver.log").read_bytes():
            assert proc.proc is not None and proc.proc.poll() is None, "the archiver exited"
            assert time.monotonic() < deadline, (tmp_path / "archiver.log").read_text()
            time.sleep(0.1)
        ensure_topics(broker.bootstrap, topics, PARTS)
        write_log(broker.bootstrap, topics, lines_of(50, seed=5))
        deadline = time.monotonic() + 30
        while not committed(root):
            assert proc.proc is not None and proc.proc.poll() is None, "the archiver exited"
            assert time.monotonic() < deadline, (tmp_path / "archiver.log").read_text()
            time.sleep(0.1)
    finally:
        assert proc.stop() == 0, (tmp_path / "archiver.log").read_text()

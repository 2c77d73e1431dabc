"""The archiver: copies the log (``care.events.v1``) into the Parquet archive, exactly once.

Why it exists: the log is the truth, but the embedded broker keeps it in memory only,
and a replay or an audit over years of events wants columnar files that DuckDB scans
in seconds (``streams.archive.store`` owns the format). The archiver is the one writer
of an archive directory.

Exactly once, across a crash at any instant, without transactions (Tansu has none that
work): the archive itself, not the consumer group, says where to resume. A flush (one
contiguous offset range of one partition) becomes visible only when its commit marker
is written, last and atomically. On start and on every partition assignment the
archiver deletes what an interrupted flush left behind and seeks each partition to the
first offset no committed flush holds. Rows read but not flushed when the process dies
are simply read again. So the archive never has a gap or a duplicate (partition,
offset). The group's committed offset is written after each flush only so that lag is
visible to the usual tools; it is never read back.

Guards: an exclusive lock on the directory (one writer), and the topic's broker id kept
in ``_source.json``: an embedded broker that restarted has a new, shorter log under the
same name, and appending its offsets to the old archive would corrupt it, so the
archiver refuses (``caretally restore`` re-publishes an archive into a fresh broker).

A record that does not parse (the gate validated it, so this means a bug or a schema
change) is sent to the dead-letter topic with the reason and counted, never dropped
silently and never fatal; its offset still belongs to the flush's range.

``--once`` archives up to the fetch highwater seen at start (never ListOffsets: Tansu
answers it wrongly, docs/kafka-notes.md §0.2) with all partitions assigned directly (no
group join to wait for), then exits; the default follows the log in the consumer group
until SIGINT/SIGTERM and flushes what it holds before it stops.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from schemas.events import EventRejected, parse_event
from streams.archive.store import (
    Flush,
    event_row,
    next_offsets,
    remove_uncommitted,
    write_flush,
)
from streams.files.atomic import write_bytes
from streams.kafka.records import deadletter_headers
from streams.kafka.settings import KafkaSettings
from streams.kafka.topics import Topics

if TYPE_CHECKING:
    from streams.kafka.clients import Connection

log = logging.getLogger("caretally.archiver")

DEFAULT_GROUP = "caretally-archiver"
DEFAULT_FLUSH_ROWS = 20_000
DEFAULT_FLUSH_SECONDS = 2.0
SOURCE_FILE = "_source.json"  # which log this archive copies (topic name and broker id)
LOCK_FILE = ".archiver.lock"
POLL_MS = 200


class ArchiveError(RuntimeError):
    """The archiver cannot (or must not) go on; the message says why and what to do."""


@dataclass
class ArchiveStats:
    """What one run archived. ``partitions``: per partition, the first offset this run
    archived (or would have) and the next offset not yet archived."""

    rows: int = 0
    files: int = 0
    flushes: int = 0
    deadlettered: int = 0
    removed: int = 0  # leftovers of an interrupted flush, deleted at start
    gaps: int = 0  # offset ranges that held no record (logged as warnings)
    seconds: float = 0.0
    partitions: dict[int, tuple[int, int]] = field(default_factory=dict)

    @property
    def events_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def summary(self, root: Path) -> str:
        lines = [
            f"archived {self.rows:,} row(s) in {self.files:,} file(s) ({self.flushes:,} "
            f"flush(es)) to {root} in {self.seconds:.1f} s ({self.events_per_s:,.0f} rows/s)"
        ]
        if self.deadlettered:
            lines.append(f"{self.deadlettered:,} record(s) did not parse: sent to dead letters")
        if self.removed:
            lines.append(f"removed {self.removed} leftover file(s) of an interrupted flush")
        for p, (first, nxt) in sorted(self.partitions.items()):
            span = f"offsets {first}-{nxt - 1}" if nxt > first else "nothing new"
            lines.append(f"  partition {p}: {span}, next offset {nxt}")
        return "\n".join(lines)


@dataclass
class _Open:
    """The flush being gathered for one partition: rows of offsets ``start..last``."""

    start: int
    last: int = -1
    rows: list[dict[str, Any]] = field(default_factory=list)
    since: float = 0.0  # monotonic time of its first record

    @property
    def next(self) -> int:
        return max(self.start, self.last + 1)

    def restart(self) -> None:
        """After a flush: the next one starts right after it (same object: callers hold it)."""
        self.start = self.next
        self.rows = []


def describe_topic(kafka: Connection, topic: str) -> tuple[int, str]:
    """Partition count and broker id of ``topic``; :class:`ArchiveError` if it is missing.

    Asked through the admin API: a consumer's metadata request would make Tansu create
    the topic (with 4 partitions), whatever the client asks.
    """
    from streams.kafka.clients import KafkaError, kafka_admin

    bootstrap = KafkaSettings.of(kafka).bootstrap
    try:
        admin = kafka_admin(kafka)
    except KafkaError as exc:
        raise ArchiveError(f"cannot connect to Kafka at {bootstrap}: {exc}") from None
    try:
        found = admin.describe_topics([topic])
    finally:
        admin.close()
    info = found[0] if found else {}
    if info.get("error_code", 3) != 0 or not info.get("partitions"):
        raise ArchiveError(
            f"topic {topic} does not exist at {bootstrap} "
            "(`caretally worker` creates it; check --topic-prefix)"
        )
    return len(info["partitions"]), str(info.get("topic_id") or "")


def fetch_highwaters(
    kafka: Connection,
    topic: str,
    partitions: Iterable[int],
    timeout: float = 30.0,
    near: dict[int, int] | None = None,
) -> dict[int, int]:
    """Each partition's end, from the highwater of a fetch response (never ListOffsets).

    Each partition is fetched from ``near[p]`` (a guess at its end: less to transfer)
    or its beginning, and paused as soon as its highwater is known.
    """
    from streams.kafka.clients import (
        ARCHIVE_CONSUMER,
        OffsetOutOfRangeError,
        TopicPartition,
        kafka_consumer,
    )

    consumer = kafka_consumer(
        kafka, ARCHIVE_CONSUMER, group_id=None, client_id="caretally-highwater"
    )
    try:
        tps = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        for tp in tps:
            if near and near.get(tp.partition):
                consumer.seek(tp, near[tp.partition])
        deadline = time.monotonic() + timeout
        ends: dict[int, int] = {}
        while len(ends) < len(tps):
            if time.monotonic() > deadline:
                raise ArchiveError(f"no fetch answer for {topic} within {timeout:.0f} s")
            try:
                consumer.poll(timeout_ms=POLL_MS, max_records=1)
            except OffsetOutOfRangeError:  # a guess past the end (Kafka; Tansu says nothing)
                consumer.seek_to_beginning(*tps)
                continue
            for tp in tps:
                high = consumer.highwater(tp)
                if high is not None and tp.partition not in ends:
                    ends[tp.partition] = int(high)
                    consumer.pause(tp)  # its buffered records are dropped, not decoded
        return ends
    finally:
        consumer.close()


def lock_archive(root: Path) -> int:
    """Take the archive's writer lock (released when the returned fd is closed, or when
    the process dies); :class:`ArchiveError` if another process holds it."""
    fd = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ArchiveError(f"another archiver is writing {root} (one writer per archive)") from None
    return fd


def read_source(root: Path) -> dict[str, str] | None:
    try:
        data = json.loads((root / SOURCE_FILE).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ArchiveError(f"{root / SOURCE_FILE} is unreadable: {exc}") from None
    return {str(k): str(v) for k, v in data.items()}


def write_source(root: Path, topic: str, topic_id: str) -> None:
    """Record (atomically) which log the archive copies."""
    write_bytes(
        root / SOURCE_FILE, (json.dumps({"topic": topic, "topic_id": topic_id}) + "\n").encode()
    )


def check_source(root: Path, topic: str, topic_id: str) -> bool:
    """Refuse to append another log's offsets to this archive; True if ``_source.json``
    must be written (a new archive, or one that did not know the topic's id yet)."""
    known = read_source(root)
    if known is None:
        return True
    other = known.get("topic", "")
    if other != topic:
        raise ArchiveError(
            f"{root} archives {other}, not {topic}: offsets of two logs cannot share an "
            "archive; check --topic-prefix, or archive into a new directory"
        )
    if topic_id and known.get("topic_id") and known["topic_id"] != topic_id:
        raise ArchiveError(
            f"{root} archives another {topic} (broker topic id {known['topic_id']}; this "
            f"broker's is {topic_id}): the topic was recreated, e.g. the embedded broker "
            "restarted with an empty log. Archive into a new directory, or first "
            "`caretally restore` this archive into the empty broker (restored with the same "
            "partition count, the log continues this archive)."
        )
    return bool(topic_id) and not known.get("topic_id")


def check_not_ahead(root: Path, topic: str, ends: dict[int, int]) -> None:
    """The archive must not hold offsets the log does not have (Tansu answers a fetch
    past the end with no error, so nothing else would notice)."""
    for p, nxt in sorted(next_offsets(root).items()):
        if nxt > ends.get(p, 0):
            where = f"ends at {ends[p]}" if p in ends else "has no such partition"
            raise ArchiveError(
                f"{root} holds partition {p} of {topic} up to offset {nxt - 1}, but the "
                f"log {where}: this archive was written from another log; archive into a "
                "new directory"
            )


class Archiver:
    """Copies ``care.events.v1`` into the archive at ``root``; usable from a thread.

    ``run(follow=False)`` archives up to the end seen at start and returns;
    ``run(follow=True)`` follows in the consumer group until :meth:`stop` (from any
    thread; ``drain=True`` first archives up to the log's end as of that call).
    """

    def __init__(
        self,
        kafka: Connection,
        topics: Topics,
        root: Path,
        *,
        flush_rows: int = DEFAULT_FLUSH_ROWS,
        flush_seconds: float = DEFAULT_FLUSH_SECONDS,
        group_id: str = DEFAULT_GROUP,
    ) -> None:
        if flush_rows < 1 or flush_seconds <= 0:
            raise ValueError("flush_rows must be >= 1 and flush_seconds > 0")
        self.kafka = kafka
        self.bootstrap = KafkaSettings.of(kafka).bootstrap  # in messages
        self.topics = topics
        self.root = Path(root)
        self.flush_rows = flush_rows
        self.flush_seconds = flush_seconds
        self.group_id = group_id
        self.stats = ArchiveStats()
        self._open: dict[int, _Open] = {}
        self._stop = threading.Event()
        self._drain = threading.Event()
        self._consumer: Any = None
        self._producer: Any = None  # dead letters, made on first use
        self._dead_futures: list[Any] = []
        self._lock_fd: int | None = None
        self._partitions = 0
        self._joined = False  # the first assignment happened (follow mode)
        self._thread: threading.Thread | None = None
        self._on_progress: Callable[[int, int], None] | None = None
        self.error: BaseException | None = None  # what ended a run in a thread

    # -- control ---------------------------------------------------------------------

    def stop(self, drain: bool = False) -> None:
        """Ask ``run`` to return (thread-safe); with ``drain``, after archiving to the end."""
        if drain:
            self._drain.set()
        else:
            self._stop.set()

    def wait_for_log(self, on_wait: Callable[[str], None], poll_s: float = 1.0) -> bool:
        """Wait until the log topic exists (``caretally worker`` creates it, and an archiver
        started beside a new worker may be first); ``on_wait`` gets the reason once. False
        if :meth:`stop` was called first. Other errors (no broker) are raised at once."""
        told = False
        while not self._stop.is_set():
            try:
                describe_topic(self.kafka, self.topics.events)
                return True
            except ArchiveError as exc:
                if "does not exist" not in str(exc):
                    raise
                if not told:
                    on_wait(f"{exc}; waiting for it (Ctrl-C to stop)")
                    told = True
            self._stop.wait(poll_s)
        return False

    def start(self) -> Archiver:
        """Follow the log in a daemon thread (``run(follow=True)``); end it with :meth:`finish`."""

        def target() -> None:
            try:
                self.run(follow=True)
            except BaseException as exc:
                self.error = exc
                log.error("the archiver stopped: %s", exc)

        self._thread = threading.Thread(target=target, name="caretally-archiver", daemon=True)
        self._thread.start()
        return self

    def finish(self, drain: bool = True, timeout: float = 60.0) -> ArchiveStats:
        """Stop the thread of :meth:`start` (with ``drain``, once the archive has reached the
        log's end as of this call), wait for it, and return the stats; re-raises its error."""
        self.stop(drain=drain)
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                self.stop()
                self._thread.join(10)
                raise ArchiveError(f"the archiver did not finish within {timeout:.0f} s")
        if self.error is not None:
            raise self.error
        return self.stats

    def run(
        self, follow: bool = False, on_progress: Callable[[int, int], None] | None = None
    ) -> ArchiveStats:
        """Archive (see the class); without ``follow``, ``on_progress(done, total)`` is
        given the records archived of those the run set out to archive, after each poll."""
        started = time.perf_counter()
        self._on_progress = on_progress
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self._take_lock()
        except OSError as exc:
            raise ArchiveError(f"cannot write the archive at {self.root}: {exc}") from None
        try:
            topic = self.topics.events
            try:
                self._partitions, topic_id = describe_topic(self.kafka, topic)
                new_source = check_source(self.root, topic, topic_id)
                ends = fetch_highwaters(
                    self.kafka, topic, range(self._partitions), near=next_offsets(self.root)
                )
            except ArchiveError:
                raise
            except Exception as exc:  # kafka-python raises more than KafkaError here
                raise ArchiveError(
                    f"cannot read {topic} at {self.bootstrap}: {type(exc).__name__}: {exc}"
                ) from None
            check_not_ahead(self.root, topic, ends)
            if new_source:
                write_source(self.root, topic, topic_id)
            self._consume(follow, None if follow else ends)
        finally:
            self.stats.seconds = time.perf_counter() - started
            self._close()
            self._release_lock()
        return self.stats

    # -- the loop --------------------------------------------------------------------

    def _consume(self, follow: bool, targets: dict[int, int] | None) -> None:
        """Archive until stopped, or until every partition reaches ``targets``."""
        from streams.kafka.clients import (
            ARCHIVE_CONSUMER,
            KafkaError,
            OffsetOutOfRangeError,
            TopicPartition,
            kafka_consumer,
            rebalance_listener,
        )

        topic = self.topics.events
        try:
            self._consumer = consumer = kafka_consumer(
                self.kafka, ARCHIVE_CONSUMER, group_id=self.group_id
            )
        except KafkaError as exc:
            raise ArchiveError(f"cannot connect to Kafka at {self.bootstrap}: {exc}") from None
        if follow:
            consumer.subscribe([topic], listener=rebalance_listener(self._revoked, self._assigned))
        else:
            tps = [TopicPartition(topic, p) for p in range(self._partitions)]
            consumer.assign(tps)
            self._assigned(tps)
        try:
            while not self._stop.is_set():
                if targets is not None and self._reached(targets, follow):
                    break
                if follow and targets is None and self._drain.is_set():
                    targets = fetch_highwaters(self.kafka, topic, range(self._partitions))
                batch = consumer.poll(timeout_ms=POLL_MS)
                for tp, records in batch.items():
                    state = self._open.get(tp.partition)
                    if state is None:  # revoked meanwhile
                        continue
                    for record in records:
                        self._take(tp.partition, state, record)
                self._flush_due()
                if targets is not None and self._on_progress is not None:
                    self._on_progress(*self._progress(targets))
            self._flush_all()
        except OffsetOutOfRangeError as exc:
            raise ArchiveError(
                f"the log no longer holds the offsets the archive resumes from ({exc}); "
                "was it truncated by retention?"
            ) from None
        except KafkaError as exc:
            raise ArchiveError(f"Kafka error while archiving {topic}: {exc}") from None
        except (OSError, ValueError) as exc:  # pyarrow's errors are ValueErrors
            raise ArchiveError(f"writing the archive at {self.root} failed: {exc}") from None
        self._commit_group_now()

    def _progress(self, targets: dict[int, int]) -> tuple[int, int]:
        """(records taken, records to take) since this run's start, towards ``targets``."""
        done = total = 0
        for p, state in self._open.items():
            first = self.stats.partitions.get(p, (state.start, state.start))[0]
            total += max(targets.get(p, 0) - first, 0)
            done += max(min(state.next, targets.get(p, 0)) - first, 0)
        return done, total

    def _reached(self, targets: dict[int, int], follow: bool) -> bool:
        if follow and not self._joined:
            return False
        from streams.kafka.clients import TopicPartition

        def position(p: int, state: _Open) -> int:
            # past a partition's trailing control records (Kafka transactions) no record
            # ever arrives; the consumer's position still moves beyond them
            return max(state.next, self._consumer.position(TopicPartition(self.topics.events, p)))

        return all(position(p, state) >= targets.get(p, 0) for p, state in self._open.items())

    def _assigned(self, partitions: Iterable[Any]) -> None:
        """Resume each partition where the archive (not the group) says it ends."""
        self._joined = True
        removed = remove_uncommitted(self.root)
        if removed:
            log.info("removed %d leftover file(s) of an interrupted flush", len(removed))
            self.stats.removed += len(removed)
        nxt = next_offsets(self.root)
        for tp in partitions:
            start = nxt.get(tp.partition, 0)
            self._consumer.seek(tp, start)
            self._open[tp.partition] = _Open(start)
            first, _ = self.stats.partitions.get(tp.partition, (start, start))
            self.stats.partitions[tp.partition] = (first, start)
            log.info("partition %d: resuming at offset %d", tp.partition, start)

    def _revoked(self, partitions: Iterable[Any]) -> None:
        for tp in partitions:
            if tp.partition in self._open:
                self._flush(tp.partition)
                del self._open[tp.partition]

    def _take(self, partition: int, state: _Open, record: Any) -> None:
        if record.offset != state.next:
            if record.offset < state.next:
                return  # already held (a refetch)
            # no record at the offsets between (transaction markers on Kafka, or records
            # the broker no longer has): the flush's range still covers them, so they are
            # never looked for again; said loudly, since on our logs it should not happen
            self.stats.gaps += 1
            log.warning(
                "partition %d: offsets %d..%d hold no record; the archive skips them",
                partition,
                state.next,
                record.offset - 1,
            )
        raw = record.value or b""
        try:
            event = parse_event(raw)
        except EventRejected as exc:
            self._dead_letter(record, exc.reason)
        else:
            state.rows.append(event_row(event, raw, partition, record.offset, record.timestamp))
        if state.last < state.start:
            state.since = time.monotonic()
        state.last = record.offset
        if len(state.rows) >= self.flush_rows:
            self._flush(partition)

    def _dead_letter(self, record: Any, reason: str) -> None:
        from streams.kafka.clients import ARCHIVE_DEADLETTER_PRODUCER, kafka_producer

        # the reason names fields, never values: safe to log (no patient identifiers)
        log.warning(
            "partition %d offset %d is not a valid event (%s); sent to %s",
            record.partition,
            record.offset,
            reason,
            self.topics.deadletter,
        )
        if self._producer is None:
            self._producer = kafka_producer(self.kafka, ARCHIVE_DEADLETTER_PRODUCER)
        headers = deadletter_headers(
            f"archiver: {reason}", record.topic, record.partition, record.offset
        )
        self._dead_futures.append(
            self._producer.send(
                self.topics.deadletter, key=record.key, value=record.value, headers=headers
            )
        )
        self.stats.deadlettered += 1

    def _flush_due(self) -> None:
        now = time.monotonic()
        for p, state in list(self._open.items()):
            if state.last >= state.start and now - state.since >= self.flush_seconds:
                self._flush(p)

    def _flush_all(self) -> None:
        for p in list(self._open):
            self._flush(p)

    def _flush(self, partition: int) -> None:
        """Write the open flush of ``partition`` (if any) and commit it, then the group offset."""
        state = self._open[partition]
        if state.last < state.start:
            return
        if self._dead_futures:  # the dead letters are delivered before their range commits
            self._producer.flush(timeout=30)
            for fut in self._dead_futures:
                fut.get(timeout=0)
            self._dead_futures.clear()
        flush = Flush(partition, state.start, state.last)
        files = write_flush(self.root, flush, state.rows)
        self.stats.rows += len(state.rows)
        self.stats.files += len(files)
        self.stats.flushes += 1
        first, _ = self.stats.partitions.get(partition, (state.start, state.start))
        self.stats.partitions[partition] = (first, state.last + 1)
        log.debug("flushed %s: %d rows, %d files", flush.name, len(state.rows), len(files))
        state.restart()
        self._commit_group(partition, state.start)

    def _commit_group(self, partition: int, offset: int) -> None:
        """Best effort, for lag monitoring only: the archive decides where to resume."""
        from streams.kafka.clients import OffsetAndMetadata, TopicPartition

        tp = TopicPartition(self.topics.events, partition)
        with contextlib.suppress(Exception):
            self._consumer.commit_async(
                {tp: OffsetAndMetadata(offset, "", -1)}, callback=_commit_result
            )

    def _commit_group_now(self) -> None:
        """At the end, wait for the group's offsets of what is archived (lag display)."""
        from streams.kafka.clients import KafkaError, OffsetAndMetadata, TopicPartition

        offsets = {
            TopicPartition(self.topics.events, p): OffsetAndMetadata(state.start, "", -1)
            for p, state in self._open.items()
        }
        if offsets:
            try:
                self._consumer.commit(offsets, timeout_ms=5000)
            except (KafkaError, AssertionError) as exc:
                log.debug("final group offset commit failed (lag display only): %s", exc)

    # -- resources -------------------------------------------------------------------

    def _take_lock(self) -> None:
        self._lock_fd = lock_archive(self.root)

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def _close(self) -> None:
        from streams.kafka.clients import KafkaError

        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            with contextlib.suppress(KafkaError, OSError, AssertionError):
                consumer.close()  # commits nothing (auto commit is off); leaves the group
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(KafkaError):
                producer.close(timeout=5)


def _commit_result(offsets: Any, response: Any) -> None:
    if isinstance(response, Exception):
        log.debug("group offset commit failed (lag display only): %s", response)


def archived_events(root: Path) -> int:
    """Distinct events in the archive (a practice-wide event counts once, not per partition)."""
    import duckdb

    from streams.archive.store import archive_files

    files = [str(p) for p in archive_files(root)]
    if not files:
        return 0
    con = duckdb.connect()
    try:
        row = con.execute(
            "SELECT count(*) FROM (SELECT DISTINCT org_id, event_id FROM read_parquet(?))",
            [files],
        ).fetchone()
    finally:
        con.close()
    return int(row[0]) if row else 0


def archive_once(
    kafka: Connection,
    topics: Topics,
    root: Path,
    *,
    flush_rows: int = DEFAULT_FLUSH_ROWS,
    flush_seconds: float = DEFAULT_FLUSH_SECONDS,
    group_id: str = DEFAULT_GROUP,
) -> ArchiveStats:
    """Archive ``topics.events`` up to its end as of now into ``root``; returns what was done."""
    archiver = Archiver(
        kafka,
        topics,
        root,
        flush_rows=flush_rows,
        flush_seconds=flush_seconds,
        group_id=group_id,
    )
    return archiver.run(follow=False)

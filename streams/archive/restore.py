"""Re-publish a Parquet archive into an empty broker's log (``caretally restore``).

The embedded broker keeps the log in memory; the archive is what survives. Restoring
writes every archived event back to ``care.events.v1`` exactly as the ingress gate
wrote it the first time: the same bytes (so the same event ids and body digests), the
key ``org_id:patient_id``, the ``idem``/``body`` headers the gate rebuilds its index
from (:class:`~streams.worker.gate.IngressGate` decides and digests here too), and
practice-wide events once to every partition. A worker started on the restored log
then folds it to the same billing, and its gate rejects re-sent events as before.

Order. Per key, the archive's offset order is kept. Practice-wide events were archived
once per partition, and where such an event sits relative to the other partitions'
events matters (an activity after ``month.closed`` is late). Record timestamps cannot
place it exactly (a gate batch is written within one millisecond), so each broadcast
is a barrier: the archive is read in its canonical order, and a partition that reaches
its copy of a broadcast waits, its later rows held back, until every partition holding
a copy has reached it; then the event is written once to every partition. That is the
order the gate wrote, whatever the new partition count.

With the same partition count the restored log is the original one offset for offset
(checked against every acknowledgement); the archive then records the new topic's id so
``caretally archive`` continues into the same directory.
"""

from __future__ import annotations

import logging
import os
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streams.archive.store import (
    LOG_TS_SQL,
    ORDER_SQL,
    archive_files,
    is_archive,
    next_offsets,
)
from streams.kafka.log_writer import log_records
from streams.kafka.topics import DEFAULT_PARTITIONS, Topics
from streams.worker.gate import IngressGate, Verdict

if TYPE_CHECKING:
    from streams.kafka.clients import Connection

log = logging.getLogger("caretally.restore")

Key = tuple[str, str]  # (org_id, event_id) of a practice-wide event


class RestoreError(RuntimeError):
    """Restoring cannot go on; the message says why."""


class NotEmpty(RestoreError):
    """The log topic already holds records (pass ``force`` to append all the same)."""


@dataclass(frozen=True, slots=True)
class ArchivedRow:
    """One archive row, in canonical order (``seq``); ``wide``: a practice-wide event's key."""

    seq: int
    partition: int
    offset: int
    raw: bytes
    wide: Key | None = None


@dataclass(frozen=True, slots=True)
class Placed:
    """One event to write, with the (partition, offset) of each archived copy of it."""

    raw: bytes
    copies: tuple[tuple[int, int], ...]


class LogOrder:
    """Puts archive rows (canonical order) into the order the gate wrote them.

    ``copies``: for each practice-wide event, the partitions holding a copy of it.
    A partition reaching its copy waits (its later rows are held) until every partition
    in ``copies`` has reached it; then the event is placed once and the held rows go on,
    merged in canonical order. Non-broadcast rows pass straight through.
    """

    def __init__(self, copies: Mapping[Key, frozenset[int]]) -> None:
        self.copies = copies
        self.blocked: dict[int, Key] = {}
        self.held: dict[int, deque[ArchivedRow]] = defaultdict(deque)
        self.reached: dict[Key, dict[int, int]] = {}
        self.first: dict[Key, tuple[int, bytes]] = {}  # canonical seq and bytes, first copy
        self.placed: set[Key] = set()
        self.repeats = 0  # further copies of a broadcast already placed (not written)

    def push(self, row: ArchivedRow) -> list[Placed]:
        out: list[Placed] = []
        if row.partition in self.blocked:
            self.held[row.partition].append(row)
        else:
            self._step(row, out)
            self._release_held(out)
        return out

    def finish(self) -> list[Placed]:
        """Place the broadcasts some partition never reached (an archive that stops short
        in one partition), earliest first, with what was held behind them."""
        out: list[Placed] = []
        self._release_held(out)
        while self.reached:
            key = min(self.reached, key=lambda k: self.first[k][0])
            self._place(key, out)
            self._release_held(out)
        return out

    def _step(self, row: ArchivedRow, out: list[Placed]) -> None:
        key = row.wide
        if key is None:
            out.append(Placed(row.raw, ((row.partition, row.offset),)))
            return
        if key in self.placed:
            self.repeats += 1
            return
        reached = self.reached.setdefault(key, {})
        reached[row.partition] = row.offset
        self.first.setdefault(key, (row.seq, row.raw))
        if self.copies.get(key, frozenset()) <= reached.keys():
            self._place(key, out)
        else:
            self.blocked[row.partition] = key

    def _place(self, key: Key, out: list[Placed]) -> None:
        reached = self.reached.pop(key)
        _seq, raw = self.first.pop(key)
        self.placed.add(key)
        out.append(Placed(raw, tuple(sorted(reached.items()))))
        for p in [p for p, k in self.blocked.items() if k == key]:
            del self.blocked[p]

    def _release_held(self, out: list[Placed]) -> None:
        while True:
            ready = [(q[0].seq, p) for p, q in self.held.items() if q and p not in self.blocked]
            if not ready:
                return
            _seq, p = min(ready)
            self._step(self.held[p].popleft(), out)


def _connect(root: Path) -> tuple[Any, list[str]]:
    import duckdb

    return duckdb.connect(), [str(p) for p in archive_files(root)]


def broadcast_copies(root: Path) -> dict[Key, frozenset[int]]:
    """Practice-wide events of the archive and the partitions holding a copy of each."""
    con, files = _connect(root)
    if not files:
        return {}
    try:
        rows = con.execute(
            "SELECT org_id, event_id, list(DISTINCT partition) FROM read_parquet(?) "
            "WHERE patient_id IS NULL GROUP BY org_id, event_id",
            [files],
        ).fetchall()
    finally:
        con.close()
    return {(org, eid): frozenset(parts) for org, eid, parts in rows}


def archived_rows(root: Path) -> Iterator[ArchivedRow]:
    """Every committed row of the archive in its canonical order."""
    con, files = _connect(root)
    if not files:
        return
    try:
        cur = con.execute(
            'SELECT partition, "offset", raw, CASE WHEN patient_id IS NULL THEN org_id END, '
            "CASE WHEN patient_id IS NULL THEN event_id END "
            f'FROM (SELECT partition, "offset", raw, org_id, patient_id, event_id, {LOG_TS_SQL} '
            f"FROM read_parquet(?)) ORDER BY {ORDER_SQL}",
            [files],
        )
        seq = 0
        while batch := cur.fetchmany(10_000):
            for partition, offset, raw, org, eid in batch:
                wide = (org, eid) if org is not None else None
                yield ArchivedRow(seq, partition, offset, bytes(raw), wide)
                seq += 1
    finally:
        con.close()


def in_log_order(root: Path) -> Iterator[Placed]:
    """The archive's events, each once, in the order the gate wrote them (see module doc)."""
    order = LogOrder(broadcast_copies(root))
    for row in archived_rows(root):
        yield from order.push(row)
    yield from order.finish()


def archive_size(root: Path) -> tuple[int, int]:
    """(rows, partitions) of the archive: partitions is highest archived partition + 1."""
    import pyarrow.parquet as pq

    rows = sum(pq.ParquetFile(p).metadata.num_rows for p in archive_files(root))
    parts = next_offsets(root)
    return rows, (max(parts) + 1 if parts else 0)


class LogWriter:
    """Writes events to ``care.events.v1`` as the ingress gate does
    (``streams.kafka.log_writer``: bytes as given, key ``org_id:patient_id``, headers
    ``idem`` and ``body``, practice-wide events to every partition). Events the gate
    would drop as exact repeats are skipped; one it would reject stops the writer (an
    archive only holds events the gate accepted).

    ``expect`` (partition -> offset) names where each written record should land; every
    acknowledgement is checked against it (``identical`` turns False on a difference).
    """

    def __init__(self, producer: Any, topics: Topics, partitions: int) -> None:
        self.producer = producer
        self.topic = topics.events
        self.partitions = partitions
        self.gate = IngressGate()
        self.events = 0
        self.practice_wide = 0
        self.records = 0
        self.skipped = 0
        self.acked = 0
        self.failed = 0
        self.first_error: str | None = None
        self.matched = 0
        self.identical = True

    def write(self, raw: bytes, expect: Mapping[int, int] | None = None) -> int:
        """Send one event (as many records as the gate would); returns the records sent."""
        d = self.gate.decide(raw)
        if d.verdict is Verdict.DUPLICATE:
            self.skipped += 1
            return 0
        if d.verdict is Verdict.REJECTED or d.event is None:
            raise RestoreError(f"an archived event is not accepted by the gate: {d.reason}")
        records = log_records(d.event, d.raw, self.partitions, (d.idem, d.body))
        for record in records:
            p = record.partition
            future = self.producer.send(
                self.topic, key=record.key, value=record.value, headers=record.headers, partition=p
            )
            want: tuple[int | None, int | None] = (None, None)
            if expect is not None and p is None and len(expect) == 1:
                want = next(iter(expect.items()))
            elif expect is not None and p is not None:
                want = (p, expect.get(p))
            future.add_callback(self._check, *want)
            future.add_errback(self._fail)
        self.events += 1
        self.practice_wide += int(d.practice_wide)
        self.records += len(records)
        return len(records)

    def _check(self, partition: int | None, offset: int | None, metadata: Any) -> None:
        self.acked += 1
        if offset is not None and (metadata.partition, metadata.offset) == (partition, offset):
            self.matched += 1
        else:
            self.identical = False

    def _fail(self, exc: BaseException) -> None:
        from streams.kafka.clients import describe

        self.failed += 1
        if self.first_error is None:
            self.first_error = describe(exc)


@dataclass
class RestoreStats:
    rows: int = 0  # archive rows read
    events: int = 0  # distinct events written
    practice_wide: int = 0  # of which written to every partition
    broadcast_copies: int = 0  # archive rows that were another partition's copy
    repeats: int = 0  # exact repeats the gate drops (not written)
    records: int = 0  # records written to the log
    partitions: int = 0
    archive_partitions: int = 0
    identical: bool = False  # the restored log is the archived one, offset for offset
    adopted: bool = False  # ... and the archive now names it (archiving may continue)
    seconds: float = 0.0

    def summary(self, topic: str, bootstrap: str) -> str:
        rate = self.records / self.seconds if self.seconds > 0 else 0.0
        text = (
            f"restored {self.events:,} event(s) from {self.rows:,} archived row(s) into "
            f"{topic} at {bootstrap}: {self.records:,} record(s) in {self.partitions} "
            f"partition(s) ({self.practice_wide:,} practice-wide event(s) written to every "
            f"partition; {self.broadcast_copies:,} broadcast copies and {self.repeats:,} "
            f"exact repeat(s) not re-sent) in {self.seconds:.1f} s ({rate:,.0f} records/s)"
        )
        return text


def topic_exists(kafka: Connection, topic: str) -> bool:
    from streams.kafka.clients import kafka_admin

    admin = kafka_admin(kafka)
    try:
        return topic in set(admin.list_topics())
    finally:
        admin.close()


def restore(
    kafka: Connection,
    topics: Topics,
    root: Path,
    *,
    partitions: int | None = None,
    force: bool = False,
    on_progress: Callable[[int, int], None] | None = None,
    delivery_timeout: float = 60.0,
) -> RestoreStats:
    """Re-publish the archive at ``root`` into ``topics.events`` of the cluster ``kafka``.

    ``partitions``: of the topics to create (default: the archive's partition count); an
    existing events topic keeps its own. Raises :class:`NotEmpty` if the log already
    holds records and not ``force``. ``on_progress(rows_read, rows_total)``.
    """
    from streams.archive.archiver import lock_archive

    root = Path(root)
    if not root.is_dir() or not is_archive(root):
        raise RestoreError(f"{root} is not an archive (written by `caretally archive`)")
    try:
        lock: int | None = lock_archive(root)  # no archiver may add to it meanwhile
    except OSError:  # a read-only copy: nothing writes to it either
        lock = None
    try:
        return _restore(kafka, topics, root, partitions, force, on_progress, delivery_timeout)
    finally:
        if lock is not None:
            os.close(lock)


def _restore(
    kafka: Connection,
    topics: Topics,
    root: Path,
    partitions: int | None,
    force: bool,
    on_progress: Callable[[int, int], None] | None,
    delivery_timeout: float,
) -> RestoreStats:
    from streams.archive.archiver import describe_topic, fetch_highwaters, write_source
    from streams.ingest.delivery import producer_settings
    from streams.kafka.clients import KafkaError, close_kafka_producer, describe, kafka_producer
    from streams.kafka.settings import KafkaSettings
    from streams.kafka.topics import ensure_topics

    bootstrap = KafkaSettings.of(kafka).bootstrap  # in messages
    started = time.perf_counter()
    total, archived_parts = archive_size(root)
    stats = RestoreStats(archive_partitions=archived_parts)
    try:
        if topic_exists(kafka, topics.events):
            count, _ = describe_topic(kafka, topics.events)
            if partitions is not None and partitions != count:
                raise RestoreError(
                    f"{topics.events} already exists with {count} partition(s); it cannot "
                    f"be given {partitions} (leave out --partitions, or use an empty broker)"
                )
            partitions = count
        partitions = partitions or archived_parts or DEFAULT_PARTITIONS
        ensure_topics(kafka, topics, partitions)
        count, topic_id = describe_topic(kafka, topics.events)
        ends = fetch_highwaters(kafka, topics.events, range(count))
    except KafkaError as exc:
        raise RestoreError(f"cannot prepare the topics at {bootstrap}: {describe(exc)}") from None
    held = sum(ends.values())
    if held and not force:
        raise NotEmpty(
            f"{topics.events} at {bootstrap} already holds {held:,} record(s); restore only "
            "into an empty log (or pass --force to append the archive all the same)"
        )
    stats.partitions = count
    settings = producer_settings(delivery_timeout)
    settings.update(client_id="caretally-restore", linger_ms=20)
    try:
        producer = kafka_producer(kafka, settings)
    except KafkaError as exc:
        raise RestoreError(f"cannot connect to Kafka at {bootstrap}: {describe(exc)}") from None
    writer = LogWriter(producer, topics, count)
    flushed = False
    order = LogOrder(broadcast_copies(root))
    try:

        def write_all(placed: list[Placed]) -> None:
            for item in placed:
                writer.write(item.raw, dict(item.copies))
                if writer.failed:
                    raise RestoreError(f"a send failed: {writer.first_error}")

        for row in archived_rows(root):
            stats.rows += 1
            write_all(order.push(row))
            if on_progress is not None and stats.rows % 5000 == 0:
                on_progress(stats.rows, total)
        write_all(order.finish())
        producer.flush(timeout=delivery_timeout + 1)
        flushed = True
    except KafkaError as exc:
        raise RestoreError(f"restoring into {bootstrap} failed: {describe(exc)}") from None
    finally:
        close_kafka_producer(producer, flushed)
    if on_progress is not None:
        on_progress(stats.rows, total)
    if writer.failed or writer.acked != writer.records:
        raise RestoreError(
            f"the broker acknowledged {writer.acked:,} of {writer.records:,} record(s)"
            + (f"; first error: {writer.first_error}" if writer.first_error else "")
        )
    stats.events = writer.events
    stats.practice_wide = writer.practice_wide
    stats.records = writer.records
    stats.repeats = writer.skipped + order.repeats
    stats.broadcast_copies = stats.rows - writer.events - stats.repeats
    stats.identical = (
        not held
        and count == archived_parts
        and writer.identical
        and writer.matched == stats.rows == writer.records
    )
    if stats.identical and topic_id:  # `caretally archive` may continue this archive
        try:
            write_source(root, topics.events, topic_id)
            stats.adopted = True
        except OSError as exc:
            log.warning("the archive keeps naming the old log: %s", exc)
    stats.seconds = time.perf_counter() - started
    return stats

"""``caretally worker``: the Faust app that runs the core over Kafka.

Faust runs the app (its producer, timers and web server); the hot topics are read in
batches by :class:`~streams.kafka.group_consumer.GroupConsumer` members (aiokafka
``getmany``), because Faust's per-message stream alone measured about 2,400 events/s:

* **gate** (group ``<app_id>-gate``) — ``care.ingress.v1`` → the log
  (``care.events.v1``) or the dead-letter topic (``streams.worker.gate``). Exact
  duplicates are counted and dropped. Ingress is partitioned by org
  (``streams.kafka.partitioning``); a gate decides the orgs of the partitions it is
  assigned, with an index rebuilt from the log on every assignment that brings
  partitions, and forwards a record found on another org's partition to its own.
* **fold** (group ``<app_id>-fold``) — the log → per-partition
  :class:`~streams.worker.partition.FoldPartition` state; changed patient-month views to
  ``care.billing.v1``, alerts to ``care.alerts.v1``, activity intervals to
  ``care.staff.v1`` keyed by staff; and ``care.staff.v1`` → ``staff_overlap`` alerts
  (``projections.staff``). A partition lost in a rebalance is snapshotted and dropped.
* timers: the daily ``threshold_approaching`` sweep, the snapshots, a Kafka probe.
* web (``--web-port``): ``/healthz``, ``/readyz``, ``/metrics`` (``streams.worker.metrics``).

``role`` runs all of it in one process (``all``), or only the gate or only the fold.
Any number of processes of each role may share one ``app_id`` (each with its own state
folder and web port): the groups spread the partitions over them.

A batch is folded in log order with exact per-event alerts; its outputs are delivered
(acks=all) before its offsets are marked done, and offsets are committed at most every
``commit_interval`` seconds and at every rebalance and stop (a late commit only means
records read again: the fold skips them by offset, the gate drops them as duplicates).
A record batch no client can decode is dead-lettered with its raw bytes and the
partition goes on.

``caretally worker`` exits 0 after SIGTERM/SIGINT, and ``FATAL_EXIT`` (3) after it
stopped itself with a critical log line: the gate could not write a batch (which is not
committed), or a recreated log has another partition count than ``--partitions``.

State is not kept in Faust changelog tables: on Tansu their recovery loses updates
(docs/kafka-notes.md §0.2), and ``stream.take`` cannot write them (§0.7). Each partition's
state lives in memory and is snapshotted with the log offset it reflects; a record
whose offset is past the state's next offset first folds the gap straight from the
log, one at or below it is skipped (already folded). So a restart, a rebalance or a
lost snapshot refolds from the log and never loses or double-counts a minute.
A snapshot is taken only between batches, so at-least-once holds end to end.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import shutil
import signal
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from projections.engine import Projector
from projections.rules import RuleBookError, RuleCatalog
from projections.staff import StaffProjector
from streams.kafka.clients import WORKER_APP, Connection, faust_app
from streams.kafka.group_consumer import GroupConsumer, UndecodableBatch
from streams.kafka.log_reader import read_range, read_to_end
from streams.kafka.log_writer import log_digests
from streams.kafka.partitioning import home_partition, org_of_key
from streams.kafka.records import deadletter_headers, header, staff_item
from streams.kafka.topics import (
    DEFAULT_PARTITIONS,
    Topics,
    TopicShape,
    partition_mismatch,
    topic_shapes,
)
from streams.observe.logs import add_repeat_filter, formatter
from streams.observe.probes import (
    broker_answers,
    healthz_response,
    metrics_response,
    readyz_response,
)
from streams.worker.books import books_digest, books_summary, load_books
from streams.worker.gate import (
    TOO_LARGE,
    IngressGate,
    Routed,
    Source,
    Target,
    Verdict,
    Write,
    deadletter_write,
)
from streams.worker.heap import tune_for_large_heap
from streams.worker.metrics import WorkerMetrics, reason_class
from streams.worker.partition import (
    ALERTS,
    BILLING,
    DEADLETTER,
    STAFF,
    FoldPartition,
    Output,
    alert_output,
    sweep_clock,
)
from streams.worker.snapshots import DEFAULT_STATE_DIR, Slot, SnapshotStore
from streams.worker.state_codec import CodecError

log = logging.getLogger("caretally.worker")

LOG_CHECK_INTERVAL = 10.0
"""Seconds between checks, at snapshot time, that the topics are those the state was
folded from (a check also runs on every partition assignment)."""

GATE_SEND_ATTEMPTS = 6
"""Tries of a gate write that failed (backoff 0.2 s doubling to 5 s, about 6 s in all):
after that the gate stops the worker without committing the batch."""

FATAL_EXIT = 3
"""Exit status of ``caretally worker`` after it stopped itself on an error it cannot get
past (the gate could not write a batch; a log came back with another partition count),
so a supervisor can tell; a SIGTERM or SIGINT from outside exits 0."""

CANNOT_WRITE = (
    "ingress gate: cannot write to the log or the dead-letter topic; "
    "stopping without committing the batch (a restart resumes from it)"
)


class FatalStop(Exception):
    """The worker cannot go on; the message (one line, no PHI) says why."""


class WorkerStartError(Exception):
    """The worker cannot start as configured; the message (one line) says why."""


@dataclass
class LogCheck:
    """When state built from a topic is next checked against the topic's id: before the
    first batch after a partition assignment, and ``LOG_CHECK_INTERVAL`` after the last
    check (a recreated topic does not always bring an assignment)."""

    assignments: int = 0
    at: float = field(default_factory=time.monotonic)

    def due(self, assignments: int) -> bool:
        return assignments != self.assignments or time.monotonic() - self.at >= LOG_CHECK_INTERVAL

    def done(self, assignments: int) -> None:
        self.assignments = assignments
        self.at = time.monotonic()


@dataclass(frozen=True, slots=True)
class GateWrite:
    """A write of the gate with the ingress record it came from (for a dead letter)."""

    write: Write
    source: Source
    key: bytes | None
    value: bytes
    idem: int


def too_large_error(exc: BaseException) -> bool:
    """Whether a send failed because of the record's size (Faust wraps the client's
    error in ``ProducerSendError``)."""
    from streams.kafka.clients import AioMessageSizeTooLargeError, AioRecordListTooLargeError

    while exc is not None:
        if isinstance(exc, AioMessageSizeTooLargeError | AioRecordListTooLargeError):
            return True
        exc = exc.__cause__  # type: ignore[assignment]
    return False


DUPLICATE_CHECK_SECONDS = 0.5
"""How stale the gate's check of the log's id may be when a batch would drop a duplicate."""

FOLD_YIELD_SECONDS = 0.05
"""Longest stretch of fold work between two turns of the event loop (consumer heartbeats,
the producer, timers and SIGTERM run in them). Measured cost: one clock read per record
and about 20 loop turns a second: 0.4 µs a record against about 200 µs of fold (0.2 %)."""


class LoopPause:
    """Awaited after each unit of work: lets the event loop run once ``every`` seconds
    of work have passed since it last did (``await`` alone need not suspend)."""

    __slots__ = ("_since", "every")

    def __init__(self, every: float = FOLD_YIELD_SECONDS) -> None:
        self.every = every
        self._since = time.monotonic()

    async def __call__(self) -> None:
        now = time.monotonic()
        if now - self._since >= self.every:
            await asyncio.sleep(0)
            self._since = time.monotonic()


@dataclass
class WorkerConfig:
    kafka: Connection
    topics: Topics = field(default_factory=Topics)
    partitions: int = DEFAULT_PARTITIONS
    app_id: str = "caretally"
    role: str = "all"  # or "gate" (ingress -> log) or "fold" (log -> billing, alerts, staff)
    state_dir: Path | None = DEFAULT_STATE_DIR  # None: no snapshots
    snapshot_interval: float = 30.0
    sweep_interval: float = 60.0
    sweep_clock: str = "wall"  # or "log": the newest event time folded
    batch_size: int = 2000  # records per getmany at most
    commit_interval: float = 1.0  # seconds between offset commits (also on rebalance, stop)
    web_port: int | None = 6066  # /healthz, /readyz, /metrics; None: no web server
    web_host: str = "127.0.0.1"
    # the rule books (every *.toml of the folder, replacing the shipped ones); None: the
    # shipped books. Configuration: give every worker of one app id the same books
    rules_dir: Path | None = None


class Partitions:
    """Slots of one agent's state per partition, loaded from snapshots on first use;
    ``restored`` is given each state loaded from a snapshot (what a snapshot does not
    keep: configuration, such as the fold's rule books)."""

    def __init__(
        self,
        store: SnapshotStore,
        factory: Callable[[], Any],
        restored: Callable[[Any], None] | None = None,
    ) -> None:
        self.store = store
        self.factory = factory
        self.restored = restored
        self.slots: dict[int, Slot] = {}

    def get(self, partition: int) -> Slot:
        slot = self.slots.get(partition)
        if slot is None:
            slot = self.store.load(partition)
            if slot is None:
                slot = Slot(self.factory())
            elif self.restored is not None:
                self.restored(slot.state)
            self.slots[partition] = slot
        return slot

    def save_dirty(self, only: int | None = None) -> int:
        """Snapshot the dirty partitions (or only partition ``only``, if dirty)."""
        n = 0
        for p, slot in list(self.slots.items()):
            if slot.dirty and (only is None or p == only):
                try:
                    self.store.save(p, slot)
                except CodecError as exc:  # a state type not in the codec: no snapshot
                    log.error("snapshot of %s-%d not taken: %s", self.store.name, p, exc)
                    continue
                n += 1
        return n

    def dirty(self) -> list[int]:
        return [p for p, slot in self.slots.items() if slot.dirty]

    def release(self, partitions: list[int]) -> None:
        """Snapshot, then forget, partitions this worker no longer holds."""
        for p in partitions:
            slot = self.slots.pop(p, None)
            if slot is not None and slot.dirty:
                try:
                    self.store.save(p, slot)
                except CodecError as exc:
                    log.error("snapshot of %s-%d not taken: %s", self.store.name, p, exc)

    def follow(self, log_id: str) -> list[int] | None:
        """Keep to the log ``log_id``: when it is another log than the state's (the topic
        was recreated, e.g. by a broker restart), drop the state and its snapshots and
        return the partitions that had state (to refold); None when it is the same log."""
        if not log_id or log_id == self.store.log_id:
            return None
        held = sorted(self.slots)
        self.slots.clear()
        self.store.drop_all()
        self.store.log_id = log_id
        return held


def faust_datadir(cfg: WorkerConfig) -> Path:
    """Faust's data directory (it keeps nothing there with memory tables, but creates it):
    in the state directory, one per role; a new temporary one without a state directory."""
    if cfg.state_dir is None:
        made = tempfile.mkdtemp(prefix="caretally-faust-")
        atexit.register(shutil.rmtree, made, ignore_errors=True)
        return Path(made)
    return cfg.state_dir / f"faust-{cfg.role}"


def fold_books(cfg: WorkerConfig) -> RuleCatalog:
    """The rule books of ``cfg`` (:class:`WorkerStartError` listing every problem)."""
    try:
        return load_books(cfg.rules_dir)
    except RuleBookError as exc:
        problems = "; ".join(str(p) for p in exc.problems)
        raise WorkerStartError(
            f"the rule books in {cfg.rules_dir} cannot be used: {problems}"
        ) from None


def build_app(cfg: WorkerConfig, log_ids: dict[str, str], ingress_partitions: int = 1) -> Any:
    """The Faust app; ``log_ids`` are the broker's topic ids (snapshot identity),
    ``ingress_partitions`` the ingress topic's partition count (the gate's org homes)."""
    t = cfg.topics
    catalog = fold_books(cfg)
    app = faust_app(
        cfg.kafka,
        cfg.app_id if cfg.role == "all" else f"{cfg.app_id}-{cfg.role}",
        WORKER_APP,
        datadir=faust_datadir(cfg),  # else Faust makes <app id>-data in the current folder
        store="memory://",
        processing_guarantee="at_least_once",
        table_standby_replicas=0,
        topic_partitions=cfg.partitions,
        topic_allow_declare=False,
        topic_disable_leader=True,
        web_enabled=cfg.web_port is not None,
        web_port=cfg.web_port or 6066,
        web_bind=cfg.web_host,
        web_in_thread=False,
        autodiscover=False,
        key_serializer="raw",
        value_serializer="raw",
    )
    # Faust runs the app, its producer, timers and web server; the hot topics are read
    # by GroupConsumer (getmany batches), not by Faust's per-message consumer
    app.producer_only = True
    names = {BILLING: t.billing, ALERTS: t.alerts, STAFF: t.staff, DEADLETTER: t.deadletter}
    metrics = WorkerMetrics()
    app.caretally_metrics = metrics  # type: ignore[attr-defined]

    gate = IngressGate(ingress_partitions)

    def new_fold() -> FoldPartition:
        return FoldPartition(Projector(catalog=catalog))

    def restored_fold(state: FoldPartition) -> None:
        # the codec leaves the catalog out (configuration); the snapshot's books digest
        # matched, so the months in it were evaluated with these books
        state.projector.catalog = catalog

    folds = Partitions(
        SnapshotStore(cfg.state_dir, "fold", log_ids[t.events], books_digest(catalog)),
        new_fold,
        restored_fold,
    )
    staffs = Partitions(SnapshotStore(cfg.state_dir, "staff", log_ids[t.staff]), StaffProjector)
    # A snapshot never holds state whose outputs are not yet acknowledged: the fold loop
    # (and the sweep, which writes fold state) hold these from changing state until what
    # they sent is delivered. The gate keeps no snapshot.
    fold_lock, staff_lock = asyncio.Lock(), asyncio.Lock()
    counts: Counter[str] = Counter()
    app.caretally_counts = counts  # type: ignore[attr-defined]
    fatal: list[str] = []  # why the worker stopped itself (run() exits FATAL_EXIT)
    app.caretally_fatal = fatal  # type: ignore[attr-defined]
    # partition assignments so far (either consumer's), and the one the fold's logs were
    # last checked after: the fold checks before its first batch after an assignment
    assignments = [0, 0]
    consumers: dict[str, GroupConsumer] = {}
    kafka_up = [False]

    def stop_fatally(message: str) -> None:
        """Log ``message`` as critical and stop the worker (SIGTERM to itself, so Faust
        shuts down in order); it then exits with ``FATAL_EXIT``."""
        if not fatal:
            fatal.append(message)
            log.critical("%s", message)
            os.kill(os.getpid(), signal.SIGTERM)

    async def describe(names: list[str]) -> dict[str, TopicShape] | None:
        """The topics' ids and partition counts; None when the broker could not tell."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(None, topic_shapes, cfg.kafka, names)
        except Exception as exc:  # the broker is away: the caller asks again later
            log.info("topics not described (%s)", type(exc).__name__)
            return None

    async def deliver(pending: list[Any]) -> None:
        if pending:
            await asyncio.gather(*pending)

    async def produce(
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]] | None = None,
        partition: int | None = None,
    ) -> Any:
        """Straight to the app's producer: Faust's Topic.send path (channels, sensors,
        callbacks) cost as much as the fold per record here and added nothing we use."""
        return await app.producer.send(topic, key, value, partition, None, headers or None)

    out_counters: dict[str, Any] = {}

    async def send(out: Output, pending: list[Any], source: Any = None) -> None:
        headers = list(out.headers)
        if out.topic == DEADLETTER:
            reason = (header(headers, "reason") or b"").decode(errors="replace")
            metrics.dead_letters.labels(reason_class(reason)).inc()
            if source is not None:
                headers = deadletter_headers(reason, source.topic, source.partition, source.offset)
        elif out.topic == ALERTS and out.kind:
            metrics.alerts.labels(out.kind).inc()
        pending.append(await produce(names[out.topic], out.key, out.value, headers))
        counts[f"out.{out.topic}"] += 1
        sent = out_counters.get(out.topic)
        if sent is None:  # a labelled child per topic, once (labels() costs a lookup)
            sent = out_counters[out.topic] = metrics.records_out.labels(names[out.topic])
        sent.inc()

    # -- the gate -----------------------------------------------------------------------

    gate_log = [""]  # the id of the log (events topic) the gate's index was built from
    gate_owned: set[int] = set()  # the ingress partitions the index was built for
    gate_check = LogCheck()

    async def events_shape() -> TopicShape:
        """The log's id and partition count, once the broker tells them: until then the
        gate holds its batch (deciding it against the index of another log loses events)."""
        warned = False
        while True:
            shape = ((await describe([t.events])) or {}).get(t.events)
            if shape is not None and shape.topic_id and shape.partitions:
                return shape
            if not warned:
                log.warning("ingress gate: %s not described yet; holding the batch", t.events)
                warned = True
            await asyncio.sleep(1.0)

    async def rebuild_index(shape: TopicShape, owned: set[int]) -> None:
        """The gate's index from the log ``shape`` (read to its current end), for the
        orgs of the ingress partitions ``owned`` (those this gate decides)."""
        problem = partition_mismatch(t, cfg.partitions, {t.events: shape.partitions})
        if problem is not None:  # reading partitions that do not exist would never end
            raise FatalStop(f"ingress gate: {problem}")
        fresh = IngressGate(ingress_partitions)
        n = 0
        everything = len(owned) >= ingress_partitions
        async for record in read_to_end(cfg.kafka, t.events, range(cfg.partitions)):
            digests = log_digests(record.headers)
            if digests is None:
                continue
            if (
                everything
                or home_partition(org_of_key(record.key or b""), ingress_partitions) in owned
            ):
                fresh.learn(*digests)
                n += 1
        gate.index = fresh.index
        gate_log[0] = shape.topic_id
        gate_owned.clear()
        gate_owned.update(owned)
        log.info(
            "ingress gate: index rebuilt from %d log records for %d partition(s)", n, len(owned)
        )

    async def gate_assigned(now: set[Any], gained: set[Any], lost: set[Any]) -> None:
        """A gate decides an org only with the index of every event of it in the log: on
        an assignment that brings partitions, rebuild it (another gate may have written
        them since this one last held them)."""
        assignments[0] += 1
        metrics.assigned.labels("gate").set(len(now))
        owned = {tp.partition for tp in now}
        if not gained and owned <= gate_owned:
            return
        try:
            await rebuild_index(await events_shape(), owned)
        except FatalStop as exc:
            stop_fatally(str(exc))
        gate_check.done(assignments[0])

    async def gate_index_current() -> None:
        """Before a batch is decided, when a check is due: if the log is another one than
        the index's (a recreated topic: a restarted memory broker, then ``caretally
        restore``), rebuild the index from it first; otherwise an event the new log lacks
        would be dropped as a duplicate when it is sent again."""
        if not gate_check.due(assignments[0]):
            return
        seen = assignments[0]
        shape = await events_shape()
        if shape.topic_id != gate_log[0]:
            log.warning("%s is a new log (a recreated topic): rebuilding the gate index", t.events)
            await rebuild_index(shape, set(gate_owned))
        gate_check.done(seen)

    topic_of = {Target.LOG: t.events, Target.DEADLETTER: t.deadletter, Target.INGRESS: t.ingress}

    async def submit(w: Write) -> asyncio.Future[Any]:
        """Hand one write to the producer; an error raised at once comes back as a failed
        future, so every write is judged the same way, one by one."""
        try:
            return await produce(topic_of[w.target], w.key, w.value, w.headers, w.partition)
        except Exception as exc:
            failed: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            failed.set_exception(exc)
            return failed

    async def deliver_writes(writes: list[GateWrite]) -> list[GateWrite]:
        """Send and await every write; returns those to try again. A write the producer
        refuses as too large is replaced by its ``too_large`` dead letter (and its event
        leaves the index: it is not in the log)."""
        futures = [await submit(gw.write) for gw in writes]
        results = await asyncio.gather(*futures, return_exceptions=True)
        again: list[GateWrite] = []
        replaced: set[int] = set()
        for gw, result in zip(writes, results, strict=True):
            if not isinstance(result, BaseException):
                metrics.records_out.labels(topic_of[gw.write.target]).inc()
                continue
            if not too_large_error(result):
                again.append(gw)
            elif id(gw.source) not in replaced:  # one dead letter for a practice-wide event
                replaced.add(id(gw.source))
                if gw.write.target is Target.LOG:
                    gate.forget(gw.idem)
                    counts["ingress.new"] -= 1
                    counts["ingress.rejected"] += 1
                dead = deadletter_write(TOO_LARGE, gw.key, gw.value, gw.source)
                again.append(GateWrite(dead, gw.source, gw.key, gw.value, 0))
        return again

    async def write_batch(writes: list[GateWrite]) -> bool:
        """True once every write is delivered; False if some still fail after the retries."""
        delay = 0.2
        for attempt in range(1, GATE_SEND_ATTEMPTS + 1):
            writes = await deliver_writes(writes)
            if not writes:
                return True
            if attempt < GATE_SEND_ATTEMPTS:
                log.warning("ingress gate: %d write(s) failed; retrying", len(writes))
                await asyncio.sleep(delay)
                delay = min(2 * delay, 5.0)
        return False

    async def index_changed_before_dropping() -> bool:
        """A duplicate is dropped for good, so before a batch drops one the index is held
        to the log's id (at most every ``DUPLICATE_CHECK_SECONDS``): a recreated log seen
        between two regular checks would otherwise lose a re-sent event. True when the
        index was rebuilt."""
        if time.monotonic() - gate_check.at < DUPLICATE_CHECK_SECONDS:
            return False
        shape = await events_shape()
        changed = shape.topic_id != gate_log[0]
        if changed:
            log.warning("%s is a new log (a recreated topic): rebuilding the gate index", t.events)
            await rebuild_index(shape, set(gate_owned))
        gate_check.done(gate_check.assignments)
        return changed

    def route_batch(batch: list[Any]) -> list[tuple[Any, Source, Routed]]:
        out = []
        for msg in batch:
            source = Source(msg.topic, msg.partition, msg.offset)
            out.append((msg, source, gate.route(msg.value, msg.key, source, cfg.partitions)))
        return out

    async def gate_batch(batch: list[Any]) -> bool:
        routed = route_batch(batch)
        drops = any(r.decision.verdict is Verdict.DUPLICATE for _, _, r in routed)
        if drops and await index_changed_before_dropping():
            routed = route_batch(batch)  # against the index of the new log
        writes: list[GateWrite] = []
        for msg, source, r in routed:
            verdict = r.decision.verdict
            counts[f"ingress.{verdict.value}"] += 1
            metrics.gate.labels(verdict.value).inc()
            if verdict is Verdict.REJECTED:
                metrics.dead_letters.labels(reason_class(r.decision.reason or "")).inc()
            value, idem = msg.value or b"", r.decision.idem
            writes.extend(GateWrite(w, source, msg.key, value, idem) for w in r.writes)
        return await write_batch(writes)

    async def undecodable(bad: UndecodableBatch) -> None:
        """A record batch no client can read: its raw bytes to the dead-letter topic."""
        source = Source(bad.topic, bad.partition, bad.base_offset)
        metrics.dead_letters.labels("undecodable").inc()
        w = deadletter_write(bad.reason, None, bad.raw, source)
        await deliver([await produce(t.deadletter, w.key, w.value, w.headers)])

    async def gate_loop(consumer: GroupConsumer) -> None:
        async for batch in consumer.batches():
            started = time.monotonic()
            # under consumer.turn: no rebalance until the next batch
            metrics.records_in.labels(t.ingress).inc(len(batch))
            stop: str | None = None
            try:
                await gate_index_current()
                if not await gate_batch(batch):
                    stop = CANNOT_WRITE
            except FatalStop as exc:
                stop = str(exc)
            if stop is not None:  # not marked done: a restart decides it again
                stop_fatally(stop)
                await asyncio.Event().wait()  # until the stop cancels this loop
            consumer.done(batch)
            metrics.batch_seconds.labels("gate").observe(time.monotonic() - started)
            metrics.batch_records.labels("gate").observe(len(batch))

    # -- the fold and the staff projection ------------------------------------------------

    pause = LoopPause()

    async def fold_record(slot: Slot, record: Any, pending: list[Any]) -> None:
        for out in slot.state.apply(record.value or b"", log_digests(record.headers)):
            await send(out, pending, record)
        slot.next_offset = record.offset + 1
        slot.dirty = True
        await pause()  # a long batch or gap must not starve heartbeats and SIGTERM

    async def catch_up(
        slot: Slot,
        topic_name: str,
        partition: int,
        offset: int,
        fold: Callable[..., Any],
        pending: list[Any],
    ) -> None:
        log.info(
            "partition %s/%d: folding the gap %d..%d from the log",
            topic_name,
            partition,
            slot.next_offset,
            offset,
        )
        async for rec in read_range(cfg.kafka, topic_name, partition, slot.next_offset, offset):
            await fold(slot, rec, pending)

    async def staff_record(slot: Slot, record: Any, pending: list[Any]) -> None:
        try:
            item = staff_item(record.value)
        except (KeyError, TypeError, ValueError) as exc:
            await send(
                Output(
                    DEADLETTER,
                    record.key,
                    record.value,
                    (("reason", f"bad staff record: {exc}".encode()),),
                ),
                pending,
                record,
            )
        else:
            for alert in slot.state.apply(item):
                await send(alert_output(alert), pending)
        slot.next_offset = record.offset + 1
        slot.dirty = True

    async def fold_one(
        parts: Partitions, fold: Callable[..., Any], msg: Any, pending: list[Any]
    ) -> None:
        slot = parts.get(msg.partition)
        if msg.offset < slot.next_offset:
            return  # folded already (redelivery after a restart or a rebalance)
        if msg.offset > slot.next_offset:
            await catch_up(slot, msg.topic, msg.partition, msg.offset, fold, pending)
        await fold(slot, msg, pending)

    async def fold_loop(consumer: GroupConsumer) -> None:
        async for batch in consumer.batches():
            started = time.monotonic()
            # under consumer.turn: no rebalance until the next batch
            await logs_checked()  # a new log after an assignment: refolded first
            pending: list[Any] = []
            events = 0
            async with fold_lock, staff_lock:
                for msg in batch:
                    if msg.topic == t.events:
                        await fold_one(folds, fold_record, msg, pending)
                        events += 1
                    else:
                        await fold_one(staffs, staff_record, msg, pending)
                folded = time.monotonic()
                await deliver(pending)
            counts["fold.records"] += events
            metrics.fold_seconds.observe(folded - started)
            metrics.records_in.labels(t.events).inc(events)
            metrics.records_in.labels(t.staff).inc(len(batch) - events)
            consumer.done(batch)
            metrics.batch_seconds.labels("fold").observe(time.monotonic() - started)
            metrics.batch_records.labels("fold").observe(len(batch))

    async def fold_assigned(now: set[Any], gained: set[Any], lost: set[Any]) -> None:
        """A partition given to another worker leaves this one: snapshotted, then dropped
        (its sweep and memory are the new owner's). One gained is loaded on first use."""
        assignments[0] += 1
        metrics.assigned.labels("fold").set(len(now))
        for parts, lock, name in ((folds, fold_lock, t.events), (staffs, staff_lock, t.staff)):
            gone = [tp.partition for tp in lost if tp.topic == name]
            if gone:
                async with lock:
                    parts.release(gone)

    async def daily_sweep() -> None:
        async with fold_lock:
            parts = [s.state for s in folds.slots.values()]
            now = sweep_clock(parts, cfg.sweep_clock, datetime.now(UTC))
            if now is None:
                return
            pending: list[Any] = []
            for slot in folds.slots.values():
                outs = slot.state.sweep(now)
                slot.dirty = slot.dirty or bool(outs)
                for out in outs:
                    await send(out, pending)
            await deliver(pending)

    async def refold(parts: Partitions, topic_name: str, partitions: list[int], fold: Any) -> None:
        """Fold ``partitions`` of a new log from its start to its current end, at once: the
        group may already have moved past records it delivered before the change was seen."""
        if not partitions:
            return
        pending: list[Any] = []
        async for rec in read_to_end(cfg.kafka, topic_name, partitions):
            slot = parts.get(rec.partition)
            if rec.offset >= slot.next_offset:
                await fold(slot, rec, pending)
            if len(pending) >= cfg.batch_size:
                await deliver(pending)
                pending.clear()
        await deliver(pending)

    async def follow_logs() -> bool:
        """Refold from scratch when a log is another one than the state's (the topic was
        recreated: a restarted memory broker, then ``caretally restore``); otherwise every
        record of the new log at an offset the state had passed would be skipped. False
        when the broker could not tell."""
        shapes = await describe([t.events, t.staff])
        if shapes is None:  # the broker is away: checked again at the next chance
            return False
        ids = {name: shape.topic_id for name, shape in shapes.items()}
        for parts, lock, name, fold in (
            (folds, fold_lock, t.events, fold_record),
            (staffs, staff_lock, t.staff, staff_record),
        ):
            shape = shapes.get(name)
            if shape and shape.topic_id and shape.topic_id != parts.store.log_id:
                problem = partition_mismatch(t, cfg.partitions, {name: shape.partitions})
                if problem is not None and shape.partitions:  # its refold would never end
                    raise FatalStop(f"fold: {name} is a new log: {problem}")
            async with lock:
                dropped = parts.follow(ids.get(name, ""))
                if dropped is not None:
                    log.warning("%s is a new log (a recreated topic): refolding it", name)
                    await refold(parts, name, dropped, fold)
        return all(ids.get(name) for name in (t.events, t.staff))  # a missing topic: again

    async def logs_checked() -> None:
        if assignments[1] != assignments[0]:
            seen = assignments[0]
            try:
                checked = await follow_logs()
            except FatalStop as exc:
                stop_fatally(str(exc))
                await asyncio.Event().wait()  # until the stop cancels the loop
            if checked:
                assignments[1] = seen

    last_check = [time.monotonic()]

    async def snapshot() -> None:
        if time.monotonic() - last_check[0] >= LOG_CHECK_INTERVAL:  # besides assignments
            last_check[0] = time.monotonic()
            try:
                await follow_logs()
            except FatalStop as exc:
                stop_fatally(str(exc))
                return
        # one partition per hold of the lock: encoding every partition at once held the
        # fold for seconds (the p99 alert latency at 1,000 events/s was that stall)
        n = 0
        for parts, lock in ((folds, fold_lock), (staffs, staff_lock)):
            for p in parts.dirty():
                async with lock:
                    n += parts.save_dirty(only=p)
                await asyncio.sleep(0)
        if n:
            log.debug("snapshotted %d partition(s)", n)

    # -- running the consumers ------------------------------------------------------------

    async def topic_ids(topics: list[str]) -> dict[str, str] | None:
        shapes = await describe(topics)
        return None if shapes is None else {n: sh.topic_id for n, sh in shapes.items()}

    def member(role: str, topics: list[str], on_assigned: Any) -> GroupConsumer:
        return GroupConsumer(
            cfg.kafka,
            f"{cfg.app_id}-{role}",
            topics,
            max_records=cfg.batch_size,
            on_assigned=on_assigned,
            on_undecodable=undecodable,
            commit_interval=cfg.commit_interval,
            topic_ids=topic_ids,
        )

    def runner(role: str, topics: list[str], on_assigned: Any, loop: Any) -> Callable[[], Any]:
        async def run_member() -> None:
            consumer = member(role, topics, on_assigned)
            consumers[role] = consumer
            try:
                await consumer.start()
                await loop(consumer)
            finally:
                await consumer.stop()

        run_member.__name__ = f"{role}_loop"
        return run_member

    if cfg.role in ("all", "gate"):
        app.task(runner("gate", [t.ingress], gate_assigned, gate_loop))

    async def announce_books() -> None:
        """Which books the fold evaluates with, once logging is set up: a warning when
        they are not the shipped ones (the billing differs from the shipped rules)."""
        level = logging.INFO if cfg.rules_dir is None else logging.WARNING
        log.log(level, "fold: %s", books_summary(catalog, cfg.rules_dir))

    if cfg.role in ("all", "fold"):
        app.task(announce_books)
        app.task(runner("fold", [t.events, t.staff], fold_assigned, fold_loop))
        app.timer(cfg.sweep_interval)(daily_sweep)
        app.timer(cfg.snapshot_interval)(snapshot)

    # -- health and metrics ---------------------------------------------------------------

    async def probe_kafka() -> None:
        """Whether the broker answers (a metadata request, 2 s at most)."""
        consumer = next((c.consumer for c in consumers.values()), None)
        if consumer is None:
            return
        kafka_up[0] = await broker_answers(consumer)
        metrics.kafka_up.set(1 if kafka_up[0] else 0)

    app.timer(2.0)(probe_kafka)

    def lag() -> list[tuple[str, int, int]]:
        return [
            (tp.topic, tp.partition, n)
            for c in list(consumers.values())
            for tp, n in sorted(c.lag().items())
        ]

    metrics.watch_lag(lag)

    def health() -> dict[str, Any]:
        roles = ["gate", "fold"] if cfg.role == "all" else [cfg.role]
        assigned = {r: len(consumers[r].assigned) if r in consumers else 0 for r in roles}
        ready = kafka_up[0] and all(assigned.values()) and not fatal
        metrics.ready.set(1 if ready else 0)
        return {
            "live": True,
            "ready": ready,
            "kafka": "up" if kafka_up[0] else "down",
            "role": cfg.role,
            "assigned_partitions": assigned,
        }

    if cfg.web_port is not None:

        @app.page("/healthz")
        async def healthz(web: Any, request: Any) -> Any:
            """Liveness: 200 while the process runs; the body says whether it is ready."""
            return healthz_response(health())

        @app.page("/readyz")
        async def readyz(web: Any, request: Any) -> Any:
            """Readiness: 200 only when connected to Kafka with partitions assigned."""
            return readyz_response(health())

        @app.page("/metrics")
        async def prometheus(web: Any, request: Any) -> Any:
            health()  # the ready gauge as of this scrape
            return metrics_response(metrics.registry)

    return app


def checked_topics(cfg: WorkerConfig) -> tuple[dict[str, str], int]:
    """The ids of the log and staff topics and the ingress topic's partition count, once
    the partition counts of the log and staff topics are found to fit ``cfg`` (else
    :class:`WorkerStartError`): a worker that reads partitions that do not exist waits
    for them forever."""
    t = cfg.topics
    shapes = topic_shapes(cfg.kafka, [t.ingress, t.events, t.staff])
    counts = {name: shape.partitions for name, shape in shapes.items()}
    problem = partition_mismatch(t, cfg.partitions, counts)
    if problem is not None:
        raise WorkerStartError(problem)
    ids = {name: shapes[name].topic_id for name in (t.events, t.staff)}
    return ids, max(1, counts.get(t.ingress) or 1)


def run(cfg: WorkerConfig, loglevel: str = "warning", log_format: str = "text") -> None:
    """Create the topics and check them (:class:`WorkerStartError`), then run the worker
    until SIGINT/SIGTERM (exit 0) or until it stops itself (exit ``FATAL_EXIT``)."""
    import faust

    from streams.kafka.topics import ensure_topics

    ensure_topics(cfg.kafka, cfg.topics, cfg.partitions)
    ids, ingress_partitions = checked_topics(cfg)
    app = build_app(cfg, ids, ingress_partitions)
    tune_for_large_heap()

    class Worker(faust.Worker):  # type: ignore[misc]
        def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
            """After Faust/mode set up logging: ``--log-format`` and the repeat filter
            (a broker that is away must not print an error line per retry)."""
            super().on_setup_root_logger(logger, level)
            for handler in logging.getLogger().handlers:
                if log_format == "json":
                    handler.setFormatter(formatter("json"))
            add_repeat_filter(logging.getLogger())

    worker = Worker(app, loglevel=loglevel, quiet=True)
    # Faust's startup spinner sets the root logger to DEBUG, so every aiokafka and faust
    # debug call built a record that was then dropped (4 % of the worker's time)
    worker.spinner = None
    try:
        worker.execute_from_commandline()
    except SystemExit:
        if app.caretally_fatal:  # its critical line is in the log
            raise SystemExit(FATAL_EXIT) from None
        raise

"""``caretally worker``: the Faust app that runs the core over Kafka.

Agents (one process, ``concurrency=1`` each: KAFKA-NOTES.md §0.4):

* **gate** — ``care.ingress.v1`` → the log (``care.events.v1``) or the dead-letter topic
  (``streams.ingress_gate``). Exact duplicates are counted and dropped.
* **fold** — the log → per-partition :class:`~streams.fold_partition.FoldPartition`
  state; changed patient-month views to ``care.billing.v1``, alerts to
  ``care.alerts.v1``, activity intervals to ``care.staff.v1`` keyed by staff.
* **staff** — ``care.staff.v1`` → ``staff_overlap`` alerts (``projections.staff``).
* timers: the daily ``threshold_approaching`` sweep and the snapshots.

``role`` runs all of it in one process (``all``), or the gate alone (``gate``) or the
rest (``fold``), each as its own consumer group (``<app_id>-gate``, ``<app_id>-fold``),
so the two halves can use two cores. Run at most one gate: it is the log's only writer
and dedupes against the index it rebuilt from the log at start.

State is not kept in Faust changelog tables: on Tansu their recovery loses updates
(KAFKA-NOTES.md §0.2), and ``stream.take`` cannot write them (§0.7). Each partition's
state lives in memory and is snapshotted with the log offset it reflects; a record
whose offset is past the state's next offset first folds the gap straight from the
log, one at or below it is skipped (already folded). So a restart, a rebalance or a
lost snapshot refolds from the log and never loses or double-counts a minute.
Outputs of a batch are delivered (acks=all) before its offsets can be committed, and
a snapshot is taken only between batches, so at-least-once holds end to end.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from projections.staff import StaffInterval, StaffProjector, StaffVoid
from streams.fold_partition import (
    ALERTS,
    BILLING,
    DEADLETTER,
    STAFF,
    FoldPartition,
    Output,
    alert_output,
    sweep_clock,
)
from streams.ingress_gate import IngressGate, Verdict, from_bytes, log_headers
from streams.log_reader import read_range, read_to_end
from streams.records import deadletter_headers, event_key, header
from streams.snapshots import Slot, SnapshotStore
from streams.topics import DEFAULT_PARTITIONS, Topics

log = logging.getLogger("caretally.worker")


@dataclass
class WorkerConfig:
    bootstrap: str
    topics: Topics = field(default_factory=Topics)
    partitions: int = DEFAULT_PARTITIONS
    app_id: str = "caretally"
    role: str = "all"  # or "gate" (ingress -> log) or "fold" (log -> billing, alerts, staff)
    state_dir: Path | None = Path(".caretally/state")
    snapshot_interval: float = 30.0
    sweep_interval: float = 60.0
    sweep_clock: str = "wall"  # or "log": the newest event time folded
    batch_size: int = 2000
    batch_within: float = 0.005


class Partitions:
    """Slots of one agent's state per partition, loaded from snapshots on first use."""

    def __init__(self, store: SnapshotStore, factory: Callable[[], Any]) -> None:
        self.store = store
        self.factory = factory
        self.slots: dict[int, Slot] = {}

    def get(self, partition: int) -> Slot:
        slot = self.slots.get(partition)
        if slot is None:
            slot = self.store.load(partition) or Slot(self.factory())
            self.slots[partition] = slot
        return slot

    def save_dirty(self) -> int:
        n = 0
        for p, slot in self.slots.items():
            if slot.dirty:
                self.store.save(p, slot)
                n += 1
        return n


def staff_item(value: bytes) -> StaffInterval | StaffVoid:
    d = orjson.loads(value)
    if d["voided"]:
        return StaffVoid(
            d["org_id"], d["staff_id"], d["patient_id"], d["activity_id"], d["event_id"]
        )
    return StaffInterval(
        d["org_id"],
        d["staff_id"],
        d["patient_id"],
        d["activity_id"],
        d["event_id"],
        d["start"],
        d["end"],
        d["timezone"],
    )


def build_app(cfg: WorkerConfig, log_ids: dict[str, str]) -> Any:
    """The Faust app; ``log_ids`` are the broker's topic ids (snapshot identity)."""
    from streams.faust_transport import App

    t = cfg.topics
    app = App(
        cfg.app_id if cfg.role == "all" else f"{cfg.app_id}-{cfg.role}",
        broker=f"kafka://{cfg.bootstrap}",
        store="memory://",
        processing_guarantee="at_least_once",
        broker_session_timeout=6,
        broker_heartbeat_interval=1,
        table_standby_replicas=0,
        topic_partitions=cfg.partitions,
        topic_allow_declare=False,
        topic_disable_leader=True,
        web_enabled=False,
        autodiscover=False,
        consumer_auto_offset_reset="earliest",
        producer_linger=0.002,
        producer_max_batch_size=256 * 1024,
        stream_buffer_maxsize=32768,
        broker_max_poll_records=4000,
        broker_commit_interval=1.0,
        key_serializer="raw",
        value_serializer="raw",
    )

    def topic(name: str, partitions: int = cfg.partitions) -> Any:
        return app.topic(
            name,
            key_type=bytes,
            value_type=bytes,
            partitions=partitions,
            key_serializer="raw",
            value_serializer="raw",
        )

    ingress, events, staff = topic(t.ingress, 1), topic(t.events), topic(t.staff)
    names = {BILLING: t.billing, ALERTS: t.alerts, STAFF: t.staff, DEADLETTER: t.deadletter}

    gate = IngressGate()
    gate_ready = asyncio.Event()
    folds = Partitions(SnapshotStore(cfg.state_dir, "fold", log_ids[t.events]), FoldPartition)
    staffs = Partitions(SnapshotStore(cfg.state_dir, "staff", log_ids[t.staff]), StaffProjector)
    # A snapshot never holds state whose outputs are not yet acknowledged: the fold agent
    # (and the sweep, which writes fold state) and the staff agent each hold their lock
    # from changing state until what they sent is delivered. The gate keeps no snapshot.
    fold_lock, staff_lock = asyncio.Lock(), asyncio.Lock()
    counts: Counter[str] = Counter()
    app.caretally_counts = counts  # type: ignore[attr-defined]

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

    async def send(out: Output, pending: list[Any], source: Any = None) -> None:
        headers = list(out.headers)
        if out.topic == DEADLETTER and source is not None:
            reason = (header(headers, "reason") or b"").decode()
            headers = deadletter_headers(reason, source.topic, source.partition, source.offset)
        pending.append(await produce(names[out.topic], out.key, out.value, headers))
        counts[f"out.{out.topic}"] += 1

    async def rebuild_gate() -> None:
        n = 0
        async for record in read_to_end(cfg.bootstrap, t.events, range(cfg.partitions)):
            idem, body = header(record.headers, "idem"), header(record.headers, "body")
            if idem and body:
                gate.learn(from_bytes(idem), from_bytes(body))
                n += 1
        log.info("ingress gate rebuilt from %d log records", n)
        gate_ready.set()

    async def gate_agent(stream: Any) -> None:
        await gate_ready.wait()
        async for batch in stream.take_events(cfg.batch_size, within=cfg.batch_within):
            pending: list[Any] = []
            for ev in batch:
                msg = ev.message
                d = gate.decide(msg.value)
                counts[f"ingress.{d.verdict.value}"] += 1
                if d.verdict is Verdict.REJECTED:
                    reason = d.reason or "rejected"
                    hdrs = deadletter_headers(reason, msg.topic, msg.partition, msg.offset)
                    pending.append(await produce(t.deadletter, msg.key, msg.value or b"", hdrs))
                    continue
                if d.verdict is Verdict.DUPLICATE:
                    continue
                assert d.event is not None
                key = event_key(d.event.org_id, d.event.patient_id)
                hdrs = log_headers(d.idem, d.body)
                targets = range(cfg.partitions) if d.practice_wide else (None,)
                for p in targets:
                    pending.append(await produce(t.events, key, d.raw, hdrs, p))
            await deliver(pending)  # before take_events acks, and so commits, the batch

    async def fold_record(slot: Slot, record: Any, pending: list[Any]) -> None:
        for out in slot.state.apply(record.value or b""):
            await send(out, pending, record)
        slot.next_offset = record.offset + 1
        slot.dirty = True

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
        async for rec in read_range(cfg.bootstrap, topic_name, partition, slot.next_offset, offset):
            await fold(slot, rec, pending)

    async def fold_agent(stream: Any) -> None:
        async for batch in stream.take_events(cfg.batch_size, within=cfg.batch_within):
            pending: list[Any] = []
            async with fold_lock:
                for ev in batch:
                    msg = ev.message
                    slot = folds.get(msg.partition)
                    if msg.offset < slot.next_offset:
                        continue  # folded already (redelivery after a restart)
                    if msg.offset > slot.next_offset:
                        await catch_up(
                            slot, t.events, msg.partition, msg.offset, fold_record, pending
                        )
                    await fold_record(slot, msg, pending)
                    counts["fold.records"] += 1
                await deliver(pending)

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

    async def staff_agent(stream: Any) -> None:
        async for batch in stream.take_events(cfg.batch_size, within=cfg.batch_within):
            pending: list[Any] = []
            async with staff_lock:
                for ev in batch:
                    msg = ev.message
                    slot = staffs.get(msg.partition)
                    if msg.offset < slot.next_offset:
                        continue
                    if msg.offset > slot.next_offset:
                        await catch_up(
                            slot, t.staff, msg.partition, msg.offset, staff_record, pending
                        )
                    await staff_record(slot, msg, pending)
                await deliver(pending)

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

    async def snapshot() -> None:
        async with fold_lock:
            n = folds.save_dirty()
        async with staff_lock:
            n += staffs.save_dirty()
        if n:
            log.debug("snapshotted %d partition(s)", n)

    if cfg.role in ("all", "gate"):
        app.task(rebuild_gate)
        app.agent(ingress, concurrency=1)(gate_agent)
    if cfg.role in ("all", "fold"):
        app.agent(events, concurrency=1)(fold_agent)
        app.agent(staff, concurrency=1)(staff_agent)
        app.timer(cfg.sweep_interval)(daily_sweep)
        app.timer(cfg.snapshot_interval)(snapshot)
    return app


def run(cfg: WorkerConfig, loglevel: str = "warning") -> None:
    """Create the topics, then run the worker until SIGINT/SIGTERM."""
    import faust

    from streams.topics import ensure_topics, topic_ids

    ensure_topics(cfg.bootstrap, cfg.topics, cfg.partitions)
    ids = topic_ids(cfg.bootstrap, [cfg.topics.events, cfg.topics.staff])
    app = build_app(cfg, ids)
    worker = faust.Worker(app, loglevel=loglevel, quiet=True)
    # Faust's startup spinner sets the root logger to DEBUG, so every aiokafka and faust
    # debug call built a record that was then dropped (4 % of the worker's time)
    worker.spinner = None
    worker.execute_from_commandline()

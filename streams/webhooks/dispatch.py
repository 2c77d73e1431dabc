"""``caretally webhooks deliver``: a consumer group on ``care.alerts.v1`` that POSTs each
alert to the webhooks of its org (docs/webhooks.md).

At least once: a batch's offsets are committed only after every alert of it was delivered
to, or parked for, each of its webhooks (a parked record is acknowledged by the broker
first). A crash before that means the batch is read and delivered again; receivers dedupe
on ``Idempotency-Key`` (the alert id). Stopped mid-batch (SIGINT/SIGTERM), the deliveries
in flight are abandoned and, per partition, the alerts up to the first unfinished one
are committed.

A batch always ends within ``batch_deadline_s`` (what is pending then is parked), well
under the group's ``max_poll_interval_ms`` (``streams.kafka.clients.WORKER_CONSUMER``):
a batch that outlived it could not be committed and would be read and sent for ever.
Each webhook's :class:`~streams.webhooks.circuit.Circuit` outlives the batches.

A group with no committed offset for a partition starts at its end (``from_beginning``:
at its start), and commits that start at once, so a restart before the first batch
resumes there, not at a later end.

With ``web_port``, ``/healthz``, ``/readyz`` and ``/metrics`` are served
(:mod:`streams.observe.probes`, :mod:`streams.webhooks.metrics`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from pydantic import ValidationError

from streams.kafka.clients import WORKER_PRODUCER, Connection, aio_producer
from streams.kafka.group_consumer import GroupConsumer, Partitions, UndecodableBatch
from streams.kafka.records import deadletter_headers
from streams.kafka.topics import Topics
from streams.observe.probes import ProbeServer, broker_answers
from streams.webhooks import parked
from streams.webhooks.alert_head import AlertHead, bad_alert_reason, read_head
from streams.webhooks.circuit import Circuit, State
from streams.webhooks.fanout import Job, deliver_all
from streams.webhooks.metrics import DeliverMetrics
from streams.webhooks.registry import Registry, WebhookError
from streams.webhooks.sender import Deadline, Outcome, RetryPolicy, client_session, now_iso

log = logging.getLogger("caretally.webhooks")

CLIENT_ID = "caretally-webhooks"
COOLDOWN_S = 60.0
BATCH_DEADLINE_S = 120.0
KAFKA_PROBE_S = 2.0


@dataclass(frozen=True)
class DeliverConfig:
    kafka: Connection
    topics: Topics
    registry_path: Path
    policy: RetryPolicy
    group_id: str
    max_records: int = 100
    cooldown_s: float = COOLDOWN_S
    batch_deadline_s: float = BATCH_DEADLINE_S
    from_beginning: bool = False
    web_port: int | None = None  # /healthz, /readyz, /metrics; None: no web server
    web_host: str = "127.0.0.1"


class Dispatcher:
    """The delivery loop (see the module docstring); ``run`` until ``stop`` is set."""

    def __init__(self, cfg: DeliverConfig) -> None:
        self.cfg = cfg
        self.registry = Registry(cfg.registry_path)  # WebhookError without a file
        self.circuit = Circuit(cfg.cooldown_s)
        self.producer = aio_producer(cfg.kafka, WORKER_PRODUCER, client_id=CLIENT_ID)
        self.consumer = GroupConsumer(
            cfg.kafka,
            cfg.group_id,
            [cfg.topics.alerts],
            max_records=cfg.max_records,
            on_assigned=self._assigned,
            on_undecodable=self._undecodable,
            client_id=CLIENT_ID,
        )
        self.session = client_session()
        self.metrics = DeliverMetrics()
        self.metrics.watch_circuits(self._open_circuits)
        self.kafka_up = False
        self.web: ProbeServer | None = None
        if cfg.web_port is not None:
            self.web = ProbeServer(self.metrics.registry, self.health, cfg.web_host, cfg.web_port)

    def health(self) -> dict[str, Any]:
        """Ready: the broker answered the last probe and partitions are assigned."""
        assigned = len(self.consumer.assigned)
        ready = self.kafka_up and assigned > 0
        self.metrics.ready.set(1 if ready else 0)
        return {
            "live": True,
            "ready": ready,
            "kafka": "up" if self.kafka_up else "down",
            "assigned_partitions": assigned,
        }

    def _open_circuits(self) -> int:
        return sum(
            1 for h in self.registry.hooks if self.circuit.state(h.webhook_id) is not State.CLOSED
        )

    async def _probe_kafka(self) -> None:
        while True:
            self.kafka_up = await broker_answers(self.consumer.consumer)
            self.metrics.kafka_up.set(1 if self.kafka_up else 0)
            await asyncio.sleep(KAFKA_PROBE_S)

    async def run(self, stop: asyncio.Event) -> None:
        if self.web is None:
            await self._run(stop)
            return
        await self.web.start()  # first: /healthz answers while Kafka is connected
        try:
            await self._run(stop)
        finally:
            await self.web.stop()

    async def _run(self, stop: asyncio.Event) -> None:
        cfg = self.cfg
        probing: asyncio.Task[None] | None = None
        await self.producer.start()
        try:
            await self.consumer.start()
            probing = asyncio.create_task(self._probe_kafka())
            log.info(
                "delivering %s as group %s to %d webhook(s) of %s",
                cfg.topics.alerts,
                cfg.group_id,
                len(self.registry.hooks),
                cfg.registry_path,
            )
            while not stop.is_set():
                generation = self.consumer.assignments
                batch = await self.consumer.next_batch(timeout=0.2)
                if not batch:
                    await self.consumer.commit_due()
                    continue
                async with self.consumer.turn:
                    if self.consumer.assignments != generation:
                        self.consumer.rewind(batch)  # a rebalance came between
                        continue
                    finished = await self.handle(batch, stop)
                    self.consumer.done(finished)
                    await self.consumer.commit()
                    self.metrics.batches.inc()
        finally:
            if probing is not None:
                probing.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await probing
            await self.consumer.stop()
            await self.session.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.producer.stop(), 5)

    async def handle(self, batch: list[Any], stop: asyncio.Event) -> list[Any]:
        """Deliver a batch; returns the records that are finished, per partition those
        before the first unfinished one (all of them unless ``stop`` came first)."""
        self._refresh()
        deadline = Deadline.after(self.cfg.batch_deadline_s)
        left: dict[int, int] = {}
        alerts: dict[int, AlertHead] = {}
        jobs: list[Job] = []
        for i, record in enumerate(batch):
            alert = await self._alert(record)
            targets = [] if alert is None else self.registry.targets(alert.org_id, alert.kind)
            left[i] = len(targets)
            if alert is None or not targets:
                continue
            alerts[i] = alert
            body = bytes(record.value)  # the exact bytes on the topic, whatever fields
            jobs += [Job(i, hook, alert.alert_id, alert.org_id, body) for hook in targets]

        async def on_done(job: Job, outcome: Outcome) -> None:
            i = job.tag
            assert isinstance(i, int)
            if not outcome.delivered:
                await self._park(job, outcome, alerts[i], batch[i])
            self.metrics.deliveries.labels("delivered" if outcome.delivered else "parked").inc()
            left[i] -= 1

        if jobs:
            work = asyncio.ensure_future(
                deliver_all(
                    self.session,
                    jobs,
                    self.cfg.policy,
                    on_done,
                    self.circuit,
                    deadline,
                    self.metrics,
                )
            )
            stopping = asyncio.ensure_future(stop.wait())
            await asyncio.wait({work, stopping}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if not work.done():
                work.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await work
                log.info("stopping: deliveries in flight abandoned (read again at restart)")
            else:
                work.result()  # a park that failed stops the process, nothing committed
        finished, blocked = [], set()
        for i, record in enumerate(batch):
            if left[i] > 0:
                blocked.add((record.topic, record.partition))
            elif (record.topic, record.partition) not in blocked:
                finished.append(record)
        return finished

    async def _alert(self, record: Any) -> AlertHead | None:
        if record.value is None:
            return None
        try:
            return read_head(record.value)
        except ValidationError as exc:
            reason = bad_alert_reason(exc)
            log.error(
                "%s/%d@%d: %s: dead-lettered", record.topic, record.partition, record.offset, reason
            )
            headers = deadletter_headers(reason, record.topic, record.partition, record.offset)
            await self.producer.send_and_wait(
                self.cfg.topics.deadletter, key=record.key, value=record.value, headers=headers
            )
            self.metrics.deliveries.labels("dead_lettered").inc()
            return None

    async def _park(self, job: Job, outcome: Outcome, alert: AlertHead, record: Any) -> None:
        item = parked.Parked(
            parked_id=parked.new_parked_id(),
            webhook_id=job.hook.webhook_id,
            org_id=alert.org_id,
            alert_id=alert.alert_id,
            kind=alert.kind,
            alert=orjson.loads(job.body),
            attempts=outcome.attempts,
            last_status=outcome.status,
            last_error=outcome.error,
            first_attempt_at=outcome.first_attempt_at,
            last_attempt_at=outcome.last_attempt_at,
            parked_at=now_iso(),
            source={"topic": record.topic, "partition": record.partition, "offset": record.offset},
        )
        key, value, headers = parked.record(item)
        await self.producer.send_and_wait(
            self.cfg.topics.webhooks_parked, key=key, value=value, headers=headers
        )
        log.warning(
            "parked alert %s of org %s for webhook %s after %d attempt(s): %s",
            alert.alert_id,
            alert.org_id,
            job.hook.webhook_id,
            outcome.attempts,
            outcome.error,
        )

    def _refresh(self) -> None:
        try:
            if self.registry.refresh():
                log.info(
                    "webhook registry %s re-read: %d webhook(s)",
                    self.cfg.registry_path,
                    len(self.registry.hooks),
                )
        except WebhookError as exc:
            log.error("%s; delivering with the webhooks read before", exc)

    async def _assigned(self, now: Partitions, gained: Partitions, lost: Partitions) -> None:
        if not self.cfg.from_beginning:
            await self._start_new_at_end(gained)
        log.info("assigned %d partition(s) of %s", len(now), self.cfg.topics.alerts)

    async def _start_new_at_end(self, gained: Partitions) -> None:
        """Partitions the group never committed start at their end, committed at once (a
        first run must not send the alerts of the past 90 days; ``--from-beginning``
        does). On Tansu the end may lie a few records early (docs/kafka-notes.md §0.2):
        those few are sent."""
        consumer = self.consumer.consumer
        fresh = [tp for tp in sorted(gained) if await consumer.committed(tp) is None]
        if not fresh:
            return
        await consumer.seek_to_end(*fresh)
        offsets = {tp: await consumer.position(tp) for tp in fresh}
        try:
            await consumer.commit(offsets)
        except Exception as exc:  # the next owner starts at its own end
            log.warning("start offsets not committed: %s", type(exc).__name__)
        log.info(
            "group %s had no offsets for %d partition(s): starting at their end",
            self.cfg.group_id,
            len(fresh),
        )

    async def _undecodable(self, bad: UndecodableBatch) -> None:
        headers = deadletter_headers(bad.reason, bad.topic, bad.partition, bad.base_offset)
        await self.producer.send_and_wait(
            self.cfg.topics.deadletter, key=None, value=bad.raw, headers=headers
        )
        self.metrics.deliveries.labels("dead_lettered").inc()


async def run_deliver(cfg: DeliverConfig, stop: asyncio.Event) -> None:
    """Deliver until ``stop`` is set."""
    await Dispatcher(cfg).run(stop)

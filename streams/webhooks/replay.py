"""``caretally webhooks replay``: deliver the parked deliveries again (docs/webhooks.md
"Replaying parked deliveries").

The parked topic is read from its start to the end seen when the read began (the fetch
highwater: docs/kafka-notes.md §0.2). A ``parked`` record is pending unless a
``resolved`` record names its ``parked_id``. Each pending one that matches the filters
is delivered to its webhook's *current* URL with its current secret; then a ``resolved``
record is written (``delivered``), or, when it fails again, a new ``parked`` record and a
``resolved`` record pointing at it (``parked_again``). Records written by this run lie
past the end it read, so none is replayed twice in one run. A webhook since removed is
skipped (its records stay pending), and so is a record whose alert is of another org
than the webhook: the alert's own ``org_id`` decides, never the record's. The body is the
parked alert as compact JSON (the bytes first sent, as the worker writes alerts compactly),
and its ``alert_id`` is the ``Idempotency-Key``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from pydantic import ValidationError

from streams.kafka.clients import WORKER_PRODUCER, Connection, aio_producer
from streams.kafka.log_reader import read_to_end
from streams.kafka.topics import Topics, partition_counts
from streams.webhooks import parked
from streams.webhooks.alert_head import read_head
from streams.webhooks.circuit import Circuit
from streams.webhooks.fanout import Job, deliver_all
from streams.webhooks.registry import Registry
from streams.webhooks.sender import Outcome, RetryPolicy, client_session, now_iso

log = logging.getLogger("caretally.webhooks")


@dataclass
class ReplayReport:
    """Counts of one run, over the parked records that match the filters."""

    delivered: int = 0
    failing: int = 0
    skipped: int = 0
    already_done: int = 0
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, int]:
        return {
            "delivered": self.delivered,
            "still_failing": self.failing,
            "skipped": self.skipped,
            "already_done": self.already_done,
        }


async def read_parked(kafka: Connection, topic: str) -> tuple[list[parked.Parked], set[str]]:
    """The parked records (in the order read; each org's in its partition's order) and the
    ``parked_id`` of every resolved one."""
    count = (await asyncio.to_thread(partition_counts, kafka, [topic])).get(topic, 0)
    items: list[parked.Parked] = []
    resolved: set[str] = set()
    async for record in read_to_end(kafka, topic, range(count)):
        item = parked.parse(record.value, record.headers)
        if isinstance(item, parked.Parked):
            items.append(item)
        elif isinstance(item, parked.Resolved):
            resolved.add(item.parked_id)
    return items, resolved


async def replay(
    kafka: Connection,
    topics: Topics,
    registry_path: Path,
    policy: RetryPolicy,
    webhook_id: str | None = None,
    org_id: str | None = None,
) -> ReplayReport:
    report = ReplayReport()
    items, resolved = await read_parked(kafka, topics.webhooks_parked)
    registry = Registry(registry_path)
    seen: set[str] = set()
    jobs: list[Job] = []
    by_id: dict[str, parked.Parked] = {}
    missing: dict[str, int] = {}
    for item in items:
        if (webhook_id and item.webhook_id != webhook_id) or (org_id and item.org_id != org_id):
            continue
        if item.parked_id in resolved:
            report.already_done += 1
            continue
        if item.parked_id in seen:  # the same record read twice: once is enough
            continue
        seen.add(item.parked_id)
        hook = registry.get(item.webhook_id)
        if hook is None:  # removed
            report.skipped += 1
            missing[item.webhook_id] = missing.get(item.webhook_id, 0) + 1
            continue
        try:
            head = read_head(item.alert)
        except ValidationError:
            report.skipped += 1
            report.notes.append(f"skipped parked delivery {item.parked_id}: not an alert")
            continue
        if head.org_id != hook.org_id:  # an org's alerts go to its own webhooks alone
            report.skipped += 1
            report.notes.append(
                f"skipped parked delivery {item.parked_id}: its alert is not of the org of "
                f"webhook {hook.webhook_id}"
            )
            continue
        body = orjson.dumps(item.alert)
        by_id[item.parked_id] = item
        jobs.append(Job(item.parked_id, hook, head.alert_id, head.org_id, body))
    for hook_id, n in sorted(missing.items()):
        report.notes.append(
            f"skipped {n} parked deliver{'y' if n == 1 else 'ies'} of webhook {hook_id}: "
            "it is no longer registered"
        )
    if not jobs:
        return report

    producer = aio_producer(kafka, WORKER_PRODUCER, client_id="caretally-webhooks-replay")
    await producer.start()
    session = client_session()

    async def send(item: parked.Parked | parked.Resolved) -> None:
        key, value, headers = parked.record(item)
        await producer.send_and_wait(topics.webhooks_parked, key=key, value=value, headers=headers)

    async def on_done(job: Job, outcome: Outcome) -> None:
        old = by_id[str(job.tag)]
        again: str | None = None
        if outcome.delivered:
            report.delivered += 1
        else:
            report.failing += 1
            again = parked.new_parked_id()
            await send(
                parked.Parked(
                    parked_id=again,
                    webhook_id=old.webhook_id,
                    org_id=job.org_id,  # the alert's (the same as the old record's)
                    alert_id=job.alert_id,
                    kind=old.kind,
                    alert=old.alert,
                    attempts=old.attempts + outcome.attempts,
                    last_status=outcome.status if outcome.attempts else old.last_status,
                    last_error=outcome.error,
                    first_attempt_at=old.first_attempt_at or outcome.first_attempt_at,
                    last_attempt_at=outcome.last_attempt_at or old.last_attempt_at,
                    parked_at=now_iso(),
                    replays=old.replays + 1,
                    source={"replay_of": old.parked_id},
                )
            )
        await send(
            parked.Resolved(
                parked_id=old.parked_id,
                webhook_id=old.webhook_id,
                org_id=old.org_id,
                alert_id=old.alert_id,
                outcome="delivered" if outcome.delivered else "parked_again",
                at=now_iso(),
                parked_again_as=again,
            )
        )

    try:
        await deliver_all(session, jobs, policy, on_done, Circuit(math.inf))
    finally:
        await session.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(producer.stop(), 5)
    return report

"""Delivering a set of (webhook, alert) jobs: each webhook's in order, webhooks at once.

A webhook's jobs go one after the other (a receiver sees its alerts in log order); the
webhooks run concurrently, so a slow or dead receiver delays only its own alerts. Its
:class:`~streams.webhooks.circuit.Circuit` decides whether a job is attempted: once a
delivery to a webhook has failed, its later jobs are parked at once (``attempts`` 0) until
a probe succeeds, so the parked records keep the order the alerts came in. With a
``deadline``, no attempt goes past it and the jobs still pending then are parked with that
reason: the set always ends in time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable, Hashable, Iterable
from dataclasses import dataclass

import aiohttp

from streams.webhooks.circuit import Circuit, State
from streams.webhooks.metrics import DeliverMetrics
from streams.webhooks.registry import Webhook
from streams.webhooks.sender import Deadline, Outcome, RetryPolicy, deliver


@dataclass(frozen=True, slots=True)
class Job:
    """One alert for one webhook; ``tag`` is the caller's (what the job belongs to)."""

    tag: Hashable
    hook: Webhook
    alert_id: str
    org_id: str
    body: bytes


OnDone = Callable[[Job, Outcome], Awaitable[None]]


def not_attempted(job: Job, why: str) -> Outcome:
    return Outcome(
        webhook_id=job.hook.webhook_id,
        alert_id=job.alert_id,
        delivered=False,
        attempts=0,
        status=None,
        error=why,
        first_attempt_at=None,
        last_attempt_at=None,
    )


async def _one_webhook(
    session: aiohttp.ClientSession,
    jobs: list[Job],
    policy: RetryPolicy,
    on_done: OnDone,
    circuit: Circuit,
    deadline: Deadline | None,
    metrics: DeliverMetrics | None,
) -> None:
    on_attempt = metrics.attempt if metrics is not None else None
    for job in jobs:
        hook_id = job.hook.webhook_id
        state = circuit.state(hook_id)
        if deadline is not None and deadline.left() <= 0:
            outcome = not_attempted(job, f"not attempted: {deadline.reason()}")
        elif state is State.OPEN:
            outcome = not_attempted(job, circuit.refusal(hook_id))
            if metrics is not None:
                metrics.attempt("refused_by_circuit")
        else:
            tries = policy if state is State.CLOSED else dataclasses.replace(policy, attempts=1)
            started = time.monotonic()
            outcome = await deliver(
                session, job.hook, job.alert_id, job.org_id, job.body, tries, deadline, on_attempt
            )
            if metrics is not None and outcome.delivered:
                metrics.latency.observe(time.monotonic() - started)
            circuit.record(hook_id, outcome)
        await on_done(job, outcome)


async def deliver_all(
    session: aiohttp.ClientSession,
    jobs: Iterable[Job],
    policy: RetryPolicy,
    on_done: OnDone,
    circuit: Circuit,
    deadline: Deadline | None = None,
    metrics: DeliverMetrics | None = None,
) -> None:
    """Deliver every job; ``on_done(job, outcome)`` once each has ended (it parks a failed
    one). The first error of ``on_done`` cancels the rest and is raised. ``metrics`` count
    the attempts and time the deliveries (the outcomes are the caller's to count)."""
    per_hook: dict[str, list[Job]] = {}
    for job in jobs:
        per_hook.setdefault(job.hook.webhook_id, []).append(job)
    try:
        async with asyncio.TaskGroup() as group:
            for hook_jobs in per_hook.values():
                group.create_task(
                    _one_webhook(session, hook_jobs, policy, on_done, circuit, deadline, metrics)
                )
    except ExceptionGroup as eg:
        raise eg.exceptions[0] from None

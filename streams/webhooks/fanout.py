"""Delivering a set of (webhook, alert) jobs: each webhook's in order, webhooks at once.

A webhook's jobs go one after the other (a receiver sees its alerts in log order); the
webhooks run concurrently, so a slow or dead receiver delays only its own alerts. Once one
delivery to a webhook has failed every attempt, its later jobs of the same set are parked
at once, not attempted (``attempts`` 0): a dead receiver costs one retry budget per set,
not one per alert, and the parked records keep the order the alerts came in.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Iterable
from dataclasses import dataclass

import aiohttp

from streams.webhooks.registry import Webhook
from streams.webhooks.sender import Outcome, RetryPolicy, deliver


@dataclass(frozen=True, slots=True)
class Job:
    """One alert for one webhook; ``tag`` is the caller's (what the job belongs to)."""

    tag: Hashable
    hook: Webhook
    alert_id: str
    org_id: str
    body: bytes


OnDone = Callable[[Job, Outcome], Awaitable[None]]


def not_attempted(job: Job, earlier: Outcome) -> Outcome:
    return Outcome(
        job.hook.webhook_id,
        job.alert_id,
        False,
        0,
        None,
        f"not attempted: an earlier delivery to this webhook failed ({earlier.error})",
        None,
        None,
    )


async def _one_webhook(
    session: aiohttp.ClientSession, jobs: list[Job], policy: RetryPolicy, on_done: OnDone
) -> None:
    failed: Outcome | None = None
    for job in jobs:
        if failed is None:
            outcome = await deliver(session, job.hook, job.alert_id, job.org_id, job.body, policy)
            if not outcome.delivered:
                failed = outcome
        else:
            outcome = not_attempted(job, failed)
        await on_done(job, outcome)


async def deliver_all(
    session: aiohttp.ClientSession, jobs: Iterable[Job], policy: RetryPolicy, on_done: OnDone
) -> None:
    """Deliver every job; ``on_done(job, outcome)`` once each has ended (it parks a failed
    one). The first error of ``on_done`` cancels the rest and is raised."""
    per_hook: dict[str, list[Job]] = {}
    for job in jobs:
        per_hook.setdefault(job.hook.webhook_id, []).append(job)
    try:
        async with asyncio.TaskGroup() as group:
            for hook_jobs in per_hook.values():
                group.create_task(_one_webhook(session, hook_jobs, policy, on_done))
    except ExceptionGroup as eg:
        raise eg.exceptions[0] from None

"""Closing the Kafka clients of ``caretally serve`` within a deadline, without a traceback.

With the broker unreachable, aiokafka's ``AIOKafkaProducer.stop`` waits for unsent batches
as long as ``request_timeout_ms``, and ``AIOKafkaConsumer.stop`` re-raises the
``CancelledError`` of the fetch it cancels while that fetch is backing off (its fetcher
awaits the task it has just cancelled). Neither may hold up a SIGTERM or end it in a
traceback: :func:`stop_within` runs such a ``stop`` in a task of its own, waits for it at
most a given time, and only logs what went wrong.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger("caretally.serve")

GRACE_S = 0.5
"""After the deadline, how long a cancelled ``stop`` gets to unwind."""


async def stop_within(stop: Callable[[], Awaitable[object]], what: str, timeout: float) -> bool:
    """Run ``stop()`` for at most ``timeout`` seconds; whether it finished cleanly."""

    async def run() -> None:
        await stop()

    task = asyncio.ensure_future(run())
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout)
    except asyncio.CancelledError:
        task.cancel()
        raise
    if not done:
        task.cancel()
        await asyncio.wait({task}, timeout=GRACE_S)
        log.warning("%s did not close within %g s; left behind", what, timeout)
        if task.done() and not task.cancelled():
            task.exception()  # retrieved: nothing reports it again at exit
        return False
    if task.cancelled():  # a fetch cancelled while backing off (see the module docstring)
        log.debug("closing %s ended in a cancelled fetch", what)
        return False
    exc = task.exception()
    if exc is not None:
        log.warning("closing %s failed: %s", what, type(exc).__name__)
        log.debug("traceback of that failure", exc_info=exc)
        return False
    return True

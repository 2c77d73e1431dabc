"""Work of a page that reads the log (the patient-month audit, the close preview, the
close, a claims download): in a small thread pool of its own, never on the event loop
and never in the pool the API uses, and at most :data:`PER_ORG` at once per org, so one
org's reloads cannot keep another org waiting (beyond it: 429, retry shortly)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from aiohttp import web

T = TypeVar("T")

WORKERS = 4
PER_ORG = 2


class HeavyWork:
    def __init__(self, workers: int = WORKERS, per_org: int = PER_ORG) -> None:
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="caretally-pages")
        self.per_org = per_org
        self.busy: Counter[str] = Counter()

    async def run(self, org: str, work: Callable[[], T]) -> T:
        """``work()`` in the pool, counted against ``org``."""
        if self.busy[org] >= self.per_org:
            raise web.HTTPTooManyRequests(
                text="Your organisation already has audits or closes running; "
                "try again in a moment.",
                headers={"Retry-After": "2"},
            )
        self.busy[org] += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self.pool, work)
        finally:
            self.busy[org] -= 1
            if not self.busy[org]:
                del self.busy[org]

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


HEAVY = web.AppKey("heavy_work", HeavyWork)

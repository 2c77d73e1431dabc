"""``GET /live``: one Server-Sent Events stream per open page of a signed-in org.

``event: billing`` (data ``{"month": ...}``) when a patient-month of the org changed (a
page showing that month fetches its groups again; changes are coalesced for
:data:`COALESCE_S`), and ``event: alert`` (data: the alert) for each new alert of the org.
The stream ends with ``event: signed_out`` when the session does (sign-out, idle or
too old, a revoked key): it is checked every :data:`CHECK_S`.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import orjson
from aiohttp import web

from streams.http.routes import HEARTBEAT, MAX_STREAMS_PER_ORG
from streams.http.state_cache import StoredAlert
from streams.web.auth import SESSION, SESSIONS
from streams.web.worklist_page import caught_up

COALESCE_S = 0.1
CHECK_S = 1.0


def _alert(item: StoredAlert) -> bytes:
    return b"event: alert\ndata: %s\n\n" % item.data


async def stream(request: web.Request) -> web.StreamResponse:
    session = request[SESSION]
    org = session.org_id
    cache, sessions = caught_up(request), request.app[SESSIONS]
    if cache.subscriber_count(org) >= MAX_STREAMS_PER_ORG:
        raise web.HTTPTooManyRequests(text="too many open pages of this organisation")
    resp = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",
        }
    )
    watcher = cache.watch_billing(org)
    sub, _ = cache.subscribe(org, 0)
    loop = asyncio.get_running_loop()
    heartbeat = request.app[HEARTBEAT]
    # one waiter of each kind lives across turns of the loop: none is ever cancelled
    # with an item in hand
    billing: asyncio.Future[Any] = asyncio.ensure_future(watcher.event.wait())
    alert: asyncio.Future[Any] = asyncio.ensure_future(sub.queue.get())
    try:
        await resp.prepare(request)
        await resp.write(b"retry: 1000\n: caretally live\n\n")
        beat_at = loop.time() + heartbeat
        stopped = False
        while not stopped and sessions.still_valid(session):
            await asyncio.wait(
                {billing, alert}, timeout=CHECK_S, return_when=asyncio.FIRST_COMPLETED
            )
            chunks: list[bytes] = []
            if alert.done():
                item: StoredAlert | None = alert.result()
                if item is None:  # dropped, or the server is stopping
                    stopped = True
                else:
                    chunks.append(_alert(item))
                    while not sub.queue.empty():
                        nxt = sub.queue.get_nowait()
                        if nxt is None:
                            stopped = True
                            break
                        chunks.append(_alert(nxt))
                    alert = asyncio.ensure_future(sub.queue.get())
            if billing.done():
                await asyncio.sleep(COALESCE_S)
                for month in sorted(watcher.take()):
                    chunks.append(b"event: billing\ndata: %s\n\n" % orjson.dumps({"month": month}))
                billing = asyncio.ensure_future(watcher.event.wait())
            if chunks:
                await resp.write(b"".join(chunks))
                beat_at = loop.time() + heartbeat
            elif loop.time() >= beat_at:
                await resp.write(b": heartbeat\n\n")
                beat_at = loop.time() + heartbeat
        if not stopped:
            await resp.write(b"event: signed_out\ndata: {}\n\n")
        return resp
    except ConnectionError:
        return resp
    finally:
        for waiter in (billing, alert):
            waiter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiter
        cache.unwatch(watcher)
        cache.unsubscribe(sub)

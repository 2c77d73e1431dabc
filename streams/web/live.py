"""``GET /live``: one Server-Sent Events stream per open page of a signed-in org.

``event: billing`` (data ``{"month": ...}``) when a patient-month of the org changed (a
page showing that month fetches its groups again; changes are coalesced for
:data:`COALESCE_S`), and ``event: alert`` (data: the alert) for each new alert of the org.
The stream ends when the session does (sign-out, expiry, a revoked key): it is checked
every :data:`CHECK_S`.
"""

from __future__ import annotations

import asyncio
import contextlib

import orjson
from aiohttp import web

from streams.http.routes import CACHE, HEARTBEAT, MAX_STREAMS_PER_ORG
from streams.web.auth import SESSION, SESSIONS

COALESCE_S = 0.1
CHECK_S = 1.0


async def stream(request: web.Request) -> web.StreamResponse:
    session = request[SESSION]
    org = session.org_id
    cache, sessions = request.app[CACHE], request.app[SESSIONS]
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
    try:
        await resp.prepare(request)
        await resp.write(b"retry: 1000\n: caretally live\n\n")
        beat_at = loop.time() + heartbeat
        while sessions.still_valid(session):
            billing = asyncio.ensure_future(watcher.event.wait())
            alert = asyncio.ensure_future(sub.queue.get())
            done, _pending = await asyncio.wait(
                {billing, alert}, timeout=CHECK_S, return_when=asyncio.FIRST_COMPLETED
            )
            for task in (billing, alert):
                if task not in done:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            chunks: list[bytes] = []
            if alert in done:
                item = alert.result()
                if item is None:  # dropped, or the server is stopping
                    break
                chunks.append(b"event: alert\ndata: %s\n\n" % item.data)
                while not sub.queue.empty():
                    nxt = sub.queue.get_nowait()
                    if nxt is None:
                        sub.queue.put_nowait(None)
                        break
                    chunks.append(b"event: alert\ndata: %s\n\n" % nxt.data)
            if billing in done:
                await asyncio.sleep(COALESCE_S)
                for month in sorted(watcher.take()):
                    chunks.append(b"event: billing\ndata: %s\n\n" % orjson.dumps({"month": month}))
            if chunks:
                await resp.write(b"".join(chunks))
                beat_at = loop.time() + heartbeat
            elif loop.time() >= beat_at:
                await resp.write(b": heartbeat\n\n")
                beat_at = loop.time() + heartbeat
        else:
            await resp.write(b"event: signed_out\ndata: {}\n\n")
        return resp
    except ConnectionError:
        return resp
    finally:
        cache.unwatch(watcher)
        cache.unsubscribe(sub)

"""The routes of ``caretally serve``: what each endpoint accepts and answers.

Writes go to ``care.ingress.v1`` exactly as the feed sent them (the ingress gate decides
what enters the log); reads come from the :class:`~streams.http.state_cache.StateCache`.
Every route but ``/healthz``, ``/readyz`` and ``/metrics`` needs an org API key
(:mod:`streams.http.api_keys`); a key reads and writes its own org's data only.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from schemas.events import MONTH_PATTERN, EventRejected, parse_event
from streams.http.api_keys import ApiKeyStore
from streams.http.metrics import ServeMetrics
from streams.http.rate_limit import OrgRateLimits, Refusal
from streams.http.state_cache import StateCache
from streams.kafka.clients import AioKafkaError, AIOKafkaProducer
from streams.kafka.limits import EVENT_MAX_BYTES
from streams.kafka.records import event_key
from streams.kafka.settings import KafkaSettings
from streams.kafka.topics import Topics
from streams.observe.prometheus import exposition
from streams.web.auth import API_PUBLIC, is_page
from streams.worker.gate import TOO_LARGE, Source, deadletter_write

log = logging.getLogger("caretally.serve")

DEFAULT_MAX_BODY_BYTES = 5 * 1024 * 1024
MAX_EVENT_BYTES = (
    EVENT_MAX_BYTES  # the one limit of HTTP, ingest and the gate (streams.kafka.limits)
)
MAX_ERRORS_SHOWN = 1000
HEARTBEAT_S = 15.0
KEY_CHECK_S = 1.0  # an SSE stream re-checks its key at least this often
OFFLOAD_BYTES = 256 * 1024  # validate bigger bodies off the event loop
JSON_TYPES = frozenset({"application/json"})
NDJSON_TYPES = frozenset({"application/x-ndjson", "application/ndjson"})
MONTH_RE = re.compile(MONTH_PATTERN)  # the wire contract's YYYY-MM
CLIENT_GONE = 499  # the status a request is counted under when its handler was cancelled

MAX_STREAMS_PER_ORG = 64

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(body), status=status, content_type="application/json", headers=headers
    )


def error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return json_response({"error": message}, status=status, headers=headers)


def route_name(request: web.BaseRequest) -> str:
    """The route template (no ids), for logs."""
    match = getattr(request, "match_info", None)
    resource = match.route.resource if match is not None and match.route else None
    return resource.canonical if resource is not None else "(no route)"


@dataclass
class Kafka:
    """The app's producer, set when the app starts (the app itself is frozen by then)."""

    producer: AIOKafkaProducer | None = None  # started in streams.http.app


CACHE = web.AppKey("cache", StateCache)
KEYS = web.AppKey("keys", ApiKeyStore)
TOPICS = web.AppKey("topics", Topics)
KAFKA_SETTINGS = web.AppKey("kafka_settings", KafkaSettings)
MAX_BODY = web.AppKey("max_body_bytes", int)
HEARTBEAT = web.AppKey("heartbeat_s", float)
KAFKA = web.AppKey("kafka", Kafka)
RATE = web.AppKey("rate_limits", OrgRateLimits)
METRICS = web.AppKey("metrics", ServeMetrics)
ORG = web.RequestKey("org_id", str)  # the org of the presented key


@web.middleware
async def count_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every answered request in ``caretally_http_requests`` / ``_request_seconds``, by its
    route template (never its path: that holds ids)."""
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    except asyncio.CancelledError:
        status = CLIENT_GONE
        raise
    finally:
        elapsed = time.perf_counter() - started
        request.app[METRICS].observe(route_name(request), request.method, status, elapsed)


ErrorPage = Callable[[web.Request, int, str, str, dict[str, str]], web.StreamResponse]
"""``(request, status, title, message, headers)``: an error as a page (:mod:`streams.web`)."""
ERROR_PAGE: web.AppKey[ErrorPage] = web.AppKey("error_page")


@web.middleware
async def answer_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error as an answer, including the router's 404/405: ``{"error": ...}`` for
    the API, a page for the pages (``ERROR_PAGE``, set by :mod:`streams.web.site`)."""
    page = request.app.get(ERROR_PAGE) if is_page(request) else None
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")}
        if page is not None:
            return page(request, exc.status, exc.reason, exc.text or "", headers)
        return error(exc.status, exc.reason.lower(), headers)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        # the exception's text may quote ids: its type at ERROR, the traceback at DEBUG
        route = route_name(request)
        log.error("internal error on %s %s (%s)", request.method, route, type(exc).__name__)
        log.debug("traceback of that internal error", exc_info=True)
        if page is not None:
            message = "Something went wrong on our side; the error is logged."
            return page(request, 500, "Internal error", message, {})
        return error(500, "internal error")


def _presented_key(request: web.Request) -> str | None:
    auth = request.headers.get("Authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.headers.get("X-API-Key", "").strip() or None


@web.middleware
async def require_key(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The API (``/v1/``) needs an org key; the probes need none; pages need a session
    (:mod:`streams.web.auth`) and never take a key."""
    if request.path in API_PUBLIC or is_page(request):
        return await handler(request)
    org = request.app[KEYS].resolve(_presented_key(request))
    if org is None:
        return error(
            401,
            "missing or invalid API key (send Authorization: Bearer <key>)",
            {"WWW-Authenticate": 'Bearer realm="caretally"'},
        )
    request[ORG] = org
    return await handler(request)


def _own_org(request: web.Request) -> web.Response | None:
    """403 unless the path's org is the key's; the message names neither."""
    if request.match_info["org"] != request[ORG]:
        return error(403, "this API key has no access to that resource")
    return None


def _warming_up(request: web.Request) -> web.Response | None:
    if not request.app[CACHE].caught_up:
        return error(
            503, "warming up: still reading billing state; retry shortly", {"Retry-After": "1"}
        )
    return None


async def _read_limited(request: web.Request, limit: int) -> bytes | None:
    """The body, or None as soon as it exceeds ``limit`` (chunked bodies included)."""
    if request.content_length is not None and request.content_length > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _validate(
    body: bytes, ndjson: bool, org_id: str
) -> tuple[list[tuple[bytes, bytes]], list[dict[str, Any]], int, list[tuple[int, bytes]]]:
    """(records to produce, errors, events seen, (line, bytes) of the events refused for
    their size). Lines count from 1, blank lines included."""
    if ndjson:
        lines = [(n, ln.strip()) for n, ln in enumerate(body.split(b"\n"), 1)]
        lines = [(n, ln) for n, ln in lines if ln]
    else:
        whole = body.strip()
        lines = [(1, whole)] if whole else []
    records: list[tuple[bytes, bytes]] = []
    errors: list[dict[str, Any]] = []
    too_large: list[tuple[int, bytes]] = []
    for n, raw in lines:
        if len(raw) > MAX_EVENT_BYTES:
            reason = f"{TOO_LARGE}: event larger than {MAX_EVENT_BYTES} bytes"
            errors.append({"line": n, "reason": reason})
            too_large.append((n, raw))
            continue
        try:
            event = parse_event(raw)
        except EventRejected as exc:
            errors.append({"line": n, "reason": exc.reason})
            continue
        if event.org_id != org_id:
            errors.append({"line": n, "reason": "org_id: not the organisation of this API key"})
            continue
        records.append((event_key(event.org_id, event.patient_id), raw))
    return records, errors, len(lines), too_large


async def write_deadletters(
    request: web.Request, org_id: str, letters: list[tuple[str, bytes, Source]], what: str
) -> None:
    """``(reason, raw bytes, source)`` to the dead-letter topic as the gate writes them
    (:func:`~streams.worker.gate.deadletter_write`: a too-large one as an excerpt with
    ``digest`` and ``size`` headers), keyed ``org_id:``. Best effort: the client has its
    answer either way; ``what`` names them in the warning if the broker fails."""
    producer = request.app[KAFKA].producer
    if producer is None or not letters:
        return
    topic = request.app[TOPICS].deadletter
    try:
        pending = []
        for reason, raw, source in letters:
            w = deadletter_write(reason, event_key(org_id, None), raw, source)
            pending.append(await producer.send(topic, value=w.value, key=w.key, headers=w.headers))
        await asyncio.gather(*pending)
        request.app[METRICS].events_dead_lettered.inc(len(letters))
    except AioKafkaError as exc:
        request.app[METRICS].produce_errors.labels("deadletter").inc()
        log.warning("dead-lettering %d %s failed: %s", len(letters), what, exc)


def _offset_ranges(offsets: list[int]) -> str:
    """``3-5,9``: the ingress offsets a batch was written at (``X-Ingress-Offsets``)."""
    out: list[str] = []
    for o in sorted(offsets):
        if out and o == int(out[-1].rpartition("-")[2]) + 1:
            out[-1] = f"{out[-1].partition('-')[0]}-{o}"
        else:
            out.append(str(o))
    return ",".join(out)


def _refusal(refused: Refusal) -> web.Response:
    retry = {} if refused.retry_after is None else {"Retry-After": str(refused.retry_after)}
    return error(refused.status, refused.message, retry)


class IngressUnavailable(Exception):
    """The ingress topic cannot be written now: the client may resend after ``retry_after``
    seconds."""

    def __init__(self, message: str, retry_after: str) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


async def write_ingress(
    request: web.Request, records: list[tuple[bytes, bytes]], what: str
) -> list[Any]:
    """Produce ``(key, value)`` records to ingress and wait for every acknowledgement (their
    metadata, in order); :class:`IngressUnavailable` if there is no producer yet or the
    broker fails (a prefix may then be written: ``what`` names it in the message)."""
    producer = request.app[KAFKA].producer
    if producer is None:
        raise IngressUnavailable("not connected to the event log yet", "1")
    topic = request.app[TOPICS].ingress
    try:
        pending = [await producer.send(topic, value=raw, key=key) for key, raw in records]
        return list(await asyncio.gather(*pending))
    except AioKafkaError as exc:
        request.app[METRICS].produce_errors.labels("ingress").inc()
        log.warning("producing %d event(s) to ingress failed: %s", len(records), exc)
        raise IngressUnavailable(
            f"the event log is unavailable; part of the {what} may have been written; "
            "resend it (event_id makes that safe)",
            "5",
        ) from None


async def post_events(request: web.Request) -> web.Response:
    """Validate every event, then produce all of them to ingress, or none.

    Atomic as to validation: one bad line rejects the whole batch and nothing is written.
    Delivery is at-least-once: if the broker fails mid-batch a prefix may be written; the
    client gets 503 and may resend the same batch (``event_id`` makes that a no-op).
    """
    ctype = request.content_type
    if ctype not in JSON_TYPES | NDJSON_TYPES:
        return error(415, "send application/json (one event) or application/x-ndjson (a batch)")
    org_id = request[ORG]
    rate = request.app[RATE]
    if (refused := rate.exhausted(org_id)) is not None:
        return _refusal(refused)
    limit = request.app[MAX_BODY]
    body = await _read_limited(request, limit)
    if body is None:
        return error(413, f"body larger than {limit} bytes; split the batch")
    ndjson = ctype in NDJSON_TYPES
    lines = sum(1 for ln in body.split(b"\n") if ln.strip()) if ndjson else 1
    if (refused := rate.check(org_id, lines)) is not None:
        return _refusal(refused)
    if len(body) > OFFLOAD_BYTES:
        loop = asyncio.get_running_loop()
        records, errors, seen, too_large = await loop.run_in_executor(
            None, _validate, body, ndjson, org_id
        )
    else:
        records, errors, seen, too_large = _validate(body, ndjson, org_id)
    if seen == 0:
        return error(400, "no events in the body")
    # events refused for their size: source_topic http, the body's line as source_offset
    letters = [(TOO_LARGE, raw, Source("http", -1, n)) for n, raw in too_large]
    await write_deadletters(request, org_id, letters, "too-large event(s)")
    if errors:
        request.app[METRICS].events_rejected.inc(len(errors))
        reply: dict[str, Any] = {
            "accepted": 0,
            "rejected": len(errors),
            "errors": errors[:MAX_ERRORS_SHOWN],
        }
        if len(errors) > MAX_ERRORS_SHOWN:
            reply["errors_truncated"] = True
        return json_response(reply, status=400)
    practice_key = event_key(org_id, None)
    practice_wide = sum(1 for key, _ in records if key == practice_key)
    if practice_wide and (refused := rate.check(org_id, 0, practice_wide)) is not None:
        return _refusal(refused)
    try:
        written = await write_ingress(request, records, "batch")
    except IngressUnavailable as exc:
        return error(503, exc.message, {"Retry-After": exc.retry_after})
    request.app[METRICS].events_accepted.inc(len(records))
    log.debug("accepted %d event(s) for org %s", len(records), org_id)
    # 202: in the ingress topic; the gate then writes each event to the log, drops it as an
    # exact duplicate or dead-letters it (a conflicting duplicate): the dead letter's
    # source_offset is one of these offsets
    offsets = _offset_ranges([m.offset for m in written])
    return json_response(
        {"accepted": len(records), "rejected": 0},
        status=202,
        headers={"X-Ingress-Offsets": offsets},
    )


async def get_month(request: web.Request) -> web.Response:
    if (denied := _own_org(request)) is not None:
        return denied
    month = request.match_info["month"]
    if not MONTH_RE.fullmatch(month):
        return error(400, "month must be YYYY-MM")
    if (busy := _warming_up(request)) is not None:
        return busy
    entry = request.app[CACHE].month_view(request[ORG], request.match_info["patient"], month)
    if entry is None:
        return error(404, "no billing for that patient-month")
    return web.Response(body=entry.raw, content_type="application/json")


async def get_worklist(request: web.Request) -> web.Response:
    if (denied := _own_org(request)) is not None:
        return denied
    month = request.query.get("month", "")
    if not MONTH_RE.fullmatch(month):
        return error(400, "query parameter month=YYYY-MM is required")
    if (busy := _warming_up(request)) is not None:
        return busy
    return json_response({"month": month, **request.app[CACHE].worklist(request[ORG], month)})


async def get_alerts(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events of the org's alerts: stored ones first (``?replay=N``, or those
    after ``Last-Event-ID``), then live ones; a comment every ``heartbeat_s`` keeps
    proxies from closing an idle stream. A client too slow to keep up is dropped with a
    final comment rather than slowing the others; it reconnects with ``Last-Event-ID``.
    The key is re-checked before every write and every ``KEY_CHECK_S`` (a stat of the key
    file, re-read only when it changed): a revoked key's stream ends, with no alert after
    the revocation reached the file."""
    if (denied := _own_org(request)) is not None:
        return denied
    try:
        replay = int(request.query.get("replay", "0"))
    except ValueError:
        replay = -1
    cache = request.app[CACHE]
    if not 0 <= replay <= cache.alerts_per_org:
        return error(400, f"replay must be an integer from 0 to {cache.alerts_per_org}")
    if (busy := _warming_up(request)) is not None:
        return busy
    org_id = request[ORG]
    if cache.subscriber_count(org_id) >= MAX_STREAMS_PER_ORG:
        return error(429, "too many open alert streams for this organisation")
    last_id = request.headers.get("Last-Event-ID") or request.query.get("last_event_id")
    resp = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
    )
    presented, keys = _presented_key(request), request.app[KEYS]

    def key_revoked() -> bool:
        return keys.resolve(presented, fresh=True) != org_id

    sub, backlog = cache.subscribe(org_id, replay, last_id)
    try:
        await resp.prepare(request)
        await resp.write(b": caretally alerts\n\n" + b"".join(a.sse() for a in backlog))
        heartbeat = request.app[HEARTBEAT]
        loop = asyncio.get_running_loop()
        beat_at = loop.time() + heartbeat
        while True:
            try:
                wait = max(0.0, min(beat_at - loop.time(), KEY_CHECK_S))
                item = await asyncio.wait_for(sub.queue.get(), timeout=wait)
            except TimeoutError:
                if key_revoked():
                    await resp.write(b": api key revoked; stream closed\n\n")
                    break
                if loop.time() >= beat_at:
                    await resp.write(b": heartbeat\n\n")
                    beat_at = loop.time() + heartbeat
                continue
            beat_at = loop.time() + heartbeat
            if item is None:
                reason = "too slow, dropped; reconnect" if sub.dropped else "server shutting down"
                await resp.write(f": {reason}\n\n".encode())
                break
            chunk = [item.sse()]
            while not sub.queue.empty():  # send what piled up in one write
                nxt = sub.queue.get_nowait()
                if nxt is None:
                    sub.queue.put_nowait(None)
                    break
                chunk.append(nxt.sse())
            if key_revoked():
                await resp.write(b": api key revoked; stream closed\n\n")
                break
            await resp.write(b"".join(chunk))
        return resp
    except ConnectionError:
        return resp  # the client went away; nothing more to send
    finally:
        cache.unsubscribe(sub)


async def healthz(request: web.Request) -> web.Response:
    """Liveness with detail: 503 while Kafka does not answer (or the cache's consumer
    fails), 200 otherwise, warming up included. ``kafka`` is ``live``, ``catching_up``
    or ``down``."""
    cache = request.app[CACHE]
    status = cache.status
    body = {
        "status": "ok" if status != "down" else "degraded",
        "kafka": status,
        "caught_up": cache.caught_up,
        "billing_views": len(cache.billing),
    }
    return json_response(body, status=200 if status != "down" else 503)


async def readyz(request: web.Request) -> web.Response:
    """Readiness: 200 only when every request can be answered (Kafka answers and the
    cache has caught up), else 503 with ``Retry-After``."""
    cache = request.app[CACHE]
    body = {"ready": cache.ready, "kafka": cache.status, "caught_up": cache.caught_up}
    if cache.ready:
        return json_response(body)
    return json_response(body, status=503, headers={"Retry-After": "1"})


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text exposition (:mod:`streams.http.metrics`)."""
    body, content_type = exposition(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": content_type})

"""The HTTP API of ``caretally serve``: ingest events, read billing views, stream alerts.

Writes go to ``care.ingress.v1`` exactly as the feed sent them (the ingress gate decides
what enters the log); reads come from an in-memory :class:`StateCache` that follows
``care.billing.v1`` and ``care.alerts.v1`` from their beginning, without a consumer group
(every server holds the whole state, so any number of them can run side by side and none
waits for a group rebalance, which Tansu makes slow).

Every route but ``/healthz`` needs an org API key (:mod:`streams.http.api_keys`); a key reads
and writes its own org's data only. Patient ids never appear in logs at info level: the
access log names the route template, not the path.

Endpoints (errors are always ``{"error": "..."}``):

* ``POST /v1/events`` one JSON event, or an NDJSON batch. All-or-nothing validation.
  Per-org token buckets counted in events (:mod:`streams.http.rate_limit`): 429 and
  ``Retry-After`` beyond them.
* ``GET /v1/orgs/{org}/patients/{patient}/months/{month}`` the billing view.
* ``GET /v1/orgs/{org}/worklist?month=YYYY-MM`` patient-months by billing status.
* ``GET /v1/orgs/{org}/alerts`` Server-Sent Events, ``?replay=N`` and ``Last-Event-ID``.
* ``GET /healthz`` liveness and whether the cache has caught up, no auth.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from pydantic import ValidationError

from schemas.events import EventRejected, parse_event
from schemas.views import Alert
from streams.http.api_keys import ApiKeyStore
from streams.http.guard import ConnectionLimits, GuardedRunner, redact_aiohttp_logs
from streams.http.rate_limit import OrgRateLimits, Refusal
from streams.kafka.limits import EVENT_MAX_BYTES, PRODUCER_MAX_REQUEST_BYTES
from streams.kafka.records import event_key, header, key_parts
from streams.kafka.topics import Topics
from streams.worker.gate import TOO_LARGE, Source, deadletter_write

log = logging.getLogger("caretally.serve")

DEFAULT_MAX_BODY_BYTES = 5 * 1024 * 1024
MAX_EVENT_BYTES = (
    EVENT_MAX_BYTES  # the one limit of HTTP, ingest and the gate (streams.kafka.limits)
)
MAX_ERRORS_SHOWN = 1000
ALERTS_PER_ORG = 10_000
SUBSCRIBER_QUEUE = 1000
MAX_STREAMS_PER_ORG = 64
HEARTBEAT_S = 15.0
KEY_CHECK_S = 1.0  # an SSE stream re-checks its key at least this often
OFFLOAD_BYTES = 256 * 1024  # validate bigger bodies off the event loop
JSON_TYPES = frozenset({"application/json"})
NDJSON_TYPES = frozenset({"application/x-ndjson", "application/ndjson"})
MONTH_RE = re.compile(r"\d{4}-(0[1-9]|1[0-2])")
PUBLIC_PATHS = frozenset({"/healthz"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(body), status=status, content_type="application/json", headers=headers
    )


def error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return json_response({"error": message}, status=status, headers=headers)


# --- the state cache -----------------------------------------------------------------------


@dataclass(slots=True)
class BillingEntry:
    """One patient-month as last published: the stored bytes, parsed view and progress."""

    org_id: str
    patient_id: str
    month: str
    raw: bytes
    view: dict[str, Any]
    progress: list[dict[str, Any]]

    @property
    def ids(self) -> BillingIds:
        return (self.org_id, self.patient_id, self.month)


BillingIds = tuple[str, str, str]
"""(org_id, patient_id, month): what a ``care.billing.v1`` key stands for."""


def _billing_ids(key: bytes | None) -> BillingIds | None:
    parts = key_parts(key)
    if parts is None or len(parts) != 3:
        return None
    return parts[0], parts[1], parts[2]


@dataclass(frozen=True, slots=True)
class StoredAlert:
    alert_id: str
    kind: str
    data: bytes  # compact JSON on one line (SSE data must not hold a newline)

    def sse(self) -> bytes:
        alert_id = self.alert_id.replace("\r", "").replace("\n", "")
        return b"id: %s\nevent: %s\ndata: %s\n\n" % (
            alert_id.encode(),
            self.kind.encode(),
            self.data,
        )


@dataclass(eq=False, slots=True)
class Subscriber:
    """One SSE client: a bounded queue; ``None`` in it means "stop" (``dropped`` says why)."""

    org_id: str
    queue: asyncio.Queue[StoredAlert | None]
    dropped: bool = False


@dataclass(slots=True)
class _Lag:
    caught_up: bool = False
    healthy: bool = False
    error: str | None = None


class StateCache:
    """Latest billing view per patient-month and recent alerts per org, from Kafka.

    The consumer has no group: it is assigned every partition of the billing and alerts
    topics and reads them from the beginning, so the cache is a pure function of the topics
    (a restart rebuilds it). Until it has read up to the high-water mark once, reads answer
    503 rather than a silently incomplete state.
    """

    def __init__(
        self,
        bootstrap: str,
        topics: Topics,
        *,
        alerts_per_org: int = ALERTS_PER_ORG,
        subscriber_queue: int = SUBSCRIBER_QUEUE,
    ) -> None:
        self.bootstrap = bootstrap
        self.topics = topics
        self.alerts_per_org = alerts_per_org
        self.subscriber_queue = subscriber_queue
        # keyed by the ids (org, patient, month) a record's key decodes to, never its bytes
        self.billing: dict[BillingIds, BillingEntry] = {}
        self._by_org_month: dict[str, dict[str, set[BillingIds]]] = {}
        self.alerts: dict[str, deque[StoredAlert]] = {}
        self._subscribers: dict[str, set[Subscriber]] = {}
        self._lag = _Lag()
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            client_id="caretally-serve",
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=200,
            request_timeout_ms=15000,
        )
        await consumer.start()
        try:
            await consumer.topics()  # loads cluster metadata
            parts: list[TopicPartition] = []
            for topic in (self.topics.billing, self.topics.alerts):
                ids = consumer.partitions_for_topic(topic)
                if not ids:
                    raise RuntimeError(f"topic {topic!r} does not exist (run ensure_topics first)")
                parts.extend(TopicPartition(topic, p) for p in sorted(ids))
            consumer.assign(parts)
            await consumer.seek_to_beginning(*parts)
        except BaseException:
            await consumer.stop()
            raise
        self._consumer = consumer
        self._lag.healthy = True
        self._task = asyncio.create_task(self._follow(consumer, parts), name="caretally-cache")

    async def stop(self) -> None:
        self.close_subscribers()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
        self._lag.healthy = False

    @property
    def caught_up(self) -> bool:
        return self._lag.caught_up

    @property
    def status(self) -> str:
        """``live``, ``catching_up`` or ``down`` (consumer stopped or failing)."""
        if not self._lag.healthy or self._task is None or self._task.done():
            return "down"
        return "live" if self._lag.caught_up else "catching_up"

    async def _follow(self, consumer: AIOKafkaConsumer, parts: list[TopicPartition]) -> None:
        backoff = 0.5
        while True:
            try:
                batches = await consumer.getmany(timeout_ms=500, max_records=5000)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # aiokafka retries connection errors itself; what reaches here is unusual
                self._lag.healthy, self._lag.error = False, type(exc).__name__
                log.warning("reading the billing/alerts topics failed (%s); retrying", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            self._lag.healthy, self._lag.error, backoff = True, None, 0.5
            for tp, records in batches.items():
                for rec in records:
                    if tp.topic == self.topics.billing:
                        self.apply_billing(rec.key, rec.value, header(rec.headers, "progress"))
                    else:
                        self.apply_alert(rec.value)
            if not self._lag.caught_up and await self._at_end(consumer, parts):
                self._lag.caught_up = True
                log.info(
                    "state cache caught up: %d billing views, %d alerts",
                    len(self.billing),
                    sum(len(d) for d in self.alerts.values()),
                )

    @staticmethod
    async def _at_end(consumer: AIOKafkaConsumer, parts: list[TopicPartition]) -> bool:
        """Read up to the fetch high-water mark on every partition (not ``end_offsets``,
        which Tansu gets wrong for multi-record batches)."""
        for tp in parts:
            hw = consumer.highwater(tp)
            if hw is None or await consumer.position(tp) < hw:
                return False
        return True

    # -- applying records (synchronous: no await between a change and its fan-out) ---------

    def apply_billing(self, key: bytes | None, value: bytes | None, progress: bytes | None) -> None:
        ids = _billing_ids(key)
        if ids is None:
            log.warning("skipped a billing record whose key is not org:patient:month")
            return
        old = self.billing.pop(ids, None)
        if old is not None:
            self._unindex(old)
        if value is None:  # tombstone: the month no longer has anything in it
            return
        try:
            view = orjson.loads(value)
            org_id, patient_id, month = view["org_id"], view["patient_id"], view["month"]
            if not all(isinstance(x, str) for x in (org_id, patient_id, month)):
                raise TypeError("ids are not strings")
            if (org_id, patient_id, month) != ids:
                raise ValueError("key does not match the view")
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            log.warning("skipped a billing record that is not a view: %s", exc)
            return
        entry = BillingEntry(org_id, patient_id, month, bytes(value), view, _progress(progress))
        self.billing[entry.ids] = entry
        self._by_org_month.setdefault(org_id, {}).setdefault(month, set()).add(entry.ids)

    def _unindex(self, entry: BillingEntry) -> None:
        months = self._by_org_month.get(entry.org_id, {})
        keys = months.get(entry.month)
        if keys is not None:
            keys.discard(entry.ids)
            if not keys:
                del months[entry.month]
        if not months:
            self._by_org_month.pop(entry.org_id, None)

    def apply_alert(self, value: bytes | None) -> None:
        if value is None:
            return
        try:
            alert = Alert.model_validate_json(value)
        except ValidationError as exc:
            log.warning(
                "skipped an alert record that is not an Alert (%d errors)", exc.error_count()
            )
            return
        stored = StoredAlert(alert.alert_id, alert.kind, alert.model_dump_json().encode())
        recent = self.alerts.get(alert.org_id)
        if recent is None:
            recent = self.alerts[alert.org_id] = deque(maxlen=self.alerts_per_org)
        recent.append(stored)
        for sub in list(self._subscribers.get(alert.org_id, ())):
            try:
                sub.queue.put_nowait(stored)
            except asyncio.QueueFull:
                self._drop(sub, dropped=True)

    # -- queries ------------------------------------------------------------------------------

    def month_view(self, org_id: str, patient_id: str, month: str) -> BillingEntry | None:
        return self.billing.get((org_id, patient_id, month))

    def worklist(self, org_id: str, month: str) -> dict[str, list[dict[str, Any]]]:
        """The org's patient-months of ``month`` by status, nearest threshold first."""
        groups: dict[str, list[tuple[tuple[bool, int, str], dict[str, Any]]]] = {
            "billable": [],
            "blocked": [],
            "in_progress": [],
        }
        for ids in self._by_org_month.get(org_id, {}).get(month, ()):
            entry = self.billing[ids]
            view = entry.view
            billable, blocked = view.get("billable") or [], view.get("blocked") or []
            status = "billable" if billable else "blocked" if blocked else "in_progress"
            nxt = _nearest(entry.progress)
            item = {
                "patient_id": entry.patient_id,
                "month": entry.month,
                "billable": billable,
                "blocked": blocked,
                "minutes": view.get("minutes") or {},
                "next": None
                if nxt is None
                else {"code": nxt[1], "minutes_short": round(nxt[0] / 60, 2)},
            }
            short = nxt[0] if nxt is not None else 0
            groups[status].append(((nxt is None, short, entry.patient_id), item))
        return {
            name: [item for _, item in sorted(items, key=lambda p: p[0])]
            for name, items in groups.items()
        }

    # -- alert subscriptions ----------------------------------------------------------------

    def subscriber_count(self, org_id: str) -> int:
        return len(self._subscribers.get(org_id, ()))

    def subscribe(
        self, org_id: str, replay: int, last_event_id: str | None = None
    ) -> tuple[Subscriber, list[StoredAlert]]:
        """A new subscriber and the stored alerts to send first.

        Synchronous on purpose: nothing can arrive between the snapshot and the
        subscription, so the client sees no gap and no duplicate. After ``last_event_id``
        (if it is still stored) wins over ``replay``.
        """
        recent = list(self.alerts.get(org_id, ()))
        backlog: list[StoredAlert] = recent[-replay:] if replay > 0 else []
        if last_event_id:
            for i in range(len(recent) - 1, -1, -1):
                if recent[i].alert_id == last_event_id:
                    backlog = recent[i + 1 :]
                    break
        sub = Subscriber(org_id, asyncio.Queue(maxsize=self.subscriber_queue))
        self._subscribers.setdefault(org_id, set()).add(sub)
        return sub, backlog

    def unsubscribe(self, sub: Subscriber) -> None:
        subs = self._subscribers.get(sub.org_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subscribers[sub.org_id]

    def _drop(self, sub: Subscriber, *, dropped: bool) -> None:
        """Stop a subscriber without waiting for it: empty its queue, leave a ``None``."""
        self.unsubscribe(sub)
        sub.dropped = dropped
        while not sub.queue.empty():
            sub.queue.get_nowait()
        sub.queue.put_nowait(None)

    def close_subscribers(self) -> None:
        for subs in list(self._subscribers.values()):
            for sub in list(subs):
                self._drop(sub, dropped=False)


def _progress(raw: bytes | None) -> list[dict[str, Any]]:
    if not raw:
        return []
    try:
        items = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return []
    if not isinstance(items, list):
        return []
    return [
        p
        for p in items
        if isinstance(p, dict)
        and isinstance(p.get("code"), str)
        and isinstance(p.get("have_s"), int)
        and isinstance(p.get("need_s"), int)
    ]


def _nearest(progress: Iterable[dict[str, Any]]) -> tuple[int, str] | None:
    """(seconds short, code) of the track closest to its next threshold, if any is short."""
    best: tuple[int, str] | None = None
    for p in progress:
        short = p["need_s"] - p["have_s"]
        if short > 0 and (best is None or (short, p["code"]) < best):
            best = (short, p["code"])
    return best


# --- the web application -------------------------------------------------------------------


@dataclass
class Kafka:
    """The app's producer, set when the app starts (the app itself is frozen by then)."""

    producer: AIOKafkaProducer | None = None


CACHE = web.AppKey("cache", StateCache)
KEYS = web.AppKey("keys", ApiKeyStore)
TOPICS = web.AppKey("topics", Topics)
BOOTSTRAP = web.AppKey("bootstrap", str)
MAX_BODY = web.AppKey("max_body_bytes", int)
HEARTBEAT = web.AppKey("heartbeat_s", float)
KAFKA = web.AppKey("kafka", Kafka)
RATE = web.AppKey("rate_limits", OrgRateLimits)
ORG = web.RequestKey("org_id", str)  # the org of the presented key


def _route_name(request: web.BaseRequest) -> str:
    """The route template (no ids), for logs."""
    match = getattr(request, "match_info", None)
    resource = match.route.resource if match is not None and match.route else None
    return resource.canonical if resource is not None else "(no route)"


class RouteAccessLogger(AbstractAccessLogger):
    """An access log that names the route template, never the path (it holds patient ids)."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info(
            "%s %s %d %.1fms", request.method, _route_name(request), response.status, time * 1000
        )


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error as ``{"error": ...}``, including the router's 404/405."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")}
        return error(exc.status, exc.reason.lower(), headers)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        # the exception's text may quote ids: its type at ERROR, the traceback at DEBUG
        route = _route_name(request)
        log.error("internal error on %s %s (%s)", request.method, route, type(exc).__name__)
        log.debug("traceback of that internal error", exc_info=True)
        return error(500, "internal error")


def _presented_key(request: web.Request) -> str | None:
    auth = request.headers.get("Authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.headers.get("X-API-Key", "").strip() or None


@web.middleware
async def require_key(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path in PUBLIC_PATHS:
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


async def _dead_letter_too_large(
    request: web.Request, org_id: str, refused: list[tuple[int, bytes]]
) -> None:
    """Events refused for their size go to the dead-letter topic as the gate writes them
    (reason ``too_large``, an excerpt, ``digest`` and ``size`` headers), keyed ``org_id:``
    with ``source_topic`` ``http`` and the body's line as ``source_offset``. Best effort:
    the client has its 400 either way."""
    producer = request.app[KAFKA].producer
    if producer is None or not refused:
        return
    topic = request.app[TOPICS].deadletter
    try:
        pending = []
        for n, raw in refused:
            w = deadletter_write(TOO_LARGE, event_key(org_id, None), raw, Source("http", -1, n))
            pending.append(await producer.send(topic, value=w.value, key=w.key, headers=w.headers))
        await asyncio.gather(*pending)
    except KafkaError as exc:
        log.warning("dead-lettering %d too-large event(s) failed: %s", len(refused), exc)


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
    await _dead_letter_too_large(request, org_id, too_large)
    if errors:
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
    producer = request.app[KAFKA].producer
    if producer is None:
        return error(503, "not connected to the event log yet", {"Retry-After": "1"})
    topic = request.app[TOPICS].ingress
    try:
        pending = [await producer.send(topic, value=raw, key=key) for key, raw in records]
        written = await asyncio.gather(*pending)
    except KafkaError as exc:
        log.warning("producing %d event(s) to ingress failed: %s", len(records), exc)
        return error(
            503,
            "the event log is unavailable; part of the batch may have been written; "
            "resend it (event_id makes that safe)",
            {"Retry-After": "5"},
        )
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
    cache = request.app[CACHE]
    status = cache.status
    body = {
        "status": "ok" if status != "down" else "degraded",
        "kafka": status,
        "caught_up": cache.caught_up,
        "billing_views": len(cache.billing),
    }
    return json_response(body, status=200 if status != "down" else 503)


async def _kafka(app: web.Application) -> AsyncIterator[None]:
    """Producer and cache live as long as the app (aiohttp cleanup context)."""
    producer = AIOKafkaProducer(
        bootstrap_servers=app[BOOTSTRAP],
        client_id="caretally-serve",
        acks="all",
        enable_idempotence=False,  # Tansu rejects aiokafka's InitProducerId (KAFKA-NOTES §0.3)
        linger_ms=2,
        request_timeout_ms=15000,
        max_request_size=PRODUCER_MAX_REQUEST_BYTES,
    )
    await producer.start()
    try:
        await app[CACHE].start()
    except BaseException:
        await producer.stop()
        raise
    app[KAFKA].producer = producer
    try:
        yield
    finally:
        app[KAFKA].producer = None
        await app[CACHE].stop()
        await producer.stop()


async def _close_streams(app: web.Application) -> None:
    """On shutdown, end the SSE streams so the server does not wait for them."""
    app[CACHE].close_subscribers()


def build_app(
    bootstrap: str,
    topics: Topics,
    keys: ApiKeyStore,
    *,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    heartbeat_s: float = HEARTBEAT_S,
    cache: StateCache | None = None,
    rate_limits: OrgRateLimits | None = None,
) -> web.Application:
    """The aiohttp application; Kafka clients start with it (``AppRunner.setup``)."""
    app = web.Application(middlewares=[json_errors, require_key], client_max_size=max_body_bytes)
    app[CACHE] = cache if cache is not None else StateCache(bootstrap, topics)
    app[KEYS] = keys
    app[TOPICS] = topics
    app[BOOTSTRAP] = bootstrap
    app[MAX_BODY] = max_body_bytes
    app[HEARTBEAT] = heartbeat_s
    app[KAFKA] = Kafka()
    app[RATE] = rate_limits if rate_limits is not None else OrgRateLimits()
    app.cleanup_ctx.append(_kafka)
    app.on_shutdown.append(_close_streams)
    app.router.add_get("/healthz", healthz)
    app.router.add_post("/v1/events", post_events)
    app.router.add_get("/v1/orgs/{org}/patients/{patient}/months/{month}", get_month)
    app.router.add_get("/v1/orgs/{org}/worklist", get_worklist)
    app.router.add_get("/v1/orgs/{org}/alerts", get_alerts)
    return app


@dataclass
class Server:
    """A running server (``port`` is the bound one, useful with port 0)."""

    runner: web.AppRunner
    host: str
    port: int

    async def close(self) -> None:
        await self.runner.cleanup()


async def start(
    app: web.Application,
    host: str,
    port: int,
    shutdown_timeout: float = 5.0,
    limits: ConnectionLimits | None = None,
) -> Server:
    """Start Kafka clients and listen; raises if the broker or the port is unavailable.

    Connections are bounded by ``limits`` (:mod:`streams.http.guard`: head, body and idle
    timeouts, a connection cap) and aiohttp's own error logs name no request line."""
    redact_aiohttp_logs()
    runner = GuardedRunner(
        app,
        limits or ConnectionLimits(),
        access_log_class=RouteAccessLogger,
        shutdown_timeout=shutdown_timeout,
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound = runner.addresses[0][1] if runner.addresses else port
    return Server(runner, host, int(bound))


async def serve(
    app: web.Application,
    host: str,
    port: int,
    stop: asyncio.Event,
    on_ready: Callable[[Server], None] | None = None,
    limits: ConnectionLimits | None = None,
) -> None:
    """Run until ``stop`` is set, then shut down (SSE streams end, Kafka clients close)."""
    server = await start(app, host, port, limits=limits)
    try:
        if on_ready is not None:
            on_ready(server)
        await stop.wait()
    finally:
        await server.close()

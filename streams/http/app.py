"""The HTTP API of ``caretally serve``: ingest events, read billing views, stream alerts.

This module builds the app (middleware, routes, the producer and cache it lives with) and
runs its server; the handlers are in :mod:`streams.http.routes`, the read model in
:mod:`streams.http.state_cache`.

Writes go to ``care.ingress.v1`` exactly as the feed sent them (the ingress gate decides
what enters the log); reads come from an in-memory :class:`StateCache` that follows
``care.billing.v1`` and ``care.alerts.v1`` from their beginning, without a consumer group
(every server holds the whole state, so any number of them can run side by side and none
waits for a group rebalance, which Tansu makes slow).

Every route but ``/healthz``, ``/readyz``, ``/metrics`` and ``/openapi.json`` needs an org
API key (:mod:`streams.http.api_keys`); a key reads and writes its own org's data only.
Patient ids never appear in logs at info level: the access log names the route template,
not the path.

Endpoints (errors are always ``{"error": "..."}``):

* ``POST /v1/events`` one JSON event, or an NDJSON batch. All-or-nothing validation.
  Per-org token buckets counted in events (:mod:`streams.http.rate_limit`): 429 and
  ``Retry-After`` beyond them.
* ``GET /v1/orgs/{org}/patients/{patient}/months/{month}`` the billing view.
* ``GET /v1/orgs/{org}/worklist?month=YYYY-MM`` patient-months by billing status.
* ``GET /v1/orgs/{org}/alerts`` Server-Sent Events, ``?replay=N`` and ``Last-Event-ID``.
* ``GET /healthz`` health with detail, no auth: 503 while Kafka does not answer a probe
  (within a few seconds of the broker going away, 200 again once it answers), else 200,
  also while the cache warms up. ``{"status", "kafka": live|catching_up|down,
  "caught_up", "billing_views"}``. For monitoring, and for a restart-on-failure check
  only with a failure threshold longer than the Kafka outages to ride out (restarting does
  not bring Kafka back, and ``serve`` does not start without it).
* ``GET /readyz`` readiness, no auth: 200 only when every request can be answered (Kafka
  answers and the cache has caught up), else 503. For a load balancer, and for the
  container healthcheck that other services wait on (``docker-compose.yml``).
* ``GET /openapi.json`` the OpenAPI 3.1 document of every route, no auth
  (:mod:`streams.http.openapi`).
* ``GET /metrics`` Prometheus text, no auth (:mod:`streams.http.metrics`); labels hold no
  org or patient id. Keep it off the public side of the reverse proxy.

Shutdown is bounded whether or not the broker answers: in-flight requests get
``shutdown_timeout`` seconds, then the producer and the cache's consumer close in parallel
within :data:`KAFKA_CLOSE_S` (:mod:`streams.http.closing`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from streams.http.api_keys import ApiKeyStore
from streams.http.closing import stop_within
from streams.http.fhir_route import post_fhir_bundle
from streams.http.guard import ConnectionLimits, GuardedRunner, redact_aiohttp_logs
from streams.http.metrics import ServeMetrics
from streams.http.openapi import add_openapi
from streams.http.rate_limit import OrgRateLimits
from streams.http.routes import (
    CACHE,
    DEFAULT_MAX_BODY_BYTES,
    HEARTBEAT,
    HEARTBEAT_S,
    KAFKA,
    KAFKA_SETTINGS,
    KEYS,
    MAX_BODY,
    METRICS,
    RATE,
    TOPICS,
    Kafka,
    answer_errors,
    count_requests,
    get_alerts,
    get_month,
    get_worklist,
    healthz,
    metrics,
    post_events,
    readyz,
    require_key,
    route_name,
)
from streams.http.state_cache import StateCache
from streams.kafka.clients import SERVE_PRODUCER, Connection, aio_producer
from streams.kafka.settings import KafkaSettings
from streams.kafka.topics import Topics
from streams.web.auth import require_session
from streams.web.config import WebConfig
from streams.web.site import add_pages

log = logging.getLogger("caretally.serve")

KAFKA_CLOSE_S = 1.5
"""How long the producer and the cache's consumer get to close, in parallel."""


class RouteAccessLogger(AbstractAccessLogger):
    """An access log that names the route template, never the path (it holds patient ids)."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info(
            "%s %s %d %.1fms", request.method, route_name(request), response.status, time * 1000
        )


async def _kafka(app: web.Application) -> AsyncIterator[None]:
    """Producer and cache live as long as the app (aiohttp cleanup context)."""
    producer = aio_producer(app[KAFKA_SETTINGS], SERVE_PRODUCER)
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
        await asyncio.gather(
            app[CACHE].stop(KAFKA_CLOSE_S),
            stop_within(producer.stop, "the producer", KAFKA_CLOSE_S),
        )


async def _close_streams(app: web.Application) -> None:
    """On shutdown, end the SSE streams so the server does not wait for them."""
    app[CACHE].close_subscribers()


def build_app(
    kafka: Connection,
    topics: Topics,
    keys: ApiKeyStore,
    *,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    heartbeat_s: float = HEARTBEAT_S,
    cache: StateCache | None = None,
    rate_limits: OrgRateLimits | None = None,
    pages: WebConfig | None = None,
) -> web.Application:
    """The aiohttp application; Kafka clients start with it (``AppRunner.setup``).
    ``pages``: serve the pages for people at ``/`` too (:mod:`streams.web`)."""
    settings = KafkaSettings.of(kafka)
    app = routes_app(
        cache if cache is not None else StateCache(settings, topics),
        topics,
        keys,
        max_body_bytes=max_body_bytes,
        heartbeat_s=heartbeat_s,
        rate_limits=rate_limits,
        pages=pages,
    )
    app[KAFKA_SETTINGS] = settings
    app.cleanup_ctx.append(_kafka)
    return app


def routes_app(
    cache: StateCache,
    topics: Topics,
    keys: ApiKeyStore,
    *,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    heartbeat_s: float = HEARTBEAT_S,
    rate_limits: OrgRateLimits | None = None,
    pages: WebConfig | None = None,
    clock: Callable[[], datetime] | None = None,
) -> web.Application:
    """The routes and middleware over ``cache``, without the Kafka clients: reads are
    served from whatever fed the cache, and writes answer 503 (no producer). This is
    :func:`build_app` minus its lifetime; the routes are tested in process with it
    (``clock``: the pages' idea of now, for tests)."""
    app = web.Application(
        middlewares=[count_requests, answer_errors, require_key, require_session],
        client_max_size=max_body_bytes,
    )
    app[CACHE] = cache
    app[METRICS] = ServeMetrics(cache)
    app[KEYS] = keys
    app[TOPICS] = topics
    app[MAX_BODY] = max_body_bytes
    app[HEARTBEAT] = heartbeat_s
    app[KAFKA] = Kafka()
    app[RATE] = rate_limits if rate_limits is not None else OrgRateLimits()
    app.on_shutdown.append(_close_streams)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/v1/events", post_events)
    app.router.add_post("/fhir/r4", post_fhir_bundle)  # a FHIR R4 Bundle (docs/fhir.md)
    app.router.add_get("/v1/orgs/{org}/patients/{patient}/months/{month}", get_month)
    app.router.add_get("/v1/orgs/{org}/worklist", get_worklist)
    app.router.add_get("/v1/orgs/{org}/alerts", get_alerts)
    add_openapi(app)  # GET /openapi.json, built from the routes above (and below)
    if pages is not None:
        add_pages(app, pages, keys, clock)
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
    shutdown_timeout: float = 5.0,
) -> None:
    """Run until ``stop`` is set, then shut down (SSE streams end, Kafka clients close);
    in-flight requests get ``shutdown_timeout`` seconds."""
    server = await start(app, host, port, shutdown_timeout=shutdown_timeout, limits=limits)
    try:
        if on_ready is not None:
            on_ready(server)
        await stop.wait()
    finally:
        await server.close()

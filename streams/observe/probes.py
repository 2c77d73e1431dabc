"""The operator surface of a long-running process that has no API of its own
(``caretally worker``, ``caretally webhooks deliver``): ``GET /healthz``, ``/readyz`` and
``/metrics`` on ``--web-port``.

* ``/healthz``: liveness, 200 while the process runs; the body is its health (JSON).
* ``/readyz``: readiness, 200 only when the health says ``ready`` (connected to Kafka
  with partitions assigned), else 503; the same body.
* ``/metrics``: the process's own registry in the Prometheus text format.

The health is a callback (a dict with at least ``ready``), called at each request, so
it is never stale. The worker serves these from Faust's web server (aiohttp underneath)
with the response builders below; other processes run a :class:`ProbeServer`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from aiohttp import web

from streams.observe.prometheus import CollectorRegistry, exposition

log = logging.getLogger("caretally.observe")

Health = Callable[[], Mapping[str, Any]]
"""The health of the process now: ``{"live": True, "ready": bool, ...}``."""

PROBE_TIMEOUT_S = 2.0


def healthz_response(health: Mapping[str, Any]) -> web.Response:
    """Liveness: 200 while the process runs; the body says whether it is ready."""
    return _json(health, 200)


def readyz_response(health: Mapping[str, Any]) -> web.Response:
    """Readiness: 200 only when ``health["ready"]``, else 503."""
    return _json(health, 200 if health.get("ready") else 503)


def metrics_response(registry: CollectorRegistry) -> web.Response:
    """The registry in the Prometheus text format."""
    body, content_type = exposition(registry)
    return web.Response(body=body, headers={"Content-Type": content_type})


def _json(body: Mapping[str, Any], status: int) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


async def broker_answers(consumer: Any, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether the broker of an aiokafka consumer answers a metadata request in time."""
    try:
        await asyncio.wait_for(consumer._client.fetch_all_metadata(), timeout)
    except Exception:
        return False
    return True


def probe_app(registry: CollectorRegistry, health: Health) -> web.Application:
    """An aiohttp app serving ``/healthz``, ``/readyz`` and ``/metrics``."""

    async def healthz(_request: web.Request) -> web.Response:
        return healthz_response(health())

    async def readyz(_request: web.Request) -> web.Response:
        return readyz_response(health())

    async def metrics(_request: web.Request) -> web.Response:
        health()  # gauges that the health sets are as of this scrape
        return metrics_response(registry)

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app


class ProbeServer:
    """:func:`probe_app` on ``host:port`` (port 0: one the system picks, see ``port``),
    from :meth:`start` to :meth:`stop`, in the running event loop."""

    def __init__(self, registry: CollectorRegistry, health: Health, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._runner = web.AppRunner(probe_app(registry, health), access_log=None)

    async def start(self) -> None:
        """Bind (``OSError`` when the port is taken) and serve."""
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        if self._runner.addresses:
            self.port = int(self._runner.addresses[0][1])
        log.info("serving /healthz, /readyz and /metrics on %s:%d", self.host, self.port)

    async def stop(self) -> None:
        await self._runner.cleanup()

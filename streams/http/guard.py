"""Connection hygiene for ``caretally serve``: timeouts, a connection cap, quiet errors.

aiohttp bounds none of these by itself: a request head or body may take forever, every
accepted connection holds a file descriptor until then, and its parser errors are
logged (and answered) with the offending request line, which holds patient ids. So the
server runs a :class:`GuardedRunner`, whose connections (:class:`_GuardedHandler`):

* must complete a request head within ``header_timeout`` of its first byte (408, closed);
* must deliver the request body within ``body_timeout`` of the head (408, closed);
* are closed after ``idle_timeout`` without a request (aiohttp's keep-alive timeout,
  which also runs from the moment of accept);
* number at most ``max_connections``: at the cap, a new connection evicts the oldest one
  that is idle or still sending its head (a slowloris connection is always one of those;
  an idle keep-alive client simply reconnects); when every connection is inside a
  request (long-lived SSE streams included), the new one gets 503 and is closed.

Long-lived SSE streams are requests in progress: none of the timeouts applies to them.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import orjson
from aiohttp import web, web_server
from aiohttp.http_exceptions import BadHttpMethod
from aiohttp.web_protocol import RequestHandler

FD_RESERVE = 128
"""File descriptors kept for everything but client connections (Kafka, files, executor)."""


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """What ``caretally serve --header-timeout/--body-timeout/--idle-timeout/
    --max-connections`` set (seconds, and a count)."""

    header_timeout: float = 10.0
    body_timeout: float = 60.0
    idle_timeout: float = 75.0  # above common proxies' upstream keep-alive (nginx: 60 s)
    max_connections: int = 1000


def fit_connection_cap(wanted: int, reserve: int = FD_RESERVE) -> int:
    """``wanted`` connections, raising this process's open-file limit to hold them if it
    can; else as many as the hard limit leaves room for (at least 16)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = wanted + reserve
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(16, min(wanted, soft - reserve))


def _raw_response(status: int, message: str, extra: str = "") -> bytes:
    """A complete ``Connection: close`` response, written outside any request."""
    body = orjson.dumps({"error": message})
    phrase = HTTPStatus(status).phrase
    return (
        f"HTTP/1.1 {status} {phrase}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n"
    ).encode() + body


_IDLE, _HEAD, _REQUEST = "idle", "head", "request"


class _GuardedHandler(RequestHandler):
    """aiohttp's connection protocol with head/body timeouts and a place under the cap."""

    def __init__(self, manager: GuardedServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = manager
        self._state = _IDLE
        self._head_timer: asyncio.TimerHandle | None = None

    # -- admission and eviction ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if not self._guard.admit(self):
            self._close_with(
                _raw_response(503, "too many connections; retry shortly", "Retry-After: 1\r\n")
            )

    def connection_lost(self, exc: BaseException | None) -> None:
        self._guard.release(self)
        self._cancel_head_timer()
        super().connection_lost(exc)

    @property
    def evictable(self) -> bool:
        """Idle, or still sending a request head: nothing is lost by closing it."""
        return self._state != _REQUEST

    def evict(self) -> None:
        self._close_with(_raw_response(503, "server busy; retry", "Retry-After: 1\r\n"))

    def _close_with(self, response: bytes) -> None:
        self._cancel_head_timer()
        if self.transport is not None:
            self.transport.write(response)  # close() below still flushes it
        self.force_close()

    # -- the request head ----------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._messages:  # a complete head (or a parse error) is queued
            self._state = _REQUEST
            self._cancel_head_timer()
        elif self._state == _IDLE and data and not self._force_close:
            self._state = _HEAD
            self._head_timer = self._loop.call_later(
                self._guard.limits.header_timeout, self._head_timed_out
            )

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._state == _HEAD:
            self._close_with(_raw_response(408, "request head not received in time"))

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    # -- the request body ----------------------------------------------------------------

    async def _handle_request(
        self,
        request: web.BaseRequest,
        start_time: float | None,
        request_handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]],
    ) -> tuple[web.StreamResponse, bool]:
        self._state = _REQUEST
        self._cancel_head_timer()
        payload = request.content
        timer = None
        if not payload.is_eof():
            timer = self._loop.call_later(
                self._guard.limits.body_timeout, self._body_timed_out, payload
            )
        try:
            return await super()._handle_request(request, start_time, request_handler)
        finally:
            if timer is not None:
                timer.cancel()
            self._state = _REQUEST if self._messages else _IDLE

    def _body_timed_out(self, payload: Any) -> None:
        """The handler's read fails with 408 (``answer_errors`` answers it); no lingering
        read of the rest, and the connection closes after the response."""
        if not payload.is_eof():
            self._lingering_time = 0.0
            payload.set_exception(web.HTTPRequestTimeout())

    # -- errors: no request line, header or path in the log or the answer ----------------

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """aiohttp's version logs and echoes the exception text, which quotes the request
        line or header (patient ids); this one names only the status and exception type."""
        what = type(exc).__name__ if exc is not None else "error"
        if self._request_count == 1 and isinstance(exc, BadHttpMethod):
            self.logger.debug("not HTTP from %s (%s)", request.remote, what)
        elif status >= 500:
            self.logger.error(
                "error handling a request from %s: %d (%s)", request.remote, status, what
            )
        else:
            self.logger.info("rejected a request from %s: %d (%s)", request.remote, status, what)
        if request.writer.output_size > 0:
            raise ConnectionError("response already started; cannot send an error")
        resp = web.Response(
            status=status,
            body=orjson.dumps({"error": HTTPStatus(status).phrase.lower()}),
            content_type="application/json",
        )
        resp.force_close()
        return resp


class GuardedServer(web_server.Server):
    """aiohttp's low-level server making :class:`_GuardedHandler` connections."""

    limits: ConnectionLimits
    _live: dict[_GuardedHandler, None]

    @classmethod
    def adopt(cls, server: web_server.Server, limits: ConnectionLimits) -> GuardedServer:
        """The same server (handler, factory, handler kwargs), guarded."""
        guarded = cls.__new__(cls)
        guarded.__dict__.update(vars(server))
        guarded.limits = limits
        guarded._live = {}  # insertion order = age
        return guarded

    def __call__(self) -> RequestHandler:
        return _GuardedHandler(self, loop=self._loop, **self._kwargs)

    def admit(self, handler: _GuardedHandler) -> bool:
        """Take ``handler`` under the cap, evicting the oldest idle/in-head one if full."""
        if len(self._live) >= self.limits.max_connections:
            victim = next((h for h in self._live if h.evictable), None)
            if victim is None:
                return False
            del self._live[victim]
            victim.evict()
        self._live[handler] = None
        return True

    def release(self, handler: _GuardedHandler) -> None:
        self._live.pop(handler, None)


class GuardedRunner(web.AppRunner):
    """An :class:`aiohttp.web.AppRunner` whose server is a :class:`GuardedServer`."""

    def __init__(self, app: web.Application, limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(
            app,
            keepalive_timeout=limits.idle_timeout,
            lingering_time=min(10.0, limits.body_timeout),
            **kwargs,
        )
        self._limits = limits

    async def _make_server(self) -> web_server.Server:
        return GuardedServer.adopt(await super()._make_server(), self._limits)


class RedactExceptions(logging.Filter):
    """At INFO and above, an exception is named by its type only: aiohttp's messages quote
    request lines, headers and paths, and those hold patient ids."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.INFO and (record.exc_info or record.exc_text):
            exc = record.exc_info[1] if record.exc_info else None
            name = type(exc).__name__ if exc is not None else "exception"
            record.msg, record.args = f"{record.getMessage()} ({name}; details at debug level)", ()
            record.exc_info, record.exc_text = None, None
        return True


_REDACT = RedactExceptions()
REDACTED_LOGGERS = ("aiohttp.server", "aiohttp.web", "aiohttp.internal", "aiohttp.access")


def redact_aiohttp_logs() -> None:
    """Install :class:`RedactExceptions` on aiohttp's server-side loggers (idempotent)."""
    for name in REDACTED_LOGGERS:
        logger = logging.getLogger(name)
        if _REDACT not in logger.filters:
            logger.addFilter(_REDACT)

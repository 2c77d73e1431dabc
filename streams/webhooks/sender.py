"""One delivery: POST an alert to one webhook, retrying with backoff, until a 2xx or the
attempts run out. Used by ``webhooks deliver`` and ``webhooks replay`` alike."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import aiohttp

from streams.webhooks.registry import Webhook
from streams.webhooks.signing import request_headers

log = logging.getLogger("caretally.webhooks")

MAX_DELAY_S = 60.0
TIMEOUT_PREFIX = "timeout after"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """``attempts`` in all; before attempt n+1 a wait drawn from [d/2, d] with
    d = ``base_delay_s`` * 2**(n-1), capped at ``max_delay_s`` (exponential backoff with
    jitter, so receivers that failed together are not retried together); each attempt
    may take ``timeout_s`` in all (connect, send, response)."""

    attempts: int = 5
    base_delay_s: float = 1.0
    timeout_s: float = 10.0
    max_delay_s: float = MAX_DELAY_S

    def delay(self, failed: int) -> float:
        """The wait after the ``failed``-th failed attempt."""
        full = min(self.max_delay_s, self.base_delay_s * 2 ** (failed - 1))
        return random.uniform(full / 2, full)


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a delivery ended: ``delivered`` (a 2xx) or not, after ``attempts``, with the
    last ``status`` (None: no response) and ``error`` (why the last attempt failed)."""

    webhook_id: str
    alert_id: str
    delivered: bool
    attempts: int
    status: int | None
    error: str
    first_attempt_at: str | None
    last_attempt_at: str | None


@dataclass(frozen=True, slots=True)
class Deadline:
    """When a set of deliveries must have ended (``time.monotonic()``) and how long it was
    given (``seconds``, for the reason a delivery cut short is parked with)."""

    at: float
    seconds: float

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        return cls(time.monotonic() + seconds, seconds)

    def left(self) -> float:
        return self.at - time.monotonic()

    def reason(self) -> str:
        return f"the batch deadline ({self.seconds:g} s) was reached"


def attempt_result(status: int | None, error: str) -> str:
    """An attempt's result as :func:`attempt` reported it, as a metric label: ``ok``,
    ``http_error`` (a status other than 2xx), ``timeout`` or ``connection_error`` (no
    response otherwise)."""
    if not error:
        return "ok"
    if status is not None:
        return "http_error"
    return "timeout" if error.startswith(TIMEOUT_PREFIX) else "connection_error"


def now_iso() -> str:
    """Now as ISO-8601 UTC to the millisecond. The delivery records (attempts, parking)
    use milliseconds, unlike the registry's ``created_at`` (seconds, for people): retries
    come within one second, and their times must still say which came first."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def attempt(
    session: aiohttp.ClientSession,
    hook: Webhook,
    alert_id: str,
    body: bytes,
    number: int,
    timeout_s: float,
) -> tuple[int | None, str]:
    """One POST: (status, "") on a 2xx, else (status or None, why it failed). Redirects
    are not followed (an alert goes only to the URL its org registered)."""
    headers = request_headers(
        hook.secret, hook.webhook_id, alert_id, number, int(time.time()), body
    )
    try:
        async with session.post(
            hook.url,
            data=body,
            headers=headers,
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=timeout_s),
        ) as resp:
            await resp.content.read(4096)  # let the connection be reused; never logged
            if 200 <= resp.status < 300:
                return resp.status, ""
            return resp.status, f"HTTP {resp.status}"
    except TimeoutError:
        return None, f"{TIMEOUT_PREFIX} {timeout_s:g} s"
    except aiohttp.ClientError as exc:
        return None, f"{type(exc).__name__}: {exc}"[:300]
    except OSError as exc:
        return None, f"{type(exc).__name__}: {exc.strerror or exc}"[:300]
    except Exception as exc:  # e.g. UnicodeError, ValueError: a host the client cannot use
        # one webhook's bad URL (or a client bug) fails its attempt, never the process
        return None, f"{type(exc).__name__}: {exc}"[:300]


async def deliver(
    session: aiohttp.ClientSession,
    hook: Webhook,
    alert_id: str,
    org_id: str,
    body: bytes,
    policy: RetryPolicy,
    deadline: Deadline | None = None,
    on_attempt: Callable[[str], None] | None = None,
) -> Outcome:
    """POST ``body`` to ``hook`` until a 2xx, ``policy.attempts`` failures or the
    ``deadline`` (no attempt or wait goes past it); ``on_attempt`` hears each attempt's
    :func:`attempt_result`. Logs the alert id, org, webhook id and status: never the body
    (it holds a patient id)."""
    first = last = now_iso()
    status: int | None = None
    error = ""
    made = 0
    for number in range(1, policy.attempts + 1):
        left = deadline.left() if deadline is not None else policy.timeout_s
        if left <= 0:
            break
        last = now_iso()
        made = number
        status, error = await attempt(
            session, hook, alert_id, body, number, min(policy.timeout_s, left)
        )
        if on_attempt is not None:
            on_attempt(attempt_result(status, error))
        if not error:
            log.info(
                "delivered alert %s of org %s to webhook %s: HTTP %s (attempt %d)",
                alert_id,
                org_id,
                hook.webhook_id,
                status,
                number,
            )
            return Outcome(
                webhook_id=hook.webhook_id,
                alert_id=alert_id,
                delivered=True,
                attempts=number,
                status=status,
                error="",
                first_attempt_at=first,
                last_attempt_at=last,
            )
        if number == policy.attempts:
            break
        wait = policy.delay(number)
        if deadline is not None and wait >= deadline.left():
            break
        log.warning(
            "alert %s of org %s to webhook %s: attempt %d/%d failed (%s); retrying in %.2f s",
            alert_id,
            org_id,
            hook.webhook_id,
            number,
            policy.attempts,
            error,
            wait,
        )
        await asyncio.sleep(wait)
    if made < policy.attempts and deadline is not None:
        last_error = f"; last: {error}" if error else ""
        error = f"{deadline.reason()} after {made} attempt(s){last_error}"
    log.warning(
        "alert %s of org %s to webhook %s: %d attempt(s) failed (%s)",
        alert_id,
        org_id,
        hook.webhook_id,
        made,
        error,
    )
    return Outcome(
        webhook_id=hook.webhook_id,
        alert_id=alert_id,
        delivered=False,
        attempts=made,
        status=status,
        error=error,
        first_attempt_at=first if made else None,
        last_attempt_at=last if made else None,
    )


def client_session() -> aiohttp.ClientSession:
    """The HTTP client of a delivery process (TLS verified; no proxy from the environment)."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=100, limit_per_host=8),
        trust_env=False,
    )

"""Per-org rate limits of ``POST /v1/events``: token buckets counted in events.

One org's feed must not be able to fill the log faster than the fold works it off for
everyone (each partition folds its records in order, whoever sent them). Each org has
two buckets, both refilled continuously and holding at most one minute's worth:

* every event of a request (each non-blank NDJSON line counts, valid or not: a refused
  line cost validation all the same);
* practice-wide events (``practice.configured``, ``month.closed``), which are written
  to every partition of the log and may make the fold re-evaluate every patient of the
  org, so their limit is far tighter.

A request the bucket cannot pay for is refused whole (429, ``Retry-After``) and costs
nothing; a batch larger than a minute's worth can never pass and says so.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

DEFAULT_EVENTS_PER_MINUTE = 6000
"""Per org: 100 events a second, sustained. A practice of 5,000 patients logs a few
thousand activities a day; bulk loads belong to ``caretally ingest``."""
DEFAULT_PRACTICE_EVENTS_PER_MINUTE = 10
"""Per org: ``practice.configured`` is sent when settings change and ``month.closed``
once a month; each makes the fold touch every patient of the org."""


@dataclass(slots=True)
class TokenBucket:
    """``rate`` tokens a second, at most ``capacity`` held; starts full."""

    rate: float
    capacity: float
    tokens: float
    stamp: float

    def _refill(self, now: float) -> None:
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait_for(self, n: float, now: float) -> float:
        """Seconds until ``n`` tokens are there (0: now; ``inf``: never, ``n`` > capacity)."""
        self._refill(now)
        if n > self.capacity:
            return math.inf
        return max(0.0, (n - self.tokens) / self.rate)

    def take(self, n: float, now: float) -> None:
        self._refill(now)
        self.tokens -= n


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request was refused: HTTP status, message and ``Retry-After`` seconds."""

    status: int
    message: str
    retry_after: int | None


@dataclass(slots=True)
class OrgRateLimits:
    """The two buckets of every org, created on first use."""

    events_per_minute: int = DEFAULT_EVENTS_PER_MINUTE
    practice_events_per_minute: int = DEFAULT_PRACTICE_EVENTS_PER_MINUTE
    clock: Callable[[], float] = time.monotonic
    _buckets: dict[tuple[str, str], TokenBucket] = field(default_factory=dict)

    def _bucket(self, org_id: str, kind: str, per_minute: int) -> TokenBucket:
        key = (org_id, kind)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = TokenBucket(per_minute / 60.0, per_minute, per_minute, self.clock())
            self._buckets[key] = bucket
        return bucket

    def check(self, org_id: str, events: int, practice_events: int = 0) -> Refusal | None:
        """Charge ``org_id`` for a request of ``events`` events, ``practice_events`` of them
        practice-wide; the refusal (and no charge) when a bucket cannot pay."""
        now = self.clock()
        wanted = [
            (self._bucket(org_id, "events", self.events_per_minute), events, "events"),
            (
                self._bucket(org_id, "practice", self.practice_events_per_minute),
                practice_events,
                "practice-wide events",
            ),
        ]
        for bucket, n, what in wanted:
            if n == 0:
                continue
            wait = bucket.wait_for(n, now)
            limit = int(bucket.capacity)
            if math.isinf(wait):
                return Refusal(
                    413,
                    f"the request holds {n} {what}, more than this organisation may send in "
                    f"a minute ({limit}); split it",
                    None,
                )
            if wait > 0:
                return Refusal(
                    429,
                    f"rate limit: this organisation may send {limit} {what} a minute; "
                    "retry after the time in Retry-After",
                    max(1, math.ceil(wait)),
                )
        for bucket, n, _ in wanted:
            if n:
                bucket.take(n, now)
        return None

    def exhausted(self, org_id: str) -> Refusal | None:
        """The refusal when ``org_id`` cannot send even one event now (checked before a
        body is read, so a throttled client costs no parsing)."""
        bucket = self._bucket(org_id, "events", self.events_per_minute)
        wait = bucket.wait_for(1, self.clock())
        if wait <= 0:
            return None
        return Refusal(
            429,
            f"rate limit: this organisation may send {int(bucket.capacity)} events a minute; "
            "retry after the time in Retry-After",
            max(1, math.ceil(wait)),
        )

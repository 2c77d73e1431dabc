"""Per webhook, a circuit breaker: once a delivery to it is parked, its next alerts are
parked at once, without an attempt, until a cool-down has passed; then the next alert is
a probe (one attempt): delivered, the circuit closes; failed, it stays open for another
cool-down (docs/webhooks.md "One dead receiver does not hold up the others").

A dead receiver so costs one retry budget, then one attempt per cool-down, however many
alerts and batches come meanwhile; the other webhooks' deliveries never wait for it.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from streams.webhooks.sender import Outcome, now_iso

log = logging.getLogger("caretally.webhooks")


class State(Enum):
    CLOSED = "closed"  # deliver with every attempt of the policy
    OPEN = "open"  # park without an attempt
    PROBE = "probe"  # one attempt: does the receiver answer again?


@dataclass(frozen=True, slots=True)
class _Opened:
    at: float  # the clock's time
    at_iso: str
    why: str


class Circuit:
    """The circuits of every webhook of one process. ``cooldown_s`` ``math.inf``: an open
    circuit stays open (one run of ``webhooks replay``)."""

    def __init__(self, cooldown_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.cooldown_s = cooldown_s
        self.clock = clock
        self._open: dict[str, _Opened] = {}

    def state(self, webhook_id: str) -> State:
        opened = self._open.get(webhook_id)
        if opened is None:
            return State.CLOSED
        if self.clock() - opened.at >= self.cooldown_s:
            return State.PROBE
        return State.OPEN

    def record(self, webhook_id: str, outcome: Outcome) -> None:
        """A delivery attempted under :meth:`state` has ended: delivered, the circuit
        closes; failed after an attempt, it opens (again) from now."""
        if outcome.delivered:
            if self._open.pop(webhook_id, None) is not None:
                log.info("webhook %s answers again: its circuit is closed", webhook_id)
        elif outcome.attempts:
            self._open[webhook_id] = _Opened(self.clock(), now_iso(), outcome.error)
            log.warning(
                "webhook %s: circuit open (%s); its alerts are parked without an attempt%s",
                webhook_id,
                outcome.error,
                "" if math.isinf(self.cooldown_s) else f" for {self.cooldown_s:g} s",
            )

    def refusal(self, webhook_id: str) -> str:
        """Why a delivery of an open circuit was not attempted."""
        opened = self._open[webhook_id]
        then = (
            "no further attempt in this run"
            if math.isinf(self.cooldown_s)
            else f"the first alert {self.cooldown_s:g} s after it is a probe"
        )
        return (
            f"not attempted: the circuit is open (a delivery to this webhook failed at "
            f"{opened.at_iso}: {opened.why}); {then}"
        )[:500]

"""The Prometheus metrics of ``caretally webhooks deliver`` (``GET /metrics`` on
``--web-port``, docs/webhooks.md "Operating it").

Labels are bounded sets only: an outcome, an attempt's result. Never an org, a webhook
id (any operator may add webhooks) or a patient id.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import Counter, Gauge, Histogram

from streams.observe.prometheus import new_registry

OUTCOMES = ("delivered", "parked", "dead_lettered")
RESULTS = ("ok", "http_error", "timeout", "connection_error", "refused_by_circuit")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class DeliverMetrics:
    """Counters, gauges and histograms of one delivery process (a registry of its own)."""

    def __init__(self) -> None:
        self.registry = new_registry(process=True)
        r = self.registry
        self.deliveries = Counter(
            "caretally_webhook_deliveries",
            "Deliveries (an alert for a webhook) by how they ended: delivered (a 2xx), "
            "parked, or dead_lettered (a record that is not an alert)",
            ["outcome"],
            registry=r,
        )
        self.attempts = Counter(
            "caretally_webhook_attempts",
            "POSTs by result (refused_by_circuit: parked without one, its circuit open)",
            ["result"],
            registry=r,
        )
        self.latency = Histogram(
            "caretally_webhook_delivery_seconds",
            "Time from a delivery's first attempt to its 2xx, retries included",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.open_circuits = Gauge(
            "caretally_webhook_open_circuits",
            "Registered webhooks whose circuit is open (their alerts are parked)",
            registry=r,
        )
        self.batches = Counter(
            "caretally_webhook_batches_committed",
            "Batches of alerts whose offsets were committed",
            registry=r,
        )
        self.kafka_up = Gauge(
            "caretally_webhook_kafka_up", "1 when the broker answered the last probe", registry=r
        )
        self.ready = Gauge(
            "caretally_webhook_ready", "1 when connected and assigned partitions", registry=r
        )
        for outcome in OUTCOMES:  # every series from the start: a rate needs its zero
            self.deliveries.labels(outcome)
        for result in RESULTS:
            self.attempts.labels(result)

    def attempt(self, result: str) -> None:
        self.attempts.labels(result).inc()

    def watch_circuits(self, count: Callable[[], int]) -> None:
        self.open_circuits.set_function(count)

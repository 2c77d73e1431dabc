"""The Prometheus metrics of ``caretally serve`` (``GET /metrics``, no key needed).

One registry per app (:func:`streams.observe.prometheus.new_registry`), so servers that
tests start in one process never share counters. Labels never hold an org or a patient
id: route templates (``/v1/orgs/{org}/worklist``, ``(no route)``), status codes, standard
methods (others are ``other``), topic roles.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from streams.http.state_cache import StateCache
from streams.observe.prometheus import method_label, new_registry

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
PRODUCE_TARGETS = ("ingress", "deadletter")


class ServeMetrics:
    """Counters and histograms the routes update; gauges read from the cache when scraped."""

    def __init__(self, cache: StateCache, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else new_registry(process=True)
        r = self.registry
        self.requests = Counter(
            "caretally_http_requests",
            "HTTP requests answered, by route template, method and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "caretally_http_request_seconds",
            "Time to answer a request, by route template (an alert stream: its lifetime)",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.events_accepted = Counter(
            "caretally_events_accepted", "Events written to the ingress topic (202)", registry=r
        )
        self.events_rejected = Counter(
            "caretally_events_rejected",
            "Events refused by validation (the invalid lines of a 400 batch)",
            registry=r,
        )
        self.events_dead_lettered = Counter(
            "caretally_events_dead_lettered",
            "Events too large to accept, written to the dead-letter topic",
            registry=r,
        )
        self.produce_errors = Counter(
            "caretally_produce_errors",
            "Writes to Kafka that failed, by topic role (a batch counts once)",
            ["topic"],
            registry=r,
        )
        for target in PRODUCE_TARGETS:
            self.produce_errors.labels(target)  # present at 0 from the start
        Gauge(
            "caretally_kafka_up", "1 when the broker answered the last probe", registry=r
        ).set_function(lambda: float(cache.kafka_up))
        Gauge(
            "caretally_cache_caught_up",
            "1 once the state cache has read the billing and alerts topics to their ends",
            registry=r,
        ).set_function(lambda: float(cache.caught_up))
        Gauge(
            "caretally_cache_billing_views", "Patient-months in the state cache", registry=r
        ).set_function(lambda: float(len(cache.billing)))
        Gauge(
            "caretally_sse_clients", "Open alert streams (Server-Sent Events)", registry=r
        ).set_function(lambda: float(cache.subscribers))
        Gauge("caretally_ready", "1 when /readyz answers 200", registry=r).set_function(
            lambda: float(cache.ready)
        )

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        m = method_label(method)
        self.requests.labels(route, m, str(status)).inc()
        self.request_seconds.labels(route, m).observe(seconds)

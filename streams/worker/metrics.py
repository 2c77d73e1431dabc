"""The worker's Prometheus metrics (``GET /metrics`` on ``--web-port``).

One registry per worker (not the library's global one), so in-process tests and
several apps never share counters. Labels never hold an org or a patient id: topics,
partitions, reasons from a fixed set, alert kinds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

REASONS = (
    "empty record",
    "too_large",
    "conflicting_duplicate",
    "over_limit",
    "conflict",
    "undecodable",
    "bad staff record",
    "unreadable event",
    "billing_view_contract",
)
"""Dead-letter reasons by their first words; anything else (a validation message) is
counted as ``invalid``."""

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def reason_class(reason: str) -> str:
    """The bounded label of a dead letter's reason."""
    for known in REASONS:
        if reason.startswith(known):
            return known.replace(" ", "_")
    return "invalid"


class _Lag(Collector):
    """Consumer lag per topic and partition, read when scraped."""

    def __init__(self, source: Callable[[], Iterable[tuple[str, int, int]]]) -> None:
        self.source = source

    def collect(self) -> Iterable[Any]:
        family = GaugeMetricFamily(
            "caretally_consumer_lag_records",
            "Records between this worker's position and the fetch highwater",
            labels=["topic", "partition"],
        )
        for topic, partition, lag in self.source():
            family.add_metric([topic, str(partition)], lag)
        yield family


class WorkerMetrics:
    """Counters, gauges and histograms of one worker process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.records_in = Counter(
            "caretally_records_in", "Records read, by topic", ["topic"], registry=r
        )
        self.records_out = Counter(
            "caretally_records_out",
            "Records written and acknowledged, by topic",
            ["topic"],
            registry=r,
        )
        self.dead_letters = Counter(
            "caretally_dead_letters", "Records dead-lettered, by reason", ["reason"], registry=r
        )
        self.alerts = Counter("caretally_alerts", "Alerts emitted, by kind", ["kind"], registry=r)
        self.gate = Counter(
            "caretally_gate_records",
            "Ingress records by the gate's verdict (new, duplicate, rejected, rerouted)",
            ["verdict"],
            registry=r,
        )
        self.batch_seconds = Histogram(
            "caretally_batch_seconds",
            "Time from a batch's arrival to its outputs acknowledged",
            ["role"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.fold_seconds = Histogram(
            "caretally_fold_seconds",
            "Time spent in the core folding one batch (no I/O)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_records = Histogram(
            "caretally_batch_records",
            "Records per batch",
            ["role"],
            buckets=(1, 10, 100, 500, 1000, 2000, 5000, 10000),
            registry=r,
        )
        self.assigned = Gauge(
            "caretally_assigned_partitions", "Partitions assigned, by role", ["role"], registry=r
        )
        self.kafka_up = Gauge(
            "caretally_kafka_up", "1 when the broker answered the last probe", registry=r
        )
        self.ready = Gauge(
            "caretally_ready", "1 when connected and assigned partitions", registry=r
        )

    def watch_lag(self, source: Callable[[], Iterable[tuple[str, int, int]]]) -> None:
        self.registry.register(_Lag(source))

"""The topics of the pipeline, their settings, and idempotent creation.

Names carry an optional prefix (``--topic-prefix`` / ``CARETALLY_TOPIC_PREFIX``) so
several pipelines (tests, tenants of a shared broker) can live on one cluster.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING

from streams.kafka.limits import PRODUCER_MAX_REQUEST_BYTES

if TYPE_CHECKING:
    from streams.kafka.clients import Connection

DEFAULT_PARTITIONS = 8
UNLIMITED = "-1"


@dataclass(frozen=True)
class Topics:
    """Topic names; ``prefix`` is prepended verbatim (use a trailing dot)."""

    prefix: str = ""

    @classmethod
    def from_env(cls, prefix: str | None = None) -> Topics:
        return cls(prefix if prefix is not None else os.environ.get("CARETALLY_TOPIC_PREFIX", ""))

    @property
    def ingress(self) -> str:
        """Untrusted input: whatever feeds send, as sent. Partitioned by org (the org
        part of the key, ``streams.kafka.partitioning``): order within a practice is the
        order that matters (an activity after ``month.closed`` is late; one before it is
        not), and each partition is decided by one gate. Created with as many
        partitions as the log; an existing one keeps its count (one still works)."""
        return f"{self.prefix}care.ingress.v1"

    @property
    def events(self) -> str:
        """The immutable log: validated, new events, keyed ``org_id:patient_id``."""
        return f"{self.prefix}care.events.v1"

    @property
    def deadletter(self) -> str:
        """Rejected input with its raw bytes, the reason and where it came from."""
        return f"{self.prefix}care.deadletter.v1"

    @property
    def alerts(self) -> str:
        return f"{self.prefix}care.alerts.v1"

    @property
    def webhooks_parked(self) -> str:
        """Webhook deliveries that failed every attempt (``caretally webhooks``), keyed by
        org, and the markers that say one was since delivered (docs/webhooks.md)."""
        return f"{self.prefix}care.webhooks.parked.v1"

    @property
    def billing(self) -> str:
        """Latest billing view per patient-month, keyed ``org_id:patient_id:month``."""
        return f"{self.prefix}care.billing.v1"

    @property
    def staff(self) -> str:
        """Activity intervals repartitioned by ``org_id:staff_id`` (internal)."""
        return f"{self.prefix}care.staff.v1"

    def settings(self) -> dict[str, dict[str, str]]:
        """Explicit per-topic configs (Kafka names). Tansu stores but does not apply them.

        ``max.message.bytes`` is our producers' ``max_request_size`` on every topic: a
        Kafka broker's default (1,048,588) is below it, and would refuse an event at
        ``EVENT_MAX_BYTES`` with its key and headers that our producers send."""
        week = str(7 * 24 * 3600 * 1000)
        size = {"max.message.bytes": str(PRODUCER_MAX_REQUEST_BYTES)}
        return {name: {**config, **size} for name, config in self._retention(week).items()}

    def _retention(self, week: str) -> dict[str, dict[str, str]]:
        alerts_kept = str(90 * 24 * 3600 * 1000)  # alerts, and parked deliveries of them
        return {
            self.ingress: {"cleanup.policy": "delete", "retention.ms": week},
            self.events: {
                "cleanup.policy": "delete",
                "retention.ms": UNLIMITED,
                "retention.bytes": UNLIMITED,
            },
            self.deadletter: {"cleanup.policy": "delete", "retention.ms": UNLIMITED},
            # parked deliveries hold alerts (PHI): kept as long as care.alerts.v1, no longer
            self.webhooks_parked: {"cleanup.policy": "delete", "retention.ms": alerts_kept},
            self.alerts: {"cleanup.policy": "delete", "retention.ms": alerts_kept},
            self.billing: {"cleanup.policy": "compact", "min.compaction.lag.ms": "0"},
            self.staff: {"cleanup.policy": "delete", "retention.ms": UNLIMITED},
        }


def ensure_topics(
    kafka: Connection,
    topics: Topics,
    partitions: int = DEFAULT_PARTITIONS,
    only: Collection[str] | None = None,
) -> list[str]:
    """Create the missing topics (existing ones are left as they are); returns those created.
    ``only``: just these of them (a command that must not size the log, e.g. webhooks)."""
    from kafka.admin import NewTopic

    from streams.kafka.clients import TopicAlreadyExistsError, kafka_admin

    admin = kafka_admin(kafka)
    try:
        existing = set(admin.list_topics())
        created = []
        for name, config in topics.settings().items():
            if name in existing or (only is not None and name not in only):
                continue
            try:
                count = partitions
                admin.create_topics(
                    [NewTopic(name, count, 1, topic_configs=config)], timeout_ms=15000
                )
                created.append(name)
            except TopicAlreadyExistsError:  # another process won the race
                pass
        return created
    finally:
        admin.close()


def partition_counts(kafka: Connection, names: list[str]) -> dict[str, int]:
    """Partitions per topic, as the broker reports them."""
    from streams.kafka.clients import METADATA_CONSUMER, kafka_consumer

    consumer = kafka_consumer(kafka, METADATA_CONSUMER)
    try:
        return {n: len(consumer.partitions_for_topic(n) or ()) for n in names}
    finally:
        consumer.close()


@dataclass(frozen=True, slots=True)
class TopicShape:
    """What the broker says of one topic: its id (``""`` when it does not exist; a
    recreated topic gets a new one) and its partition count."""

    topic_id: str
    partitions: int


def topic_shapes(kafka: Connection, names: list[str]) -> dict[str, TopicShape]:
    """Id and partition count of each topic (DescribeTopics: never creates one)."""
    from streams.kafka.clients import kafka_admin

    # short waits: a worker asks this while the broker may be away, on a thread that its
    # exit waits for
    admin = kafka_admin(kafka, bootstrap_timeout_ms=2000, request_timeout_ms=3000)
    try:
        return {
            d["name"]: TopicShape(str(d.get("topic_id") or ""), len(d.get("partitions") or ()))
            for d in admin.describe_topics(names)
        }
    finally:
        admin.close()


def topic_ids(kafka: Connection, names: list[str]) -> dict[str, str]:
    """The broker's id of each topic (a recreated topic gets a new one)."""
    return {name: shape.topic_id for name, shape in topic_shapes(kafka, names).items()}


def partition_mismatch(topics: Topics, partitions: int, counts: dict[str, int]) -> str | None:
    """Why the topics' partition counts (``counts``, by name; those absent are not
    judged) do not fit a worker run with ``--partitions partitions``, in one line; None
    when they do. The log and the staff topic have ``partitions`` (practice-wide events
    are written to each of them, and state is rebuilt from each of them); the ingress
    topic may have any count (it is partitioned by org)."""
    for name in (topics.events, topics.staff):
        count = counts.get(name)
        if count is not None and count != partitions:
            return (
                f"topic {name} has {count} partition(s) but the worker runs with "
                f"--partitions {partitions}; start it with --partitions {count}"
            )
    return None

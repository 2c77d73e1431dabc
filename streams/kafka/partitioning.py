"""Ingress is partitioned by practice: every record of an org goes to one partition.

Order within a practice is all the pipeline needs (an activity after the practice's
``month.closed`` is late, one before it is not), so ``care.ingress.v1`` has as many
partitions as the log and each org's records go to the partition of its **org key**:
the ``org_id`` part of the record key (``org_id:patient_id``, escaped as in
``streams.kafka.records``), hashed as Kafka's default partitioner hashes a key
(murmur2). A producer that keys its records by the bare ``org_id`` lands there too.

Our writers (``caretally ingest``, ``serve``, the demo) use :class:`IngressPartitioner`;
the gate forwards a record found on another partition than its org's to that one
(``rerouted``), so every ``event_id`` of an org is decided by the one gate that owns
the org's partition and two gates can never both accept it.
"""

from __future__ import annotations

import random
from typing import Any

from kafka.partitioner.default import murmur2

from streams.kafka.records import org_key

_CACHE_LIMIT = 100_000


def key_partition(key: bytes, partitions: int) -> int:
    """Kafka's default partitioner: murmur2 of ``key``, positive, modulo ``partitions``."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def org_of_key(key: bytes) -> bytes:
    """The org key of a record key (the key itself when it has no ``:``)."""
    return bytes(key).split(b":", 1)[0]


class _Homes:
    """``org key -> partition`` for one partition count, memoised (murmur2 in pure
    Python costs about a tenth of a send)."""

    def __init__(self) -> None:
        self.cache: dict[tuple[bytes, int], int] = {}

    def __call__(self, org: bytes, partitions: int) -> int:
        slot = (org, partitions)
        found = self.cache.get(slot)
        if found is None:
            if len(self.cache) > _CACHE_LIMIT:
                self.cache.clear()
            found = key_partition(org, partitions)
            self.cache[slot] = found
        return found


home_partition = _Homes()
"""``home_partition(org_key, partitions)``: the ingress partition of an org key."""


def ingress_partition(org_id: str, partitions: int) -> int:
    """The ingress partition of ``org_id`` when ingress has ``partitions`` partitions."""
    return home_partition(org_key(org_id), partitions)


class IngressPartitioner:
    """aiokafka's ``partitioner``: a keyed record goes to its org's partition."""

    def __call__(self, key: bytes | None, all_partitions: list[int], available: list[int]) -> int:
        if key is None:
            return random.choice(available or all_partitions)
        return all_partitions[home_partition(org_of_key(key), len(all_partitions))]


def kafka_python_ingress_partitioner() -> Any:
    """kafka-python's ``partitioner``: the same placement as :class:`IngressPartitioner`."""
    from kafka.partitioner.default import DefaultPartitioner

    class _ByOrg(DefaultPartitioner):  # type: ignore[misc]
        def partition(self, topic, key, serialized_key, value, serialized_value, cluster):  # type: ignore[no-untyped-def]
            if serialized_key is None:
                return super().partition(topic, key, None, value, serialized_value, cluster)
            parts = sorted(cluster.partitions_for_topic(topic) or ())
            return parts[home_partition(org_of_key(serialized_key), len(parts))]

    return _ByOrg()


def log_partition(key: bytes, partitions: int) -> int:
    """The log partition of a record key (``org_id:patient_id``): Kafka's default
    partitioner on the whole key, as the log writer's producer places it."""
    return key_partition(key, partitions)

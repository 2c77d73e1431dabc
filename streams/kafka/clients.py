"""Every Kafka client of caretally is built here, from one :class:`KafkaSettings`.

Three libraries, each where it serves best: kafka-python (``caretally ingest``, restore,
the archiver, topic administration: its idempotent producer works on Tansu), aiokafka
(the HTTP server, the close, direct log reads, the demo's client) and Faust (the worker,
on aiokafka). A builder takes the settings, a named preset of what its call site needs
(the values each had before they moved here) and per-call overrides; it adds the address
and the security settings (TLS context, SASL credentials), which no call site spells out.

The names of the libraries' errors and structures used elsewhere are re-exported here, so
only ``streams/kafka`` and ``streams/worker`` import a Kafka library.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
from collections.abc import Callable, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka import TopicPartition as AioTopicPartition
from aiokafka.errors import KafkaError as AioKafkaError
from aiokafka.errors import MessageSizeTooLargeError as AioMessageSizeTooLargeError
from aiokafka.errors import RecordListTooLargeError as AioRecordListTooLargeError
from kafka import (
    ConsumerRebalanceListener,
    KafkaAdminClient,
    KafkaConsumer,
    KafkaProducer,
    TopicPartition,
)
from kafka.errors import (
    KafkaError,
    MessageSizeTooLargeError,
    OffsetOutOfRangeError,
    TopicAlreadyExistsError,
)
from kafka.partitioner import DefaultPartitioner
from kafka.structs import OffsetAndMetadata

from streams.kafka.limits import PRODUCER_MAX_REQUEST_BYTES
from streams.kafka.partitioning import IngressPartitioner
from streams.kafka.settings import KafkaSettings, split_bootstrap

__all__ = [
    "AIOKafkaConsumer",
    "AIOKafkaProducer",
    "AioKafkaError",
    "AioMessageSizeTooLargeError",
    "AioRecordListTooLargeError",
    "AioTopicPartition",
    "KafkaError",
    "MessageSizeTooLargeError",
    "OffsetAndMetadata",
    "OffsetOutOfRangeError",
    "TopicAlreadyExistsError",
    "TopicPartition",
]

Connection = KafkaSettings | str
"""Settings, or a bare ``host:port`` list (plaintext): what every room function takes."""

Preset = Mapping[str, Any]

# -- presets: each call site's parameters, exactly as they were -----------------------------

ADMIN_CLIENT_ID = "caretally-admin"

INGEST_PRODUCER: Preset = {
    "client_id": "caretally-ingest",
    "acks": "all",
    "linger_ms": 10,
    "batch_size": 256 * 1024,
    "compression_type": None,
    "allow_auto_create_topics": False,  # ensure_topics creates them with their settings
    "bootstrap_timeout_ms": 5_000,
    "request_timeout_ms": 15_000,
    "max_block_ms": 15_000,
    "delivery_timeout_ms": 30_000,  # see streams.ingest.delivery.producer_settings
    "max_request_size": PRODUCER_MAX_REQUEST_BYTES,  # an event at the limit always fits
}
"""kafka-python, ``caretally ingest`` (and, with its own client id and linger, restore)."""

ARCHIVE_CONSUMER: Preset = {
    "client_id": "caretally-archiver",
    "enable_auto_commit": False,
    # we always seek; an out-of-range position means the log lost what the archive
    # expects (retention) and must stop the archiver, not silently skip or repeat
    "auto_offset_reset": "none",
    "allow_auto_create_topics": False,
    # Tansu parks each join for half of it (docs/kafka-notes.md §0.5)
    "session_timeout_ms": 6000,
    "heartbeat_interval_ms": 1000,
    "max_poll_records": 5000,
    "max_partition_fetch_bytes": 4 * 1024 * 1024,
    "fetch_max_wait_ms": 100,
    # never an aborted transaction's records, nor an open one's (on Kafka; Tansu returns
    # aborted records all the same: docs/kafka-notes.md §0.6)
    "isolation_level": "read_committed",
}
"""kafka-python, the archiver and its highwater probe (``group_id`` per call)."""

ARCHIVE_DEADLETTER_PRODUCER: Preset = {
    "client_id": "caretally-archiver",
    "acks": "all",
    "max_request_size": PRODUCER_MAX_REQUEST_BYTES,
}
"""kafka-python, the archiver's dead letters."""

METADATA_CONSUMER: Preset = {"client_id": "caretally-meta", "isolation_level": "read_committed"}
"""kafka-python, partition counts."""

LOG_READER: Preset = {
    "enable_auto_commit": False,
    "group_id": None,
    "auto_offset_reset": "earliest",
    "max_partition_fetch_bytes": 4 * 1024 * 1024,
    "fetch_max_wait_ms": 100,
    "isolation_level": "read_committed",
}
"""aiokafka, direct reads of a stretch of a topic (``streams.kafka.log_reader``)."""

CLOSE_PRODUCER: Preset = {
    "acks": "all",
    "client_id": "caretally-close",
    "request_timeout_ms": 15_000,
    "max_request_size": PRODUCER_MAX_REQUEST_BYTES,
}
"""aiokafka, ``caretally close`` appending ``month.closed``."""

SERVE_PRODUCER: Preset = {
    "client_id": "caretally-serve",
    "acks": "all",
    # Tansu rejects aiokafka's InitProducerId (docs/kafka-notes.md §0.3)
    "enable_idempotence": False,
    "linger_ms": 2,
    "request_timeout_ms": 15000,
    "max_request_size": PRODUCER_MAX_REQUEST_BYTES,
    "partitioner": IngressPartitioner(),  # ingress is partitioned by org
}
"""aiokafka, ``caretally serve`` writing to the ingress topic."""

SERVE_CACHE_CONSUMER: Preset = {
    "client_id": "caretally-serve",
    "group_id": None,
    "enable_auto_commit": False,
    "auto_offset_reset": "earliest",
    "fetch_max_wait_ms": 200,
    "request_timeout_ms": 15000,
    "isolation_level": "read_committed",
}
"""aiokafka, ``caretally serve``'s read model following billing and alerts."""

DEMO_PRODUCER: Preset = {
    "acks": "all",
    "linger_ms": 5,
    "max_batch_size": 256 * 1024,
    "max_request_size": PRODUCER_MAX_REQUEST_BYTES,
    "partitioner": IngressPartitioner(),  # ingress is partitioned by org
}
"""aiokafka, the demo's (and tests') feed of the ingress topic."""

FOLLOWER_CONSUMER: Preset = {
    "group_id": None,
    "enable_auto_commit": False,
    "auto_offset_reset": "earliest",
    "fetch_max_wait_ms": 50,
    "isolation_level": "read_committed",
}
"""aiokafka, the demo's (and tests') reader of billing, alerts and dead letters."""

WORKER_CONSUMER: Preset = {
    "enable_auto_commit": False,  # offsets are committed once a batch's outputs are acked
    "auto_offset_reset": "earliest",
    "isolation_level": "read_committed",  # an aborted transaction is never folded
    # Tansu parks each join for half of the session timeout (docs/kafka-notes.md §0.5)
    "session_timeout_ms": 6000,
    "heartbeat_interval_ms": 1000,
    "max_poll_interval_ms": 300_000,
    "fetch_max_wait_ms": 10,  # Tansu can hold a fetch this long though data arrived
    "max_partition_fetch_bytes": 4 * 1024 * 1024,
    "fetch_max_bytes": 32 * 1024 * 1024,
}
"""aiokafka, the worker's batched consumers of ingress, the log and the staff topic
(``group_id`` per role, ``max_records`` per ``getmany`` call)."""

WORKER_PRODUCER: Preset = {
    "client_id": "caretally-worker",
    "acks": "all",
    # Tansu rejects aiokafka's InitProducerId (docs/kafka-notes.md §0.3)
    "enable_idempotence": False,
    "linger_ms": 2,
    "max_batch_size": 256 * 1024,
    "max_request_size": PRODUCER_MAX_REQUEST_BYTES,
    "request_timeout_ms": 15_000,
}
"""aiokafka, the worker's writes: the log, dead letters, billing, alerts, staff."""

WORKER_APP: Preset = {
    "broker_session_timeout": 6,  # Tansu parks each join for half of it (docs/kafka-notes.md §0.5)
    "broker_heartbeat_interval": 1,
    "consumer_auto_offset_reset": "earliest",
    "producer_linger": 0.002,
    "producer_max_batch_size": 256 * 1024,
    "producer_max_request_size": PRODUCER_MAX_REQUEST_BYTES,
    "stream_buffer_maxsize": 32768,
    "broker_max_poll_records": 4000,
    "broker_commit_interval": 1.0,
}
"""Faust, the worker's client settings (its app settings stay in ``streams.worker.app``)."""


# -- security -----------------------------------------------------------------------------


def _settings(kafka: Connection) -> KafkaSettings:
    return KafkaSettings.of(kafka)


def security(kafka: Connection) -> dict[str, Any]:
    """The security keywords of an aiokafka or kafka-python client (same names in both)."""
    s = _settings(kafka)
    out: dict[str, Any] = {"security_protocol": s.security_protocol}
    if s.tls:
        out["ssl_context"] = s.ssl_context()
    if s.sasl:
        out["sasl_mechanism"] = s.sasl_mechanism
        out["sasl_plain_username"] = s.sasl_username
        out["sasl_plain_password"] = s.password()
    return out


def client_config(
    kafka: Connection, preset: Preset, overrides: Mapping[str, Any]
) -> dict[str, Any]:
    """The keywords of a client: the preset, the overrides, then the address, the security
    settings and (when the settings name one) the client id."""
    s = _settings(kafka)
    config = {**preset, **overrides, "bootstrap_servers": s.bootstrap, **security(s)}
    if s.client_id:
        config["client_id"] = s.client_id
    return config


# -- errors -------------------------------------------------------------------------------


def describe(exc: BaseException) -> str:
    """``Type: message`` on one line (kafka-python's errors already start with their type)."""
    name = type(exc).__name__
    text = " ".join(str(exc).split())
    if not text or text == name:
        return name
    return text if text.startswith(f"{name}: ") else f"{name}: {text}"


# -- kafka-python -------------------------------------------------------------------------


class KeyCachingPartitioner(DefaultPartitioner):  # type: ignore[misc]
    """The default (murmur2) partitioner, memoised per topic, partition count and key:
    murmur2 in pure Python is a tenth of a send's cost."""

    def __init__(self) -> None:
        self.cache: dict[tuple[str, int, bytes], int] = {}

    def partition(self, topic, key, serialized_key, value, serialized_value, cluster):  # type: ignore[no-untyped-def]
        if serialized_key is None:
            return super().partition(topic, key, None, value, serialized_value, cluster)
        slot = (topic, len(cluster.partitions_for_topic(topic) or ()), serialized_key)
        found = self.cache.get(slot)
        if found is None:
            if len(self.cache) > 1_000_000:
                self.cache.clear()
            found = super().partition(topic, key, serialized_key, value, serialized_value, cluster)
            self.cache[slot] = found
        return found


def kafka_producer(kafka: Connection, preset: Preset, **overrides: Any) -> KafkaProducer:
    """A kafka-python producer (it connects as it is built: :class:`KafkaError`)."""
    return KafkaProducer(**client_config(kafka, preset, overrides))


def close_kafka_producer(producer: KafkaProducer, flushed: bool) -> None:
    """Close a kafka-python producer; if records are still unanswered (``flushed`` is
    False), fail them and stop its sender thread at once.

    kafka-python's ``close(timeout)`` flushes first and raises when that times out,
    leaving the sender thread to retry a dead broker for ever (once an idempotent
    producer has to re-initialise its producer id, no batch expires any more).
    """
    if flushed:
        with contextlib.suppress(KafkaError):
            producer.close(timeout=5)
            return
    sender = getattr(producer, "_sender", None)
    if sender is not None:  # kafka-python 3: close() has no other way to give up
        sender.force_close()  # fails the pending records ("closed forcefully")
        sender.join(5)
    with contextlib.suppress(KafkaError):
        producer.close(timeout=0)


def kafka_consumer(kafka: Connection, preset: Preset, **overrides: Any) -> KafkaConsumer:
    """A kafka-python consumer (it connects as it is built: :class:`KafkaError`)."""
    return KafkaConsumer(**client_config(kafka, preset, overrides))


def rebalance_listener(
    on_revoked: Callable[[Any], None], on_assigned: Callable[[Any], None]
) -> ConsumerRebalanceListener:
    """kafka-python rebalance callbacks (they run inside ``poll``)."""

    class Listener(ConsumerRebalanceListener):  # type: ignore[misc]
        def on_partitions_revoked(self, revoked: Any) -> None:
            on_revoked(revoked)

        def on_partitions_assigned(self, assigned: Any) -> None:
            on_assigned(assigned)

    return Listener()


def admin_config(kafka: Connection, **overrides: Any) -> dict[str, Any]:
    return client_config(kafka, {"client_id": ADMIN_CLIENT_ID}, overrides)


def kafka_admin(kafka: Connection, **overrides: Any) -> KafkaAdminClient:
    """A kafka-python admin client (it connects as it is built: :class:`KafkaError`)."""
    return KafkaAdminClient(**admin_config(kafka, **overrides))


# -- aiokafka -----------------------------------------------------------------------------


def aio_producer(kafka: Connection, preset: Preset, **overrides: Any) -> AIOKafkaProducer:
    """An aiokafka producer (not started: it connects on ``start()``)."""
    return AIOKafkaProducer(**client_config(kafka, preset, overrides))


def aio_consumer(
    kafka: Connection, preset: Preset, *topics: str, **overrides: Any
) -> AIOKafkaConsumer:
    """An aiokafka consumer (not started: it connects on ``start()``)."""
    return AIOKafkaConsumer(*topics, **client_config(kafka, preset, overrides))


# -- Faust --------------------------------------------------------------------------------


def faust_credentials(kafka: Connection) -> Any:
    """Faust's ``broker_credentials`` for the settings (None in plaintext)."""
    import faust

    s = _settings(kafka)
    if s.sasl:
        return faust.SASLCredentials(
            username=s.sasl_username,
            password=s.password(),
            ssl_context=s.ssl_context(),  # None: SASL_PLAINTEXT
            mechanism=s.sasl_mechanism,
        )
    if s.tls:
        return faust.SSLCredentials(s.ssl_context())
    return None


def faust_broker_settings(kafka: Connection) -> dict[str, Any]:
    """The broker part of a Faust app's settings: address, credentials, client id."""
    s = _settings(kafka)
    out: dict[str, Any] = {"broker": f"kafka://{s.bootstrap}"}
    credentials = faust_credentials(s)
    if credentials is not None:
        out["broker_credentials"] = credentials
    if s.client_id:
        out["broker_client_id"] = s.client_id
    return out


def faust_app(kafka: Connection, app_id: str, preset: Preset, **options: Any) -> Any:
    """The worker's Faust app (its consumer with the short fetch wait of
    ``streams.kafka.faust_transport``); ``options`` are the app's own settings."""
    from streams.kafka.faust_transport import App

    return App(app_id, **{**preset, **options, **faust_broker_settings(kafka)})


# -- reachability -------------------------------------------------------------------------


def connection_problem(kafka: Connection, timeout: float = 0.5) -> str | None:
    """Why the first bootstrap address cannot be reached, in one line (None when it
    can): nothing listening, or (with TLS) a handshake that fails, e.g. a server
    certificate the CA file does not vouch for. No Kafka request is made."""
    s = _settings(kafka)
    host, port = split_bootstrap(s.bootstrap)
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError:
        return f"no Kafka broker answers at {s.bootstrap}"
    with sock:
        context = s.ssl_context()
        if context is None:
            return None
        try:
            with context.wrap_socket(sock, server_hostname=host):
                return None
        except ssl.SSLCertVerificationError as exc:
            return (
                f"the TLS certificate of {host}:{port} is not trusted "
                f"({exc.verify_message}); is ssl_cafile the CA that signed it?"
            )
        except (ssl.SSLError, OSError) as exc:
            return f"no TLS handshake with {host}:{port} ({exc}); does it speak TLS?"

"""The Kafka options of every command that talks to Kafka, and their one start-up.

:func:`kafka_options` adds ``--bootstrap``, ``--topic-prefix`` and ``--kafka-config`` (the
same names, metavars and help everywhere) and hands the command one :class:`KafkaOptions`
as ``kafka``. :func:`connect` is the start-up every such command shares: resolve the
settings (``streams.kafka.settings``: flag > environment > file > default), check that
the broker answers (with TLS: that the handshake succeeds), name the topics, and create
them when the command creates them. ``caretally broker`` has its own options: it is the
broker.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from streams.cli.exits import fail
from streams.kafka.settings import CONFIG_ENV, KafkaSettings, KafkaSettingsError
from streams.kafka.topics import Topics

F = Callable[..., Any]

BOOTSTRAP_HELP = "Kafka bootstrap address [default: $KAFKA_BOOTSTRAP, else 127.0.0.1:9092]."
PREFIX_HELP = "Prepended to every topic name, e.g. 'staging.' [default: $CARETALLY_TOPIC_PREFIX]."
KAFKA_CONFIG_HELP = (
    "TOML file of Kafka connection settings, keys: bootstrap, security_protocol "
    "(PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL), sasl_mechanism (PLAIN, SCRAM-SHA-256, "
    "SCRAM-SHA-512), sasl_username, sasl_password, ssl_cafile, ssl_certfile, ssl_keyfile "
    f"(PEM), client_id [default: ${CONFIG_ENV}]. --bootstrap and the variables KAFKA_<KEY> "
    "(e.g. KAFKA_SASL_PASSWORD) override it."
)
UNREACHABLE_HINT = " (start one with `caretally broker`, or pass --bootstrap)"


@dataclass(frozen=True)
class KafkaOptions:
    """The Kafka options as given (None: not given)."""

    bootstrap: str | None = None
    topic_prefix: str | None = None
    config_file: Path | None = None

    @property
    def topics(self) -> Topics:
        return Topics.from_env(self.topic_prefix)

    def settings(self) -> KafkaSettings:
        """The resolved settings; a usage error (exit 2) naming the problem if unusable."""
        try:
            return KafkaSettings.resolve(self.bootstrap, self.config_file)
        except KafkaSettingsError as exc:
            raise click.UsageError(f"Kafka settings: {exc}") from None


def bootstrap_option(f: F) -> F:
    return click.option("--bootstrap", metavar="HOST:PORT", help=BOOTSTRAP_HELP)(f)


def prefix_option(f: F) -> F:
    return click.option("--topic-prefix", default=None, metavar="PREFIX", help=PREFIX_HELP)(f)


def kafka_config_option(f: F) -> F:
    return click.option(
        "--kafka-config",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        metavar="FILE",
        help=KAFKA_CONFIG_HELP,
    )(f)


def kafka_options(f: F) -> F:
    """``--bootstrap``, ``--topic-prefix`` and ``--kafka-config``, given to the command as
    one ``kafka: KafkaOptions``."""

    @functools.wraps(f)
    def wrapper(*args: Any, **params: Any) -> Any:
        params["kafka"] = KafkaOptions(
            params.pop("bootstrap"), params.pop("topic_prefix"), params.pop("kafka_config")
        )
        return f(*args, **params)

    return bootstrap_option(prefix_option(kafka_config_option(wrapper)))


@dataclass(frozen=True)
class KafkaContext:
    """A command's Kafka, ready: the settings (the broker answered) and the topics."""

    settings: KafkaSettings
    topics: Topics


def connect(
    options: KafkaOptions, *, partitions: int | None = None, timeout: float = 2.0
) -> KafkaContext:
    """Resolve the settings, check the broker answers (else ``error: ...``, exit 1), and
    with ``partitions`` create the missing topics with that many partitions."""
    from streams.kafka.clients import connection_problem, describe
    from streams.kafka.topics import ensure_topics

    settings = options.settings()
    problem = connection_problem(settings, timeout)
    if problem is not None:
        fail(problem + (UNREACHABLE_HINT if problem.startswith("no Kafka broker") else ""))
    topics = options.topics
    if partitions is not None:
        try:
            ensure_topics(settings, topics, partitions)
        except Exception as exc:  # kafka-python raises a zoo of errors for a sick broker
            fail(f"cannot create the topics at {settings.describe()}: {describe(exc)}")
    return KafkaContext(settings, topics)

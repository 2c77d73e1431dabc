"""Where the Kafka cluster is: ``--bootstrap``, else ``$KAFKA_BOOTSTRAP``, else loopback:9092."""

from __future__ import annotations

import os

from streams.kafka.broker import DEFAULT_PORT

ENV = "KAFKA_BOOTSTRAP"
DEFAULT = f"127.0.0.1:{DEFAULT_PORT}"


def resolve(option: str | None) -> tuple[str, bool]:
    """The bootstrap address and whether the user named one (option or environment)."""
    if option:
        return option, True
    env = os.environ.get(ENV, "").strip()
    if env:
        return env, True
    return DEFAULT, False

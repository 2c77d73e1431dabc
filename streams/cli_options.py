"""Options every command that talks to Kafka shares, spelled once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

F = Callable[..., Any]


def bootstrap_option(f: F) -> F:
    return click.option(
        "--bootstrap",
        metavar="HOST:PORT",
        help="Kafka bootstrap address [default: $KAFKA_BOOTSTRAP, else 127.0.0.1:9092].",
    )(f)


def prefix_option(f: F) -> F:
    return click.option(
        "--topic-prefix",
        default=None,
        metavar="PREFIX",
        help="Prepended to every topic name, e.g. 'staging.' [default: $CARETALLY_TOPIC_PREFIX].",
    )(f)

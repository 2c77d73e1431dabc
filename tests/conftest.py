"""Fixtures shared by the integration tests: one embedded Tansu broker per test session
(per xdist worker), on a free loopback port, and a unique topic prefix per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from streams.kafka.broker import EmbeddedBroker
from streams.kafka.topics import Topics


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    log = tmp_path_factory.mktemp("broker") / "tansu.log"
    with EmbeddedBroker(log_path=log) as b:
        yield b


@pytest.fixture
def topics() -> Topics:
    """Topic names no other test uses (the broker is shared by the session)."""
    return Topics(prefix=f"t{uuid.uuid4().hex[:10]}.")

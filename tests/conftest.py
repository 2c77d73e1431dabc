"""Fixtures and markers for the whole suite.

Layers: ``tests/unit`` (one module or command, no broker), ``tests/property`` (hypothesis laws
and engine agreement, no broker), ``tests/integration`` (a real broker). A test is marked
``integration`` when it asks for the ``broker`` fixture, lives in ``tests/integration`` or is
marked by hand; ``make test-fast`` runs ``-m "not integration"``. Any other test that tries to
start the embedded broker fails at once, so an unmarked broker test cannot hide in the fast run.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.kafka.broker import EmbeddedBroker
from streams.kafka.topics import Topics

INTEGRATION_DIR = Path(__file__).parent / "integration"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        in_folder = INTEGRATION_DIR in Path(str(item.fspath)).parents
        if in_folder or "broker" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(autouse=True)
def _no_broker_outside_integration(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    if request.node.get_closest_marker("integration") is not None:
        return

    def refuse(self: EmbeddedBroker) -> None:
        raise RuntimeError(f"{request.node.nodeid} starts a broker: mark it integration")

    monkeypatch.setattr(EmbeddedBroker, "start", refuse)


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    log = tmp_path_factory.mktemp("broker") / "tansu.log"
    with EmbeddedBroker(log_path=log) as b:
        yield b


@pytest.fixture
def topics() -> Topics:
    """Topic names no other test uses (the broker is shared by the session)."""
    return Topics(prefix=f"t{uuid.uuid4().hex[:10]}.")

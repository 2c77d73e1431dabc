"""Markers and the broker guard for the whole suite.

Layers: ``tests/unit`` (one module or command, no broker), ``tests/property`` (hypothesis laws
and engine agreement, no broker), ``tests/integration`` (a real broker), ``tests/support``
(helpers, imported as ``support.x``). The folder decides: every test in tests/integration is
marked ``integration`` (``make test-fast`` runs ``-m "not integration"``) and only there is the
``broker`` fixture defined (tests/integration/conftest.py). A test anywhere else that starts
an embedded broker fails at once, so a broker test cannot hide in the fast run.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from streams.kafka.broker import EmbeddedBroker
from streams.kafka.topics import Topics

INTEGRATION_DIR = Path(__file__).parent / "integration"


def in_integration(item: pytest.Item) -> bool:
    return INTEGRATION_DIR in item.path.parents


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if in_integration(item):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(autouse=True)
def _no_broker_outside_integration(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    if in_integration(request.node):
        return

    def refuse(self: EmbeddedBroker) -> None:
        raise RuntimeError(f"{request.node.nodeid} starts a broker: move it to tests/integration")

    monkeypatch.setattr(EmbeddedBroker, "start", refuse)


@pytest.fixture
def topics() -> Topics:
    """Topic names no other test uses (the broker is shared by the session)."""
    return Topics(prefix=f"t{uuid.uuid4().hex[:10]}.")

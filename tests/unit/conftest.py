"""The ``engine`` fixture: one scenario, every engine.

A scenario module opts in with ``pytestmark = pytest.mark.usefixtures("engine")``; each of
its tests then runs once per engine of :mod:`support.engines` (``fold``, ``projector``,
``archive``), with :meth:`support.builders.Log.replay`, ``billing`` and ``view`` computing
with that engine. The engine is the first part of the test id:
``test_ccm_staff_track[archive-RULES 3.1 T 20-39 row: 20 min -> 99490]``.

A test about one engine itself (ledger outcomes, Projector steps) is marked
``single_engine``: it runs once, with the fold, and its id has no engine part.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from support.builders import using
from support.engines import ENGINES, FOLD, Engine


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "single_engine: run once with the fold, not once per engine (tests/unit/conftest.py)",
    )


@pytest.hookimpl(tryfirst=True)  # before the parametrize marks: the engine leads the test id
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "engine" in metafunc.fixturenames and not metafunc.definition.get_closest_marker(
        "single_engine"
    ):
        metafunc.parametrize("engine", list(ENGINES), indirect=True)


@pytest.fixture
def engine(request: pytest.FixtureRequest) -> Iterator[Engine]:
    """The engine :class:`support.builders.Log` computes with during the test."""
    chosen = ENGINES[request.param] if hasattr(request, "param") else FOLD
    with using(chosen):
        yield chosen

"""The layers hold (docs/architecture.md): every import statement of ``schemas/``,
``projections/`` and ``streams/``, lazy ones inside functions included, read with ``ast``.

* ``schemas/`` and ``projections/`` are the pure core: they import neither ``streams`` nor
  any I/O library.
* Only ``streams/kafka/`` and ``streams/worker/`` import a Kafka library.
* Only ``streams/cli/`` imports ``streams.cli`` (commands sit on top; nothing sits on them).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAYERS = ("schemas", "projections", "streams")
PURE = ("schemas", "projections")
IO_LIBRARIES = frozenset(
    {"aiokafka", "kafka", "faust", "duckdb", "aiohttp", "pyarrow", "click", "rich"}
)
KAFKA_LIBRARIES = frozenset({"aiokafka", "kafka", "faust", "mode"})
KAFKA_PREFIXES = ("calfkit",)  # calfkit, calfkit_*, ...
KAFKA_ROOMS = ("streams.kafka", "streams.worker")
DYNAMIC_IMPORTS = frozenset({"import_module", "__import__"})


@dataclass(frozen=True, order=True)
class Violation:
    module: str
    line: int
    statement: str
    rule: str

    def __str__(self) -> str:
        return f"{self.module}:{self.line}: `{self.statement}`: {self.rule}"


def under(name: str, *prefixes: str) -> bool:
    """``name`` is one of ``prefixes`` or inside one of them (dotted names)."""
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def module_name(root: Path, path: Path) -> tuple[str, bool]:
    """The dotted name of the module at ``path`` and whether it is a package."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    if is_package:
        parts.pop()
    return ".".join(parts), is_package


def imports(tree: ast.AST, module: str, is_package: bool) -> Iterator[tuple[ast.AST, list[str]]]:
    """Each import in ``tree`` (anywhere: in functions, under ``if TYPE_CHECKING``, through
    ``importlib.import_module("...")``) with the absolute names it may bind."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield node, [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            source = ".".join([*base, *([node.module] if node.module else [])])
            yield node, [source, *(f"{source}.{alias.name}" for alias in node.names)]
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            first = node.args[0]
            if called in DYNAMIC_IMPORTS and isinstance(first, ast.Constant):
                yield node, [str(first.value)]


def broken_rules(module: str, names: list[str]) -> Iterator[str]:
    tops = {name.split(".")[0] for name in names}
    if under(module, *PURE):
        if any(under(name, "streams") for name in names):
            yield "the pure core imports streams"
        if tops & IO_LIBRARIES:
            yield f"the pure core imports an I/O library ({', '.join(sorted(tops & IO_LIBRARIES))})"
    kafka = {t for t in tops if t in KAFKA_LIBRARIES or t.startswith(KAFKA_PREFIXES)}
    if kafka and not under(module, *KAFKA_ROOMS):
        yield (
            f"a Kafka library ({', '.join(sorted(kafka))}) outside streams/kafka and streams/worker"
        )
    if not under(module, "streams.cli") and any(under(name, "streams.cli") for name in names):
        yield "streams.cli imported outside streams/cli"


def check_layers(root: Path) -> list[Violation]:
    """Every import under ``root``'s layers that breaks a rule, in module order."""
    found = []
    for layer in LAYERS:
        for path in sorted((root / layer).rglob("*.py")):
            module, is_package = module_name(root, path)
            tree = ast.parse(path.read_bytes(), filename=str(path))
            for node, names in imports(tree, module, is_package):
                statement = ast.unparse(node)
                line = getattr(node, "lineno", 0)
                rules = broken_rules(module, names)
                found += [Violation(module, line, statement, rule) for rule in rules]
    return sorted(found)


def test_the_layers_hold() -> None:
    violations = check_layers(ROOT)
    if violations:
        report = "\n".join(map(str, violations))
        pytest.fail(f"{len(violations)} import(s) across the layers:\n{report}", pytrace=False)


# --- the checker itself, on a tree of known offences --------------------------------------

OFFENCES = {
    # module path: (source, offences expected as (line, rule fragment))
    "schemas/wire.py": ("import click\n", [(1, "the pure core imports an I/O library (click)")]),
    "projections/lazy.py": (
        "def f():\n    from streams.kafka.topics import Topics\n    return Topics\n",
        [(2, "the pure core imports streams")],
    ),
    "projections/typed.py": (
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import duckdb\n",
        [(3, "the pure core imports an I/O library (duckdb)")],
    ),
    "projections/kafka_too.py": (
        "from aiokafka import AIOKafkaProducer\n",
        [
            (1, "the pure core imports an I/O library (aiokafka)"),
            (1, "a Kafka library (aiokafka) outside streams/kafka and streams/worker"),
        ],
    ),
    "streams/http/app.py": (
        "import asyncio\n\n\nasync def f():\n    from kafka import KafkaProducer\n",
        [(5, "a Kafka library (kafka) outside streams/kafka and streams/worker")],
    ),
    "streams/archive/agent.py": (
        "import importlib\nfaust = importlib.import_module('faust')\n",
        [(2, "a Kafka library (faust) outside streams/kafka and streams/worker")],
    ),
    "streams/close/mode_user.py": (
        "import mode\nimport calfkit_runtime\n",
        [
            (1, "a Kafka library (mode) outside streams/kafka and streams/worker"),
            (2, "a Kafka library (calfkit_runtime) outside streams/kafka and streams/worker"),
        ],
    ),
    "streams/demo/run.py": (
        "from streams.cli import main\n",
        [(1, "streams.cli imported outside streams/cli")],
    ),
    "streams/ingest/__init__.py": (
        "from ..cli.options import bootstrap_option\n",
        [(1, "streams.cli imported outside streams/cli")],
    ),
    "streams/render/view.py": (
        "from streams import cli\n",
        [(1, "streams.cli imported outside streams/cli")],
    ),
}
ALLOWED = {
    "schemas/events.py": "import orjson\nfrom pydantic import BaseModel\n",
    "projections/engine.py": "from schemas.events import parse_event\nfrom . import ledger\n",
    "projections/ledger.py": "import modest\nimport kafkaesque\n",  # names that only look alike
    "streams/kafka/clients.py": "import kafka\nfrom aiokafka import AIOKafkaConsumer\n",
    "streams/worker/app.py": "import faust\nimport mode\nfrom streams.kafka import clients\n",
    "streams/cli/main.py": "from streams.cli import ingest\nfrom . import options\n",
    "streams/cli/ingest.py": "import click\nfrom streams.kafka.clients import produce\n",
    "streams/http/routes.py": "import aiohttp\nfrom streams.kafka.clients import produce\n",
}


@pytest.fixture
def offending_tree(tmp_path: Path) -> Path:
    for rel, source in {**{k: v[0] for k, v in OFFENCES.items()}, **ALLOWED}.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    return tmp_path


def test_the_checker_names_each_offending_module_and_import(offending_tree: Path) -> None:
    got = {(v.module, v.line, v.rule) for v in check_layers(offending_tree)}
    expected = set()
    for rel, (_, offences) in OFFENCES.items():
        module, _ = module_name(offending_tree, offending_tree / rel)
        expected |= {(module, line, rule) for line, rule in offences}
    assert got == expected


def test_a_violation_reads_as_module_line_and_statement(offending_tree: Path) -> None:
    lines = [str(v) for v in check_layers(offending_tree)]
    assert (
        "streams.http.app:5: `from kafka import KafkaProducer`: "
        "a Kafka library (kafka) outside streams/kafka and streams/worker"
    ) in lines
    assert "streams.ingest:1: `from ..cli.options import bootstrap_option`: " in "\n".join(lines)

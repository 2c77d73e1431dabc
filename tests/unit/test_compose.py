"""docker-compose.yml and the Dockerfile, held to what silently rots when nobody runs them.

Docker is not needed: the compose file is read (with the strict reader below, PyYAML is no
dependency), each service's command is parsed by the real click CLI, and the healthcheck
probes are run against a real HTTP server on loopback. What this cannot show (that the
images build and the stack comes up) is said in docs/deployment.md "What was not run here".
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath
from typing import Any

import click
import pytest
from click.core import ParameterSource
from packaging.specifiers import SpecifierSet

from streams.cli.main import cli

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
PYPROJECT = ROOT / "pyproject.toml"

LOOPBACK = "127.0.0.1"
EVERY_INTERFACE = "0.0.0.0"  # inside a container: its own network interface


# -- a strict reader of the YAML the compose file is written in ----------------------------


class Unsupported(ValueError):
    """YAML this reader does not read: refused, never guessed."""


@dataclass(frozen=True)
class _Line:
    number: int
    indent: int
    text: str


def _strip_comment(raw: str) -> str:
    quote = ""
    for i, char in enumerate(raw):
        if quote:
            quote = "" if char == quote else quote
        elif char in "\"'" and (i == 0 or raw[i - 1] in " :-"):
            quote = char
        elif char == "#" and (i == 0 or raw[i - 1] == " "):
            return raw[:i]
    return raw


def _lines(text: str) -> list[_Line]:
    out = []
    for number, raw in enumerate(text.splitlines(), 1):
        body = _strip_comment(raw).rstrip()
        if not body.strip():
            continue
        if "\t" in body[: len(body) - len(body.lstrip())]:
            raise Unsupported(f"line {number}: a tab in the indentation")
        out.append(_Line(number, len(body) - len(body.lstrip(" ")), body.strip()))
    return out


def _scalar(text: str, line: _Line) -> str:
    """A scalar as a string (compose converts the numbers it needs itself)."""
    if text.startswith('"'):
        if len(text) < 2 or not text.endswith('"'):
            raise Unsupported(f"line {line.number}: an unclosed double quote")
        return str(json.loads(text))
    if text.startswith("'"):
        if len(text) < 2 or not text.endswith("'"):
            raise Unsupported(f"line {line.number}: an unclosed single quote")
        return text[1:-1].replace("''", "'")
    if text[0] in "[]{}&*!|>%@`":
        raise Unsupported(f"line {line.number}: {text[0]!r} (flow, anchor, tag or block text)")
    return text


def _key_value(line: _Line) -> tuple[str, str] | None:
    if line.text.endswith(":"):
        return line.text[:-1], ""
    key, sep, value = line.text.partition(": ")
    return (key, value.strip()) if sep and not key.startswith(("'", '"')) else None


def _block(lines: list[_Line], i: int) -> tuple[Any, int]:
    indent = lines[i].indent
    if lines[i].text == "-" or lines[i].text.startswith("- "):
        items = []
        while i < len(lines) and lines[i].indent == indent and lines[i].text.startswith("-"):
            item = lines[i].text[1:].strip()
            if not lines[i].text.startswith("- ") or not item:
                raise Unsupported(f"line {lines[i].number}: a nested block in a list")
            if _key_value(_Line(0, 0, item)) is not None:
                raise Unsupported(f"line {lines[i].number}: a mapping in a list")
            items.append(_scalar(item, lines[i]))
            i += 1
        return items, i
    mapping: dict[str, Any] = {}
    while i < len(lines) and lines[i].indent == indent:
        line = lines[i]
        pair = _key_value(line)
        if pair is None:
            raise Unsupported(f"line {line.number}: not `key: value`")
        key, value = pair
        if key in mapping or key == "<<":
            raise Unsupported(f"line {line.number}: key {key!r} again, or a merge")
        i += 1
        if value:
            mapping[key] = _scalar(value, line)
        elif i < len(lines) and lines[i].indent > indent:
            mapping[key], i = _block(lines, i)
        else:
            mapping[key] = None
    return mapping, i


def read_yaml(text: str) -> dict[str, Any]:
    lines = _lines(text)
    if not lines:
        return {}
    if lines[0].indent:
        raise Unsupported(f"line {lines[0].number}: indented first line")
    document, end = _block(lines, 0)
    if end != len(lines) or not isinstance(document, dict):
        raise Unsupported(f"line {lines[min(end, len(lines) - 1)].number}: bad indentation")
    return document


# -- the compose file and the CLI ----------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return read_yaml(COMPOSE.read_text(encoding="utf-8"))


def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def app_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services built from the project's Dockerfile: each runs `caretally ...`."""
    return {name: s for name, s in services(compose).items() if "build" in s}


def kafka_service(compose: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    (found,) = [
        (n, s) for n, s in services(compose).items() if "apache/kafka" in s.get("image", "")
    ]
    return found


@dataclass(frozen=True)
class Parsed:
    command: click.Command
    name: str
    params: dict[str, Any]
    given: frozenset[str]  # parameters given on the command line


def parse(args: list[str]) -> Parsed:
    """``caretally ARGS`` parsed by the CLI itself (values converted and validated, nothing
    run); unknown options, bad values and hidden old spellings fail the test."""
    command: click.Command = cli
    rest, path = list(args), []
    while isinstance(command, click.Group):
        assert rest and not rest[0].startswith("-"), f"no subcommand in: caretally {args}"
        found = command.get_command(click.Context(command), rest[0])
        assert found is not None, f"no command {rest[0]!r} in: caretally {' '.join(args)}"
        command, path, rest = found, [*path, rest[0]], rest[1:]
    hidden = {o for p in command.params if getattr(p, "hidden", False) for o in p.opts}
    used = [t.split("=")[0] for t in rest if t.startswith("--")]
    assert not hidden & set(used), f"an old spelling in: caretally {' '.join(args)}"
    try:
        ctx = command.make_context(" ".join(["caretally", *path]), rest)
    except click.ClickException as exc:
        pytest.fail(f"caretally {' '.join(args)}: {exc.format_message()}")
    given = frozenset(
        name for name in ctx.params if ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE
    )
    return Parsed(command, " ".join(path), ctx.params, given)


def command_of(service: dict[str, Any]) -> Parsed:
    args = service.get("command")
    assert isinstance(args, list) and all(isinstance(a, str) for a in args), (
        "give the command as a list (exec form): no shell between Docker and caretally"
    )
    return parse(args)


def bound_address(parsed: Parsed) -> tuple[str, int] | None:
    """The (host, port) a command listens on: its ``--host``/``--port`` or
    ``--web-host``/``--web-port`` pair; None if it serves no HTTP."""
    ports = [n for n in parsed.params if n == "port" or n.endswith("_port")]
    if not ports:
        return None
    (port,) = ports
    host = port.removesuffix("port") + "host"
    assert host in parsed.params, (
        f"caretally {parsed.name}: --{port.replace('_', '-')} without a host option"
    )
    return str(parsed.params[host]), int(parsed.params[port])


def volume_mounts(service: dict[str, Any]) -> dict[PurePosixPath, str]:
    """Mount target -> source of a service's volumes (short syntax ``source:target[:mode]``)."""
    out = {}
    for spec in service.get("volumes") or []:
        source, target, *_ = spec.split(":")
        out[PurePosixPath(target)] = source
    return out


def under_a_volume(path: PurePosixPath, service: dict[str, Any]) -> PurePosixPath | None:
    for target in volume_mounts(service):
        if path == target or target in path.parents:
            return target
    return None


def env(service: dict[str, Any]) -> dict[str, str]:
    environment = service.get("environment") or {}
    assert isinstance(environment, dict), "environment as a mapping (NAME: value)"
    return environment


def probe(service: dict[str, Any]) -> tuple[list[str], str, int, str]:
    """A healthcheck's command, and the host, port and path of the URL it fetches."""
    test = service["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"], (
        "exec form with python: the slim image has no curl or wget, and no shell is needed"
    )
    assert len(test) == 4
    url = re.search(r"http://([\d.]+):(\d+)(/[\w/]*)", test[3])
    assert url is not None, f"no URL in the healthcheck: {test[3]}"
    return test, url.group(1), int(url.group(2)), url.group(3)


# -- the reader itself ---------------------------------------------------------------------


def test_reader_reads_the_subset() -> None:
    text = (
        "# a comment\nname: x\nservices:\n  a:  # trailing comment\n    image: 'it''s'\n"
        '    command:\n      - serve\n      - "0.0.0.0"  # bind\n      - --url=http://h:1/#x\n'
        "    environment:\n      K: kafka:9092\n    empty:\n"
    )
    assert read_yaml(text) == {
        "name": "x",
        "services": {
            "a": {
                "image": "it's",
                "command": ["serve", "0.0.0.0", "--url=http://h:1/#x"],
                "environment": {"K": "kafka:9092"},
                "empty": None,
            }
        },
    }


@pytest.mark.parametrize(
    "text",
    [
        "a: &x 1\nb: *x\n",
        "a: [1, 2]\n",
        "a: {b: 1}\n",
        "a:\n  - b: c\n",
        "a:\n  b: 1\n  b: 2\n",
        "a:\n  b: 1\n    c: 2\n",
        "a: |\n  text\n",
        "a:\n\t- b\n",
        "a: 'open\n",
    ],
)
def test_reader_refuses_what_it_does_not_read(text: str) -> None:
    with pytest.raises(Unsupported):
        read_yaml(text)


# -- Kafka ---------------------------------------------------------------------------------


def test_kafka_is_a_pinned_single_kraft_node(compose: dict[str, Any]) -> None:
    _, kafka = kafka_service(compose)
    assert re.fullmatch(r"apache/kafka:\d+\.\d+\.\d+", kafka["image"]), "pin the Kafka version"
    e = env(kafka)
    assert set(e["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert e["KAFKA_CONTROLLER_QUORUM_VOTERS"].startswith(e["KAFKA_NODE_ID"] + "@")
    assert re.fullmatch(r"[\w-]{22}", e["CLUSTER_ID"]), (
        "a fixed cluster id: storage is formatted once"
    )
    for factor in (
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR",
    ):
        assert e[factor] == "1", f"{factor}: one broker cannot hold more replicas"
    assert e["KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS"] == "0"


def test_kafka_data_lives_on_a_named_volume(compose: dict[str, Any]) -> None:
    """Given any KAFKA_* variable the image drops its bundled config, and without log.dirs
    Kafka writes to /tmp/kafka-logs inside the container."""
    _, kafka = kafka_service(compose)
    dirs = env(kafka).get("KAFKA_LOG_DIRS")
    assert dirs, "KAFKA_LOG_DIRS unset: the data would stay inside the container"
    for folder in dirs.split(","):
        target = under_a_volume(PurePosixPath(folder), kafka)
        assert target is not None, f"{folder} is on no volume"
        assert volume_mounts(kafka)[target] in (compose.get("volumes") or {}), (
            f"{target}: mount a named volume, declared at the top level"
        )


def listeners(value: str) -> dict[str, tuple[str, int]]:
    out = {}
    for item in value.split(","):
        m = re.fullmatch(r"(\w+)://([\w.-]*):(\d+)", item.strip())
        assert m is not None, f"not NAME://host:port: {item}"
        out[m.group(1)] = (m.group(2), int(m.group(3)))
    return out


def test_kafka_listeners_reach_containers_and_the_host(compose: dict[str, Any]) -> None:
    name, kafka = kafka_service(compose)
    e = env(kafka)
    bound = listeners(e["KAFKA_LISTENERS"])
    advertised = listeners(e["KAFKA_ADVERTISED_LISTENERS"])
    protocols = dict(p.split(":") for p in e["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    controller = e["KAFKA_CONTROLLER_LISTENER_NAMES"]
    assert controller in bound and controller not in advertised
    assert set(bound) <= set(protocols)
    assert set(advertised) <= set(bound) - {controller}
    assert e["KAFKA_INTER_BROKER_LISTENER_NAME"] in advertised
    # every app container uses a listener advertised under the service's own name
    for service_name, service in app_services(compose).items():
        host, _, port = env(service)["KAFKA_BOOTSTRAP"].rpartition(":")
        matches = [n for n, (h, p) in advertised.items() if (h, p) == (host, int(port))]
        assert host in (name, kafka.get("hostname")) and matches, (
            f"{service_name}: KAFKA_BOOTSTRAP is no listener advertised as {name}:PORT"
        )
        assert bound[matches[0]][1] == int(port)
    # a published port lands on a listener advertised as that loopback address
    for spec in kafka.get("ports") or []:
        host_ip, host_port, container_port = spec.split(":")
        (listener,) = [n for n, (_, p) in bound.items() if p == int(container_port)]
        assert advertised.get(listener) == (host_ip, int(host_port)), (
            f"{spec}: the listener on {container_port} must advertise {host_ip}:{host_port}"
        )
    test = kafka["healthcheck"]["test"]
    assert test[0] == "CMD" and test[1].startswith("/opt/kafka/bin/"), "a tool of the image"
    server = test[test.index("--bootstrap-server") + 1]
    assert int(server.rpartition(":")[2]) in {p for _, p in bound.values()}


# -- the host: loopback only ---------------------------------------------------------------


def test_published_ports_are_loopback_only(compose: dict[str, Any]) -> None:
    published = 0
    for name, service in services(compose).items():
        assert service.get("network_mode") != "host", f"{name}: host networking"
        for spec in service.get("ports") or []:
            assert isinstance(spec, str), f"{name}: ports as HOST_IP:HOST_PORT:CONTAINER_PORT"
            parts = spec.split(":")
            assert len(parts) == 3 and parts[0] == LOOPBACK, (
                f"{name}: {spec!r} is published beyond {LOOPBACK}"
            )
            published += 1
    assert published >= 2  # Kafka for the host's tools, the API


# -- the caretally services ----------------------------------------------------------------


def test_app_services_run_real_commands(compose: dict[str, Any]) -> None:
    apps = app_services(compose)
    commands = {command_of(s).name for s in apps.values()}
    assert {"worker", "serve", "archive"} <= commands


def known_variables(parsed: Parsed) -> set[str]:
    """The environment variables caretally reads: its Kafka settings, the API key file,
    the archive, and any envvar of the command's options."""
    from streams.cli.options import ARCHIVE_ENV
    from streams.http.api_keys import ENV as API_KEYS_ENV
    from streams.kafka.settings import CONFIG_ENV, ENVIRONMENT

    names = {*ENVIRONMENT.values(), CONFIG_ENV, API_KEYS_ENV, ARCHIVE_ENV}
    for param in parsed.command.params:
        envvar = getattr(param, "envvar", None)
        names.update([envvar] if isinstance(envvar, str) else envvar or [])
    return names


def app_cases(healthchecked: bool = False) -> Iterator[str]:
    apps = app_services(read_yaml(COMPOSE.read_text(encoding="utf-8")))
    yield from (n for n, s in apps.items() if "healthcheck" in s or not healthchecked)


@pytest.mark.parametrize("name", list(app_cases()))
def test_app_service_is_wired(compose: dict[str, Any], name: str) -> None:
    service = app_services(compose)[name]
    parsed = command_of(service)
    kafka_name, _ = kafka_service(compose)
    assert service["depends_on"][kafka_name]["condition"] == "service_healthy"
    unknown = set(env(service)) - known_variables(parsed)
    assert not unknown, f"{name}: caretally reads no {sorted(unknown)}"
    # what a command writes, it writes to a volume (else it is lost with the container)
    for param in parsed.command.params:
        if isinstance(param.type, click.Path) and param.name in parsed.given:
            path = PurePosixPath(str(parsed.params[param.name]))
            assert path.is_absolute() and under_a_volume(path, service), (
                f"{name}: {param.opts[0]} {path} is on no volume"
            )
    keys = env(service).get("CARETALLY_API_KEYS")
    if keys:
        assert under_a_volume(PurePosixPath(keys).parent, service), f"{name}: keys on no volume"


@pytest.mark.parametrize("name", list(app_cases()))
def test_healthcheck_probes_the_address_the_command_binds(
    compose: dict[str, Any], name: str
) -> None:
    service = app_services(compose)[name]
    address = bound_address(command_of(service))
    if address is None:
        assert "healthcheck" not in service, f"{name} serves no HTTP to check"
        assert not service.get("ports"), f"{name} listens on no port to publish"
        return
    host, port = address
    assert host == EVERY_INTERFACE, f"{name}: bound to {host}, the healthcheck and others miss it"
    _, probe_host, probe_port, path = probe(service)
    assert (probe_host, probe_port, path) == (LOOPBACK, port, "/readyz")
    for spec in service.get("ports") or []:
        assert int(spec.split(":")[2]) == port, f"{name}: {spec} publishes a port not bound"


class _Readyz(BaseHTTPRequestHandler):
    status = 200
    paths: list[str]

    def do_GET(self) -> None:
        self.paths.append(self.path)
        body = b'{"ready": %s}' % (b"true" if self.status == 200 else b"false")
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: Any) -> None:
        pass


@pytest.mark.parametrize("name", list(app_cases(healthchecked=True)))
def test_healthcheck_probe_passes_only_on_200(compose: dict[str, Any], name: str) -> None:
    """The probe's own Python, pointed at a loopback server that answers 200 or 503, and at
    nothing: exit 0 only for 200 (Docker counts any other exit as a failure)."""
    test, _, port, path = probe(app_services(compose)[name])
    handler = type("Handler", (_Readyz,), {"paths": []})
    server = ThreadingHTTPServer((LOOPBACK, 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    code = test[3].replace(f"{LOOPBACK}:{port}", f"{LOOPBACK}:{server.server_address[1]}")

    def run() -> int:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
        return done.returncode

    try:
        handler.status = 200
        assert run() == 0
        handler.status = 503
        assert run() != 0
        assert handler.paths == [path, path]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert run() != 0  # nothing listening


def test_named_volumes_are_declared_and_used(compose: dict[str, Any]) -> None:
    used = {src for s in services(compose).values() for src in volume_mounts(s).values()}
    assert all(not src.startswith((".", "/")) for src in used), "named volumes, no bind mounts"
    assert used == set(compose.get("volumes") or {})


# -- the Dockerfile ------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined, comments dropped."""
    out, pending = [], ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, rest = (pending + line).partition(" ")
        out.append((keyword.upper(), rest.strip()))
        pending = ""
    return out


def test_image_pins_the_tested_python_and_runs_caretally_unprivileged() -> None:
    project = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]
    steps = dockerfile_instructions()
    args = dict(a.split("=", 1) for k, a in steps if k == "ARG" and "=" in a)
    base = re.fullmatch(r"python:(\d+\.\d+\.\d+)-slim(-\w+)?", args["PYTHON_IMAGE"])
    assert base, "pin the base image to a full Python version, slim"
    assert base.group(1) in SpecifierSet(project["requires-python"])
    assert [a for k, a in steps if k == "FROM"][-1] == "${PYTHON_IMAGE}"
    (user,) = [a for k, a in steps if k == "USER"]
    assert user.split(":")[0] not in {"root", "0"}
    (entrypoint,) = [json.loads(a) for k, a in steps if k == "ENTRYPOINT"]
    assert entrypoint == list(project["scripts"])
    installs = [a for k, a in steps if k == "RUN" and "pip install" in a]
    assert installs and all("[dev]" not in a for a in installs)


def test_image_copies_every_package_it_installs() -> None:
    found = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["tool"]["setuptools"]
    copied = {a.split()[0] for k, a in dockerfile_instructions() if k == "COPY" and "--" not in a}
    for pattern in found["packages"]["find"]["include"]:
        assert pattern.rstrip("*") in copied, f"the Dockerfile does not COPY {pattern}"


def test_image_prepares_the_folders_the_volumes_mount(compose: dict[str, Any]) -> None:
    """An empty named volume takes the owner and mode of the folder it is mounted on: the
    user's own 0700 folder, as the worker demands of its state folder."""
    steps = dockerfile_instructions()
    (user,) = [a.split(":")[0] for k, a in steps if k == "USER"]
    prepared = set()
    for keyword, args in steps:
        for step in args.split("&&") if keyword == "RUN" else []:
            words = step.split()
            if words[:2] != ["install", "-d"] or "-o" not in words or "-m" not in words:
                continue
            if (words[words.index("-o") + 1], words[words.index("-m") + 1]) == (user, "0700"):
                prepared.update(w for w in words if w.startswith("/"))
    for name, service in app_services(compose).items():
        for target in volume_mounts(service):
            assert str(target) in prepared, f"{name}: the image does not prepare {target}"


def test_build_context_leaves_out_local_state() -> None:
    ignored = {line.strip() for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()}
    assert {".git", ".venv", ".caretally", "data", "benchmarks/results"} <= ignored

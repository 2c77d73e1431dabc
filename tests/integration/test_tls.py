"""TLS end to end: ``caretally ingest --kafka-config FILE`` -> ``caretally worker
--kafka-config FILE`` -> care.billing.v1 read over TLS, against a broker that speaks TLS
only, with a throwaway CA and a server certificate for 127.0.0.1.

Tansu itself cannot serve TLS (``streams.kafka.tls_terminator`` says why), so the embedded
broker terminates it in front of Tansu; every client here (kafka-python in ingest, Faust
and aiokafka in the worker, aiokafka in the reader) negotiates TLS and checks the
certificate against the CA of the config file.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from streams.cli.main import cli
from streams.demo.client import Collected, Follower, WorkerProcess
from streams.demo.live import expected_views
from streams.kafka.broker import EmbeddedBroker
from streams.kafka.settings import KafkaSettings
from streams.kafka.topics import Topics
from support.ingest import practice_lines
from support.tls import TlsFiles, make_tls

PARTS = 2


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_broker(tls: TlsFiles, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    log = tmp_path_factory.mktemp("tls-broker") / "tansu.log"
    with EmbeddedBroker(cert=tls.cert, key=tls.key, log_path=log) as b:
        yield b


def config_file(folder: Path, broker: EmbeddedBroker, ca: Path) -> Path:
    path = folder / "kafka.toml"
    path.write_text(
        f'bootstrap = "{broker.bootstrap}"\nsecurity_protocol = "SSL"\nssl_cafile = "{ca}"\n'
    )
    return path


def test_ingest_worker_and_billing_over_tls(
    tls_broker: EmbeddedBroker, tls: TlsFiles, tmp_path: Path
) -> None:
    config = config_file(tmp_path, tls_broker, tls.ca)
    topics = Topics(prefix=f"tls{uuid.uuid4().hex[:8]}.")
    lines = practice_lines(patients=4)
    events = tmp_path / "events.ndjson"
    events.write_bytes(b"\n".join(lines) + b"\n")

    ingested = CliRunner().invoke(
        cli,
        [
            *("ingest", "--input", str(events), "--kafka-config", str(config)),
            *("--topic-prefix", topics.prefix, "--partitions", str(PARTS), "--no-progress"),
        ],
    )
    assert ingested.exit_code == 0, ingested.output
    assert f"sent {len(lines):,} line(s) to {topics.ingress}" in ingested.stdout

    worker = WorkerProcess(
        tls_broker.bootstrap,  # the flag; the file adds TLS and the CA
        topics,
        PARTS,
        tmp_path / "state",
        "--kafka-config",
        str(config),
        "--app-id",
        f"app-{topics.prefix}",
        log_path=tmp_path / "worker.log",
    ).start()
    try:
        expected = expected_views(lines)
        assert expected

        async def follow() -> Collected:
            settings = KafkaSettings.resolve(config_file=config, env={})
            async with Follower(settings, topics, PARTS) as follower:
                await follower.until(lambda got: got.views() == expected, timeout=90)
                return follower.got

        got = asyncio.run(follow())
    finally:
        code = worker.stop()
    assert got.views() == expected, (tmp_path / "worker.log").read_text()[-3000:]
    assert got.deadletter == []
    assert code == 0


@pytest.mark.parametrize("trusted", ["system CAs", "another CA"])
def test_a_certificate_the_client_does_not_trust_fails_at_once(
    tls_broker: EmbeddedBroker, tls: TlsFiles, tmp_path: Path, trusted: str
) -> None:
    config = tmp_path / "kafka.toml"
    ca = "" if trusted == "system CAs" else f'ssl_cafile = "{tls.other_ca}"\n'
    config.write_text(f'bootstrap = "{tls_broker.bootstrap}"\nsecurity_protocol = "SSL"\n{ca}')
    events = tmp_path / "events.ndjson"
    events.write_bytes(b"\n".join(practice_lines(patients=1)))

    started = time.monotonic()
    result = CliRunner().invoke(
        cli, ["ingest", "--input", str(events), "--kafka-config", str(config), "--no-progress"]
    )

    assert time.monotonic() - started < 10
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        f"error: the TLS certificate of {tls_broker.bootstrap} is not trusted "
        "(unable to get local issuer certificate); is ssl_cafile the CA that signed it?"
    )

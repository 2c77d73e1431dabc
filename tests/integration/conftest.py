"""Fixtures of the integration tests: the session's embedded broker (defined only here, so a
test elsewhere that asks for it fails to set up) and a module's HTTP server on it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from kafka import KafkaProducer

from streams.http.api_keys import ApiKeyStore, create_key
from streams.http.app import build_app
from streams.kafka.broker import EmbeddedBroker
from streams.kafka.topics import Topics, ensure_topics
from support.http import MAX_BODY, Api, ServerThread, eventually


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    log = tmp_path_factory.mktemp("broker") / "tansu.log"
    with EmbeddedBroker(log_path=log) as b:
        yield b


@pytest.fixture(scope="module")
def api(broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """``caretally serve`` on loopback for one module: its own topics, keys of org-a and
    org-b, a producer to feed billing and alerts straight to their topics."""
    topics = Topics(prefix=f"t{uuid.uuid4().hex[:10]}.")
    ensure_topics(broker.bootstrap, topics, partitions=2)
    keys_path = tmp_path_factory.mktemp("keys") / "api-keys.json"
    _, key_a = create_key(keys_path, "org-a")
    _, key_b = create_key(keys_path, "org-b")
    store = ApiKeyStore(keys_path, recheck_s=0.0)
    app = build_app(broker.bootstrap, topics, store, max_body_bytes=MAX_BODY, heartbeat_s=1.0)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", linger_ms=0)
    try:
        with ServerThread(app) as server:
            api = Api(broker.bootstrap, topics, server.port, key_a, key_b, keys_path, producer)
            eventually(lambda: api.get("/healthz")[1]["caught_up"] is True)
            yield api
    finally:
        producer.close()

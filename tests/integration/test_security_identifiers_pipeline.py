"""Security #9, items 2 and 9, on a real broker: ``caretally ingest`` and ``POST
/v1/events`` refuse duplicate keys and ids that could join into another tenant's keys,
and ``caretally close`` counts only its own org's records (the parsing and keys
themselves: tests/unit/test_security_identifiers.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaProducer

from streams.close.log_scan import scan
from streams.kafka.broker import EmbeddedBroker
from streams.kafka.records import event_key
from streams.kafka.topics import Topics, ensure_topics
from support.http import Api, eventually
from support.identifiers import DOUBLES, ID_RULE, ORG_A, raw_activity
from support.ingest import ingest

MONTH = "2025-03"


def test_ingest_reports_duplicate_keys_and_bad_ids(
    broker: EmbeddedBroker, topics: Topics, tmp_path: Path
) -> None:
    path = tmp_path / "feed.ndjson"
    path.write_bytes(b"\n".join([ORG_A, DOUBLES["org_id"], raw_activity("acme", "e:P", "e9")]))
    result = ingest(broker, topics, str(path))
    assert result.exit_code == 3, result.output
    assert f"{path}:2: rejected: org_id: duplicate key" in result.stderr
    assert f"{path}:3: rejected: patient_id: {ID_RULE}" in result.stderr
    assert "1 valid, 2 rejected" in result.stdout


@pytest.fixture
def http(api: Api) -> Iterator[Api]:
    eventually(lambda: api.get("/healthz")[1]["caught_up"] is True)
    yield api


def post_one(api: Api, raw: bytes) -> tuple[int, Any]:
    return api.post(raw, "application/json", api.key_a)


def test_http_refuses_a_duplicate_org_id_and_a_colon_in_an_id(http: Api) -> None:
    status, body = post_one(http, DOUBLES["org_id"])
    assert status == 400, body
    assert body["errors"] == [
        {"line": 1, "reason": "org_id: duplicate key in a JSON object; send each key once"}
    ]
    status, body = post_one(http, raw_activity("org-a", "east:P-1"))
    assert status == 400, body
    assert body["errors"] == [{"line": 1, "reason": f"patient_id: {ID_RULE}"}]
    status, body = post_one(http, ORG_A)
    assert status == 202, body


def test_close_counts_only_its_own_orgs_records(broker: EmbeddedBroker, topics: Topics) -> None:
    """``caretally close`` matched the log's keys by the prefix ``org:``: org ``a`` counted
    (and read) the records of org ``a:b`` as its own."""
    ensure_topics(broker.bootstrap, topics, partitions=2)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    try:
        for org, patient in (("a", "P-1"), ("a:b", "P-1"), ("a", "b:P-1")):
            producer.send(topics.events, key=event_key(org, patient), value=b"{}")
        producer.flush()
    finally:
        producer.close()
    found = asyncio.run(scan(broker.bootstrap, topics.events, 2, "a", MONTH))
    assert found.org_records == 2

"""``docs/asyncapi.yaml``: valid AsyncAPI 3.0.0, every topic in it, not stale, and true
of real records.

Validated against the AsyncAPI Initiative's JSON Schema (``tests/fixtures/asyncapi/``),
whose sub-schemas are found by their ``$id`` in the same file: no network. Records made
by the writers' own functions (the gate, the log writer, the fold, the webhooks' parked
records, the dead letters of serve and ingest) are held to it: their header names, their
header values and their payloads (the hand-written schemas cannot drift unseen).
"""

from __future__ import annotations

import functools
import json
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pydantic_core
import pytest
import yaml
from click.testing import CliRunner
from pydantic import ValidationError
from pydantic_core import core_schema
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

from schemas.views import billing_line
from streams.cli.main import cli
from streams.contracts.asyncapi import asyncapi_yaml
from streams.files.logfile import Oversize
from streams.ingest.delivery import ingest_origin, too_large_letter
from streams.kafka.limits import EVENT_MAX_BYTES
from streams.kafka.partitioning import ingress_partition
from streams.kafka.records import deadletter_headers, key_of, key_parts
from streams.kafka.topics import Topics
from streams.webhooks.alert_head import bad_alert_reason, read_head
from streams.webhooks.parked import Parked, Resolved, new_parked_id, record
from streams.worker.gate import IngressGate, Source, Target, deadletter_write
from streams.worker.partition import ALERTS, BILLING, STAFF, FoldPartition
from support.builders import Log

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "docs" / "asyncapi.yaml"
SPEC = ROOT / "tests" / "fixtures" / "asyncapi" / "3.0.0.json"


def asyncapi_validator() -> jsonschema.Draft7Validator:
    schema = json.loads(SPEC.read_text())
    resource = Resource.from_contents(schema, default_specification=DRAFT7)
    registry: Registry[Any] = Registry().with_resource(schema["$id"], resource).crawl()
    return jsonschema.Draft7Validator(schema, registry=registry)


def test_the_committed_document_is_valid_asyncapi_3() -> None:
    doc = yaml.safe_load(COMMITTED.read_text())
    validator = asyncapi_validator()
    validator.validate(doc)
    broken = {**doc, "operations": {"x": {"action": "publish", "channel": {"$ref": "#/x"}}}}
    assert not validator.is_valid(broken)  # the 2.x verb: the schema does judge


def test_the_committed_document_is_what_the_code_prints_now() -> None:
    printed = CliRunner().invoke(cli, ["schema", "--asyncapi"])
    assert printed.exit_code == 0, printed.output
    assert printed.stdout == asyncapi_yaml()
    assert COMMITTED.read_text() == printed.stdout, (
        "docs/asyncapi.yaml is stale: caretally schema --asyncapi --output docs/asyncapi.yaml"
    )


def test_every_topic_has_a_channel_with_its_key_and_payload() -> None:
    doc = yaml.safe_load(asyncapi_yaml())
    addresses = {ch["address"] for ch in doc["channels"].values()}
    assert addresses == set(Topics().settings())
    for name, message in doc["components"]["messages"].items():
        assert message["bindings"]["kafka"]["key"]["description"], name
        assert message["payload"], name
    billing = doc["components"]["messages"]["BillingView"]
    assert set(billing["headers"]["properties"]) == {"progress", "context"}


def test_the_billing_line_is_held_to_its_model() -> None:
    line = {
        "org_id": "org-a",
        "patient_id": "P-1",
        "month": "2025-03",
        "rule_year": 2025,
        "minutes": {"ccm": 20.0},
        "billable": [{"code": "99490", "units": 1}],
        "blocked": [],
        "flags": [],
        "estimated_payment": 60.49,
        "payment_provisional": False,
    }
    billing_line(line)
    billing_line(json.dumps(line).encode())
    for bad in ({"month": "2025-3"}, {"rule_year": "2025"}, {"flags": None}, {"extra": 1}):
        with pytest.raises(ValueError):
            billing_line({**line, **bad})


# -- real records held to the document ----------------------------------------------------

DOC_URI = "urn:caretally:asyncapi"
INGRESS = "care.ingress.v1"
Record = tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]]]
"""(message name, key, value, headers) of one record as its real writer makes it."""


def _gate_records(raws: list[bytes]) -> tuple[list[Record], list[bytes]]:
    """Every event through the gate (2 ingress partitions) on its org's partition, one
    again on the other partition, one invalid, one conflicting and one too large; and the
    log's values as the fold reads them (practice-wide events once)."""
    gate = IngressGate(ingress_partitions=2)
    home = ingress_partition("o1", 2)
    message = {Target.LOG: "LoggedEvent", Target.INGRESS: "IngressEvent"}
    message[Target.DEADLETTER] = "DeadLetter"
    conflict = raws[-1].replace(b'"test"', b'"other"')
    assert conflict != raws[-1]
    too_large = b'{"org_id":"o1","x":"' + b"y" * EVENT_MAX_BYTES + b'"}'
    inputs = [(raw, home) for raw in raws]
    inputs += [(raws[-1], 1 - home), (b'{"type":"nope"}', home), (conflict, home)]
    inputs += [(too_large, home)]
    out: list[Record] = []
    folded: list[bytes] = []
    outcomes = set()
    for offset, (raw, partition) in enumerate(inputs):
        routed = gate.route(raw, key_of(raw), Source(INGRESS, partition, offset), partitions=2)
        outcomes.add(routed.outcome)
        for w in routed.writes:
            out.append((message[w.target], w.key, w.value, list(w.headers)))
            if w.target is Target.LOG and w.partition in (None, 0):
                folded.append(w.value)
    assert outcomes == {"log", "rerouted", "deadletter"}
    return out, folded


def _fold_records(folded: list[bytes]) -> list[Record]:
    """The log folded (billing lines, a tombstone, alerts, staff) and the daily sweep."""
    part = FoldPartition()
    outs = [o for raw in folded for o in part.apply(raw)]
    outs += part.sweep(datetime(2025, 3, 27, 4, tzinfo=UTC))
    message = {BILLING: "BillingView", ALERTS: "Alert", STAFF: "StaffInterval"}
    assert {o.topic for o in outs} == set(message)
    assert any(o.topic == BILLING and o.value is None for o in outs)  # the tombstone
    return [(message[o.topic], o.key, o.value, list(o.headers)) for o in outs]


def _webhook_records(alert: bytes) -> list[Record]:
    """Parked records as deliver and replay write them, and deliver's dead letter."""
    parked = Parked(
        parked_id=new_parked_id(),
        webhook_id="wh-1",
        org_id="o1",
        alert_id="al-1",
        kind="threshold_met",
        alert=orjson.loads(alert),
        attempts=5,
        last_status=503,
        last_error="HTTP 503",
        first_attempt_at="2025-03-03T15:00:00Z",
        last_attempt_at="2025-03-03T15:01:00Z",
        parked_at="2025-03-03T15:01:01Z",
        source={"topic": "care.alerts.v1", "partition": 0, "offset": 3},
    )
    again = replace(parked, parked_id=new_parked_id(), replays=1, source={"replay_of": "x"})
    done = Resolved(parked.parked_id, "wh-1", "o1", "al-1", "delivered", "2025-03-04T00:00:00Z")
    moved = replace(done, outcome="parked_again", parked_again_as=again.parked_id)
    out: list[Record] = []
    items: list[tuple[str, Parked | Resolved]] = [("WebhookParked", parked)]
    items += [("WebhookParked", again)]
    items += [("WebhookResolved", done), ("WebhookResolved", moved)]
    for name, item in items:
        key, value, headers = record(item)
        out.append((name, key, value, headers))
    bad = b'{"kind":"threshold_met"}'
    with pytest.raises(ValidationError) as exc:
        read_head(bad)
    headers = deadletter_headers(bad_alert_reason(exc.value), "care.alerts.v1", 0, 4)
    return [*out, ("DeadLetter", b"o1:P-1", bad, headers)]


def _edge_dead_letters() -> list[Record]:
    """The dead letters of serve (POST /v1/events, POST /fhir/r4) and of ingest."""
    big = b'{"org_id":"o1"}' + b" " * EVENT_MAX_BYTES
    fhir = Source("http:fhir", -1, 2)
    writes = [
        deadletter_write("too_large", b"o1:", big, Source("http", -1, 0)),
        deadletter_write("Bundle.entry[2]: no event", b"o1:", b'{"resource":{}}', fhir),
        deadletter_write(
            "not an event", b"o1:", b"{}", Source(ingest_origin("in/a.ndjson"), -1, 7)
        ),
        too_large_letter(8, b"o1:", Oversize(big[:64], "ab" * 32, len(big)), ingest_origin("-")),
    ]
    return [("DeadLetter", w.key, w.value, list(w.headers)) for w in writes]


def real_records() -> list[Record]:
    log = Log()
    log.practice(timezone="America/Chicago")
    log.documented("P-1")
    log.documented("P-2")
    log.activity("P-1", "a1", "2025-03-03T10:00:00-06:00", 25)
    log.activity("P-2", "a2", "2025-03-26T10:00:00-05:00", 15)  # short: the sweep warns
    log.void("P-1", "a1")  # the month empties: a tombstone
    gated, folded = _gate_records([orjson.dumps(e) for e in log.raw])
    folds = _fold_records(folded)
    alert = next(value for name, _k, value, _h in folds if name == "Alert")
    assert alert is not None
    return [*gated, *folds, *_webhook_records(alert), *_edge_dead_letters()]


@functools.cache
def _pattern(pattern: str) -> pydantic_core.SchemaValidator:
    return pydantic_core.SchemaValidator(core_schema.str_schema(pattern=pattern))


def _ecma_pattern(validator: Any, pattern: str, instance: Any, schema: dict[str, Any]) -> Any:
    """``pattern`` as JSON Schema means it (ECMA-262, with ``\\p{..}``, as the events'
    ids use), matched by pydantic-core's engine: Python's ``re`` has no ``\\p{..}``."""
    if not validator.is_type(instance, "string"):
        return
    try:
        _pattern(pattern).validate_python(instance)
    except pydantic_core.ValidationError:
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


EcmaDraft7Validator = jsonschema.validators.extend(
    jsonschema.Draft7Validator, {"pattern": _ecma_pattern}
)


def _read(schema: dict[str, Any], raw: bytes) -> str:
    """A header's (or an octet-stream payload's) bytes, read as its schema says."""
    return raw.decode("latin-1" if schema.get("contentEncoding") == "binary" else "utf-8")


class Document:
    """The committed document, and validation against any schema in it by JSON pointer
    (its internal ``$ref`` s resolved within it; nothing fetched)."""

    def __init__(self) -> None:
        self.doc = yaml.safe_load(COMMITTED.read_text())
        resource = Resource.from_contents(self.doc, default_specification=DRAFT7)
        self.registry: Registry[Any] = Registry().with_resource(DOC_URI, resource)

    def errors(self, instance: Any, pointer: str) -> list[str]:
        schema = {"$ref": f"{DOC_URI}#{pointer}"}
        validator = EcmaDraft7Validator(schema, registry=self.registry)
        return [f"{e.message} at {list(e.absolute_path)}" for e in validator.iter_errors(instance)]


def test_real_records_carry_the_declared_headers_and_validate() -> None:
    """Records made by the writers' own functions: each header declared (and every
    declared header written by someone), each header value and payload valid."""
    document = Document()
    messages = document.doc["components"]["messages"]
    seen: dict[str, set[str]] = {name: set() for name in messages}
    problems: list[str] = []
    records = real_records()
    for name, key, value, headers in records:
        at = f"/components/messages/{name}"
        message = messages[name]
        declared = message.get("headers", {"properties": {}, "required": []})
        props = declared["properties"]
        names = [n for n, _v in headers]
        assert len(names) == len(set(names)), (name, names)
        assert set(names) <= set(props), f"{name}: undeclared header(s) in {names}"
        assert set(declared["required"]) <= set(names), (name, names)
        seen[name] |= set(names)
        texts = {n: _read(props[n], v) for n, v in headers}
        if "headers" in message:
            problems += [f"{name} headers: {e}" for e in document.errors(texts, f"{at}/headers")]
        for n, text in texts.items():
            if props[n].get("contentMediaType") == "application/json":
                pointer = f"{at}/headers/properties/{n}/contentSchema"
                problems += [f"{name} {n}: {e}" for e in document.errors(json.loads(text), pointer)]
        if message["contentType"] == "application/json":
            payload: Any = None if value is None else json.loads(value)
        else:
            assert value is not None
            payload = _read(message["payload"], value)
        problems += [f"{name}: {e}" for e in document.errors(payload, f"{at}/payload")]
        assert key is None or key_parts(key) is not None, (name, key)
    assert not problems, "\n".join(problems)
    assert {name for name, *_ in records} == set(messages)  # a real record of each message
    each = {n: set(m.get("headers", {}).get("properties", {})) for n, m in messages.items()}
    assert seen == each, "a declared header no real record carries"


def test_the_record_check_sees_drift() -> None:
    """A field or header the document does not declare fails the check above."""
    document = Document()
    records = real_records()
    staff = next(orjson.loads(v) for n, _k, v, _h in records if n == "StaffInterval" and v)
    assert not document.errors(staff, "/components/messages/StaffInterval/payload")
    assert document.errors({**staff, "shift": 1}, "/components/messages/StaffInterval/payload")
    billing = next(h for n, _k, v, h in records if n == "BillingView" and v is not None)
    context = orjson.loads(dict(billing)["context"])
    pointer = "/components/messages/BillingView/headers/properties/context/contentSchema"
    assert not document.errors(context, pointer)
    assert document.errors({**context, "locale": "en"}, pointer)
    texts = {n: v.decode() for n, v in billing}
    assert document.errors({**texts, "trace": "x"}, "/components/messages/BillingView/headers")
    event = next(orjson.loads(v) for n, _k, v, _h in records if n == "LoggedEvent" and v)
    logged = "/components/messages/LoggedEvent/payload"
    assert not document.errors(event, logged)
    assert document.errors({**event, "org_id": "o:1"}, logged)  # its ECMA-262 pattern, enforced

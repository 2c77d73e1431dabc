"""``docs/asyncapi.yaml``: valid AsyncAPI 3.0.0, every topic in it, and not stale.

Validated against the AsyncAPI Initiative's JSON Schema (``tests/fixtures/asyncapi/``),
whose sub-schemas are found by their ``$id`` in the same file: no network.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from click.testing import CliRunner
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

from schemas.views import billing_line
from streams.cli.main import cli
from streams.contracts.asyncapi import asyncapi_yaml
from streams.kafka.topics import Topics

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

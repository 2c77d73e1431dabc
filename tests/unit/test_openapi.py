"""``GET /openapi.json``: a valid OpenAPI 3.1 document of every route the app serves.

The document is built from an app with the pages mounted (no broker), validated with
openapi-spec-validator, compared with the app's router, and served in process; the error
bodies the app really answers are checked against the document's ``Error`` schema.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, ClassVar

import jsonschema
import pydantic_core
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from jsonschema import FormatChecker
from openapi_schema_validator import oas31_format_checker
from openapi_spec_validator import validate
from openapi_spec_validator.validation import OpenAPIV31SpecValidator, keywords
from pydantic_core import core_schema

from streams.http.api_keys import ApiKeyStore, create_key
from streams.http.app import routes_app
from streams.http.openapi import MissingContract, openapi_document, served_routes
from streams.http.state_cache import StateCache
from streams.kafka.topics import Topics
from streams.web.config import WebConfig


def ecma_regex(instance: object) -> bool:
    """``format: regex`` as JSON Schema means it (ECMA-262, with ``\\p{..}``), read by the
    engine that enforces the patterns (pydantic-core); openapi-spec-validator's check
    compiles with Python's ``re``, which has no ``\\p{..}``."""
    if isinstance(instance, str):
        pydantic_core.SchemaValidator(core_schema.str_schema(pattern=instance))
    return True


ECMA_FORMATS = FormatChecker()
ECMA_FORMATS.checkers = {**oas31_format_checker.checkers}
ECMA_FORMATS.checks("regex", raises=pydantic_core.SchemaError)(ecma_regex)


class _EcmaSchemaValidator(keywords.OpenAPIV31SchemaValidator):
    schema_validator_format_checker = ECMA_FORMATS


class EcmaOpenAPIV31SpecValidator(OpenAPIV31SpecValidator):
    """The 3.1 validator, with ECMA-262 regular expressions."""

    keyword_validators: ClassVar[dict[str, Any]] = {
        **OpenAPIV31SpecValidator.keyword_validators,
        "schema": _EcmaSchemaValidator,
    }


def app_with_pages(tmp_path: Path) -> tuple[web.Application, str]:
    keys = tmp_path / "keys.json"
    _, key = create_key(keys, "org-a")
    topics = Topics(prefix="unused.")
    pages = WebConfig("127.0.0.1:1", topics.events, tmp_path / "claims")
    cache = StateCache("127.0.0.1:1", topics)  # never started
    cache.caught_up_now()
    return routes_app(cache, topics, ApiKeyStore(keys), pages=pages), key


def test_the_document_is_valid_openapi_3_1_and_describes_every_route(tmp_path: Path) -> None:
    app, _ = app_with_pages(tmp_path)
    doc = openapi_document(app)
    assert doc["openapi"] == "3.1.0"
    validate(doc, cls=EcmaOpenAPIV31SpecValidator)
    documented = {(method.upper(), path) for path, item in doc["paths"].items() for method in item}
    served = set(served_routes(app))
    assert documented == served
    assert {("POST", "/v1/events"), ("GET", "/openapi.json"), ("POST", "/signin")} <= served
    for path, item in doc["paths"].items():
        for method, op in item.items():
            assert op["responses"], (method, path)
            public = path in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/signin")
            assert (op["security"] == []) is public, (method, path)
            if path.startswith("/v1/"):
                assert "401" in op["responses"], (method, path)


def test_a_route_without_a_contract_cannot_be_documented(tmp_path: Path) -> None:
    app, _ = app_with_pages(tmp_path)

    async def undocumented(request: web.Request) -> web.Response:
        return web.Response()

    app.router.add_get("/v1/undocumented", undocumented)
    with pytest.raises(MissingContract, match="GET /v1/undocumented"):
        openapi_document(app)


def test_served_without_a_key_and_errors_have_the_documented_shape(tmp_path: Path) -> None:
    app, key = app_with_pages(tmp_path)
    doc = openapi_document(app)
    schemas = doc["components"]["schemas"]

    def check(body: Any, name: str) -> None:
        schema = {**schemas[name], "components": {"schemas": schemas}}
        jsonschema.Draft202012Validator(schema).validate(body)

    async def main() -> None:
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            served = await client.get("/openapi.json")
            assert served.status == 200
            assert await served.json() == doc
            no_key = await client.get("/v1/orgs/org-a/worklist?month=2025-03")
            assert (
                no_key.status == 401
                and "401" in doc["paths"]["/v1/orgs/{org}/worklist"]["get"]["responses"]
            )
            check(await no_key.json(), "Error")
            wrong = await client.put("/openapi.json")
            assert wrong.status == 405 and "GET" in wrong.headers["Allow"]
            check(await wrong.json(), "Error")
            bad = await client.post(
                "/v1/events",
                data=b'{"type": "activity.logged"}',
                headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
            )
            assert bad.status == 400
            check(await bad.json(), "EventsRejected")
            with pytest.raises(jsonschema.ValidationError):
                check({"accepted": 0, "rejected": 1, "errors": [], "extra": 1}, "EventsRejected")

    asyncio.run(main())

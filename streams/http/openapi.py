"""``GET /openapi.json``: the OpenAPI 3.1 document of ``caretally serve``, built from its routes.

Every route of the app's router is looked up in :data:`ROUTES`, the table of what each
route accepts and answers; a route without an entry makes :func:`openapi_document` raise
(``tests/unit/test_openapi.py`` builds the document of an app with the pages mounted), so
no route ships without a contract. Bodies and answers are the pydantic models of the wire
contract (:mod:`schemas.events`) and of the views (:mod:`schemas.views`); every JSON error
is ``{"error": "..."}`` (:func:`streams.http.routes.answer_errors`), every page error a page.

Not described: ``HEAD`` (aiohttp answers it for every ``GET``, without a body), the static
files of the pages (``/static/``: stylesheets and scripts, no contract), and ``405``
(any other method on a documented path: ``{"error": "method not allowed"}`` and ``Allow``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter
from pydantic.json_schema import models_json_schema

from schemas.events import MONTH_PATTERN, Event
from schemas.views import Alert, PatientMonthView, Worklist
from streams.web.sessions import COOKIE, CSRF_FIELD, SIGNIN_COOKIE

OPENAPI_PATH = "/openapi.json"
REF = "#/components/schemas/{model}"
Security = list[dict[str, list[str]]]
API_KEY: Security = [{"bearerApiKey": []}, {"headerApiKey": []}]
SESSION: Security = [{"sessionCookie": []}]
PUBLIC: Security = []


# --- answers of the API that are not views ------------------------------------------------


class _Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Error(_Answer):
    """Every error of the JSON API (``answer_errors``, the router's 404/405 included)."""

    error: str = Field(description="what went wrong, in words; never names a patient")


class LineError(_Answer):
    line: int = Field(ge=1, description="the line of the body, counted from 1 (blank included)")
    reason: str


class EventsAccepted(_Answer):
    accepted: int = Field(ge=0)
    rejected: int = Field(ge=0, le=0)


class EventsRejected(_Answer):
    """One bad line rejects the whole batch: nothing was written."""

    accepted: int = Field(ge=0, le=0)
    rejected: int = Field(ge=1)
    errors: list[LineError] = Field(description="the first 1000 errors")
    errors_truncated: bool | None = Field(default=None, description="present when cut")


class Health(_Answer):
    status: str = Field(description="ok, or degraded while Kafka is down")
    kafka: str = Field(description="live, catching_up or down")
    caught_up: bool
    billing_views: int = Field(ge=0)


class Ready(_Answer):
    ready: bool
    kafka: str = Field(description="live, catching_up or down")
    caught_up: bool


MODELS: tuple[type[BaseModel], ...] = (
    PatientMonthView,
    Alert,
    Worklist,
    Error,
    EventsAccepted,
    EventsRejected,
    Health,
    Ready,
)

# FHIR resources are described by reference to the FHIR specification, not re-modelled
FHIR_R4 = "https://hl7.org/fhir/R4"
FHIR_SCHEMAS: dict[str, dict[str, Any]] = {
    "FhirBundle": {
        "type": "object",
        "description": f"a FHIR R4 Bundle ({FHIR_R4}/bundle.html)",
        "required": ["resourceType"],
        "properties": {
            "resourceType": {"const": "Bundle"},
            "type": {"type": "string"},
            "entry": {"type": "array", "items": {"type": "object"}},
        },
    },
    "FhirOperationOutcome": {
        "type": "object",
        "description": f"a FHIR R4 OperationOutcome ({FHIR_R4}/operationoutcome.html)",
        "required": ["resourceType", "issue"],
        "properties": {
            "resourceType": {"const": "OperationOutcome"},
            "issue": {"type": "array", "items": {"type": "object"}},
        },
    },
}


# --- pieces of operations -------------------------------------------------------------------


def ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(model=name)}


def json_answer(description: str, schema: dict[str, Any], **headers: str) -> dict[str, Any]:
    out: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": schema}},
    }
    if headers:
        out["headers"] = {
            h: {"description": d, "schema": {"type": "string"}} for h, d in headers.items()
        }
    return out


def error(description: str, **headers: str) -> dict[str, Any]:
    return json_answer(description, ref("Error"), **headers)


def fhir_outcome(description: str, **headers: str) -> dict[str, Any]:
    """A FHIR ``OperationOutcome`` answer (``POST /fhir/r4``)."""
    out = json_answer(description, ref("FhirOperationOutcome"), **headers)
    out["content"] = {"application/fhir+json": out["content"]["application/json"]}
    return out


def page(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"text/html": {"schema": {"type": "string"}}}}


def redirect(description: str) -> dict[str, Any]:
    location = {"description": "where to go", "schema": {"type": "string"}}
    return {"description": description, "headers": {"Location": location}}


def event_stream(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }


def path_param(name: str, description: str, pattern: str | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    if pattern is not None:
        schema["pattern"] = pattern
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": schema,
    }


def query(
    name: str, description: str, schema: dict[str, Any] | None = None, required: bool = False
) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": required,
        "description": description,
        "schema": schema or {"type": "string"},
    }


ORG = path_param("org", "the org of the API key (another org's: 403)")
PATIENT = path_param("patient", "the patient id, as the events give it")
MONTH = path_param("month", "YYYY-MM", MONTH_PATTERN)
PAGE_MONTH = path_param("month", "YYYY-MM (another text: 400)")
MONTH_QUERY = query("month", "YYYY-MM", {"type": "string", "pattern": MONTH_PATTERN}, True)
NO_KEY = error("no API key, or not an active one", **{"WWW-Authenticate": "Bearer"})
NOT_YOURS = error("the path's org is not the key's")
WARMING = error(
    "warming up (still reading billing state), or Kafka is down", **{"Retry-After": "seconds"}
)
RETRY = {"Retry-After": "seconds"}
SIGNED_OUT = redirect("no session: to /signin?next=...")
PAGE_STATUS = {"400": page("a query or path value is not valid"), "503": page("warming up; retry")}
CSRF_FORM = {CSRF_FIELD: {"type": "string", "description": "the session's CSRF token"}}
CSRF_HEADER = {
    "name": "X-CSRF-Token",
    "in": "header",
    "required": False,
    "description": f"the session's CSRF token, instead of the form field {CSRF_FIELD}",
    "schema": {"type": "string"},
}


def form(properties: dict[str, Any], required: Iterable[str] = ()) -> dict[str, Any]:
    schema = {"type": "object", "properties": properties, "required": list(required)}
    return {"required": True, "content": {"application/x-www-form-urlencoded": {"schema": schema}}}


# --- the table of routes --------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    """What one route (``method`` and aiohttp path template) accepts and answers: an
    OpenAPI operation object, less its ``security`` (``auth``) and ``tags`` (``tag``)."""

    method: str
    path: str
    tag: str  # api, probes, fhir or pages
    auth: Security
    operation: dict[str, Any] = field(default_factory=dict)


ROUTES: tuple[Route, ...] = (
    # -- probes and the contract: no key -------------------------------------------------
    Route(
        "GET",
        "/healthz",
        "probes",
        PUBLIC,
        {
            "summary": "Health with detail",
            "responses": {
                "200": json_answer("Kafka answers (also while the cache warms up)", ref("Health")),
                "503": json_answer("Kafka does not answer a probe", ref("Health")),
            },
        },
    ),
    Route(
        "GET",
        "/readyz",
        "probes",
        PUBLIC,
        {
            "summary": "Readiness: every request can be answered",
            "responses": {
                "200": json_answer("ready", ref("Ready")),
                "503": json_answer("not ready (Kafka down or catching up)", ref("Ready"), **RETRY),
            },
        },
    ),
    Route(
        "GET",
        "/metrics",
        "probes",
        PUBLIC,
        {
            "summary": "Prometheus text exposition (no org or patient id in any label)",
            "responses": {
                "200": {
                    "description": "metrics",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                },
            },
        },
    ),
    Route(
        "GET",
        OPENAPI_PATH,
        "probes",
        PUBLIC,
        {
            "summary": "This document",
            "responses": {"200": json_answer("OpenAPI 3.1.0", {"type": "object"})},
        },
    ),
    # -- the JSON API: an org API key ----------------------------------------------------
    Route(
        "POST",
        "/v1/events",
        "api",
        API_KEY,
        {
            "summary": "Ingest one event (JSON) or a batch (NDJSON), all or nothing",
            "description": "Every event is validated before any is written; the events go to "
            "care.ingress.v1 as sent. Rate-limited per org in events.",
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": ref("Event")},
                    "application/x-ndjson": {
                        "schema": {"type": "string", "description": "one Event per line"}
                    },
                    "application/ndjson": {
                        "schema": {"type": "string", "description": "one Event per line"}
                    },
                },
            },
            "responses": {
                "202": json_answer(
                    "in the ingress topic",
                    ref("EventsAccepted"),
                    **{"X-Ingress-Offsets": "the ingress offsets written, e.g. 3-5,9"},
                ),
                "400": json_answer(
                    "a line is not a valid event of this key's org (nothing written), or no events",
                    {"oneOf": [ref("EventsRejected"), ref("Error")]},
                ),
                "401": NO_KEY,
                "408": error("the body did not arrive in time"),
                "413": error("body larger than the server's limit; split the batch"),
                "415": error("not application/json or application/x-ndjson"),
                "429": error("the org's event rate is exhausted", **RETRY),
                "503": error(
                    "the event log is unavailable; resend (event_id makes it safe)", **RETRY
                ),
            },
        },
    ),
    Route(
        "GET",
        "/v1/orgs/{org}/patients/{patient}/months/{month}",
        "api",
        API_KEY,
        {
            "summary": "The billing line of one patient-month",
            "parameters": [ORG, PATIENT, MONTH],
            "responses": {
                "200": json_answer("the line as care.billing.v1 holds it", ref("PatientMonthView")),
                "400": error("month is not YYYY-MM"),
                "401": NO_KEY,
                "403": NOT_YOURS,
                "404": error("no billing for that patient-month"),
                "503": WARMING,
            },
        },
    ),
    Route(
        "GET",
        "/v1/orgs/{org}/worklist",
        "api",
        API_KEY,
        {
            "summary": "Patient-months of a month by billing status, nearest threshold first",
            "parameters": [ORG, MONTH_QUERY],
            "responses": {
                "200": json_answer("the worklist", ref("Worklist")),
                "400": error("month is missing or not YYYY-MM"),
                "401": NO_KEY,
                "403": NOT_YOURS,
                "503": WARMING,
            },
        },
    ),
    Route(
        "GET",
        "/v1/orgs/{org}/alerts",
        "api",
        API_KEY,
        {
            "summary": "The org's alerts as Server-Sent Events",
            "description": "Stored alerts first (replay=N, or those after Last-Event-ID), then "
            "live ones. Each event: `id` the alert_id, `event` its kind, `data` an Alert as "
            "JSON (components.schemas.Alert); a comment line as heartbeat.",
            "parameters": [
                ORG,
                query(
                    "replay",
                    "how many stored alerts to send first",
                    {"type": "integer", "minimum": 0},
                ),
                query("last_event_id", "resume after this alert_id (as the Last-Event-ID header)"),
                {
                    "name": "Last-Event-ID",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string"},
                },
            ],
            "responses": {
                "200": event_stream(
                    "a stream of Alert events, until the key is revoked or the server stops"
                ),
                "400": error("replay is not an integer in range"),
                "401": NO_KEY,
                "403": NOT_YOURS,
                "429": error("too many open alert streams for this org"),
                "503": WARMING,
            },
        },
    ),
    # -- FHIR R4 in: an org API key --------------------------------------------------------
    Route(
        "POST",
        "/fhir/r4",
        "fhir",
        API_KEY,
        {
            "summary": "A FHIR R4 Bundle in: its resources mapped to events, to ingress",
            "description": "transaction: all or nothing; batch and collection: the entries that "
            "map are written, the others answered with an OperationOutcome and dead-lettered.",
            "requestBody": {
                "required": True,
                "content": {
                    "application/fhir+json": {"schema": ref("FhirBundle")},
                    "application/json": {"schema": ref("FhirBundle")},
                },
            },
            "responses": {
                "200": {
                    "description": "a batch-response or transaction-response Bundle",
                    "content": {"application/fhir+json": {"schema": ref("FhirBundle")}},
                },
                **{
                    status: fhir_outcome(description, **headers)
                    for status, description, headers in (
                        ("400", "not a Bundle that maps (transaction: nothing written)", {}),
                        ("413", "body larger than the server's limit, or than a burst", {}),
                        ("415", "not application/fhir+json", {}),
                        ("429", "the org's event rate is exhausted", RETRY),
                        ("500", "the Bundle could not be mapped (a bug); nothing written", {}),
                        ("503", "the event log is unavailable; resend", RETRY),
                    )
                },
                "401": NO_KEY,
            },
        },
    ),
    # -- the pages: a session cookie (and a CSRF token on every POST) ----------------------
    Route(
        "GET",
        "/",
        "pages",
        SESSION,
        {
            "summary": "Home: to the worklist",
            "responses": {"303": redirect("to /worklist")},
        },
    ),
    Route(
        "GET",
        "/signin",
        "pages",
        PUBLIC,
        {
            "summary": "The sign-in form (sets the double-submit cookie of its CSRF token)",
            "parameters": [query("next", "a local path to go to after sign-in")],
            "responses": {"200": page("the form"), "303": redirect("already signed in: to next")},
        },
    ),
    Route(
        "POST",
        "/signin",
        "pages",
        PUBLIC,
        {
            "summary": "Sign in with an org API key (starts a session cookie)",
            "description": f"The form's {CSRF_FIELD} must equal the {SIGNIN_COOKIE} cookie.",
            "requestBody": form(
                {"api_key": {"type": "string"}, "next": {"type": "string"}, **CSRF_FORM},
                ["api_key", CSRF_FIELD],
            ),
            "responses": {
                "303": redirect(f"signed in ({COOKIE} set): to next"),
                "401": page("not an active API key"),
                "403": page("the form is stale or from another site"),
                "503": page("too many sessions; retry later"),
            },
        },
    ),
    Route(
        "POST",
        "/signout",
        "pages",
        SESSION,
        {
            "summary": "Sign out",
            "parameters": [CSRF_HEADER],
            "requestBody": form(CSRF_FORM),
            "responses": {
                "303": redirect("to /signin"),
                "401": page("signed out already"),
                "403": page("no valid CSRF token, or from another site"),
            },
        },
    ),
    Route(
        "GET",
        "/worklist",
        "pages",
        SESSION,
        {
            "summary": "The worklist page",
            "parameters": [
                query("month", "YYYY-MM (default: this month)"),
                query("program", "only this program"),
                query("practitioner", "only this practitioner"),
                query("status", "only this billing status"),
                query("q", "search by patient id"),
            ],
            "responses": {"200": page("the worklist"), "303": SIGNED_OUT, **PAGE_STATUS},
        },
    ),
    Route(
        "GET",
        "/worklist/groups",
        "pages",
        SESSION,
        {
            "summary": "The worklist's groups, as an HTML fragment (fetched by the page)",
            "parameters": [query("month", "YYYY-MM"), query("status", "only this status")],
            "responses": {"200": page("the groups"), "401": page("signed out"), **PAGE_STATUS},
        },
    ),
    Route(
        "GET",
        "/live",
        "pages",
        SESSION,
        {
            "summary": "Server-Sent Events of a page: billing changes and alerts of the org",
            "responses": {
                "200": event_stream(
                    "event: billing (data {month}), alert (data an Alert), signed_out"
                ),
                "401": page("signed out"),
                "429": page("too many open pages of this org"),
                "503": page("warming up; retry"),
            },
        },
    ),
    Route(
        "GET",
        "/patients/{patient}/months/{month}",
        "pages",
        SESSION,
        {
            "summary": "One patient-month: its billing and its audit",
            "parameters": [PATIENT, PAGE_MONTH, query("as_of", "a local date-time to audit as of")],
            "responses": {
                "200": page("the patient-month"),
                "303": SIGNED_OUT,
                "404": page("nothing known of that patient in that month"),
                **PAGE_STATUS,
            },
        },
    ),
    Route(
        "GET",
        "/months/{month}/close",
        "pages",
        SESSION,
        {
            "summary": "Preview of closing a month",
            "parameters": [PAGE_MONTH],
            "responses": {"200": page("the preview"), "303": SIGNED_OUT, **PAGE_STATUS},
        },
    ),
    Route(
        "POST",
        "/months/{month}/close",
        "pages",
        SESSION,
        {
            "summary": "Close a month: append month.closed and write its claim files",
            "parameters": [PAGE_MONTH, CSRF_HEADER],
            "requestBody": form(
                {
                    "confirm": {"const": "yes"},
                    "reissue": {"const": "yes"},
                    "force": {"const": "yes"},
                    **CSRF_FORM,
                },
                ["confirm"],
            ),
            "responses": {
                "200": page("closed"),
                "400": page("not confirmed, or month not YYYY-MM"),
                "401": page("signed out"),
                "403": page("no valid CSRF token, or from another site"),
                "409": page("the close is refused (already closed, month not over, ...)"),
                "503": page("the log did not answer; close again"),
            },
        },
    ),
    Route(
        "GET",
        "/months/{month}/claims.{fmt}",
        "pages",
        SESSION,
        {
            "summary": "Download a closed month's claim lines",
            "parameters": [PAGE_MONTH, path_param("fmt", "csv, json or 837p")],
            "responses": {
                "200": {
                    "description": "the claim file",
                    "content": {
                        "text/csv": {"schema": {"type": "string"}},
                        "application/json": {"schema": {}},
                    },
                },
                "303": SIGNED_OUT,
                "404": page("not closed yet, or not csv/json/837p"),
                **PAGE_STATUS,
            },
        },
    ),
    Route(
        "GET",
        "/alerts",
        "pages",
        SESSION,
        {
            "summary": "The alerts page",
            "parameters": [query("kind", "only this kind of alert")],
            "responses": {"200": page("the alerts"), "303": SIGNED_OUT, **PAGE_STATUS},
        },
    ),
)
"""Every route of ``caretally serve``. A new route gets its entry here (or the document
cannot be built); ``operation`` is an OpenAPI operation object."""


# --- the document ---------------------------------------------------------------------------


class MissingContract(LookupError):
    """A route of the app has no entry in :data:`ROUTES`."""


def served_routes(app: web.Application) -> list[tuple[str, str]]:
    """(method, path template) of every route of ``app`` that the document describes:
    all but ``HEAD`` and the static files."""
    out = []
    for route in app.router.routes():
        resource = route.resource
        if route.method == "HEAD" or resource is None or isinstance(resource, web.StaticResource):
            continue
        out.append((route.method, resource.canonical))
    return out


def component_schemas() -> dict[str, Any]:
    """The models' JSON Schemas, ``$ref`` ed as ``#/components/schemas/<Model>``."""
    _, top = models_json_schema([(m, "validation") for m in MODELS], ref_template=REF)
    schemas: dict[str, Any] = dict(top.get("$defs", {}))
    event = TypeAdapter(Event).json_schema(ref_template=REF)
    schemas.update(event.pop("$defs", {}))
    schemas["Event"] = {"description": "one event of the wire contract v1", **event}
    schemas.update(FHIR_SCHEMAS)
    return dict(sorted(schemas.items()))


def openapi_document(app: web.Application, version: str = "1") -> dict[str, Any]:
    """The OpenAPI 3.1.0 document of the routes ``app`` serves (:class:`MissingContract`
    if one of them has no entry in :data:`ROUTES`)."""
    table = {(r.method, r.path): r for r in ROUTES}
    paths: dict[str, dict[str, Any]] = {}
    for method, path in sorted(set(served_routes(app))):
        entry = table.get((method, path))
        if entry is None:
            raise MissingContract(f"{method} {path} has no entry in streams.http.openapi.ROUTES")
        operation = {
            "operationId": f"{method.lower()} {path}",
            "tags": [entry.tag],
            "security": entry.auth,
            **entry.operation,
        }
        paths.setdefault(path, {})[method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "caretally serve",
            "version": version,
            "description": "The HTTP API of caretally (docs/contracts.md). Errors of the JSON "
            'API are {"error": "..."}; those of the pages are pages. Any other method on a '
            "documented path answers 405 with Allow; a request head or body that does not "
            "arrive in time 408; a server at its connection cap 503.",
        },
        "tags": [
            {"name": "api", "description": "the JSON API: an org API key"},
            {"name": "fhir", "description": "FHIR R4 in: an org API key"},
            {"name": "probes", "description": "no key: health, readiness, metrics, this document"},
            {"name": "pages", "description": "for people: a session cookie; CSRF token on POST"},
        ],
        "paths": paths,
        "components": {
            "schemas": component_schemas(),
            "securitySchemes": {
                "bearerApiKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "an org API key (`caretally keys create --org ORG`)",
                },
                "headerApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                "sessionCookie": {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": COOKIE,
                    "description": "a page session from POST /signin; every POST of a page also "
                    f"carries its CSRF token (form field {CSRF_FIELD} or header X-CSRF-Token)",
                },
            },
        },
    }


OPENAPI = web.AppKey("openapi", dict)  # the document's bytes, built at the first request


async def get_openapi(request: web.Request) -> web.Response:
    cache: dict[str, bytes] = request.app[OPENAPI]
    if "doc" not in cache:
        cache["doc"] = orjson.dumps(openapi_document(request.app))
    return web.Response(body=cache["doc"], content_type="application/json")


def add_openapi(app: web.Application) -> None:
    """Serve ``GET /openapi.json`` on ``app`` (no key: it is in the public paths)."""
    app[OPENAPI] = {}
    app.router.add_get(OPENAPI_PATH, get_openapi)

"""``docs/asyncapi.yaml``: the AsyncAPI 3.0.0 document of every topic, built from the code.

Channels are the topics of :class:`~streams.kafka.topics.Topics` (unprefixed names; their
Kafka configuration from :meth:`~streams.kafka.topics.Topics.settings`), keys and headers
are those of :mod:`streams.kafka.records` (and the gate's, the log writer's, the webhooks'),
payloads the JSON Schemas of the pydantic models (:mod:`schemas.events`,
:mod:`schemas.views`) and of the records' dataclasses. ``caretally schema --asyncapi``
prints it; ``tests/unit/test_asyncapi.py`` validates it against the AsyncAPI 3.0.0 JSON
Schema, checks that the committed file is what this module prints now, and holds records
made by the real writers to it (header names, header values and payloads).

Header values are bytes; their schemas say how to read them: ``contentEncoding: binary``
(raw bytes, one character per byte), otherwise UTF-8 text, and JSON text where
``contentMediaType`` is ``application/json`` (``contentSchema`` is what it holds).

A new topic: a property of ``Topics``, then a :class:`Channel` in :func:`channels` (the
test fails until every topic of ``Topics.settings()`` has one).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml
from pydantic import TypeAdapter
from pydantic.json_schema import models_json_schema

from schemas.events import Event
from schemas.views import Alert, PatientMonthView
from streams.kafka.topics import Topics
from streams.webhooks.parked import Parked, Resolved

REF = "#/components/schemas/{model}"
KAFKA_BINDING = "0.5.0"
IDS = (
    "ids as the event gives them, joined by ':' (a ':' or '/' inside an id is escaped as "
    "/3A or /2F; streams.kafka.records.key_parts decodes a key)"
)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(model=name)}


def _text(description: str, **extra: Any) -> dict[str, Any]:
    return {"type": "string", "description": description, **extra}


def _decimal(description: str, signed: bool = False) -> dict[str, Any]:
    return _text(description, pattern="^-?[0-9]+$" if signed else "^[0-9]+$")


def _json_text(model: str, description: str) -> dict[str, Any]:
    """A header holding JSON text (Kafka header values are bytes, never JSON values)."""
    return _text(description, contentMediaType="application/json", contentSchema=_ref(model))


def _digest(description: str) -> dict[str, Any]:
    """A header of 8 raw bytes (big-endian), not text."""
    return _text(description, contentEncoding="binary", minLength=8, maxLength=8)


def _headers(required: list[str], **properties: dict[str, Any]) -> dict[str, Any]:
    """Every header a record of the message can carry (no others: ``additionalProperties``
    false); ``required`` those every record carries."""
    return {
        "type": "object",
        "required": required,
        "properties": properties,
        "additionalProperties": False,
    }


STAFF_INTERVAL: dict[str, Any] = {
    "type": "object",
    "description": "one activity interval of a staff member, or its void "
    "(streams.kafka.records.staff_value)",
    "required": [
        "org_id",
        "staff_id",
        "patient_id",
        "activity_id",
        "event_id",
        "start",
        "end",
        "timezone",
        "voided",
    ],
    "properties": {
        "org_id": {"type": "string"},
        "staff_id": {"type": "string"},
        "patient_id": {"type": ["string", "null"]},
        "activity_id": {"type": "string"},
        "event_id": {"type": "string"},
        "start": {"type": "integer", "description": "epoch seconds"},
        "end": {"type": "integer", "description": "epoch seconds"},
        "timezone": {"type": "string", "description": "the practice's IANA zone"},
        "voided": {"type": "boolean"},
    },
    "additionalProperties": False,
}
PROGRESS: dict[str, Any] = {
    "type": "array",
    "description": "where the month stands against each track's next threshold",
    "items": {
        "type": "object",
        "required": ["family", "practitioner_id", "code", "have_s", "need_s"],
        "properties": {
            "family": {"type": "string"},
            "practitioner_id": {"type": ["string", "null"]},
            "code": {"type": "string"},
            "have_s": {"type": "integer"},
            "need_s": {"type": "integer"},
        },
        "additionalProperties": False,
    },
}
CONTEXT: dict[str, Any] = {
    "type": "object",
    "description": "what a reader of the view needs besides it",
    "required": ["timezone", "practitioners"],
    "properties": {
        "timezone": {"type": "string"},
        "practitioners": {"type": "array", "items": {"type": "string"}},
    },
    "additionalProperties": False,
}


PARKED_SOURCE = (
    "where the alert was read ({topic, partition, offset}, by caretally webhooks deliver), "
    "or {replay_of: <parked_id>} for a delivery parked again by caretally webhooks replay"
)


def _webhook_record(cls: type, kind: str) -> dict[str, Any]:
    schema = TypeAdapter(cls).json_schema(ref_template=REF)
    schema["properties"] = {"type": {"const": kind}, **schema["properties"]}
    if "source" in schema["properties"]:
        schema["properties"]["source"]["description"] = PARKED_SOURCE
    schema["required"] = ["type", *schema.get("required", [])]
    schema["additionalProperties"] = False  # parked.parse refuses unknown fields
    return schema


def component_schemas() -> dict[str, Any]:
    """Payload schemas, ``$ref`` ed as ``#/components/schemas/<name>``. The events' union
    carries AsyncAPI's ``discriminator`` (a property name), not OpenAPI's object."""
    _, top = models_json_schema(
        [(PatientMonthView, "validation"), (Alert, "validation")], ref_template=REF
    )
    schemas: dict[str, Any] = dict(top.get("$defs", {}))
    event = TypeAdapter(Event).json_schema(ref_template=REF)
    schemas.update(event.pop("$defs", {}))
    event["discriminator"] = event["discriminator"]["propertyName"]
    schemas["Event"] = {"description": "one event of the wire contract v1", **event}
    schemas["StaffInterval"] = STAFF_INTERVAL
    schemas["BillingProgress"] = PROGRESS
    schemas["BillingContext"] = CONTEXT
    schemas["WebhookParked"] = _webhook_record(Parked, "parked")
    schemas["WebhookResolved"] = _webhook_record(Resolved, "resolved")
    return dict(sorted(schemas.items()))


@dataclass(frozen=True)
class Message:
    name: str
    summary: str
    key: str
    payload: dict[str, Any]
    headers: dict[str, Any] | None = None
    content_type: str = "application/json"

    def as_object(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "title": self.name,
            "summary": self.summary,
            "contentType": self.content_type,
        }
        if self.headers is not None:
            out["headers"] = self.headers
        out["payload"] = self.payload
        out["bindings"] = {
            "kafka": {"key": _text(self.key), "bindingVersion": KAFKA_BINDING},
        }
        return out


@dataclass(frozen=True)
class Channel:
    """One topic: ``id`` names it in the document, ``address`` is its (unprefixed) name."""

    id: str
    address: str
    description: str
    messages: tuple[Message, ...]
    sent_by: str  # who writes it, in words
    read_by: str = ""
    internal: bool = False
    config: dict[str, str] = field(default_factory=dict)


EVENT_KEY = f"org_id:patient_id, or org_id: for a practice-wide event; {IDS}"


def channels(topics: Topics) -> tuple[Channel, ...]:
    """Every topic of the pipeline (``topics`` unprefixed: the document names the defaults)."""
    event = _ref("Event")
    return (
        Channel(
            "ingress",
            topics.ingress,
            "Untrusted input, exactly as the feeds sent it; partitioned by org.",
            (
                Message(
                    "IngressEvent",
                    "one event as a feed sent it (not yet valid)",
                    EVENT_KEY,
                    event,
                    _headers(
                        [],
                        rerouted_from=_text(
                            "only on a record the gate moved to its org's partition: "
                            "<partition>:<offset> where it was first read",
                            pattern="^[0-9]+:[0-9]+$",
                        ),
                    ),
                ),
            ),
            "caretally serve (POST /v1/events, POST /fhir/r4) and caretally ingest, without "
            "headers; the worker's ingress gate, a valid event it read on another partition "
            "than its org's, moved there unchanged with header rerouted_from",
            "the worker's ingress gate",
        ),
        Channel(
            "events",
            topics.events,
            "The immutable log: validated, new events; practice-wide events on every partition.",
            (
                Message(
                    "LoggedEvent",
                    "one validated event, its bytes as sent",
                    EVENT_KEY,
                    event,
                    _headers(
                        ["idem", "body"],
                        idem=_digest("8 bytes, big-endian: the idempotency digest (org, event_id)"),
                        body=_digest("8 bytes, big-endian: the digest of the event's body"),
                    ),
                ),
            ),
            "the worker's ingress gate, caretally close (month.closed), caretally restore "
            "(an archive, as the gate wrote it), all through streams.kafka.log_writer",
            "the worker's fold, caretally close and audit, the pages",
        ),
        Channel(
            "deadletter",
            topics.deadletter,
            "Rejected input with its raw bytes, the reason and where it came from.",
            (
                Message(
                    "DeadLetter",
                    "a rejected record: its bytes as received (an excerpt when too large)",
                    "the rejected record's key (cut to the key limit), or none",
                    _text("the raw bytes, not necessarily JSON", contentEncoding="binary"),
                    _headers(
                        ["reason", "source_topic", "source_partition", "source_offset"],
                        reason=_text("why it was rejected (e.g. too_large, conflict, a field)"),
                        source_topic=_text(
                            "where it was read: a topic (care.ingress.v1: the gate; "
                            "care.events.v1: the fold; care.staff.v1: the staff check; "
                            "care.alerts.v1: caretally webhooks deliver), http (POST "
                            "/v1/events), http:fhir (POST /fhir/r4) or ingest:<file> "
                            "(caretally ingest; the file's base name, - for stdin)"
                        ),
                        source_partition=_decimal(
                            "the partition read; -1 when not read from a topic", signed=True
                        ),
                        source_offset=_decimal(
                            "the record's offset (an unreadable batch: its first offset); "
                            "not from a topic: the event's index in the request (http), the "
                            "Bundle entry's index (http:fhir) or the line number (ingest)",
                            signed=True,
                        ),
                        digest=_text(
                            "too_large only: SHA-256 of all the bytes",
                            pattern="^sha256:[0-9a-f]{64}$",
                        ),
                        size=_decimal("too_large only: the size of all the bytes"),
                    ),
                    "application/octet-stream",
                ),
            ),
            "the worker (its ingress gate: invalid, conflicting or too large events, "
            "unreadable batches; its fold and staff check: records of the log or of "
            "care.staff.v1 it cannot fold), caretally serve (POST /v1/events: too large "
            "events; POST /fhir/r4: entries that map to no event), caretally ingest (too "
            "large lines, FHIR entries that map to no event), caretally webhooks deliver "
            "(records of care.alerts.v1 that are no alert, unreadable batches)",
            "people (caretally audit, kafka tools)",
        ),
        Channel(
            "billing",
            topics.billing,
            "The latest billing line per patient-month (compacted); a null value (tombstone) "
            "when the month no longer has anything in it.",
            (
                Message(
                    "BillingView",
                    "the billing line of a patient-month (the caretally replay JSON line)",
                    f"org_id:patient_id:month; {IDS}",
                    {"oneOf": [_ref("PatientMonthView"), {"type": "null"}]},
                    _headers(
                        [],
                        progress=_json_text("BillingProgress", "JSON; not on a tombstone"),
                        context=_json_text("BillingContext", "JSON; not on a tombstone"),
                    ),
                ),
            ),
            "the worker's fold",
            "caretally serve (its state cache), anyone billing",
        ),
        Channel(
            "alerts",
            topics.alerts,
            "Alerts: thresholds crossed and revoked, conflicts, late activity.",
            (Message("Alert", "one alert", f"org_id:patient_id; {IDS}", _ref("Alert")),),
            "the worker's fold and daily sweep",
            "caretally serve (SSE), caretally webhooks deliver",
        ),
        Channel(
            "staff",
            topics.staff,
            "Internal: activity intervals repartitioned by staff member, for staff_overlap.",
            (
                Message(
                    "StaffInterval",
                    "one activity interval of a staff member, or its void",
                    f"org_id:staff_id; {IDS}",
                    _ref("StaffInterval"),
                ),
            ),
            "the worker's fold",
            "the worker's staff check",
            internal=True,
        ),
        Channel(
            "webhooksParked",
            topics.webhooks_parked,
            "Webhook deliveries that failed every attempt, and the records that resolve them.",
            (
                Message(
                    "WebhookParked",
                    "a delivery that failed every attempt: the alert as sent",
                    "org_id (escaped as a key part)",
                    _ref("WebhookParked"),
                    _headers(["type"], type=_text("the value's type", const="parked")),
                ),
                Message(
                    "WebhookResolved",
                    "a parked delivery finished by caretally webhooks replay",
                    "org_id (escaped as a key part)",
                    _ref("WebhookResolved"),
                    _headers(["type"], type=_text("the value's type", const="resolved")),
                ),
            ),
            "caretally webhooks deliver (parked), caretally webhooks replay (resolved, and "
            "parked again when a replay fails too)",
            "caretally webhooks replay",
        ),
    )


def _kafka_config(config: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in config.items():
        if name == "cleanup.policy":
            out[name] = value.split(",")
        elif name in ("retention.ms", "retention.bytes", "max.message.bytes"):
            out[name] = int(value)
    return out


def asyncapi_document(version: str = "1") -> dict[str, Any]:
    """The AsyncAPI 3.0.0 document (plain data, in a stable order)."""
    topics = Topics()
    settings = topics.settings()
    chans: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for ch in channels(topics):
        kafka: dict[str, Any] = {"topic": ch.address}
        if ch.address in settings:
            kafka["topicConfiguration"] = _kafka_config(settings[ch.address])
        kafka["bindingVersion"] = KAFKA_BINDING
        description = f"{ch.description} Written by {ch.sent_by}."
        if ch.read_by:
            description += f" Read by {ch.read_by}."
        chans[ch.id] = {
            "address": ch.address,
            "title": ch.address + (" (internal)" if ch.internal else ""),
            "description": description,
            "messages": {m.name: {"$ref": f"#/components/messages/{m.name}"} for m in ch.messages},
            "bindings": {"kafka": kafka},
        }
        refs = [{"$ref": f"#/channels/{ch.id}/messages/{m.name}"} for m in ch.messages]
        for action, who in (("send", ch.sent_by), ("receive", ch.read_by)):
            if who:
                operations[f"{action}{ch.id[0].upper()}{ch.id[1:]}"] = {
                    "action": action,
                    "channel": {"$ref": f"#/channels/{ch.id}"},
                    "summary": who,
                    "messages": refs,
                }
    messages = {m.name: m.as_object() for ch in channels(topics) for m in ch.messages}
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "caretally topics",
            "version": version,
            "description": "The Kafka topics of caretally: what each holds, its key, headers "
            "and value (docs/contracts.md). Topic names carry an optional prefix "
            "(--topic-prefix / CARETALLY_TOPIC_PREFIX); the addresses here are without it. "
            "Header values are bytes: UTF-8 text, except where a header's schema says "
            "contentEncoding binary (raw bytes); contentMediaType application/json marks JSON "
            "text, whose contentSchema says what it holds. "
            "Generated by streams/contracts/asyncapi.py (caretally schema --asyncapi).",
        },
        "defaultContentType": "application/json",
        "channels": chans,
        "operations": operations,
        "components": {"messages": messages, "schemas": component_schemas()},
    }


class _PlainDumper(yaml.SafeDumper):
    """Writes a repeated object out again instead of an ``&id`` anchor and ``*id`` alias."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def asyncapi_yaml() -> str:
    """The document as ``docs/asyncapi.yaml`` holds it."""
    header = "# Generated by `caretally schema --asyncapi` (streams/contracts/asyncapi.py).\n"
    body = yaml.dump(
        asyncapi_document(),
        Dumper=_PlainDumper,
        sort_keys=False,
        allow_unicode=True,
        width=100,
        default_flow_style=False,
    )
    return header + body

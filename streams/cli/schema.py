"""``caretally schema``: the JSON Schema of the wire contract, for an EHR vendor; the output
schemas (the billing line, alerts) and the AsyncAPI document of the topics, for consumers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import orjson

from schemas.events import EVENT_TYPES, event_json_schemas
from streams.cli.options import output_option
from streams.cli.output import output_stream

OUTPUT_TYPES = ("billing.view", "alert")
"""The output records, by the name ``--type`` gives them (not event types)."""


def output_json_schema(name: str) -> dict[str, Any]:
    """The JSON Schema of an output record: ``billing.view`` (a line of ``caretally replay``
    and a value of ``care.billing.v1``) or ``alert`` (a value of ``care.alerts.v1``)."""
    from schemas.views import Alert, PatientMonthView

    model = PatientMonthView if name == "billing.view" else Alert
    schema = model.model_json_schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


@click.command(short_help="Print the JSON Schemas of the events in and the views out.")
@click.option(
    "--type",
    "event_type",
    default=None,
    type=click.Choice([*sorted(EVENT_TYPES), *OUTPUT_TYPES]),
    help="Print only this type's schema, as a standalone JSON Schema document: an event "
    "type, or an output: billing.view (the billing line) or alert.",
)
@click.option(
    "--asyncapi",
    is_flag=True,
    help="Print the AsyncAPI 3.0.0 document of every topic (YAML; docs/asyncapi.yaml).",
)
@output_option
def schema(event_type: str | None, asyncapi: bool, output: Path | None) -> None:
    """Print the JSON Schema of every wire-contract v1 event type (hand it to an EHR vendor).

    Without --type: one object keyed by event type. With --type: that type's schema alone;
    billing.view and alert are the outputs (care.billing.v1 and replay lines, care.alerts.v1).
    With --asyncapi: the AsyncAPI document of the topics instead. The HTTP API's OpenAPI
    document is served by caretally serve at GET /openapi.json.

    \b
    Examples:
      caretally schema --output caretally-events-v1.json
      caretally schema --type activity.logged
      caretally schema --type billing.view
      caretally schema --asyncapi --output asyncapi.yaml
    """
    if asyncapi:
        if event_type is not None:
            raise click.UsageError("--asyncapi prints every schema: leave --type out")
        from streams.contracts.asyncapi import asyncapi_yaml

        with output_stream(output, "the AsyncAPI document") as out:
            out.write(asyncapi_yaml())
        return
    if event_type in OUTPUT_TYPES:
        doc = output_json_schema(event_type)
    else:
        schemas = event_json_schemas()
        doc = schemas if event_type is None else schemas[event_type]
    with output_stream(output, "the JSON Schema") as out:
        out.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")

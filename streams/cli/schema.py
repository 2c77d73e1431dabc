"""``caretally schema``: the JSON Schema of the wire contract, for an EHR vendor."""

from __future__ import annotations

from pathlib import Path

import click
import orjson

from schemas.events import EVENT_TYPES, event_json_schemas
from streams.cli.options import output_option
from streams.cli.output import output_stream


@click.command(short_help="Print the JSON Schema of each wire-contract event type.")
@click.option(
    "--type",
    "event_type",
    default=None,
    type=click.Choice(sorted(EVENT_TYPES)),
    help="Print only this event type's schema, as a standalone JSON Schema document.",
)
@output_option
def schema(event_type: str | None, output: Path | None) -> None:
    """Print the JSON Schema of every wire-contract v1 event type (hand it to an EHR vendor).

    Without --type: one object keyed by event type. With --type: that type's schema alone.

    \b
    Examples:
      caretally schema --output caretally-events-v1.json
      caretally schema --type activity.logged
    """
    schemas = event_json_schemas()
    doc = schemas if event_type is None else schemas[event_type]
    with output_stream(output, "the JSON Schema") as out:
        out.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")

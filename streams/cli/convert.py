"""``caretally convert --from fhir FILE``: FHIR R4 to wire-contract NDJSON, offline."""

from __future__ import annotations

import gzip
import sys
import zlib
from pathlib import Path

import click

from streams.cli.exits import EXIT_BAD_LINES, fail
from streams.cli.options import org_option, output_option
from streams.cli.output import output_stream

MAX_BYTES = 256 * 1024 * 1024
"""The input is read whole (references resolve across it); this bounds it, decompressed."""


def _read(path: str) -> bytes:
    """The bytes of FILE (``-``: stdin), gunzipped if they are gzip."""
    try:
        if path == "-":
            raw = sys.stdin.buffer.read(MAX_BYTES + 1)
        else:
            with open(path, "rb") as stream:
                raw = stream.read(MAX_BYTES + 1)
        if raw[:2] == b"\x1f\x8b":
            inflate = zlib.decompressobj(wbits=31)  # gzip, bounded as it inflates
            out = inflate.decompress(raw, MAX_BYTES + 1)
            if not inflate.eof and len(out) <= MAX_BYTES:
                raise EOFError("truncated gzip")
            raw = out
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        fail(f"reading {path} failed: {exc}")
    if len(raw) > MAX_BYTES:
        fail(f"{path}: larger than {MAX_BYTES:,} bytes; split it (e.g. one NDJSON per resource)")
    return raw


def _one_document(text: bytes) -> bool:
    """``text`` is one JSON value (a Bundle or a resource), not NDJSON."""
    import orjson

    try:
        orjson.loads(text)
    except orjson.JSONDecodeError:
        return False
    return True


@click.command(short_help="Convert FHIR R4 resources to wire-contract events (NDJSON), offline.")
@click.argument("file", metavar="FILE", type=click.Path(allow_dash=True, dir_okay=False))
@click.option(
    "--from",
    "source_format",
    required=True,
    type=click.Choice(("fhir",)),
    help="What FILE holds. fhir: a FHIR R4 Bundle (transaction, batch or collection), one "
    "resource, or NDJSON of resources (a Bulk Data export); told apart by content.",
)
@org_option
@output_option
def convert(file: str, source_format: str, org_id: str, output: Path | None) -> None:
    """Convert FHIR R4 resources in FILE (- for stdin, maybe gzip) to wire-contract v1
    events, one JSON object per line, ready for `caretally ingest` or `caretally replay`.

    FHIR does not name caretally's org: give it with --org. How each resource maps
    (Condition, Consent, CarePlan, EpisodeOfCare, Encounter, Procedure, Task,
    Observation) is in docs/fhir.md. The same input always gives the same bytes, so
    converting and sending a file twice changes nothing.

    Each entry that cannot be mapped is one line on stderr (its entry index or line
    number, the resource and the reason); the events of the other entries are still
    written. Exit code: 0 when every entry converted, 3 when some could not be
    (as for rejected lines everywhere), 1 when FILE is no FHIR at all, 2 for usage.

    \b
    Examples:
      caretally convert --from fhir bundle.json --org practice-17
      caretally convert --from fhir Encounter.ndjson.gz --org practice-17 --output events.ndjson
      my-export | caretally convert --from fhir - --org practice-17 | caretally replay --input -
    """
    from streams.fhir.convert import FhirInputError, convert_document, convert_ndjson

    assert source_format == "fhir"
    raw = _read(file)
    text = raw.strip()
    if not text:
        fail(f"{file}: empty; give a FHIR Bundle, a resource or NDJSON of resources")
    ndjson = not _one_document(text)
    try:
        if not ndjson:
            conversion = convert_document(text, org_id)
        else:
            first = text.split(b"\n", 1)[0].strip()
            if not _one_document(first):
                raise FhirInputError("neither one JSON document nor NDJSON (one JSON per line)")
            conversion = convert_ndjson(raw.split(b"\n"), org_id)
    except FhirInputError as exc:
        fail(f"{file}: {exc}")
    with output_stream(output, "the events") as out:
        for value in conversion.events:
            out.write(value.decode() + "\n")
    for p in conversion.problems:
        about = f" {p.resource}" if p.resource else ""
        click.echo(f"{file}: {p.where}{about}: {p.reason}", err=True)
    if ndjson:
        unit = f"{conversion.entries} line(s)"
    elif conversion.bundle_type is not None:
        unit = f"a {conversion.bundle_type} Bundle of {conversion.entries} entries"
    else:
        unit = "1 resource"
    click.echo(
        f"converted {unit}: {len(conversion.events)} event(s), "
        f"{len(conversion.problems)} problem(s)",
        err=True,
    )
    if conversion.problems:
        sys.exit(EXIT_BAD_LINES)

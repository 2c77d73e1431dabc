"""``caretally convert --from fhir FILE``: FHIR R4 to wire-contract NDJSON, offline."""

from __future__ import annotations

import contextlib
import sys
import zlib
from pathlib import Path

import click

from streams.cli.exits import EXIT_BAD_LINES, fail
from streams.cli.options import org_option, output_option
from streams.cli.output import output_stream


def _read(file: str) -> tuple[str, bytes]:
    """The name and bytes of FILE (``-``: stdin), gunzipped (every member) if it is gzip,
    bounded by the FHIR input limit (it is read whole)."""
    from streams.fhir.convert import FHIR_MAX_BYTES
    from streams.ingest.sources import DecompressedTooLarge, open_source
    from streams.kafka.clients import describe

    too_large = f"larger than {FHIR_MAX_BYTES:,} bytes; split it (e.g. one NDJSON per resource)"
    with contextlib.ExitStack() as stack:
        try:
            source = open_source(file, stack, FHIR_MAX_BYTES, click.get_binary_stream("stdin"))
            raw = source.stream.read(FHIR_MAX_BYTES + 1)
        except DecompressedTooLarge:
            fail(f"{file}: {too_large}")
        except (OSError, EOFError, zlib.error) as exc:
            raise click.UsageError(f"cannot read {file}: {describe(exc)}") from None
    if len(raw) > FHIR_MAX_BYTES:
        fail(f"{source.name}: {too_large}")
    return source.name, raw


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
    converting and sending a file twice changes nothing. FILE is read whole (at most
    64 MB decompressed): references resolve across it.

    Each entry that cannot be mapped is one line on stderr (its entry index or line
    number, the resource and the reason); the events of the other entries are still
    written. Exit code: 0 when every entry converted, 3 when some could not be (as for
    rejected lines everywhere), 2 when FILE cannot be read or is no FHIR at all (a
    usage error, as for `ingest` and `replay`), 1 when it is too large.

    \b
    Examples:
      caretally convert --from fhir bundle.json --org practice-17
      caretally convert --from fhir Encounter.ndjson.gz --org practice-17 --output events.ndjson
      my-export | caretally convert --from fhir - --org practice-17 | caretally replay --input -
    """
    from streams.fhir.convert import FhirInputError, convert_input

    assert source_format == "fhir"
    name, raw = _read(file)
    try:
        conversion = convert_input(raw, org_id)
    except FhirInputError as exc:
        raise click.UsageError(f"{name}: not FHIR R4 this can read: {exc}") from None
    with output_stream(output, "the events") as out:
        for value in conversion.events:
            out.write(value.decode() + "\n")
    for p in conversion.problems:
        about = f" {p.resource}" if p.resource else ""
        click.echo(f"{name}: {p.where}{about}: {p.reason}", err=True)
    if conversion.bundle_type is not None:
        unit = f"a {conversion.bundle_type} Bundle of {conversion.entries} entries"
    elif conversion.entries == 1:
        unit = "1 resource"
    else:
        unit = f"{conversion.entries} NDJSON lines"
    click.echo(
        f"converted {unit}: {len(conversion.events)} event(s), "
        f"{len(conversion.problems)} problem(s)",
        err=True,
    )
    if conversion.problems:
        sys.exit(EXIT_BAD_LINES)

"""``caretally close --org ORG --month YYYY-MM``: close a month and export its claim lines.

The decisions (refuse, reissue, export only) are :func:`streams.close.service.close_month`'s;
this module parses the options, connects and prints what was done.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import click

from streams.cli.exits import EXIT_REFUSED, fail
from streams.cli.kafka_options import KafkaOptions, connect, kafka_options
from streams.cli.options import (
    RuleBooks,
    claims_dir_option,
    month_option,
    no_progress_option,
    org_option,
    output_option,
    parse_month,
    renamed,
    require,
    rules_option,
)
from streams.cli.output import output_stream
from streams.cli.progress import ProgressBar, wanted

CLAIMS_FORMATS = ("csv", "json", "both", "837p", "all")
# what each choice writes ("both" is the first release's pair)
_WRITES = {
    "csv": ("csv",),
    "json": ("json",),
    "both": ("csv", "json"),
    "837p": ("837p",),
    "all": ("csv", "json", "837p"),
}


@click.command(short_help="Close a month: append month.closed, export its claim lines.")
@org_option
@month_option(required=False)
@kafka_options
@claims_dir_option(Path("."))
@click.option(
    "--claims-format",
    type=click.Choice(CLAIMS_FORMATS),
    default="both",
    show_default=True,
    help="Which claim files to write: csv, json, both (csv and json), 837p (the "
    "837P-shaped .837p.json, docs/claims.md) or all three.",
)
@click.option(
    "--reissue",
    is_flag=True,
    help="Close a month that is already closed again, and export the claims as now known.",
)
@click.option(
    "--export-only",
    is_flag=True,
    help="Append nothing: write the claim files as the month's latest close saw the log.",
)
@click.option(
    "--force",
    is_flag=True,
    help="Close even if the month has not ended in the practice's time zone, or the org "
    "has no records in the log.",
)
@output_option
@rules_option
@no_progress_option
@renamed("--format", "--claims-format", "claims_format", type=click.Choice(CLAIMS_FORMATS))
@renamed("YYYY-MM", "--month", "month", callback=parse_month)
def close(
    org_id: str,
    month: str | None,
    kafka: KafkaOptions,
    claims_dir: Path,
    claims_format: str,
    reissue: bool,
    export_only: bool,
    force: bool,
    output: Path | None,
    rules: RuleBooks,
    no_progress: bool,
) -> None:
    """Close --month of --org: append month.closed to the log (care.events.v1, every
    partition) and write the claim lines billed as of that close (org, patient, billing
    practitioner, code, units, date of service per docs/rules.md G16, estimated payment,
    a claim line id, place of service, the diagnosis codes on record for the month and
    what needs review; docs/claims.md) to claims-<org>-<digest>-<YYYY-MM>.csv and .json
    (and .837p.json, an 837P-shaped claim document, with --claims-format 837p or all),
    where <org> is the org id made file-name safe and <digest> 16 hex digits of a hash
    of the exact org id (orgs that look alike never share a file). Activities or voids
    that land in a closed month later raise late_activity alerts naming the claim line
    they would change. The worker need not be running. What was done is printed on stdout (or
    --output FILE).

    With --rules DIR the claim lines are priced with the rule books in DIR, not the
    shipped ones (the worker's late_activity alerts name the lines it computed with its
    own books: give it the same DIR).

    A claim line id is keyed by this close's random month.closed event id: the same
    with --export-only, new with --reissue, and useless for guessing patient ids.

    A closed month is refused unless --reissue (close again: new claims) or
    --export-only (rewrite the files of the latest close; nothing is appended). A month
    that has not ended in the practice's time zone, or an org without records, is
    refused unless --force.

    Exit code: 0 done, 1 broker unreachable or failing (or the close reached only some
    partitions: run again with --reissue), 2 usage error, 4 refused.

    \b
    Examples:
      caretally close --org practice-17 --month 2025-03
      caretally close --org practice-17 --month 2025-03 --claims-dir out/ --claims-format csv
      caretally close --org practice-17 --month 2025-03 --export-only   # the files again
      caretally close --org practice-17 --month 2025-03 --export-only --claims-format 837p
      caretally close --org practice-17 --month 2025-03 --reissue       # after late activity
    """
    from streams.close.service import CloseFailed, CloseRefused, CloseRequest, close_month
    from streams.kafka.clients import AioKafkaError, KafkaError

    require(month, "--month")
    assert month is not None
    if reissue and export_only:
        raise click.UsageError("--reissue and --export-only exclude each other")
    try:  # before anything is appended: a close must not end without its files
        claims_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        fail(f"cannot create --claims-dir {claims_dir}: {exc.strerror or exc}")
    if not os.access(claims_dir, os.W_OK | os.X_OK):
        fail(f"--claims-dir {claims_dir} is not writable")
    ctx = connect(kafka)
    logging.getLogger("kafka").setLevel(logging.CRITICAL)  # errors are reported below
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    topic = ctx.topics.events
    formats = _WRITES[claims_format]
    request = CloseRequest(org_id, month, claims_dir, formats, reissue, export_only, force)
    try:
        with ProgressBar("reading the log", wanted(no_progress), unit="records") as bar:
            result = close_month(
                ctx.settings, topic, request, on_progress=bar.update, catalog=rules.catalog
            )
    except CloseRefused as exc:
        fail(str(exc), EXIT_REFUSED)
    except CloseFailed as exc:
        fail(str(exc))
    except (KafkaError, AioKafkaError, OSError, TimeoutError) as exc:
        fail(f"talking to Kafka at {ctx.settings.describe()} failed: {type(exc).__name__}: {exc}")
    with output_stream(output, "the close's summary") as out:
        if result.appended:
            out.write(f"closed {month} for org {org_id}: appended month.closed {result.event_id}\n")
        else:
            out.write(f"exported the claims of {month} as closed by {result.event_id}\n")
        out.write(
            f"{len(result.lines)} claim line(s) for {result.patients} patient(s), "
            f"estimated payment ${result.total:,.2f}"
            + (
                " (provisional: priced with rules that are not final)"
                if any(ln.payment_provisional for ln in result.lines)
                else ""
            )
            + "; "
            f"wrote {', '.join(str(p) for p in result.paths)}\n"
        )

"""``caretally``: the command line (a stable contract: tests and tools drive it).

The click group, and one line per command registering it; each command lives in a module
of its own under ``streams/cli/`` (parse the options, call a room of ``streams/``, print)
and imports its heavy dependencies lazily.
"""

from __future__ import annotations

import click

from streams.cli.archive import archive
from streams.cli.audit import audit
from streams.cli.broker import broker
from streams.cli.close import close
from streams.cli.convert import convert
from streams.cli.demo import demo
from streams.cli.ingest import ingest
from streams.cli.replay import replay
from streams.cli.restore import restore
from streams.cli.rules import rules
from streams.cli.schema import schema
from streams.cli.serve import keys, serve
from streams.cli.sql import sql
from streams.cli.webhooks import webhooks
from streams.cli.worker import worker


@click.group(
    context_settings={"help_option_names": ["-h", "--help"]},
    invoke_without_command=True,
)
@click.version_option(package_name="caretally")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """caretally: an event-sourced time ledger for Medicare care-management billing.

    Every minute of care work is an immutable event (wire contract v1, see
    `caretally schema`); caretally turns them into billable CPT codes per patient
    and calendar month, with the reasons for anything it will not bill.

    \b
    Start here:
      caretally demo                                   a sample practice, live alerts
      caretally demo --offline --save-log sample.ndjson  ... no broker; keep its events
      caretally replay --input sample.ndjson --format table

    \b
    Options mean the same in every command:
      --input PATH     where events are read from (a file, - for stdin, an archive)
      --archive DIR    an archive a command writes (`archive`, `demo`)
      --format         the output format;  --output FILE  the output to a file
                       (`rules import-rvu --output DIR` writes a folder of books)
      --rules DIR      evaluate with the rule books in DIR instead of the shipped ones
      --bootstrap, --topic-prefix, --kafka-config   only on commands that talk to Kafka
    """
    if ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())


# (registered commands) one line each, in alphabetical order
for command in (
    archive,
    audit,
    broker,
    close,
    convert,
    demo,
    ingest,
    keys,
    replay,
    restore,
    rules,
    schema,
    serve,
    sql,
    webhooks,
    worker,
):
    cli.add_command(command)


def main() -> None:
    cli(prog_name="caretally")


if __name__ == "__main__":
    main()

"""``caretally sql``: read-only DuckDB SQL over the archive (see streams/archive/sql.py)."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, TextIO

import click
import orjson

from streams.archive.sql import DEFAULT_TIMEOUT_S
from streams.archive.store import is_archive
from streams.cli.exits import EXIT_FAILED, fail
from streams.cli.options import (
    RuleBooks,
    archive_input_option,
    format_option,
    output_option,
    renamed,
    rules_option,
)
from streams.cli.output import output_stream

TABLE_ROW_LIMIT = 10_000


def _plain(value: Any) -> Any:
    """A JSON/CSV-friendly form of a DuckDB value."""
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _cell(value: Any) -> str:
    value = _plain(value)
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return orjson.dumps(value).decode()
    return str(value)


@click.command(short_help="Read-only SQL over the archive: events, activities, patient_months.")
@click.argument("query")
@archive_input_option("the Parquet archive (a directory written by `caretally archive`).")
@format_option(
    ("table", "csv", "json"),
    "table",
    "table: human-readable (first 10,000 rows); csv; json: one object per line.",
)
@output_option
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_TIMEOUT_S,
    show_default=True,
    metavar="SECONDS",
    help="Stop the query (and the views it needs) after this long (exit 1).",
)
@rules_option
@renamed("--archive", "--input", "input_path", type=click.Path(path_type=Path))
def sql(
    query: str, input_path: Path, fmt: str, output: Path | None, timeout: float, rules: RuleBooks
) -> None:
    """Run a read-only DuckDB QUERY over the archive.

    \b
    Ready views:
      events          every archived event, once (typed columns, `event` as JSON,
                      log_position, partition, offset)
      activities      one row per current activity version (amendments applied,
                      voids removed): who, role, program, start, end, minutes
      patient_months  the replayed billing: the numbers `caretally replay` prints
                      (minutes MAP, billable/blocked lists, flags, estimated_payment);
                      with --rules DIR, evaluated with the rule books in DIR

    Read-only: QUERY must be one SELECT (DESCRIBE, SHOW and SUMMARIZE are SELECTs),
    as DuckDB's parser sees it; anything else, EXPLAIN included, is refused (exit 2).
    The connection can read the archive's own Parquet files and nothing else on disk
    or the network, cannot write any file, load an extension or change a setting, and
    each query is stopped after --timeout seconds. It is not a sandbox for untrusted
    users: whoever may run it can read every row of the archive, patient ids included.
    `activities` and `patient_months` are built when the query names them (a replay of
    the archive: seconds on a large one).

    \b
    Examples:
      caretally sql "SELECT type, count(*) FROM events GROUP BY type ORDER BY 2 DESC"
      caretally sql "SELECT program, sum(minutes) FROM activities GROUP BY ALL"
      caretally sql "SELECT month, sum(estimated_payment) FROM patient_months GROUP BY ALL
                     ORDER BY month" --format csv --output payments.csv
      caretally sql "SELECT count(*) FROM events" --input /srv/caretally/archive
      caretally sql "SELECT * FROM patient_months WHERE list_contains(flags, 'overlap')"
    """
    import duckdb

    from streams.archive.sql import ArchiveSql, SqlRejected, SqlTimeout

    if not input_path.exists() or not is_archive(input_path):
        raise click.UsageError(
            f"no archive at {input_path} (run `caretally archive`, or pass --input DIR)"
        )
    db = ArchiveSql(input_path, timeout=timeout, catalog=rules.catalog)
    try:
        try:
            names, rows = db.query(query)
            with output_stream(output, f"{fmt} rows") as out:
                _write(names, rows, fmt, out)
        except SqlRejected as exc:
            raise click.UsageError(str(exc)) from exc
        except SqlTimeout as exc:
            fail(str(exc), EXIT_FAILED)
        except duckdb.Error as exc:
            fail(str(exc).strip(), EXIT_FAILED)
    finally:
        db.close()


def _write(names: list[str], rows: Iterator[tuple[Any, ...]], fmt: str, out: TextIO) -> None:
    if fmt == "json":
        for row in rows:
            out.write(
                orjson.dumps(
                    {n: _plain(v) for n, v in zip(names, row, strict=True)},
                    option=orjson.OPT_NON_STR_KEYS,
                ).decode()
                + "\n"
            )
    elif fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(names)
        for row in rows:
            writer.writerow([_cell(v) for v in row])
    else:
        from rich.console import Console
        from rich.table import Table

        console = Console(file=out, width=None if out.isatty() else 200)
        table = Table(show_lines=False)
        for n in names:
            table.add_column(n, overflow="fold")
        count = 0
        for row in rows:
            if count < TABLE_ROW_LIMIT:
                table.add_row(*(_cell(v) for v in row))
            count += 1
        shown = min(count, TABLE_ROW_LIMIT)
        table.caption = f"{count} row(s)" + (
            f"; first {shown} shown (use --format csv for all)" if count > shown else ""
        )
        console.print(table)

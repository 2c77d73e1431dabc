"""Output formats for patient-month views: JSON lines, CSV, and a rich table."""

from __future__ import annotations

import csv
import sys
from collections.abc import Iterable
from typing import Any, TextIO

import orjson

CSV_COLUMNS = [
    "org_id",
    "patient_id",
    "month",
    "rule_year",
    "minutes",
    "billable",
    "blocked",
    "flags",
    "estimated_payment",
    "payment_provisional",
]


def write_json_lines(views: Iterable[dict[str, Any]], out: TextIO) -> int:
    n = 0
    for view in views:
        out.write(orjson.dumps(view).decode())
        out.write("\n")
        n += 1
    return n


def _codes(items: list[dict[str, Any]]) -> str:
    return " ".join(f"{i['code']}x{i['units']}" for i in items)


def _minutes(m: dict[str, float]) -> str:
    return " ".join(f"{k}={v:g}" for k, v in m.items())


def cells(v: dict[str, Any], list_sep: str = " ") -> list[str]:
    """A view as flat text cells, in ``CSV_COLUMNS`` order (CSV and the table share it)."""
    return [
        v["org_id"],
        v["patient_id"],
        v["month"],
        str(v["rule_year"]),
        _minutes(v["minutes"]),
        _codes(v["billable"]),
        " ".join(f"{b['code']}x{b['units']}({'|'.join(b['reasons'])})" for b in v["blocked"]),
        list_sep.join(v["flags"]),
        f"{v['estimated_payment']:.2f}",
        "true" if v["payment_provisional"] else "false",
    ]


def write_csv(views: Iterable[dict[str, Any]], out: TextIO) -> int:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    n = 0
    for v in views:
        writer.writerow(cells(v))
        n += 1
    return n


def write_table(views: Iterable[dict[str, Any]], out: TextIO | None = None) -> int:
    from rich.console import Console  # imported here: json and csv output do not need it
    from rich.table import Table

    stream = out or sys.stdout
    # a terminal sets its own width; a file or pipe gets a wide, unwrapped table
    console = Console(file=stream, width=None if stream.isatty() else 200)
    table = Table(title="caretally: billing by patient-month", show_lines=False)
    for col, kw in [
        ("org", {}),
        ("patient", {}),
        ("month", {}),
        ("rules", {}),
        ("minutes", {}),
        ("billable", {"style": "green"}),
        ("blocked", {"style": "red", "overflow": "fold"}),
        ("flags", {"style": "yellow", "overflow": "fold"}),
        ("est. $", {"justify": "right"}),
    ]:
        table.add_column(col, **kw)  # type: ignore[arg-type]
    n = 0
    total = 0.0
    provisional = False
    for v in views:
        row = cells(v, list_sep=", ")
        if v["payment_provisional"]:  # the payment cell says so; the caption says why
            row[-2] += " (provisional)"
            provisional = True
        table.add_row(*row[:-1])
        total += v["estimated_payment"]
        n += 1
    table.caption = f"{n} patient-month(s); estimated payment ${total:,.2f}" + (
        " (provisional: some months are priced with rules that are not final, "
        "flagged rules_provisional or rules_extrapolated)"
        if provisional
        else ""
    )
    console.print(table)
    return n

"""Output formats for alerts (``caretally replay --alerts``): JSON lines, CSV, a rich table.

Each alert comes in as its ``care.alerts.v1`` value (``streams.kafka.records.alert_value``):
JSON lines write those bytes unchanged, CSV and the table read them back.
"""

from __future__ import annotations

import csv
import sys
from collections import Counter
from collections.abc import Iterable
from typing import Any, TextIO

import orjson

from schemas.views import Alert

CSV_COLUMNS = list(Alert.model_fields)
"""alert_id, kind, org_id, patient_id, month, code, detail, cause_event_id."""


def write_json_lines(values: Iterable[bytes], out: TextIO) -> int:
    """One alert per line, exactly as the worker sends it."""
    n = 0
    for value in values:
        out.write(value.decode())
        out.write("\n")
        n += 1
    return n


def cells(alert: dict[str, Any]) -> list[str]:
    """An alert as text cells in ``CSV_COLUMNS`` order (a missing value is empty)."""
    return ["" if alert.get(c) is None else str(alert[c]) for c in CSV_COLUMNS]


def write_csv(values: Iterable[bytes], out: TextIO) -> int:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    n = 0
    for value in values:
        writer.writerow(cells(orjson.loads(value)))
        n += 1
    return n


def write_table(values: Iterable[bytes], out: TextIO | None = None) -> int:
    from rich.console import Console  # imported here: json and csv output do not need it
    from rich.table import Table

    stream = out or sys.stdout
    # a terminal sets its own width; a file or pipe gets a wide, unwrapped table
    console = Console(file=stream, width=None if stream.isatty() else 200)
    table = Table(title="caretally: alerts in log order", show_lines=False)
    for col, kw in [
        ("#", {"justify": "right"}),
        ("kind", {"style": "bold"}),
        ("org", {}),
        ("patient", {}),
        ("month", {}),
        ("code", {}),
        ("detail", {"overflow": "fold"}),
        ("cause event", {}),
        ("alert id", {"style": "dim"}),
    ]:
        table.add_column(col, **kw)  # type: ignore[arg-type]
    kinds: Counter[str] = Counter()
    for n, value in enumerate(values, 1):
        a = orjson.loads(value)
        kinds[a["kind"]] += 1
        table.add_row(
            str(n),
            a["kind"],
            a["org_id"],
            a["patient_id"],
            a["month"],
            a.get("code") or "",
            a["detail"],
            a.get("cause_event_id") or "(daily sweep)",
            a["alert_id"],
        )
    total = sum(kinds.values())
    by_kind = ", ".join(f"{k} {v}" for k, v in sorted(kinds.items()))
    table.caption = f"{total} alert(s)" + (f": {by_kind}" if by_kind else "")
    console.print(table)
    return total

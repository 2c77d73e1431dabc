"""Output formats of ``caretally rules import-rvu``: the fee table and the report, as rich
tables for people or as one JSON document."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TextIO

import orjson

from streams.rules.rvu_import import RvuImport


def document(imp: RvuImport, written: list[Path] | None) -> dict[str, Any]:
    """Everything the import found, JSON-ready: the file read, the fee table, the report
    (:meth:`~projections.rules.fee_import.FeeImport.report`) and the files written."""
    rvu = imp.result
    return {
        "source": {
            "path": str(imp.source.path),
            "member": imp.source.member,
            "csv": imp.source.name,
        },
        **rvu.report(),
        "fees": rvu.fee_rows(),
        "written": None if written is None else [str(p) for p in written],
    }


def write_json(imp: RvuImport, written: list[Path] | None, out: TextIO) -> None:
    out.write(orjson.dumps(document(imp, written), option=orjson.OPT_INDENT_2).decode() + "\n")


def write_table(imp: RvuImport, written: list[Path] | None, out: TextIO) -> None:
    from rich.console import Console  # imported here: json output does not need it
    from rich.markup import escape  # notes say "[U]": text, not markup
    from rich.table import Table

    doc = document(imp, written)
    console = Console(file=out, width=None if out.isatty() else 120)
    src = imp.source
    read = src.name if src.member is None else f"{src.member} from {src.path.name}"
    console.print(f"read {escape(read)}", highlight=False)
    what = (
        f"{doc['book']}: carried forward from {doc['base']}"
        if doc["carried_forward"]
        else f"{doc['book']}: updated"
    )
    cf = doc["conversion_factor"]
    fees = Table(title=f"{what}; fee table at {cf['key']} {cf['file']}")
    for col in ("code", "status", "RVU non-facility", "RVU facility", "fee", "fee facility"):
        fees.add_column(col)
    fees.add_column("unpriced: why", overflow="fold")
    for row in doc["fees"]:
        fees.add_row(
            row["code"],
            row["status"] or "",
            _num(row["rvu_nf"]),
            _num(row["rvu_fac"], "= non-facility" if row["rvu_nf"] is not None else ""),
            _money(row["fee_nf"]),
            _money(row["fee_fac"]),
            escape(row["unpriced"]),
        )
    console.print(fees)

    if cf["changed"]:
        console.print(f"{cf['key']}: {cf['book']} (the book's) -> {cf['file']} (the file's)")
    else:
        console.print(f"{cf['key']}: {cf['file']}, the book's")
    if doc["missing"]:
        console.print(
            "not in the file (no row without a modifier), the book's values kept: "
            + ", ".join(m["code"] for m in doc["missing"])
        )
    else:
        console.print("every code of the book is in the file")
    if doc["status_changes"]:
        table = Table(title="status changes")
        for col in ("code", "book", "now", "file says"):
            table.add_column(col)
        for s in doc["status_changes"]:
            table.add_row(s["code"], s["old"] or "(none)", s["new"] or "(none)", s["file"] or "")
        console.print(table)
    else:
        console.print("no status changes")
    if doc["rvu_changes"]:
        table = Table(title=f"RVU changes, fees at the book's conversion factor {_first_cf(doc)}")
        for col in ("code", "RVU non-facility", "RVU facility", "fee", "fee facility"):
            table.add_column(col)
        for c in doc["rvu_changes"]:
            table.add_row(
                c["code"],
                _change(c["rvu_nf"], _num),
                _change(c["rvu_fac"], _num),
                _change(c["fee_nf"], _money, delta=True),
                _change(c["fee_fac"], _money, delta=True),
            )
        console.print(table)
    else:
        console.print("no RVU changes")
    if doc["notes"]:
        table = Table(title="notes rewritten (review them)")
        table.add_column("code")
        table.add_column("note now", overflow="fold")
        table.add_column("was", overflow="fold")
        for n in doc["notes"]:
            table.add_row(n["code"], escape(n["new"]), escape(n["old"]))
        console.print(table)
    for warning in doc["warnings"]:
        console.print(f"[bold]check:[/bold] {escape(warning)}", highlight=False)
    if written is None:
        console.print("nothing written: give --output DIR to write the books")
    else:
        folder = written[0].parent if written else Path(".")
        console.print(
            f"wrote {len(written)} books to {folder}: {', '.join(p.name for p in written)}"
        )
        console.print(f"check them: caretally rules check {folder}/*.toml", highlight=False)


def _first_cf(doc: dict[str, Any]) -> str:
    changes = doc["rvu_changes"]
    return str(changes[0]["at_conversion_factor"]) if changes else ""


def _num(value: float | None, none: str = "") -> str:
    return none if value is None else f"{value:.2f}"


def _money(value: float | None) -> str:
    return "unpriced" if value is None else f"${value:,.2f}"


def _change(pair: list[float | None], show: Any, delta: bool = False) -> str:
    old, new = pair
    text = f"{show(old)} -> {show(new)}"
    if delta and old is not None and new is not None and old != new:
        text += f" ({new - old:+.2f})"
    return text

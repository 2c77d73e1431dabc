"""``caretally rules``: the shipped rule books, one code's rules, and checking a draft book.

Parse the options, call :mod:`projections.rules`, print; nothing here decides a rule.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, TextIO

import click
import orjson

from projections.rules import SHIPPED_CATALOG, check_files
from projections.rules.describe import book_rows, code_facts, pick_book
from streams.cli.exits import EXIT_FAILED, fail
from streams.cli.options import format_option, output_option
from streams.cli.output import output_stream


@click.group(short_help="List the rule books, show a code's rules, check a draft, import CMS fees.")
def rules() -> None:
    """The billing rules as data: one book (TOML file) per rule year, shipped in the
    package and checked whenever it loads. A provisional book (one whose final rule was
    not read, like 2027 today) bills every month with the flag rules_provisional:<year>.

    \b
    Examples:
      caretally rules list
      caretally rules show 99490                 the newest book's rules for 99490
      caretally rules show 99453 --year 2025 --format json
      caretally rules check 2028.toml --with-shipped
      caretally rules import-rvu rvu27a.zip --year 2027 --output books/
      caretally replay --rules books/ --input events.ndjson   try the draft on a log

    New fees from CMS: `import-rvu` reads the PPRRVU file and writes a set of books;
    a new year: copy the newest book, edit it, and run `caretally rules check` until it
    prints OK (docs/adding-a-rule-year.md is the checklist).
    """


@rules.command("list", short_help="List the shipped rule books.")
@format_option(("table", "json"), "table", "table (for people) or json (one object per book).")
@output_option
def list_books(fmt: str, output: Path | None) -> None:
    """List the shipped rule books: year, the dates it is in force, how many codes, and
    its file. A month after the last book is billed with the last book and flagged
    rules_extrapolated:<year>.

    \b
    Examples:
      caretally rules list
      caretally rules list --format json
    """
    rows = book_rows(SHIPPED_CATALOG)
    with output_stream(output, "the rule books") as out:
        if fmt == "json":
            out.write(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode() + "\n")
            return
        from rich.table import Table

        table = Table(title="caretally rule books")
        for col in ("year", "in force", "codes", "conversion factor (QP)", "file"):
            table.add_column(col)
        for r in rows:
            table.add_row(
                str(r["year"]) + (" provisional" if r["provisional"] else ""),
                f"{r['effective_from']} .. {r['effective_to']}",
                str(r["codes"]),
                f"{r['conversion_factor']} ({r['conversion_factor_qp']})",
                str(r["source"]),
            )
        console = _console(out)
        console.print(table)
        for r in rows:
            if r["provisional"]:
                console.print(f"{r['year']} is provisional: {r['provisional_reason']}")


@rules.command("show", short_help="Show one code's rules in one year's book.")
@click.argument("code")
@click.option(
    "--year",
    type=int,
    default=None,
    metavar="YEAR",
    help="The rule year (default: the newest book that has CODE).",
)
@format_option(("table", "json"), "table", "table (for people) or json.")
@output_option
def show(code: str, year: int | None, fmt: str, output: Path | None) -> None:
    """Show what one rule book says about CODE: threshold, add-on step, cap, day bands,
    fee, the tracks it is on, the codes it is never billed with, its family's
    documentation gate, and the docs/rules.md §1 source ids of each.

    \b
    Examples:
      caretally rules show 99490
      caretally rules show 99453 --year 2025
      caretally rules show G0557 --format json
    """
    try:
        book = pick_book(SHIPPED_CATALOG, code.upper(), year)
    except KeyError as exc:
        raise click.BadParameter(str(exc.args[0]), param_hint="CODE") from None
    facts = code_facts(book, code.upper())
    with output_stream(output, f"the rules of {facts['code']}") as out:
        if fmt == "json":
            out.write(orjson.dumps(facts, option=orjson.OPT_INDENT_2).decode() + "\n")
        else:
            _print_facts(_console(out), facts)


@rules.command("check", short_help="Check draft rule book files.")
@click.argument(
    "files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option(
    "--with-shipped",
    is_flag=True,
    help="Also check that the books fit the shipped ones (a book of a shipped year "
    "replaces it): consecutive years, no gap, no overlap.",
)
@output_option
def check(files: tuple[Path, ...], with_shipped: bool, output: Path | None) -> None:
    """Check rule book FILES the way every book is checked when it loads: each key and
    value known; codes, tracks, pairs and gates that refer to each other; the levels,
    the flag order, the sources and the dates. Prints one line per problem (file:line:
    key: what is wrong) and exits 1, or prints OK and exits 0.

    What it cannot check: that the numbers are right (RVUs, thresholds, caps against
    CMS's files and docs/rules.md); see docs/adding-a-rule-year.md.

    \b
    Examples:
      caretally rules check 2027.toml
      caretally rules check 2027.toml --with-shipped
    """
    books, problems = check_files(files, SHIPPED_CATALOG if with_shipped else None)
    with output_stream(output, "the check") as out:
        for problem in problems:
            out.write(f"{problem}\n")
        if not problems:
            for b in books:
                out.write(
                    f"OK {b.source}: {b.year}, {b.effective_from} .. {b.effective_to}, "
                    f"{len(b.codes)} codes\n"
                )
            if with_shipped:
                years = sorted({b.year for b in (*SHIPPED_CATALOG.books, *books)})
                out.write(f"OK with the shipped books: {', '.join(map(str, years))}\n")
    if problems:
        click.echo(f"{len(problems)} problem(s) found", err=True)
        sys.exit(EXIT_FAILED)


@rules.command("import-rvu", short_help="Import CMS's RVU file (PPRRVU) into a year's book.")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--year",
    type=int,
    required=True,
    metavar="YEAR",
    help="The rule year the file is for (its book, or a new book carried forward from the "
    "latest one before it).",
)
@click.option(
    "--output",
    "output_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    metavar="DIR",
    help="Write the complete set of books (the shipped ones, with YEAR's added or replaced) "
    "into DIR instead of only printing; here --output is a directory, not a file.",
)
@click.option("--force", is_flag=True, help="Write into DIR even if it is not empty.")
@format_option(("table", "json"), "table", "table (for people) or json (one document).")
def import_rvu(file: Path, year: int, output_dir: Path | None, force: bool, fmt: str) -> None:
    """Import CMS's RVU file into the book of YEAR: the RVUs, status and conversion factor
    of every code the engine knows, from PPRRVU (the National Physician Fee Schedule
    Relative Value File).

    \b
    FILE: download the year's release (RVU27A = January 2027, a zip such as rvu27a.zip) from
      https://www.cms.gov/medicare/payment/fee-schedules/physician/pfs-relative-value-files
    and give the zip (its PPRRVU*nonQPP*.csv is read; the report says which member) or the
    CSV itself.

    Each code of the YEAR book (for a year with no book yet: the latest book before it,
    carried forward) gets rvu_nf = NON-FACILITY TOTAL, rvu_fac = FACILITY TOTAL and
    status = STATUS CODE of its row without a modifier. A status with no national amount
    (C, contractor-priced, and any other but A, R, T) leaves the code unpriced, with a note
    saying why. conversion_factor = CONV FACTOR; [book] fees_from names the file. Only
    those lines of the book change; its comments stay.

    Prints the fee table and a report: codes missing from the file, status changes, RVU
    changes with the fee change at the book's conversion factor, the conversion factor
    change, and what to check by hand. Nothing is written without --output DIR; with it,
    DIR gets every book (each parsed and checked first), ready for `caretally rules check`
    (docs/adding-a-rule-year.md walks the whole update).

    \b
    Examples:
      caretally rules import-rvu rvu27a.zip --year 2027
      caretally rules import-rvu rvu27a.zip --year 2027 --output /tmp/books
      caretally rules check /tmp/books/*.toml
    """
    from streams.render.rvu_import import write_json, write_table
    from streams.rules.rvu_import import RvuImportError, import_rvu, strangers, write_books

    try:
        imported = import_rvu(file, year)
        written = None if output_dir is None else write_books(output_dir, imported.books, force)
    except RvuImportError as exc:
        fail(str(exc))
    (write_json if fmt == "json" else write_table)(imported, written, sys.stdout)
    if output_dir is not None:
        for path in strangers(output_dir, imported.books):
            click.echo(
                f"note: {path} is not one of the books written; DIR/*.toml reads it", err=True
            )


# -- printing ------------------------------------------------------------------------------


def _console(out: TextIO) -> Any:
    from rich.console import Console

    return Console(file=out, width=None if out.isatty() else 120)


def _sources(items: list[str]) -> str:
    return ", ".join(items)


def _print_facts(console: Any, facts: dict[str, Any]) -> None:
    from rich.table import Table

    head = Table(
        title=f"{facts['code']} in the {facts['year']} book ({facts['book']})",
        show_header=False,
    )
    head.add_column("key", style="bold")
    head.add_column("value", overflow="fold")
    head.add_row("descriptor", facts["descriptor"])
    for key, value in facts["rule"].items():
        head.add_row(key, _text(value))
    fee = facts["fee"]
    if fee["status"] is not None:
        head.add_row("status", f"{fee['status']} (CMS PFS status indicator)")
    if fee["national_nonfacility"] is None:
        head.add_row("fee", "unpriced (no national amount in this book)")
    else:
        cf, cf_qp = fee["conversion_factor"], fee["conversion_factor_qp"]
        head.add_row(
            "fee",
            f"${fee['national_nonfacility']} non-facility (RVU {fee['rvu_nf']} x CF {cf}), "
            f"${fee['national_facility']} facility (RVU {fee['rvu_fac']}); "
            f"qualifying APM participants (CF {cf_qp}): ${fee['national_nonfacility_qp']} / "
            f"${fee['national_facility_qp']}; {_sources(fee['sources'])}"
            + ("; PROVISIONAL" if fee["provisional"] else ""),
        )
    if fee["fees_from"]:
        head.add_row("RVUs from", fee["fees_from"])
    if facts["addons"]:
        head.add_row("add-ons", ", ".join(facts["addons"]))
    head.add_row("sources", _sources(facts["sources"]))
    if facts["note"]:
        head.add_row("note", facts["note"])
    console.print(head)
    if facts["tracks"]:
        tracks = Table(title="tracks (docs/rules.md §6.2 order)")
        for col in ("track", "base", "add-on", "basis", "requires", "sources"):
            tracks.add_column(col)
        for t in facts["tracks"]:
            tracks.add_row(
                t["track"],
                t["base"],
                t["addon"] or "",
                t["basis"],
                t["requires"] or "",
                _sources(t["sources"]),
            )
        console.print(tracks)
    if facts["exclusive"]:
        pairs = Table(title="never billed in one month with")
        for col in ("code", "scope", "resolution", "sources", "note"):
            pairs.add_column(col, overflow="fold")
        for e in facts["exclusive"]:
            pairs.add_row(e["with"], e["scope"], e["resolution"], _sources(e["sources"]), e["note"])
        console.print(pairs)
    gate = facts["gate"]
    if gate is not None:
        console.print(
            f"gate ({gate['family']}): consent {_text(gate['consent'])}, "
            f"min_conditions {gate['min_conditions']}, care_plan {_text(gate['care_plan'])}, "
            f"established_patient {_text(gate['established_patient'])} "
            f"({_sources(gate['sources'])})"
        )


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_text(v)}" for k, v in value.items() if v is not None)
    return str(value)

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
from streams.cli.exits import EXIT_FAILED
from streams.cli.options import format_option, output_option
from streams.cli.output import output_stream


@click.group(short_help="List the rule books, show a code's rules, check a draft book.")
def rules() -> None:
    """The billing rules as data: one book (TOML file) per rule year, shipped in the
    package and checked whenever it loads.

    \b
    Examples:
      caretally rules list
      caretally rules show 99490                 the newest book's rules for 99490
      caretally rules show 99453 --year 2025 --format json
      caretally rules check 2027.toml --with-shipped

    Adding a year: copy the newest book, edit it, and run `caretally rules check` until it
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
        for col in ("year", "in force", "codes", "conversion factor", "file"):
            table.add_column(col)
        for r in rows:
            table.add_row(
                str(r["year"]),
                f"{r['effective_from']} .. {r['effective_to']}",
                str(r["codes"]),
                f"{r['conversion_factor']}",
                str(r["source"]),
            )
        _console(out).print(table)


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
    national = fee["national_nonfacility"]
    amount = "unpriced" if national is None else f"${national}"
    head.add_row(
        "fee",
        f"{amount} (RVU {fee['rvu_nf']} x CF {fee['conversion_factor']}; "
        f"{_sources(fee['sources'])})",
    )
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

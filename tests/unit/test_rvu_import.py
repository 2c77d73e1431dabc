"""``caretally rules import-rvu``: CMS's PPRRVU file into a year's book.

The files imported here are built from the shipped books' own values (:func:`pprrvu_bytes`),
so "the file agrees with the book except for one RVU" stays true whatever the books hold;
``tests/fixtures/pprrvu/`` has a sample shaped like CMS's file for the reader itself.
"""

from __future__ import annotations

import csv
import difflib
import io
import zipfile
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner, Result

from projections.rules import SHIPPED_CATALOG, RuleBook, RuleCatalog, parse_book
from projections.rules.fee_import import import_fees
from projections.rules.model import PRICED_STATUSES
from projections.rules.pprrvu import PprrvuError, choose_member, read_pprrvu
from streams.cli.main import cli
from streams.rules.rvu_import import import_rvu, shipped_texts
from support.rule_books import shipped_text

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "pprrvu"
NAME = "PPRRVU2026_Jan_nonQPP.csv"
YEAR = 2026
BOOK = SHIPPED_CATALOG.year(YEAR)

# (header cells top to bottom, what the column holds): CMS's order, four header rows with
# HCPCS on the last, as in the real file; the top one has a single cell
REAL = [
    (("", "", "", "HCPCS"), "code"),
    (("", "", "", "MOD"), "mod"),
    (("", "", "", "DESCRIPTION"), "desc"),
    (("", "", "STATUS", "CODE"), "status"),
    (("NOT", "USED FOR", "MEDICARE", "PAYMENT"), ""),
    (("", "", "WORK", "RVU"), "work"),
    (("", "NON-", "FAC", "PE RVU"), "pe_nf"),
    (("", "NON-", "FAC NA", "INDICATOR"), "na_nf"),
    (("", "", "FACILITY", "PE RVU"), "pe_fac"),
    (("", "", "FACILITY NA", "INDICATOR"), "na_fac"),
    (("", "", "MP", "RVU"), "mp"),
    (("", "NON-", "FACILITY", "TOTAL"), "nf"),
    (("", "", "FACILITY", "TOTAL"), "fac"),
    (("", "", "PCTC", "IND"), "pctc"),
    (("", "", "GLOB", "DAYS"), "glob"),
    (("", "", "CONV", "FACTOR"), "cf"),
]
# another year's file: two header rows with HCPCS on the first, another column order, and a
# column CMS added
SHUFFLED = [
    (("CONV", "FACTOR"), "cf"),
    (("HCPCS", ""), "code"),
    (("FACILITY", "TOTAL"), "fac"),
    (("NEW COLUMN", "ADDED LATER"), "added"),
    (("STATUS", "CODE"), "status"),
    (("DESCRIPTION", ""), "desc"),
    (("NON-FACILITY", "TOTAL"), "nf"),
    (("MOD", ""), "mod"),
    (("MP", "RVU"), "mp"),
    (("FACILITY", "PE RVU"), "pe_fac"),
    (("WORK", "RVU"), "work"),
    (("NON-FAC", "PE RVU"), "pe_nf"),
    (("GLOB", "DAYS"), "glob"),
]
TITLES = [
    "2026 National Physician Fee Schedule Relative Value File January Release",
    "CPT codes and descriptions only are copyright 2025 American Medical Association. "
    "All Rights Reserved.",
    "Released 12/29/2025",
]


def priced_code(book: RuleBook = BOOK) -> str:
    """The first code of ``book`` with a national amount (the one the tests change)."""
    return next(
        r.code
        for r in book.codes.values()
        if r.status in (*PRICED_STATUSES, None) and r.rvu_nf is not None and r.rvu_fac is not None
    )


def book_values(book: RuleBook) -> dict[str, dict[str, str]]:
    """Each code's cells as a PPRRVU file that agrees with ``book`` would have them."""
    out = {}
    for rule in book.codes.values():
        nf = rule.rvu_nf or 0.0
        fac = rule.rvu_fac if rule.rvu_fac is not None else nf
        out[rule.code] = {
            "code": rule.code,
            "mod": "",
            "desc": rule.descriptor[:28] + " – café",  # cp1252 bytes 0x96, 0xe9
            "status": rule.status or ("A" if rule.rvu_nf is not None else "C"),
            "work": "0.50",
            "pe_nf": "0.80",
            "pe_fac": "0.40",
            "mp": "0.05",
            "nf": f"{nf:.2f}",
            "fac": f"{fac:.2f}",
            "pctc": "0",
            "glob": "XXX",
            "cf": f"{book.conversion_factor}",
            "added": "new",
        }
    return out


def pprrvu_bytes(
    book: RuleBook = BOOK,
    *,
    layout: list[tuple[tuple[str, ...], str]] = REAL,
    cells: Mapping[tuple[str, str], str] | None = None,
    drop: tuple[str, ...] = (),
    drop_column: str = "",
    cf: str = "",
) -> bytes:
    """A PPRRVU file (cp1252) whose global rows agree with ``book``, but for ``cells``
    ((code, column) -> value), without the codes of ``drop`` and the column ``drop_column``,
    with the conversion factor ``cf`` (default: the book's) in every row;
    each priced code also has 26 and TC rows whose RVUs are nonsense (they must be ignored),
    and two codes the engine does not know ride along."""
    columns = [(head, key) for head, key in layout if not drop_column or key != drop_column]
    width = len(columns)
    rows: list[list[str]] = [["", "", title] + [""] * (width - 3) for title in TITLES]
    for level in range(len(columns[0][0])):
        rows.append([head[level] for head, _ in columns])
    values = book_values(book)
    for (code, key), value in (cells or {}).items():
        values[code][key] = value
    other = {
        **next(iter(book_values(book).values())),
        "code": "77067",
        "desc": "Scr mammo bi incl cad – global",
        "status": "A",
    }
    records = [other]
    for code, record in values.items():
        if code in drop:
            continue
        records.append(record)
        if record["status"] == "A":
            for mod in ("26", "TC"):
                records.append({**record, "mod": mod, "nf": "9.99", "fac": "9.99"})
    records.append({**other, "code": "99199", "status": "C", "nf": "0.00", "fac": "0.00"})
    for record in records:
        record["cf"] = cf or record["cf"]
        rows.append([record.get(key, "") for _, key in columns])
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerows(rows)
    return out.getvalue().encode("cp1252")


def line_of(data: bytes, code: str) -> int:
    """The line of ``code``'s first row (the global row) in a file :func:`pprrvu_bytes` built."""
    for n, cells in enumerate(csv.reader(io.StringIO(data.decode("cp1252"))), 1):
        if code in cells:
            return n
    raise AssertionError(code)


def write(tmp_path: Path, data: bytes, name: str = NAME) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(cli, ["rules", "import-rvu", *map(str, args)])


def report(*args: str | Path) -> dict:
    result = run(*args, "--format", "json")
    assert result.exit_code == 0, result.output
    return orjson.loads(result.stdout)


def fee(book: RuleBook, code: str, rvu: float) -> float | None:
    return book.code(code).model_copy(update={"rvu_nf": rvu}).fee(book.conversion_factor)


# -- one RVU changes: that fee and only that one ---------------------------------------------


def test_one_changed_rvu_changes_that_fee_and_only_that_one(tmp_path: Path) -> None:
    code = priced_code()
    old = BOOK.code(code).rvu_nf
    assert old is not None
    new = round(old + 0.25, 2)
    path = write(tmp_path, pprrvu_bytes(cells={(code, "nf"): f"{new:.2f}"}))

    doc = report(path, "--year", YEAR)
    assert [c["code"] for c in doc["rvu_changes"]] == [code]
    change = doc["rvu_changes"][0]
    assert change["rvu_nf"] == [old, new]
    assert change["fee_nf"] == [BOOK.fee(code), fee(BOOK, code, new)]
    assert change["fee_fac"][0] == change["fee_fac"][1]  # the facility RVU did not move
    assert doc["missing"] == [] and doc["conversion_factor"]["changed"] is False
    assert all(BOOK.code(s["code"]).status is None for s in doc["status_changes"])
    assert doc["fees_from"] == NAME and doc["written"] is None
    rows = {r["code"]: r for r in doc["fees"]}
    assert rows[code]["fee_nf"] == fee(BOOK, code, new)
    assert all(r["fee_nf"] == BOOK.fee(c) for c, r in rows.items() if c != code)

    table = run(path, "--year", YEAR).stdout
    before, after = BOOK.fee(code), fee(BOOK, code, new)
    assert before is not None and after is not None
    assert f"{old:.2f} -> {new:.2f}" in table and f"(+{after - before:.2f})" in table
    assert "nothing written" in table and "every code of the book is in the file" in table


def changed_rvu(code: str) -> float:
    old = BOOK.code(code).rvu_nf
    assert old is not None
    return round(old + 0.25, 2)


def test_the_book_text_changes_on_the_lines_of_that_code_only(tmp_path: Path) -> None:
    code = priced_code()
    new = changed_rvu(code)
    path = write(tmp_path, pprrvu_bytes(cells={(code, "nf"): f"{new:.2f}"}))
    result = import_rvu(path, YEAR).result

    before, after = shipped_text(YEAR).splitlines(), result.text.splitlines()
    removed = [line for line in difflib.ndiff(before, after) if line[:2] == "- "]
    added = [line[2:] for line in difflib.ndiff(before, after) if line[:2] == "+ "]
    assert len(removed) == len(added) <= 3
    assert f"rvu_nf = {new:.2f}" in added and f'fees_from = "{NAME}"' in added
    assert {a.split(" = ")[0] for a in added} <= {"rvu_nf", "note", "fees_from"}
    for other in BOOK.codes:
        if other != code:
            assert result.book.code(other) == BOOK.code(other)
    assert result.book.code(code).model_dump(exclude={"rvu_nf", "note"}) == BOOK.code(
        code
    ).model_dump(exclude={"rvu_nf", "note"})
    assert result.book.code(code).note.startswith(f"RVUs from {NAME}.")


# -- statuses --------------------------------------------------------------------------------


def test_a_status_c_code_is_written_unpriced_with_its_reason(tmp_path: Path) -> None:
    code = priced_code()
    path = write(tmp_path, pprrvu_bytes(cells={(code, "status"): "C"}))
    imported = import_rvu(path, YEAR)
    rule = imported.result.book.code(code)
    assert (rule.status, rule.rvu_nf, rule.rvu_fac) == ("C", None, None)
    reason = f"status C in {NAME}: contractor-priced, no national amount"
    assert rule.note.startswith(f"Unpriced: {reason}.")
    assert imported.result.book.fee(code) is None
    doc = report(path, "--year", YEAR)
    assert {"code": code, "reason": reason} in doc["unpriced"]
    assert {"code": code, "old": "A", "new": "C", "file": "C"} in doc["status_changes"]
    assert [c["code"] for c in doc["rvu_changes"]] == [code]
    assert doc["rvu_changes"][0]["fee_nf"] == [BOOK.fee(code), None]

    # ... and back: a code the book has unpriced gets status and RVU lines again
    back = read_pprrvu(pprrvu_bytes(), NAME)
    again = import_fees(imported.result.book, imported.result.text, back, YEAR, NAME)
    rule = again.book.code(code)
    assert (rule.status, rule.rvu_nf, rule.rvu_fac) == (
        BOOK.code(code).status or "A",
        BOOK.code(code).rvu_nf,
        BOOK.code(code).rvu_fac,
    )
    assert rule.note.startswith(f"RVUs from {NAME}.") and "Unpriced" not in rule.note
    assert again.book.fee(code) == BOOK.fee(code)


@pytest.mark.parametrize(
    ("status", "written", "reason"),
    [("X", "X", "excluded by statute"), ("D", None, "deleted code")],  # D: no book value
)
def test_other_statuses_without_a_national_amount(
    status: str, written: str | None, reason: str
) -> None:
    code = priced_code()
    rvu = read_pprrvu(pprrvu_bytes(cells={(code, "status"): status}), NAME)
    result = import_fees(BOOK, shipped_text(YEAR), rvu, YEAR, NAME)
    rule = result.book.code(code)
    assert (rule.status, rule.rvu_nf, rule.rvu_fac) == (written, None, None)
    assert rule.note.startswith(f"Unpriced: status {status} in {NAME}: {reason}.")
    change = {"code": code, "old": BOOK.code(code).status, "new": written, "file": status}
    assert change in result.report()["status_changes"]


def test_a_book_without_statuses_gets_a_status_line_in_each_code() -> None:
    book = SHIPPED_CATALOG.year(2025)
    rvu = read_pprrvu(pprrvu_bytes(book), NAME.replace("2026", "2025"))
    result = import_fees(book, shipped_text(2025), rvu, 2025, rvu.name)
    expected = {c for c, r in book.codes.items() if r.status is None}
    assert {c for c, r in result.book.codes.items() if r.status == "A"} >= expected
    assert not [u for u in result.updates if u.fees_changed]
    assert result.text.count('status = "A"\nrvu_nf = ') == len(expected)


# -- --output DIR ------------------------------------------------------------------------------


def test_output_writes_books_the_catalog_and_the_check_accept(tmp_path: Path) -> None:
    code = priced_code()
    new = changed_rvu(code)
    path = write(tmp_path, pprrvu_bytes(cells={(code, "nf"): f"{new:.2f}"}))
    out = tmp_path / "books"
    result = run(path, "--year", YEAR, "--output", out)
    assert result.exit_code == 0, result.output
    files = sorted(out.glob("*.toml"))
    assert [p.name for p in files] == sorted(shipped_texts())
    catalog = RuleCatalog.read(files)
    assert catalog.year(YEAR).code(code).rvu_nf == new
    assert catalog.year(YEAR).fees_from == NAME
    assert f"wrote {len(files)} books to {out}" in result.stdout
    for year in (b.year for b in SHIPPED_CATALOG.books if b.year != YEAR):
        assert (out / f"{year}.toml").read_text(encoding="utf-8") == shipped_text(year)

    check = CliRunner().invoke(cli, ["rules", "check", *map(str, files)])
    assert check.exit_code == 0, check.output
    assert [line.split(":")[0] for line in check.stdout.splitlines()] == [f"OK {p}" for p in files]

    again = run(path, "--year", YEAR, "--output", out)
    assert again.exit_code == 1 and "--force" in again.stderr
    assert run(path, "--year", YEAR, "--output", out, "--force").exit_code == 0


def test_a_year_with_no_book_is_carried_forward_from_the_last(tmp_path: Path) -> None:
    last = SHIPPED_CATALOG.last
    year = last.year + 1
    path = write(tmp_path, pprrvu_bytes(last), f"PPRRVU{year}_Jan_nonQPP.csv")
    out = tmp_path / "books"
    doc = report(path, "--year", year, "--output", out)
    assert doc["carried_forward"] is True and doc["base"] == last.source
    assert doc["rvu_changes"] == [] and doc["missing"] == []
    catalog = RuleCatalog.read(sorted(out.glob("*.toml")))
    book = catalog.year(year)
    assert (book.effective_from.isoformat(), book.effective_to.isoformat()) == (
        f"{year}-01-01",
        f"{year}-12-31",
    )
    assert {c: r.fee(book.conversion_factor) for c, r in book.codes.items()} == {
        c: r.fee(last.conversion_factor) for c, r in last.codes.items()
    }
    text = (out / f"{year}.toml").read_text(encoding="utf-8")
    assert text.startswith(f"# caretally rule book, CY {year}: carried forward from {last.source}")
    assert any("carried forward" in w for w in doc["warnings"])

    skip = run(path, "--year", year + 1)
    assert skip.exit_code == 1 and f"import {year} first" in skip.stderr
    early = run(path, "--year", SHIPPED_CATALOG.first.year - 1)
    assert early.exit_code == 1 and "no rule book for" in early.stderr


# -- what the file looks like ------------------------------------------------------------------


def test_the_header_is_found_whatever_the_column_order_and_an_added_column(
    tmp_path: Path,
) -> None:
    real = report(write(tmp_path, pprrvu_bytes()), "--year", YEAR)
    other = report(write(tmp_path, pprrvu_bytes(layout=SHUFFLED), "b.csv"), "--year", YEAR)
    assert read_pprrvu(pprrvu_bytes(), NAME).header == (len(TITLES) + 1, len(TITLES) + 4)
    assert read_pprrvu(pprrvu_bytes(layout=SHUFFLED), NAME).header == (
        len(TITLES) + 1,
        len(TITLES) + 2,
    )
    assert real["fees"] == other["fees"]
    assert [r["fee_nf"] for r in real["fees"]] == [BOOK.fee(c) for c in BOOK.codes]
    assert real["rvu_changes"] == other["rvu_changes"] == []


def test_a_code_missing_from_the_file_is_reported_and_kept(tmp_path: Path) -> None:
    code = priced_code()
    path = write(tmp_path, pprrvu_bytes(drop=(code,)))
    doc = report(path, "--year", YEAR)
    rule = BOOK.code(code)
    assert doc["missing"] == [
        {"code": code, "kept": {"rvu_nf": rule.rvu_nf, "rvu_fac": rule.rvu_fac}}
    ]
    assert import_rvu(path, YEAR).result.book.code(code) == rule
    table = run(path, "--year", YEAR).stdout
    assert "not in the file" in table and code in table.split("not in the file")[1]


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        (lambda c: pprrvu_bytes(drop_column="fac"), "no column FACILITY TOTAL"),
        (lambda c: pprrvu_bytes(drop_column="status"), "no column STATUS CODE"),
        (
            lambda c: pprrvu_bytes(cells={(c, "nf"): "1.9O"}),
            "row {line}, column NON-FACILITY TOTAL: '1.9O' is not a number",
        ),
        (
            lambda c: pprrvu_bytes(cells={(c, "pe_fac"): "n/a"}),
            "row {line}, column FACILITY PE RVU: 'n/a' is not a number",
        ),
        (
            lambda c: pprrvu_bytes(cells={(c, "cf"): "34.0000"}),
            "row {line}, column CONV FACTOR: 34.0000 but",
        ),
        (
            lambda c: pprrvu_bytes().replace(
                b"\r\n" + c.encode() + b",", b"\r\n" + c.encode() + b",x,", 1
            ),
            "row {line}: 17 cells where the header names 16 columns (a ragged row)",
        ),
        (
            lambda c: pprrvu_bytes().replace(c.encode(), c.encode() + b"\x81", 1),
            "row {line}: byte 0x81",
        ),
        (lambda c: b"org_id,patient_id,minutes\r\np1,x,20\r\n", "not a PPRRVU file"),
    ],
    ids=[
        "no-column",
        "no-status",
        "not-a-number",
        "na-spelled-wrong",
        "two-factors",
        "ragged",
        "not-cp1252",
        "not-pprrvu",
    ],
)
def test_a_malformed_file_is_refused_naming_row_and_column(
    tmp_path: Path, build, expected: str
) -> None:
    code = priced_code()
    data = build(code)
    path = write(tmp_path, data)
    out = tmp_path / "books"
    result = run(path, "--year", YEAR, "--output", out)
    assert result.exit_code == 1, result.output
    line = line_of(pprrvu_bytes(), code)
    assert expected.format(line=line) in result.stderr
    assert not out.exists()


# -- zips ---------------------------------------------------------------------------------------


def zip_of(tmp_path: Path, members: dict[str, bytes], name: str = "rvu26a.zip") -> Path:
    path = tmp_path / name
    with zipfile.ZipFile(path, "w") as archive:
        for member, data in members.items():
            archive.writestr(member, data)
    return path


def test_a_zip_is_read_through_its_nonqpp_member(tmp_path: Path) -> None:
    path = zip_of(
        tmp_path,
        {
            "RVU26A.pdf": b"%PDF",
            NAME.replace("nonQPP", "QPP"): b"not this one",
            NAME: pprrvu_bytes(),
            "GPCI2026.csv": b"x",
        },
    )
    doc = report(path, "--year", YEAR)
    assert doc["source"]["member"] == NAME and doc["fees_from"] == f"{NAME} (rvu26a.zip)"
    assert f"read {NAME} from rvu26a.zip" in run(path, "--year", YEAR).stdout

    both = zip_of(tmp_path, {NAME: b"", "sub/" + NAME: b""}, "two.zip")
    refused = run(both, "--year", YEAR)
    assert refused.exit_code == 1 and f"{NAME}, sub/{NAME}" in refused.stderr


def test_choose_member() -> None:
    assert choose_member(["PPRRVU25_JAN.csv", "RVU25A.pdf"]) == "PPRRVU25_JAN.csv"
    assert choose_member(["PPRRVU2026_Jan_QPP.csv", "a/PPRRVU2026_Jan_nonQPP.csv"]).startswith("a/")
    with pytest.raises(PprrvuError, match=r"no PPRRVU\*.csv in the zip \(its files: GPCI.csv\)"):
        choose_member(["GPCI.csv"])
    with pytest.raises(PprrvuError, match="more than one"):
        choose_member(["PPRRVU2026_Jan_QPP.csv", "PPRRVU2026_Apr_QPP.csv"])


def test_a_qpp_file_sets_the_qualifying_participants_factor(tmp_path: Path) -> None:
    data = pprrvu_bytes(cf="40.0000")
    rvu = read_pprrvu(data, "PPRRVU2026_Jan_QPP.csv")
    result = import_fees(BOOK, shipped_text(YEAR), rvu, YEAR, rvu.name)
    assert result.cf_key == "conversion_factor_qp"
    assert (result.book.conversion_factor_qp, result.book.conversion_factor) == (
        40.0,
        BOOK.conversion_factor,
    )


# -- the reader, on a sample shaped like CMS's file -------------------------------------------


def test_the_sample_is_read_by_joined_header_names() -> None:
    data = (FIXTURE / "PPRRVU2026_sample_nonQPP.csv").read_bytes()
    with pytest.raises(UnicodeDecodeError):
        data.decode("utf-8")  # cp1252 bytes really are there
    rvu = read_pprrvu(data, "PPRRVU2026_sample_nonQPP.csv")
    assert rvu.header == (4, 6) and rvu.data_rows == 7 and rvu.year == 2026
    assert rvu.conversion_factor == Decimal("33.4009")
    assert (
        rvu.columns["pe_nf"] == "NON-FAC PE RVU" and rvu.columns["total_nf"] == "NON-FACILITY TOTAL"
    )
    assert rvu.columns["na_fac"] == "FACILITY NA INDICATOR"
    got = {c: (r.status, r.rvu_nf, r.rvu_fac, r.row) for c, r in rvu.rows.items()}
    assert got == {
        "77067": ("A", Decimal("3.00"), None, 7),  # facility PE NA; not the 26/TC rows
        "99490": ("A", Decimal("1.98"), Decimal("1.31"), 10),
        "98978": ("C", Decimal("0.00"), Decimal("0.00"), 11),
        "99454": ("A", Decimal("1.56"), None, 12),
        "99199": ("C", Decimal("0.00"), Decimal("0.00"), 13),
    }


def test_a_book_without_a_code_block_layout_it_knows_is_not_written() -> None:
    """The edited text is parsed again and compared: a book whose code is where the editor
    cannot find it is refused rather than written wrong."""
    code = priced_code()
    rvu = read_pprrvu(pprrvu_bytes(cells={(code, "nf"): "9.00"}), NAME)
    text = shipped_text(YEAR).replace(f'code = "{code}"', f'"code" = "{code}"', 1)
    with pytest.raises(ValueError, match=f'no \\[\\[codes\\]\\] block with code = "{code}"'):
        import_fees(parse_book(text, f"{YEAR}.toml"), text, rvu, YEAR, NAME)

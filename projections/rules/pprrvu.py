"""CMS's PPRRVU file (the National Physician Fee Schedule Relative Value File) as records.

The file is the CSV of CMS's yearly RVU zip (``PPRRVU2026_Jan_nonQPP.csv`` in
``rvu26a.zip``), encoded cp1252: a few title and copyright rows, then a column header
split over two or more rows (``WORK`` above ``RVU``, ``NON-FAC`` above ``PE RVU``, ...),
then one row per code and modifier. Columns are added between years, so a column is
found by the name its header cells make when joined top to bottom, never by position.
The header is the row with a cell ``HCPCS``, the header-like rows right above it (short
cells: titles and copyright notices are one long cell) and the rows below it down to the
first row whose HCPCS cell is a code.

Only the global row of a code (no modifier) is read: the ``26``/``TC`` rows price the
professional and technical components. A facility PE of ``NA`` (CMS did not price the
service in a facility) makes the facility total unusable: the facility RVU is then
missing, and the book's rule "no rvu_fac: the non-facility one applies" holds. Anything
else that does not fit (a missing column, a non-numeric RVU, a ragged row) is refused with
a :class:`PprrvuError` naming the row (the file's line) and the column.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

ENCODING = "cp1252"
CODE = re.compile(r"^[0-9A-Z]{5}$")
NUMBER = re.compile(r"^-?(\d+(\.\d*)?|\.\d+)$")
MISSING = ("", "NA")
"""Cells that hold no value (an RVU CMS did not develop is ``NA``)."""
TITLE_CELL = 40
"""A header cell is short; a cell longer than this is a title or a notice."""

COLUMNS: dict[str, tuple[str, ...]] = {
    "hcpcs": ("HCPCS",),
    "mod": ("MOD",),
    "status": ("STATUS CODE",),
    "work": ("WORK RVU",),
    "pe_nf": ("NON-FAC PE RVU", "NON-FACILITY PE RVU"),
    "pe_fac": ("FACILITY PE RVU",),
    "mp": ("MP RVU",),
    "total_nf": ("NON-FACILITY TOTAL", "NON-FAC TOTAL"),
    "total_fac": ("FACILITY TOTAL",),
    "cf": ("CONV FACTOR",),
}
"""The columns read, each by its joined header name (the first spelling is CMS's)."""
OPTIONAL_COLUMNS: dict[str, tuple[str, ...]] = {
    "na_nf": ("NON-FAC NA INDICATOR", "NON-FACILITY NA INDICATOR"),
    "na_fac": ("FACILITY NA INDICATOR",),
}
"""Columns read when present: an ``NA`` there means the PE RVU beside it is missing."""
RVU_FIELDS = ("work", "pe_nf", "pe_fac", "mp", "total_nf", "total_fac")


class PprrvuError(ValueError):
    """Not a PPRRVU file this reader understands: the message names the row and column."""


@dataclass(frozen=True)
class RvuRow:
    """The global row (no modifier) of one code."""

    code: str
    status: str  # CMS PFS status indicator
    rvu_nf: Decimal | None  # NON-FACILITY TOTAL; None: blank or NA
    rvu_fac: Decimal | None  # FACILITY TOTAL; None: blank, NA, or the facility PE is NA
    row: int  # the file's line


@dataclass(frozen=True)
class PprrvuFile:
    """What a PPRRVU file says, as data."""

    name: str  # the CSV's file name, for messages and notes
    title: str  # the first cell of its first non-empty row
    year: int | None  # the year its name or title gives, if any
    conversion_factor: Decimal  # the one value of CONV FACTOR
    rows: dict[str, RvuRow]  # global rows by code
    modifier_only: frozenset[str]  # codes with modifier rows and no global row
    columns: dict[str, str]  # what each column read is called in this file
    header: tuple[int, int]  # the first and last line of the column header
    data_rows: int


def read_pprrvu(data: bytes, name: str) -> PprrvuFile:
    """Read a PPRRVU CSV (``data``, cp1252) named ``name``."""
    text = _decode(data, name)
    reader = csv.reader(io.StringIO(text, newline=""))
    rows: list[tuple[int, list[str]]] = []
    try:
        for cells in reader:
            rows.append((reader.line_num, cells))
    except csv.Error as exc:
        raise PprrvuError(f"{name}: row {reader.line_num}: not CSV: {exc}") from None
    head, first_data, hcol = _header_bounds(rows, name)
    header_rows = [cells for _, cells in rows[head:first_data]]
    names = _joined_names(header_rows)
    columns = _find_columns(names, name, rows[head][0])
    width = max((i + 1 for i, n in enumerate(names) if n), default=0)
    if columns["hcpcs"] != hcol:
        raise PprrvuError(
            f"{name}: row {rows[head][0]}: the HCPCS column is not where the header says"
        )
    return _read_rows(
        name,
        rows,
        first_data,
        columns,
        names,
        width,
        header=(rows[head][0], rows[first_data - 1][0]),
    )


def choose_member(names: Sequence[str]) -> str:
    """The PPRRVU CSV of a zip's member ``names``: the ``PPRRVU*nonQPP*.csv`` one, else the
    only ``PPRRVU*.csv``; :class:`PprrvuError` listing the candidates otherwise."""
    csvs = [
        n for n in names if _base(n).upper().startswith("PPRRVU") and n.lower().endswith(".csv")
    ]
    non_qpp = [n for n in csvs if "NONQPP" in _base(n).upper()]
    pick = non_qpp or csvs
    if len(pick) == 1:
        return pick[0]
    if not pick:
        listed = ", ".join(names) or "none"
        raise PprrvuError(f"no PPRRVU*.csv in the zip (its files: {listed})")
    raise PprrvuError(
        f"more than one PPRRVU file in the zip ({', '.join(pick)}): extract the one to "
        "read and give its name"
    )


def is_qpp(name: str) -> bool:
    """The file of qualifying APM participants (``..._QPP.csv``): its CONV FACTOR is theirs."""
    base = _base(name).upper()
    return "QPP" in base and "NONQPP" not in base


def file_year(name: str, title: str) -> int | None:
    """The year a PPRRVU file's name (``PPRRVU2026_...``, ``PPRRVU25_...``) or title gives."""
    found = re.match(r"PPRRVU(\d{4}|\d{2})(?!\d)", _base(name).upper())
    if found:
        digits = found.group(1)
        return int(digits) if len(digits) == 4 else 2000 + int(digits)
    titled = re.match(r"\s*(\d{4})\b", title)
    return int(titled.group(1)) if titled else None


# -- the header ----------------------------------------------------------------------------


def _decode(data: bytes, name: str) -> str:
    try:
        return data.decode(ENCODING)
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise PprrvuError(
            f"{name}: row {line}: byte 0x{data[exc.start]:02x} is not {ENCODING} text "
            "(is this CMS's PPRRVU CSV?)"
        ) from None


def _cell(value: str) -> str:
    return " ".join(value.split()).upper()


def _header_bounds(rows: list[tuple[int, list[str]]], name: str) -> tuple[int, int, int]:
    """(first header row, first data row, HCPCS column) as indexes into ``rows``."""
    found = next(
        (
            (at, i)
            for at, (_, cells) in enumerate(rows)
            for i, c in enumerate(cells)
            if _cell(c) == "HCPCS"
        ),
        None,
    )
    if found is None:
        raise PprrvuError(
            f"{name}: no header row with a cell HCPCS: not a PPRRVU file "
            "(the PFS Relative Value File, PPRRVU*.csv in CMS's RVU zip)"
        )
    at, hcol = found
    head = at
    while head > 0 and _header_like(rows[head - 1][1]):
        head -= 1
    for first in range(at + 1, len(rows)):
        cells = rows[first][1]
        if hcol < len(cells) and CODE.match(cells[hcol].strip()):
            return head, first, hcol
    raise PprrvuError(f"{name}: no data rows after the header (row {rows[at][0]})")


def _header_like(cells: list[str]) -> bool:
    """Cells of a column header: short ones, several, or one in capitals (``NOT USED`` over
    one column); a title, a notice or a release date is one long or mixed cell."""
    filled = [c.strip() for c in cells if c.strip()]
    if not filled or any(len(c) > TITLE_CELL for c in filled):
        return False
    return len(filled) >= 2 or re.fullmatch(r"[A-Z][A-Z -]*", filled[0]) is not None


def _joined_names(header_rows: list[list[str]]) -> list[str]:
    """Each column's header cells joined top to bottom (``NON-`` + ``FAC`` reads ``NON-FAC``)."""
    width = max((len(r) for r in header_rows), default=0)
    names = []
    for i in range(width):
        parts = [_cell(r[i]) for r in header_rows if i < len(r) and r[i].strip()]
        names.append(re.sub(r"-\s+", "-", " ".join(parts)))
    return names


def _find_columns(names: list[str], file: str, row: int) -> dict[str, int]:
    """The index of every column of :data:`COLUMNS` (and of :data:`OPTIONAL_COLUMNS` found).

    A column is the one whose joined name is the wanted name, or, if none is, the one
    whose name ends with it (a stray word above the header); two candidates are refused."""
    found: dict[str, int] = {}
    for key, spellings in (COLUMNS | OPTIONAL_COLUMNS).items():
        wanted = [s.split() for s in spellings]
        exact = [i for i, n in enumerate(names) if n.split() in wanted]
        ending = [i for i, n in enumerate(names) if any(n.split()[-len(w) :] == w for w in wanted)]
        hits = exact or ending
        if len(hits) > 1:
            where = ", ".join(f"{i + 1} ({names[i]!r})" for i in hits)
            raise PprrvuError(f"{file}: header at row {row}: {spellings[0]} is columns {where}")
        if hits:
            found[key] = hits[0]
        elif key in COLUMNS:
            raise PprrvuError(
                f"{file}: header at row {row}: no column {spellings[0]} (columns: "
                f"{', '.join(repr(n) for n in names if n)})"
            )
    return found


# -- the rows ------------------------------------------------------------------------------


def _read_rows(
    name: str,
    rows: list[tuple[int, list[str]]],
    first_data: int,
    columns: dict[str, int],
    names: list[str],
    width: int,
    header: tuple[int, int],
) -> PprrvuFile:
    found: dict[str, RvuRow] = {}
    with_modifier: set[str] = set()
    cf: tuple[Decimal, int] | None = None
    count = 0
    for line, cells in rows[first_data:]:
        if not any(c.strip() for c in cells):
            continue
        if len(cells) < width or any(c.strip() for c in cells[width:]):
            raise PprrvuError(
                f"{name}: row {line}: {len(cells)} cells where the header names {width} "
                "columns (a ragged row)"
            )
        count += 1

        def column(key: str, cells: list[str] = cells, line: int = line) -> tuple[str, str]:
            return cells[columns[key]].strip(), names[columns[key]]

        code, _ = column("hcpcs")
        if not CODE.match(code):
            raise PprrvuError(f"{name}: row {line}, column HCPCS: {code!r} is not a code")
        status, label = column("status")
        if not re.fullmatch(r"[A-Z]", status):
            raise PprrvuError(
                f"{name}: row {line}, column {label}: {status!r} is not a status indicator"
            )
        values = {key: _number(*column(key), name, line) for key in RVU_FIELDS}
        factor = _number(*column("cf"), name, line)
        if factor:
            if cf is None:
                cf = (factor, line)
            elif factor != cf[0]:
                raise PprrvuError(
                    f"{name}: row {line}, column {names[columns['cf']]}: {factor} but "
                    f"{cf[0]} in row {cf[1]}: one conversion factor per file"
                )
        if column("mod")[0]:
            with_modifier.add(code)
            continue
        if code in found:
            raise PprrvuError(
                f"{name}: row {line}, column HCPCS: {code} has a second row without a "
                f"modifier (the first is row {found[code].row})"
            )
        na_nf = _not_available(cells, columns, "pe_nf", "na_nf")
        na_fac = _not_available(cells, columns, "pe_fac", "na_fac")
        found[code] = RvuRow(
            code=code,
            status=status,
            rvu_nf=None if na_nf else values["total_nf"],
            rvu_fac=None if na_fac else values["total_fac"],
            row=line,
        )
    if cf is None:
        raise PprrvuError(f"{name}: column {names[columns['cf']]}: no conversion factor in any row")
    title = next((c.strip() for _, cells in rows for c in cells if c.strip()), "")
    return PprrvuFile(
        name=name,
        title=title,
        year=file_year(name, title),
        conversion_factor=cf[0],
        rows=found,
        modifier_only=frozenset(with_modifier - set(found)),
        columns={key: names[i] for key, i in columns.items()},
        header=header,
        data_rows=count,
    )


def _number(value: str, label: str, file: str, line: int) -> Decimal | None:
    """A cell's number; None when it is blank or ``NA``."""
    if value.upper() in MISSING:
        return None
    if not NUMBER.match(value):
        raise PprrvuError(f"{file}: row {line}, column {label}: {value!r} is not a number")
    try:
        number = Decimal(value)
    except InvalidOperation:  # pragma: no cover - NUMBER admits only decimals
        raise PprrvuError(
            f"{file}: row {line}, column {label}: {value!r} is not a number"
        ) from None
    if number < 0:
        raise PprrvuError(f"{file}: row {line}, column {label}: {value} is negative")
    return number


def _not_available(cells: list[str], columns: dict[str, int], pe: str, indicator: str) -> bool:
    """The PE RVU of a setting is ``NA`` (in its own cell or in its NA INDICATOR column)."""
    if cells[columns[pe]].strip().upper() == "NA":
        return True
    return indicator in columns and cells[columns[indicator]].strip().upper() == "NA"


def _base(name: str) -> str:
    return name.replace("\\", "/").rsplit("/", 1)[-1]

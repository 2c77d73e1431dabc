"""A PPRRVU file into a year's rule book: the new fees, the book's new text and the report,
as data (``caretally rules import-rvu``; reading and writing files is the caller's).

For each code of the book (the year's book, or for a year with no book the latest book
before it, carried forward): ``rvu_nf`` = NON-FACILITY TOTAL, ``rvu_fac`` = FACILITY TOTAL,
``status`` = STATUS CODE of the code's global row. A status without a national amount
(any status not in :data:`~projections.rules.model.PRICED_STATUSES`) is written unpriced,
its note giving the reason. The conversion factor is the file's CONV FACTOR. Only those
lines change (plus ``[book] fees_from``, and for a new year its dates and a header
comment); the new text is parsed again and compared with what was meant, so a book this
module returns is one :func:`~projections.rules.parse_book` accepts and says exactly that.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, get_args

from projections.rules.book import RuleBook
from projections.rules.book_text import (
    prepend_comment,
    set_code_keys,
    set_table_keys,
    toml_number,
    toml_string,
)
from projections.rules.catalog import RuleCatalog, parse_book
from projections.rules.model import PRICED_STATUSES, CodeRule, PfsStatus
from projections.rules.pprrvu import PprrvuFile, RvuRow, is_qpp

CODE_KEYS = ("status", "rvu_nf", "rvu_fac", "note")
"""The keys of a ``[[codes]]`` block an import writes, in the order a book lists them."""
BOOK_KEYS = (
    "year",
    "effective_from",
    "effective_to",
    "conversion_factor",
    "conversion_factor_source",
    "conversion_factor_qp",
    "source_ids",
    "fees_from",
)
STATUS_REASONS = {
    "B": "bundled into other services, no separate amount",
    "C": "contractor-priced, no national amount",
    "D": "deleted code",
    "E": "excluded from the fee schedule by regulation",
    "F": "deleted code, no grace period",
    "G": "not valid for Medicare, another code is used",
    "H": "deleted modifier",
    "I": "not valid for Medicare, another code is used",
    "J": "anesthesia service, no fee schedule amount",
    "M": "measurement code, for reporting only",
    "N": "not covered by Medicare",
    "P": "bundled or excluded",
    "X": "excluded by statute",
}
"""Why a status has no national amount (CMS's PFS status indicators)."""
KNOWN_STATUSES = frozenset(get_args(PfsStatus))
_PRICING_SENTENCE = re.compile(r"RVU|^Unpriced\b|\bstatus [A-Z] in\b|national (amount|rate)")
"""A note's sentence about where the fee came from (replaced when the fee changes)."""


class FeeImportError(ValueError):
    """The import cannot be done (no book to start from, a year that leaves a gap)."""


@dataclass(frozen=True)
class CodeUpdate:
    """One code of the book: before and after the import."""

    code: str
    row: RvuRow | None  # its global row in the file; None: missing from the file
    old_status: str | None
    new_status: str | None
    old_nf: Decimal | None
    old_fac: Decimal | None
    new_nf: Decimal | None
    new_fac: Decimal | None
    old_note: str
    new_note: str
    unpriced: str  # why the file gives it no national amount ("" if it does)

    @property
    def fees_changed(self) -> bool:
        return _effective(self.old_nf, self.old_fac) != _effective(self.new_nf, self.new_fac)

    @property
    def file_status(self) -> str | None:
        return None if self.row is None else self.row.status


@dataclass(frozen=True)
class FeeImport:
    """The result of an import: the new book (text and parsed) and what changed."""

    year: int
    file: str  # the CSV read
    fees_from: str
    base: RuleBook  # the book the import started from
    book_name: str  # the new book's file name (<year>.toml)
    text: str
    book: RuleBook
    cf_key: str  # conversion_factor, or conversion_factor_qp for a QPP file
    cf_book: Decimal
    cf_file: Decimal
    updates: tuple[CodeUpdate, ...]
    warnings: tuple[str, ...] = field(default=())

    @property
    def carried_forward(self) -> bool:
        return self.base.year != self.year

    @property
    def missing(self) -> tuple[str, ...]:
        return tuple(u.code for u in self.updates if u.row is None)

    def fee_rows(self) -> list[dict[str, Any]]:
        """The new book's fee table: one row per code."""
        rows = []
        for rule in self.book.codes.values():
            rows.append(
                {
                    "code": rule.code,
                    "status": rule.status,
                    "rvu_nf": rule.rvu_nf,
                    "rvu_fac": rule.rvu_fac,
                    "fee_nf": self.book.fee(rule.code),
                    "fee_fac": self.book.fee(rule.code, facility=True),
                    "unpriced": _unpriced_note(rule),
                }
            )
        return rows

    def report(self) -> dict[str, Any]:
        """What a person checks after an import, as plain data (JSON-ready)."""
        cf = float(self.base.conversion_factor)
        return {
            "year": self.year,
            "file": self.file,
            "fees_from": self.fees_from,
            "book": self.book_name,
            "base": self.base.source,
            "carried_forward": self.carried_forward,
            "conversion_factor": {
                "key": self.cf_key,
                "book": float(self.cf_book),
                "file": float(self.cf_file),
                "changed": self.cf_book != self.cf_file,
            },
            "missing": [
                {"code": u.code, "kept": {"rvu_nf": _f(u.old_nf), "rvu_fac": _f(u.old_fac)}}
                for u in self.updates
                if u.row is None
            ],
            "status_changes": [
                {"code": u.code, "old": u.old_status, "new": u.new_status, "file": u.file_status}
                for u in self.updates
                if u.row is not None
                and (u.old_status != u.new_status or u.file_status != u.new_status)
            ],
            "rvu_changes": [
                {
                    "code": u.code,
                    "rvu_nf": [_f(u.old_nf), _f(u.new_nf)],
                    "rvu_fac": [_f(u.old_fac), _f(u.new_fac)],
                    "fee_nf": [_fee(u.old_nf, None, cf), _fee(u.new_nf, None, cf)],
                    "fee_fac": [_fee(u.old_nf, u.old_fac, cf), _fee(u.new_nf, u.new_fac, cf)],
                    "at_conversion_factor": cf,
                }
                for u in self.updates
                if u.fees_changed
            ],
            "unpriced": [
                {"code": u.code, "reason": u.unpriced} for u in self.updates if u.unpriced
            ],
            "notes": [
                {"code": u.code, "old": u.old_note, "new": u.new_note}
                for u in self.updates
                if u.old_note != u.new_note
            ],
            "warnings": list(self.warnings),
        }


def base_book(catalog: RuleCatalog, year: int) -> RuleBook:
    """The book an import of ``year`` starts from: the year's, else the latest before it."""
    before = [b for b in catalog.books if b.year <= year]
    if not before:
        raise FeeImportError(
            f"no rule book for {year} or before (the first is {catalog.first.year})"
        )
    base = before[-1]
    if base.year < year - 1:
        raise FeeImportError(
            f"the last book is {base.year}: a {year} book would leave {base.year + 1} without "
            f"one; import {base.year + 1} first"
        )
    return base


def import_fees(
    base: RuleBook, base_text: str, rvu: PprrvuFile, year: int, fees_from: str
) -> FeeImport:
    """Import ``rvu`` into ``base`` (whose TOML text is ``base_text``) as the book of ``year``."""
    updates = tuple(_update(rule, rvu) for rule in base.codes.values())
    qp = is_qpp(rvu.name)
    cf_key = "conversion_factor_qp" if qp else "conversion_factor"
    cf_book = Decimal(str(base.conversion_factor_qp if qp else base.conversion_factor))
    text = base_text
    for u in updates:
        values = _changed_lines(u)
        if values:
            text = set_code_keys(text, u.code, values, CODE_KEYS)
    header: dict[str, str | None] = {}
    if year != base.year:
        header |= {
            "year": str(year),
            "effective_from": f"{year}-01-01",
            "effective_to": f"{year}-12-31",
        }
    if rvu.conversion_factor != cf_book:
        header[cf_key] = toml_number(rvu.conversion_factor)
    header["fees_from"] = toml_string(fees_from)
    comment = f"CONV FACTOR of {rvu.name}: check it against the final rule (docs/rules.md §5)"
    text = set_table_keys(text, "book", header, BOOK_KEYS, {cf_key: comment})
    if year != base.year:
        text = prepend_comment(
            text,
            [
                f"caretally rule book, CY {year}: carried forward from {base.source} by",
                "`caretally rules import-rvu`, with the RVUs, statuses and conversion factor of",
                f"{fees_from}. Every other rule is still the {base.year} book's until",
                f"someone reads the CY {year} final rule (docs/adding-a-rule-year.md).",
                f"The {base.year} book's own header follows.",
                "",
            ],
        )
    name = f"{year}.toml"
    book = parse_book(text, name)
    _same_as_meant(base, book, updates, year, cf_key, rvu.conversion_factor, fees_from)
    return FeeImport(
        year=year,
        file=rvu.name,
        fees_from=fees_from,
        base=base,
        book_name=name,
        text=text,
        book=book,
        cf_key=cf_key,
        cf_book=cf_book,
        cf_file=rvu.conversion_factor,
        updates=updates,
        warnings=tuple(_warnings(base, rvu, year, updates, cf_book, cf_key)),
    )


def book_set(books: Mapping[str, str], imported: FeeImport) -> dict[str, str]:
    """``books`` (file name to text) with the imported book added or replacing its year's,
    checked as one catalog (:class:`~projections.rules.RuleBookError` if they do not fit)."""
    out = {**books, imported.book_name: imported.text}
    RuleCatalog(parse_book(text, name) for name, text in out.items())
    return dict(sorted(out.items()))


# -- decisions -----------------------------------------------------------------------------


def _update(rule: CodeRule, rvu: PprrvuFile) -> CodeUpdate:
    old_nf, old_fac = _dec(rule.rvu_nf), _dec(rule.rvu_fac)
    row = rvu.rows.get(rule.code)
    same = CodeUpdate(
        code=rule.code,
        row=row,
        old_status=rule.status,
        new_status=rule.status,
        old_nf=old_nf,
        old_fac=old_fac,
        new_nf=old_nf,
        new_fac=old_fac,
        old_note=rule.note,
        new_note=rule.note,
        unpriced="",
    )
    if row is None:
        return same
    status = row.status if row.status in KNOWN_STATUSES else None
    if row.status in PRICED_STATUSES:
        new_nf, new_fac = row.rvu_nf, row.rvu_fac
        reason = "" if new_nf is not None or new_fac is not None else "no RVU in the file"
    else:
        new_nf = new_fac = None
        reason = STATUS_REASONS.get(row.status, "a status indicator the book does not know")
    unpriced = f"status {row.status} in {rvu.name}: {reason}" if reason else ""
    fees_changed = _effective(old_nf, old_fac) != _effective(new_nf, new_fac)
    if not fees_changed:
        new_nf, new_fac = old_nf, old_fac  # the same fees: the book's lines stay as written
    note = rule.note
    if fees_changed or (unpriced and status != rule.status) or (unpriced and not note.strip()):
        lead = f"Unpriced: {unpriced}." if unpriced else f"RVUs from {rvu.name}."
        note = " ".join([lead, *_other_sentences(rule.note)])
    return CodeUpdate(
        code=rule.code,
        row=row,
        old_status=rule.status,
        new_status=status,
        old_nf=old_nf,
        old_fac=old_fac,
        new_nf=new_nf,
        new_fac=new_fac,
        old_note=rule.note,
        new_note=note,
        unpriced=unpriced,
    )


def _changed_lines(u: CodeUpdate) -> dict[str, str | None]:
    """The TOML literals of the keys whose value changes (None: the key goes)."""
    values: dict[str, str | None] = {}
    if u.new_status != u.old_status:
        values["status"] = None if u.new_status is None else toml_string(u.new_status)
    if u.new_nf != u.old_nf:
        values["rvu_nf"] = None if u.new_nf is None else toml_number(u.new_nf)
    if u.new_fac != u.old_fac:
        values["rvu_fac"] = None if u.new_fac is None else toml_number(u.new_fac)
    if u.new_note != u.old_note:
        values["note"] = toml_string(u.new_note) if u.new_note else None
    return values


def _other_sentences(note: str) -> list[str]:
    """The sentences of ``note`` that are not about where the fee came from."""
    sentences = [s.strip() for s in re.split(r"(?<=\.)\s+", note) if s.strip()]
    return [s for s in sentences if not _PRICING_SENTENCE.search(s)]


def _warnings(
    base: RuleBook,
    rvu: PprrvuFile,
    year: int,
    updates: tuple[CodeUpdate, ...],
    cf_book: Decimal,
    cf_key: str,
) -> list[str]:
    out = []
    if rvu.year is not None and rvu.year != year:
        out.append(f"{rvu.name} looks like a {rvu.year} file; it was imported as {year}")
    if year != base.year:
        out.append(
            f"carried forward from {base.source}: every rule besides the fees is the "
            f"{base.year} book's until the {year} final rule is read (docs/adding-a-rule-year.md)"
        )
    if rvu.conversion_factor != cf_book:
        out.append(
            f"{cf_key} {cf_book} -> {rvu.conversion_factor}: conversion_factor_source is "
            f"still {base.conversion_factor_source}; cite the source of the new factor"
        )
    if any(u.fees_changed or u.old_status != u.new_status for u in updates):
        out.append(
            f"give {rvu.name} a source id (docs/rules.md §1), list it in [book] source_ids "
            "and in the sources of the codes whose fees it changed"
        )
    if rvu.conversion_factor != cf_book and base.conversion_factor_qp != base.conversion_factor:
        other = "conversion_factor" if cf_key == "conversion_factor_qp" else "conversion_factor_qp"
        out.append(
            f"{other} is still the {base.year} book's: set it from the final rule (or import "
            "the other PPRRVU file, QPP or nonQPP)"
        )
    if base.provisional:
        out.append(
            "the book is provisional: remove provisional and provisional_reason once the "
            "final rule is read"
        )
    missing = [u.code for u in updates if u.row is None]
    if missing:
        only_modifiers = sorted(set(missing) & rvu.modifier_only)
        extra = (
            f" ({', '.join(only_modifiers)}: only rows with a modifier)" if only_modifiers else ""
        )
        out.append(f"not in the file, the book's values kept: {', '.join(missing)}{extra}")
    return out


def _same_as_meant(
    base: RuleBook,
    book: RuleBook,
    updates: tuple[CodeUpdate, ...],
    year: int,
    cf_key: str,
    cf: Decimal,
    fees_from: str,
) -> None:
    """The edited text says what was meant, and nothing else changed (a defence against an
    edit that landed on the wrong line)."""
    wrong = []
    if list(book.codes) != list(base.codes):
        wrong.append("the codes")
    for u in updates:
        meant = base.codes[u.code].model_copy(
            update={
                "status": u.new_status,
                "rvu_nf": _f(u.new_nf),
                "rvu_fac": _f(u.new_fac),
                "note": u.new_note,
            }
        )
        if book.codes.get(u.code) != meant:
            wrong.append(f"code {u.code}")
    same = (
        "conversion_factor_source",
        "source_ids",
        "provisional",
        "provisional_reason",
        "proposals",
        "policy",
        "tracks",
        "exclusives",
        "gates",
        "flag_order",
    )
    wrong += [key for key in same if getattr(book, key) != getattr(base, key)]
    if _dec(getattr(book, cf_key)) != cf:
        wrong.append(cf_key)
    if cf_key == "conversion_factor_qp" and book.conversion_factor != base.conversion_factor:
        wrong.append("conversion_factor")
    if (book.year, book.effective_from.year, book.effective_to.year) != (year, year, year):
        wrong.append("the year")
    if book.fees_from != fees_from:
        wrong.append("fees_from")
    if wrong:
        raise FeeImportError(
            f"the edited book does not say what was meant ({', '.join(wrong)}): a bug in "
            "projections/rules/book_text.py or a book laid out in a way it does not know"
        )


# -- numbers -------------------------------------------------------------------------------


def _dec(value: float | None) -> Decimal | None:
    return None if value is None else Decimal(str(value))


def _f(value: Decimal | None) -> float | None:
    return None if value is None else float(value)


def _effective(nf: Decimal | None, fac: Decimal | None) -> tuple[Decimal | None, Decimal | None]:
    """What a code pays (non-facility, facility): no facility RVU means the non-facility one."""
    return nf, fac if fac is not None else nf


def _fee(nf: Decimal | None, fac: Decimal | None, cf: float) -> float | None:
    """``nf`` (or ``fac`` when given) times ``cf``, rounded half up to cents, as the book does."""
    rvu = fac if fac is not None else nf
    if rvu is None:
        return None
    return float((rvu * Decimal(str(cf))).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))


def _unpriced_note(rule: CodeRule) -> str:
    return rule.note if rule.rvu_nf is None and rule.rvu_fac is None else ""

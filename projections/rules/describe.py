"""The books and their codes as plain data, for people (``caretally rules list|show``)."""

from __future__ import annotations

from typing import Any

from projections.rules.book import RuleBook
from projections.rules.catalog import RuleCatalog


def book_rows(catalog: RuleCatalog) -> list[dict[str, Any]]:
    """One row per book, oldest first."""
    return [
        {
            "year": b.year,
            "effective_from": b.effective_from.isoformat(),
            "effective_to": b.effective_to.isoformat(),
            "codes": len(b.codes),
            "conversion_factor": b.conversion_factor,
            "conversion_factor_qp": b.conversion_factor_qp,
            "provisional": b.provisional,
            "provisional_reason": b.provisional_reason,
            "fees_from": b.fees_from,
            "source": b.source,
        }
        for b in catalog.books
    ]


def pick_book(catalog: RuleCatalog, code: str, year: int | None = None) -> RuleBook:
    """The book of ``year`` (default: the newest book with ``code``); KeyError with a
    message naming what there is instead."""
    having = [b for b in catalog.books if b.has(code)]
    if year is not None:
        book = catalog.year(year)
        if not book.has(code):
            where = ", ".join(str(b.year) for b in having) or "no book"
            raise KeyError(f"{code} is not in the {year} book (it is in: {where})")
        return book
    if not having:
        raise KeyError(f"{code} is in no rule book")
    return having[-1]


def code_facts(book: RuleBook, code: str) -> dict[str, Any]:
    """Everything ``book`` says about ``code``: its values, fee, tracks, add-ons,
    exclusive pairs and its family's gate, each with its sources."""
    rule = book.code(code)
    values = rule.model_dump(
        exclude={"code", "sources", "note", "descriptor", "status", "rvu_nf", "rvu_fac"}
    )
    gate = book.gates.get(rule.family)
    return {
        "code": rule.code,
        "year": book.year,
        "book": book.source,
        "descriptor": rule.descriptor,
        "rule": {k: v for k, v in values.items() if v not in (None, 0, False, "")},
        "fee": {
            "status": rule.status,
            "rvu_nf": rule.rvu_nf,
            "rvu_fac": rule.rvu_fac,
            "conversion_factor": book.conversion_factor,
            "conversion_factor_qp": book.conversion_factor_qp,
            "national_nonfacility": book.fee(code),
            "national_facility": book.fee(code, facility=True),
            "national_nonfacility_qp": book.fee(code, qp=True),
            "national_facility_qp": book.fee(code, qp=True, facility=True),
            "provisional": book.provisional,
            "fees_from": book.fees_from,
            "sources": [book.conversion_factor_source],
        },
        "tracks": [
            {
                "track": f"{t.family}/{t.name}",
                "base": t.base,
                "addon": t.addon,
                "basis": t.basis,
                "requires": t.requires,
                "sources": list(t.sources),
            }
            for t in book.tracks
            if code in (t.base, t.addon)
        ],
        "addons": [r.code for r in book.codes.values() if r.role == "addon" and r.base == code],
        "exclusive": [
            {
                "with": e.b if e.a == code else e.a,
                "scope": e.scope,
                "resolution": e.resolution,
                "note": e.note,
                "sources": list(e.sources),
            }
            for e in book.exclusives
            if code in (e.a, e.b)
        ],
        "gate": None
        if gate is None
        else {"family": rule.family, **gate.model_dump(exclude={"sources"})}
        | {"sources": list(gate.sources)},
        "sources": list(rule.sources),
        "note": rule.note,
    }

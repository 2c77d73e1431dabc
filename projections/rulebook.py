"""The billing rules as data: one TOML file per rule year under ``projections/rules/``.

Each code, track, pairing, exclusion and eligibility gate carries the source ids of
docs/rules.md §1. The engine reads numbers and orderings from here; the procedure of
docs/rules.md §6.2 lives in :mod:`projections.billing`. The book files ship with the
package and are read once at import (static data, not I/O on the event path).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from datetime import date
from functools import cache
from importlib import resources
from typing import Any, Literal

Basis = Literal["pooled", "personal", "staff"]


@dataclass(frozen=True, slots=True)
class CodeRule:
    """One CPT/HCPCS code: when a unit is earned and what it pays."""

    code: str
    family: str  # ccm, pcm, rpm, rtm, bhi, apcm
    kind: Literal["time", "device", "setup", "monthly"]
    role: Literal["base", "addon"]
    descriptor: str
    sources: tuple[str, ...]
    confidence: str  # C, S, U, D (docs/rules.md tags)
    threshold_minutes: int = 0  # base: full minutes for the first unit
    band_max_minutes: int | None = None  # base valid only up to this many minutes (99470)
    base: str | None = None  # addon: the base code it attaches to
    step_minutes: int = 0  # addon: minutes per further unit past the base threshold
    cap: int | None = None  # hard cap on units per month (units beyond earn nothing)
    flag_above: int | None = None  # soft payer edit: flag units above this, still billed
    requires_interactive: bool = False
    min_days: int = 0  # device codes: transmission days in the 30-day period
    max_days: int | None = None
    rvu_nf: float | None = None  # total non-facility RVU; None = not priced under the PFS
    rvu_fac: float | None = None
    note: str = ""

    def fee(self, conversion_factor: float) -> float | None:
        return None if self.rvu_nf is None else round(self.rvu_nf * conversion_factor, 2)


@dataclass(frozen=True, slots=True)
class Track:
    """A base/add-on pair in a family, in the order docs/rules.md §6.2 tries them."""

    family: str
    name: str
    base: str
    addon: str | None
    basis: Basis
    requires: str | None  # e.g. "complex_month"
    sources: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Exclusive:
    """Two codes never billed together in a month (scope: same practitioner or any)."""

    a: str
    b: str
    scope: Literal["same_practitioner", "any"]
    resolution: Literal["track_order", "program_of_record", "hold_both", "allow_flagged"]
    sources: tuple[str, ...]
    note: str = ""


@dataclass(frozen=True, slots=True)
class Gate:
    """Documentation a family needs before its codes are billable (docs/rules.md §6.2 step 6)."""

    family: str
    consent: bool
    min_conditions: int
    care_plan: bool
    established_patient: bool
    sources: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Policy:
    """Engine defaults where the sources are silent or disagree (docs/rules.md §7)."""

    exclude_face_to_face: bool = True  # G7, D-8
    concurrent_staff_time: Literal["once", "sum"] = "once"  # G8, D-7
    ccm_track_policy: Literal["descriptor", "revenue"] = "descriptor"  # §6.2 step 7 note
    inpatient_excluded_programs: tuple[str, ...] = ("ccm",)  # G17
    established_patient_years: int = 3
    device_period_days: int = 30  # G1
    approaching_days_left: int = 7
    approaching_within_minutes: int = 10
    rtm_device_code: str = "98977"
    rtm_device_code_low_days: str | None = None
    g0511_transition_from: date | None = None  # D-11
    g0511_transition_to: date | None = None


@dataclass(frozen=True, slots=True)
class RuleBook:
    year: int
    effective_from: date
    effective_to: date
    conversion_factor: float
    conversion_factor_source: str
    policy: Policy
    codes: dict[str, CodeRule]
    tracks: tuple[Track, ...]
    exclusives: tuple[Exclusive, ...]
    gates: dict[str, Gate]
    source_ids: tuple[str, ...] = field(default=())

    def code(self, code: str) -> CodeRule:
        return self.codes[code]

    def has(self, code: str) -> bool:
        return code in self.codes

    def tracks_for(self, family: str) -> tuple[Track, ...]:
        return tuple(t for t in self.tracks if t.family == family)

    def addon_of(self, base: str) -> CodeRule | None:
        for rule in self.codes.values():
            if rule.role == "addon" and rule.base == base:
                return rule
        return None

    def fee(self, code: str) -> float | None:
        return self.codes[code].fee(self.conversion_factor)

    def device_codes(self, family: str) -> tuple[CodeRule, ...]:
        return tuple(
            sorted(
                (r for r in self.codes.values() if r.family == family and r.kind == "device"),
                key=lambda r: r.min_days,
            )
        )


def _tuple(value: Any) -> tuple[str, ...]:
    return tuple(value or ())


def _load(text: str) -> RuleBook:
    raw = tomllib.loads(text)
    book = raw["book"]
    pol = dict(raw.get("policy", {}))
    for key in ("inpatient_excluded_programs",):
        if key in pol:
            pol[key] = tuple(pol[key])
    policy = Policy(**pol)
    codes = {}
    for item in raw.get("codes", []):
        item = dict(item)
        item["sources"] = _tuple(item.get("sources"))
        rule = CodeRule(**item)
        if rule.code in codes:
            raise ValueError(f"rule book {book['year']}: code {rule.code} defined twice")
        codes[rule.code] = rule
    tracks = tuple(
        Track(
            family=t["family"],
            name=t["name"],
            base=t["base"],
            addon=t.get("addon"),
            basis=t["basis"],
            requires=t.get("requires"),
            sources=_tuple(t.get("sources")),
        )
        for t in raw.get("tracks", [])
    )
    exclusives = tuple(
        Exclusive(
            a=e["a"],
            b=e["b"],
            scope=e["scope"],
            resolution=e["resolution"],
            sources=_tuple(e.get("sources")),
            note=e.get("note", ""),
        )
        for e in raw.get("exclusive", [])
    )
    gates = {
        fam: Gate(
            family=fam,
            consent=g.get("consent", True),
            min_conditions=g.get("min_conditions", 0),
            care_plan=g.get("care_plan", False),
            established_patient=g.get("established_patient", False),
            sources=_tuple(g.get("sources")),
        )
        for fam, g in raw.get("gates", {}).items()
    }
    rb = RuleBook(
        year=book["year"],
        effective_from=book["effective_from"],
        effective_to=book["effective_to"],
        conversion_factor=book["conversion_factor"],
        conversion_factor_source=book["conversion_factor_source"],
        policy=policy,
        codes=codes,
        tracks=tracks,
        exclusives=exclusives,
        gates=gates,
        source_ids=_tuple(book.get("source_ids")),
    )
    _check(rb)
    return rb


def _check(rb: RuleBook) -> None:
    """Refuse a book whose references do not resolve: a typo must fail loudly."""
    for rule in rb.codes.values():
        if rule.role == "addon" and (rule.base not in rb.codes or rule.step_minutes <= 0):
            raise ValueError(f"rule book {rb.year}: add-on {rule.code} needs a known base and step")
        if not rule.sources:
            raise ValueError(f"rule book {rb.year}: code {rule.code} has no source")
    for t in rb.tracks:
        for c in (t.base, t.addon):
            if c is not None and c not in rb.codes:
                raise ValueError(f"rule book {rb.year}: track {t.name} names unknown code {c}")
    for e in rb.exclusives:
        if e.a not in rb.codes or e.b not in rb.codes:
            raise ValueError(f"rule book {rb.year}: exclusive pair {e.a}+{e.b} names unknown code")


@cache
def rule_books() -> tuple[RuleBook, ...]:
    """All shipped books, oldest first."""
    books = []
    for entry in resources.files("projections.rules").iterdir():
        if entry.name.endswith(".toml"):
            books.append(_load(entry.read_text(encoding="utf-8")))
    books.sort(key=lambda b: b.effective_from)
    if not books:
        raise RuntimeError("no rule books shipped under projections/rules/")
    return tuple(books)


@cache
def book_for_month(month: str) -> RuleBook:
    """The book in force on the first day of ``month`` (YYYY-MM).

    Months before the first book use the first; months after the last use the last
    (the newest rules are the best estimate until a newer book ships).
    """
    first = date(int(month[:4]), int(month[5:7]), 1)
    books = rule_books()
    chosen = books[0]
    for book in books:
        if book.effective_from <= first:
            chosen = book
    return chosen

"""One rule year as the engine reads it: a checked book file with its lookups."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from functools import cached_property

from projections.rules.model import (
    BookFile,
    CodeRule,
    Exclusive,
    Gate,
    Policy,
    Track,
)


@dataclass(frozen=True, eq=False)
class RuleBook:
    """The rules of one year (docs/rules.md), from one checked book file.

    Build it with :func:`projections.rules.parse_book` or
    :func:`projections.rules.read_book`, which refuse a book that does not pass
    :mod:`projections.rules.checks`; the lookups below assume it did.
    """

    year: int
    effective_from: date
    effective_to: date
    conversion_factor: float
    conversion_factor_source: str
    source_ids: tuple[str, ...]
    policy: Policy
    codes: dict[str, CodeRule]
    tracks: tuple[Track, ...]
    exclusives: tuple[Exclusive, ...]
    gates: dict[str, Gate]
    flag_order: tuple[str, ...]
    source: str  # where it was read from (a file name), for messages

    @classmethod
    def from_file(cls, doc: BookFile, source: str) -> RuleBook:
        return cls(
            year=doc.book.year,
            effective_from=doc.book.effective_from,
            effective_to=doc.book.effective_to,
            conversion_factor=doc.book.conversion_factor,
            conversion_factor_source=doc.book.conversion_factor_source,
            source_ids=doc.book.source_ids,
            policy=doc.policy,
            codes={rule.code: rule for rule in doc.codes},
            tracks=doc.tracks,
            exclusives=doc.exclusive,
            gates={fam: gate for fam, gate in doc.gates if gate is not None},
            flag_order=doc.flag_order.exclusive_conflict,
            source=source,
        )

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

    def monthly_code(self, family: str, conditions: int, qmb: bool) -> CodeRule | None:
        """The monthly code of ``family`` whose level fits (APCM G0556-G0558 by chronic
        conditions and QMB status, G13); None when the book has none."""
        for rule in self.codes.values():
            if (
                rule.family == family
                and rule.kind == "monthly"
                and rule.level is not None
                and rule.level.matches(conditions, qmb)
            ):
                return rule
        return None

    def conflict_flag(self, a: str, b: str) -> str:
        """``exclusive_conflict:<a>+<b>`` with the two codes in the book's flag order
        (codes it does not list, add-ons, come after, alphabetically)."""
        rank = self._flag_rank
        x, y = sorted((a, b), key=lambda c: (rank.get(c, len(rank)), c))
        return f"exclusive_conflict:{x}+{y}"

    @cached_property
    def _flag_rank(self) -> dict[str, int]:
        return {code: i for i, code in enumerate(self.flag_order)}

    @cached_property
    def pair_families(self) -> tuple[tuple[Exclusive, str, str], ...]:
        """The exclusive pairs with the families of their two codes."""
        return tuple((p, self.codes[p.a].family, self.codes[p.b].family) for p in self.exclusives)

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
    Proposals,
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
    conversion_factor_qp: float  # qualifying APM participants (the same before 2026)
    source_ids: tuple[str, ...]
    fees_from: str  # the CMS file the RVUs were read from ("" if none)
    provisional: bool  # not final: months it bills are flagged rules_provisional:<year>
    provisional_reason: str
    proposals: Proposals
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
            conversion_factor_qp=doc.book.conversion_factor_qp or doc.book.conversion_factor,
            source_ids=doc.book.source_ids,
            fees_from=doc.book.fees_from,
            provisional=doc.book.provisional,
            provisional_reason=doc.book.provisional_reason,
            proposals=doc.proposals,
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

    def fee(self, code: str, qp: bool = False, facility: bool = False) -> float | None:
        """The code's national amount (docs/rules.md §5) for a practice whose clinicians are
        (``qp``) or are not qualifying APM participants, at the non-facility or ``facility``
        rate; None when unpriced."""
        return self.codes[code].fee(
            self.conversion_factor_qp if qp else self.conversion_factor, facility
        )

    def proposal_on(self, name: str) -> bool:
        """Whether the book switches on the proposed rule ``name`` (``[proposals]``)."""
        proposal = getattr(self.proposals, name)
        return proposal is not None and proposal.enabled

    def device_codes(self, family: str) -> tuple[CodeRule, ...]:
        """The family's device supply codes, by the fewest days they need."""
        return self._device_codes.get(family, ())

    @cached_property
    def _device_codes(self) -> dict[str, tuple[CodeRule, ...]]:
        devices = sorted(
            (r for r in self.codes.values() if r.kind == "device"), key=lambda r: r.min_days
        )
        return {f: tuple(r for r in devices if r.family == f) for f in {r.family for r in devices}}

    def day_codes(self, family: str) -> tuple[tuple[CodeRule, ...], tuple[CodeRule, ...]]:
        """The family's device codes (by the fewest days they need) and set-up codes."""
        codes = self._day_codes.get(family)
        if codes is None:
            setup = tuple(
                r for r in self.codes.values() if r.family == family and r.kind == "setup"
            )
            codes = self._day_codes[family] = (self.device_codes(family), setup)
        return codes

    @cached_property
    def _day_codes(self) -> dict[str, tuple[tuple[CodeRule, ...], tuple[CodeRule, ...]]]:
        return {}

    @cached_property
    def _qualified(self) -> dict[tuple[str, int], tuple[bool, ...]]:
        return {}

    def qualifies(self, family: str, days: int) -> tuple[bool, ...]:
        """Which of :meth:`day_codes` a 30-day period with ``days`` transmission days
        qualifies for: each device code whose day range holds them, then each set-up
        code whose minimum they reach. A period's device and set-up lines depend on its
        days only through this."""
        found = self._qualified.get((family, days))
        if found is None:
            devices, setup = self.day_codes(family)
            found = self._qualified[(family, days)] = tuple(
                [r.min_days <= days and (r.max_days is None or days <= r.max_days) for r in devices]
                + [days >= r.min_days for r in setup]
            )
        return found

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

    def position(self, family: str, seconds: int) -> tuple[int, ...]:
        """Where ``seconds`` stand against every comparison the family's tracks make:
        more than zero, each base threshold and band limit reached, and each add-on's
        whole steps past its base (up to one past the larger of its cap and its common
        payer edit, beyond which nothing changes). Two counts of seconds at the same
        position earn the same units, flags and progress targets on every track."""
        out: list[int] = [seconds > 0]
        for thr, band, step, clip in self._breakpoints(family):
            out.append(seconds >= thr)
            if band is not None:
                out.append(seconds >= band)
            if step and seconds >= thr:
                raw = (seconds - thr) // step
                out.append(raw if clip is None else min(raw, clip))
        return tuple(out)

    @cached_property
    def _breakpoint_table(self) -> dict[str, tuple[tuple[int, int | None, int, int | None], ...]]:
        table: dict[str, tuple[tuple[int, int | None, int, int | None], ...]] = {}
        for family in {t.family for t in self.tracks}:
            rows = []
            for track in self.tracks_for(family):
                base = self.codes[track.base]
                band = None if base.band_max_minutes is None else (base.band_max_minutes + 1) * 60
                step, clip = 0, None
                if track.addon is not None:
                    addon = self.codes[track.addon]
                    step = addon.step_minutes * 60
                    if addon.cap is not None:
                        clip = max(addon.cap, addon.flag_above or 0) + 1
                rows.append((base.threshold_minutes * 60, band, step, clip))
            table[family] = tuple(rows)
        return table

    def _breakpoints(self, family: str) -> tuple[tuple[int, int | None, int, int | None], ...]:
        return self._breakpoint_table.get(family, ())

    @cached_property
    def pair_families(self) -> tuple[tuple[Exclusive, str, str], ...]:
        """The exclusive pairs with the families of their two codes."""
        return tuple((p, self.codes[p.a].family, self.codes[p.b].family) for p in self.exclusives)

"""The shape of a rule book file (``projections/rules/<year>.toml``), as strict pydantic models.

Every table forbids unknown keys and every enumerated value is a ``Literal``, so a typo
(``care_plans = true``, ``[gates.bhii]``, ``kind = "tme"``) is refused instead of silently
turning a rule off. These models check one value at a time; what ties values together
(references, gates per family, levels, the flag order) is in :mod:`projections.rules.checks`.
Field comments cite docs/rules.md (§x, Gx, D-x); source ids (S1 ...) are docs/rules.md §1.
"""

from __future__ import annotations

from datetime import date
from decimal import ROUND_HALF_UP, Decimal
from typing import Annotated, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator

Family = Literal["ccm", "pcm", "rpm", "rtm", "bhi", "apcm"]
"""Code families the engine evaluates (docs/rules.md §3)."""
FAMILIES: tuple[str, ...] = get_args(Family)
Kind = Literal["time", "device", "setup", "monthly"]
Role = Literal["base", "addon"]
Basis = Literal["pooled", "personal", "staff"]
"""Which seconds a track earns on: the practitioner's own, other staff's, or both (G4, G8)."""
Confidence = Literal["C", "S", "U", "D"]
"""docs/rules.md confidence tags: confirmed, supported, unverified, disputed."""
Scope = Literal["same_practitioner", "any"]
Resolution = Literal["track_order", "program_of_record", "allow_flagged"]
"""How the engine settles an exclusive pair: inside the family's track order, by the
program of record (§6.2 steps 9, 11, 12), or allowed and flagged as disputed (D-2)."""
PfsStatus = Literal["A", "B", "C", "E", "I", "J", "M", "N", "P", "R", "T", "X"]
"""CMS PFS status indicators (PPRRVU ``STATUS CODE``): A active, C carrier-priced, ..."""
PRICED_STATUSES: tuple[str, ...] = ("A", "R", "T")
"""Statuses with a national amount the fee schedule pays (the others carry no fee here)."""
Requirement = Literal["complex_month"]
"""What a track may require of the month besides time (G12: a complex month)."""

SourceId = Annotated[str, Field(pattern=r"^(S\d+|SEED-\d+)$")]
CodeId = Annotated[str, Field(pattern=r"^[0-9A-Z]{5}$")]
Sources = Annotated[tuple[SourceId, ...], Field(min_length=1)]
"""At least one docs/rules.md §1 source id: every rule says where it comes from."""


class _Strict(BaseModel):
    """Unknown keys refused, no type coercion (``1`` is not ``true``), immutable."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class BookHeader(_Strict):
    """``[book]``: the rule year and when it is in force."""

    year: int
    effective_from: date  # the first day of a month
    effective_to: date  # the last day of a month; the next book starts the day after
    conversion_factor: float = Field(gt=0)  # docs/rules.md §5: non-qualifying APM participants
    conversion_factor_source: SourceId
    # qualifying APM participants' factor (from 2026 the two differ); None: the same
    conversion_factor_qp: float | None = Field(default=None, gt=0)
    source_ids: tuple[SourceId, ...] = Field(min_length=1)  # every id the book may cite
    # the CMS file the RVUs were read from, e.g. "PPRRVU2026_Jan_nonQPP.csv (RVU26A, 2025-12-29)"
    fees_from: str = ""
    # a book whose rules or fees are not final (a proposed rule): every month it bills is
    # flagged rules_provisional:<year>, and its payments are shown as provisional
    provisional: bool = False
    provisional_reason: str = ""  # required when provisional: what is not final and why


class Policy(_Strict):
    """``[policy]``: engine defaults where the sources are silent or disagree (docs/rules.md §7)."""

    exclude_face_to_face: bool = True  # G7, D-8
    concurrent_staff_time: Literal["once", "sum"] = "once"  # G8, D-7
    ccm_track_policy: Literal["descriptor", "revenue"] = "descriptor"  # §6.2 step 7 note
    inpatient_excluded_programs: tuple[Family, ...] = ("ccm",)  # G17
    established_patient_years: int = Field(default=3, ge=1)  # G11
    device_period_days: int = 30  # G1
    approaching_days_left: int = Field(default=7, ge=0)
    approaching_within_minutes: int = Field(default=10, ge=0)
    rtm_device_code: CodeId = "98977"
    rtm_device_code_low_days: CodeId | None = None
    g0511_transition_from: date | None = None  # D-11
    g0511_transition_to: date | None = None

    @field_validator("device_period_days")
    @classmethod
    def _thirty_days(cls, value: int) -> int:
        if value != 30:
            raise ValueError(
                "the engine's device periods are 30 days (G1); another length is not supported"
            )
        return value


class Level(_Strict):
    """Which chronic-condition count and QMB status a monthly code is billed for (G13).

    ``None`` bounds mean "no bound"; ``qmb = None`` means either status.
    """

    min_conditions: int = Field(default=0, ge=0)
    max_conditions: int | None = Field(default=None, ge=0)
    qmb: bool | None = None

    def matches(self, conditions: int, qmb: bool) -> bool:
        return (
            self.min_conditions <= conditions
            and (self.max_conditions is None or conditions <= self.max_conditions)
            and (self.qmb is None or self.qmb == qmb)
        )


class CodeRule(_Strict):
    """``[[codes]]``: one CPT/HCPCS code, when a unit is earned and what it pays."""

    code: CodeId
    family: Family
    kind: Kind
    role: Role
    descriptor: str = Field(min_length=1)
    sources: Sources
    confidence: Confidence
    threshold_minutes: int = Field(default=0, ge=0)  # base: full minutes for the first unit
    band_max_minutes: int | None = Field(default=None, ge=1)  # valid only up to this (99470)
    base: CodeId | None = None  # addon: the base code it attaches to
    step_minutes: int = Field(default=0, ge=0)  # addon: minutes per further unit
    cap: int | None = Field(default=None, ge=1)  # hard cap on units a month
    flag_above: int | None = Field(default=None, ge=0)  # soft payer edit: flag, still bill
    requires_interactive: bool = False
    min_days: int = Field(default=0, ge=0)  # device codes: transmission days in the period
    max_days: int | None = Field(default=None, ge=1)
    level: Level | None = None  # monthly codes: the level they bill (G13)
    # CMS PFS status indicator (S1, S27): "A" priced nationally; "C" contractor-priced
    # (no national amount: unpriced here); None: not read from a CMS file
    status: PfsStatus | None = None
    rvu_nf: float | None = Field(default=None, ge=0)  # total non-facility RVU; None: unpriced
    rvu_fac: float | None = Field(default=None, ge=0)  # total facility RVU; None: the NF one
    note: str = ""  # an unpriced code says why here

    def fee(self, conversion_factor: float, facility: bool = False) -> float | None:
        """National amount in dollars (docs/rules.md §5), rounded half up to cents; None
        when the book has no RVU for the code (unpriced: it adds nothing to a payment)."""
        rvu = self.rvu_fac if facility and self.rvu_fac is not None else self.rvu_nf
        if rvu is None:
            return None
        cents = (Decimal(str(rvu)) * Decimal(str(conversion_factor))).quantize(
            Decimal("0.01"), rounding=ROUND_HALF_UP
        )
        return float(cents)


class Track(_Strict):
    """``[[tracks]]``: a base/add-on pair in a family, in the order §6.2 tries them."""

    family: Family
    name: str = Field(pattern=r"^[a-z_]+$")
    base: CodeId
    addon: CodeId | None = None
    basis: Basis
    requires: Requirement | None = None
    sources: Sources


class Exclusive(_Strict):
    """``[[exclusive]]``: two codes never billed together in a month."""

    a: CodeId
    b: CodeId
    scope: Scope
    resolution: Resolution
    sources: Sources
    note: str = ""


class Gate(_Strict):
    """``[gates.<family>]``: documentation a family needs before its codes are billable
    (§6.2 step 6). Every key is spelled out: a forgotten one must not switch a check off."""

    consent: bool  # G10
    min_conditions: int = Field(ge=0)  # G13
    care_plan: bool  # G12
    established_patient: bool  # G11
    sources: Sources


class Gates(_Strict):
    """``[gates]``: one table per family (only the families the engine knows)."""

    ccm: Gate | None = None
    pcm: Gate | None = None
    rpm: Gate | None = None
    rtm: Gate | None = None
    bhi: Gate | None = None
    apcm: Gate | None = None


class FlagOrder(_Strict):
    """``[flag_order]``: the order of the two codes inside an
    ``exclusive_conflict:<a>+<b>`` flag (docs/rules.md §6.3's own examples)."""

    exclusive_conflict: tuple[CodeId, ...] = Field(min_length=1)


class Proposal(_Strict):
    """``[proposals.<name>]``: a proposed rule that is not in force (docs/rules.md §7.2). Off
    by default; a book may switch it on to see what it would change."""

    enabled: bool = False
    summary: str = Field(min_length=1)
    sources: Sources


class Proposals(_Strict):
    """``[proposals]``: the switches the engine knows (CY 2027 proposed rule, S28)."""

    rpm_rtm_initiating_visit: Proposal | None = None  # P1
    rtm_established_patient: Proposal | None = None  # P2
    rpm_rtm_employed_staff: Proposal | None = None  # P3


class BookFile(_Strict):
    """A whole rule book file, table by table."""

    book: BookHeader
    policy: Policy = Policy()
    codes: tuple[CodeRule, ...] = Field(min_length=1)
    tracks: tuple[Track, ...] = ()
    exclusive: tuple[Exclusive, ...] = ()
    gates: Gates
    flag_order: FlagOrder
    proposals: Proposals = Proposals()

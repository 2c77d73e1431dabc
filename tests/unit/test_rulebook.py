"""The shipped rule books (projections/rules/*.toml) against docs/rules.md.

Section numbers (§1, §3, §5, ...) and rule ids (G3, D-4, ...) refer to
docs/rules.md, the billing rules reference the books are transcribed from.
"""

from __future__ import annotations

from datetime import date

import pytest

from projections.rules import SHIPPED_CATALOG, RuleBook

# docs/rules.md §1: every source id a book may cite.
RULES_SOURCE_IDS = frozenset({f"S{i}" for i in range(1, 27)} | {f"SEED-{i}" for i in range(4)})

# docs/rules.md §5, 2025 national amounts: (code, "2025 NF $", "2025 Fac $"), CF 32.3465 (S1).
FEES_2025 = [
    ("99490", 60.49, 47.87),
    ("99439", 45.93, 32.99),
    ("99491", 82.16, 72.46),
    ("99437", 57.58, 47.87),
    ("99487", 131.65, 87.01),
    ("99489", 70.52, 47.23),
    ("99424", 80.87, 72.13),
    ("99425", 58.87, 49.17),
    ("99426", 61.78, 47.55),
    ("99427", 50.46, 34.29),
    ("99453", 19.73, 19.73),
    ("99454", 43.02, 43.02),
    ("99457", 47.87, 28.79),
    ("99458", 38.49, 28.79),
    ("98975", 19.73, 19.73),
    ("98976", 43.02, 43.02),
    ("98977", 43.02, 43.02),
    ("98980", 50.14, 29.44),
    ("98981", 39.14, 28.79),
    ("99484", 53.05, 41.40),
    ("G0556", 15.20, 11.97),
    ("G0557", 48.84, 36.23),
    ("G0558", 107.07, 79.90),
]

# Codes new in CY 2026 (docs/rules.md §3.3 S13, §3.4 S15).
NEW_2026 = ("99445", "99470", "98979", "98984", "98985")
# 2026 codes with no RVU figure at all: unpriced (docs/rules.md §5 [U]).
UNPRICED_2026 = ("99470", "98979", "98984", "98985")


@pytest.fixture(scope="module")
def book2025() -> RuleBook:
    return SHIPPED_CATALOG.for_month("2025-03")


@pytest.fixture(scope="module")
def book2026() -> RuleBook:
    return SHIPPED_CATALOG.for_month("2026-02")


def _all_books() -> tuple[RuleBook, ...]:
    return SHIPPED_CATALOG.books


# --- which book is in force ---------------------------------------------------------


def test_two_books_shipped_oldest_first() -> None:
    books = SHIPPED_CATALOG.books
    assert [(b.year, b.source) for b in books] == [(2025, "2025.toml"), (2026, "2026.toml")]
    for b in books:
        assert b.effective_from == date(b.year, 1, 1)
        assert b.effective_to == date(b.year, 12, 31)


@pytest.mark.parametrize(
    ("month", "year", "extrapolated"),
    [
        ("2025-03", 2025, False),
        ("2025-12", 2025, False),
        ("2026-01", 2026, False),
        ("2026-02", 2026, False),
        ("2026-12", 2026, False),
        ("2024-06", 2025, False),  # before the first book: the earliest, not flagged
        ("2027-01", 2026, True),  # after the last book: the newest, flagged by billing
    ],
)
def test_book_for_month(month: str, year: int, extrapolated: bool) -> None:
    assert SHIPPED_CATALOG.for_month(month).year == year
    assert SHIPPED_CATALOG.extrapolated(month) is extrapolated


@pytest.mark.parametrize("month", ["2026-13", "2026-1", "26-01", "2026/01", ""])
def test_a_malformed_month_is_refused(month: str) -> None:
    with pytest.raises(ValueError, match="YYYY-MM"):
        SHIPPED_CATALOG.for_month(month)


# --- fees (docs/rules.md §5) ----------------------------------------------------------------


@pytest.mark.parametrize(("code", "nf", "fac"), FEES_2025)
def test_2025_fee_matches_rules_section5(book2025: RuleBook, code: str, nf: float, fac: float):
    assert book2025.conversion_factor == 32.3465
    assert book2025.conversion_factor_source == "S1"
    assert book2025.fee(code) == nf
    rule = book2025.code(code)
    assert rule.rvu_fac is not None
    assert round(rule.rvu_fac * book2025.conversion_factor, 2) == fac


def test_2025_ships_exactly_the_priced_codes(book2025: RuleBook) -> None:
    assert set(book2025.codes) == {code for code, _, _ in FEES_2025}


def test_2026_conversion_factor(book2026: RuleBook) -> None:
    # docs/rules.md §5: $33.4009 for non-qualifying APM participants (S14).
    assert book2026.conversion_factor == 33.4009
    assert book2026.conversion_factor_source == "S14"


@pytest.mark.parametrize(("code", "nf", "fac"), FEES_2025)
def test_2026_reuses_2025_rvus_and_says_so(
    book2025: RuleBook, book2026: RuleBook, code: str, nf: float, fac: float
) -> None:
    old, new = book2025.code(code), book2026.code(code)
    assert (new.rvu_nf, new.rvu_fac) == (old.rvu_nf, old.rvu_fac)
    assert "2026 RVU unverified" in new.note
    assert new.rvu_nf is not None
    assert book2026.fee(code) == round(new.rvu_nf * 33.4009, 2)


def test_2026_99445_priced_like_99454(book2026: RuleBook) -> None:
    assert book2026.fee("99445") == book2026.fee("99454")
    assert "FairPath" in book2026.code("99445").note


@pytest.mark.parametrize("code", UNPRICED_2026)
def test_2026_codes_without_a_figure_are_unpriced(book2026: RuleBook, code: str) -> None:
    rule = book2026.code(code)
    assert rule.rvu_nf is None
    assert book2026.fee(code) is None
    assert "Unpriced" in rule.note


# --- sources (docs/rules.md §1) -------------------------------------------------------------


@pytest.mark.parametrize("book", _all_books(), ids=lambda b: str(b.year))
def test_every_source_is_a_rules_section1_id(book: RuleBook) -> None:
    assert set(book.source_ids) <= RULES_SOURCE_IDS
    assert book.conversion_factor_source in book.source_ids
    cited: list[tuple[str, tuple[str, ...]]] = []
    cited += [(f"code {c.code}", c.sources) for c in book.codes.values()]
    cited += [(f"track {t.family}/{t.name}", t.sources) for t in book.tracks]
    cited += [(f"exclusive {e.a}+{e.b}", e.sources) for e in book.exclusives]
    cited += [(f"gate {family}", g.sources) for family, g in book.gates.items()]
    for what, sources in cited:
        assert sources, f"{what} cites no source"
        assert set(sources) <= RULES_SOURCE_IDS, what
        assert set(sources) <= set(book.source_ids), f"{what}: add its ids to book.source_ids"


@pytest.mark.parametrize("book", _all_books(), ids=lambda b: str(b.year))
def test_confidence_is_a_rules_tag(book: RuleBook) -> None:
    for rule in book.codes.values():
        assert rule.confidence in {"C", "S", "U", "D"}, rule.code


# --- code structure (docs/rules.md §3, G3, G15) ---------------------------------------------


@pytest.mark.parametrize("book", _all_books(), ids=lambda b: str(b.year))
def test_addons_reference_their_base(book: RuleBook) -> None:
    expected = {
        "99439": ("99490", 20),
        "99437": ("99491", 30),
        "99489": ("99487", 30),
        "99425": ("99424", 30),
        "99427": ("99426", 30),
        "99458": ("99457", 20),
        "98981": ("98980", 20),
    }
    addons = {c.code: c for c in book.codes.values() if c.role == "addon"}
    assert set(addons) == set(expected)
    for code, (base, step) in expected.items():
        rule = addons[code]
        assert (rule.base, rule.step_minutes) == (base, step), code
        base_rule = book.code(base)
        assert base_rule.role == "base"
        assert base_rule.family == rule.family
        assert book.addon_of(base) is rule
    for rule in book.codes.values():
        if rule.role == "base":
            assert rule.base is None and rule.step_minutes == 0, rule.code


@pytest.mark.parametrize("book", _all_books(), ids=lambda b: str(b.year))
def test_caps_and_soft_edits(book: RuleBook) -> None:
    assert book.code("99439").cap == 2  # §3.1, S7/S8
    assert book.code("99489").cap is None  # D-3
    assert book.code("99437").cap is None  # D-6
    assert book.code("99458").cap is None  # D-4: no hard cap ...
    assert book.code("99458").flag_above == 2  # ... flag above 2


@pytest.mark.parametrize("book", _all_books(), ids=lambda b: str(b.year))
def test_base_thresholds(book: RuleBook) -> None:
    # G3: full time for the first unit.
    thresholds = {
        "99490": 20,
        "99491": 30,
        "99487": 60,
        "99424": 30,
        "99426": 30,
        "99457": 20,
        "98980": 20,
        "99484": 20,
        "G0556": 0,
        "G0557": 0,
        "G0558": 0,
    }
    for code, minutes in thresholds.items():
        assert book.code(code).threshold_minutes == minutes, code
    for code in ("99457", "98980"):
        assert book.code(code).requires_interactive, code


def test_2026_new_codes(book2025: RuleBook, book2026: RuleBook) -> None:
    for code in NEW_2026:
        assert book2026.has(code), code
        assert not book2025.has(code), code
    for code in ("99470", "98979"):
        rule = book2026.code(code)
        assert (rule.threshold_minutes, rule.band_max_minutes) == (10, 19)
        assert rule.requires_interactive
        assert book2026.addon_of(code) is None  # D-5: 99458 never attaches to 99470
    for code in ("99445", "98984", "98985"):
        rule = book2026.code(code)
        assert (rule.kind, rule.min_days, rule.max_days) == ("device", 2, 15)


def test_device_day_bands(book2025: RuleBook, book2026: RuleBook) -> None:
    assert [r.code for r in book2025.device_codes("rpm")] == ["99454"]
    assert [r.code for r in book2026.device_codes("rpm")] == ["99445", "99454"]
    assert book2025.code("99454").min_days == 16
    assert book2025.code("99453").kind == "setup"
    assert book2025.code("99453").min_days == 16
    assert book2026.code("99453").min_days == 2
    assert "S13" in book2026.code("99453").sources


# --- tracks (docs/rules.md §6.2 order) ------------------------------------------------------


def test_track_order(book2025: RuleBook, book2026: RuleBook) -> None:
    order_2025 = [
        ("ccm", "complex", "99487", "99489", "pooled"),
        ("ccm", "physician", "99491", "99437", "personal"),
        ("ccm", "staff", "99490", "99439", "pooled"),
        ("pcm", "physician", "99424", "99425", "personal"),
        ("pcm", "staff", "99426", "99427", "pooled"),
        ("rpm", "management", "99457", "99458", "pooled"),
        ("rtm", "management", "98980", "98981", "pooled"),
        ("bhi", "staff", "99484", None, "pooled"),
    ]
    order_2026 = list(order_2025)
    order_2026.insert(6, ("rpm", "management_short", "99470", None, "pooled"))
    order_2026.insert(8, ("rtm", "management_short", "98979", None, "pooled"))
    for book, expected in ((book2025, order_2025), (book2026, order_2026)):
        got = [(t.family, t.name, t.base, t.addon, t.basis) for t in book.tracks]
        assert got == expected
        assert book.tracks_for("ccm")[0].requires == "complex_month"


# --- exclusive pairs (docs/rules.md §3.1-§3.3, §3.7, §4) ------------------------------------


def _pairs(book: RuleBook) -> dict[tuple[frozenset[str], str], str]:
    return {(frozenset((e.a, e.b)), e.scope): e.resolution for e in book.exclusives}


@pytest.mark.parametrize("book", _all_books(), ids=lambda b: str(b.year))
def test_exclusive_pairs(book: RuleBook) -> None:
    pairs = _pairs(book)
    for a, b in (("99491", "99490"), ("99491", "99487"), ("99487", "99490")):
        assert pairs[(frozenset((a, b)), "any")] == "track_order"
    assert pairs[(frozenset(("99424", "99426")), "same_practitioner")] == "track_order"
    for ccm in ("99490", "99491", "99487"):
        for pcm in ("99424", "99426"):
            key = (frozenset((ccm, pcm)), "same_practitioner")
            assert pairs[key] == "program_of_record"
    # D-2: different practitioners allowed, flagged.
    flagged = [e for e in book.exclusives if e.resolution == "allow_flagged"]
    assert [(e.a, e.b, e.scope) for e in flagged] == [("99490", "99426", "any")]
    assert "disputed_rule:pcm_ccm_different_practitioners" in flagged[0].note
    # RPM or RTM, not both (S12).
    assert pairs[(frozenset(("99457", "98980")), "any")] == "program_of_record"
    assert pairs[(frozenset(("99454", "98977")), "any")] == "program_of_record"
    # APCM vs CCM/PCM, same practitioner (S18).
    for apcm in ("G0556", "G0557", "G0558"):
        for code in ("99490", "99491", "99487", "99424", "99426"):
            assert pairs[(frozenset((apcm, code)), "same_practitioner")] == "program_of_record"


def test_exclusive_pairs_2026(book2025: RuleBook, book2026: RuleBook) -> None:
    pairs = _pairs(book2026)
    assert pairs[(frozenset(("99457", "99470")), "same_practitioner")] == "track_order"
    assert pairs[(frozenset(("99454", "99445")), "any")] == "track_order"
    assert (frozenset(("99457", "99470")), "same_practitioner") not in _pairs(book2025)


# --- gates and policy (docs/rules.md §6.2 step 6, §7) ---------------------------------------


@pytest.mark.parametrize("book", _all_books(), ids=lambda b: str(b.year))
def test_gates(book: RuleBook) -> None:
    g = book.gates
    assert set(g) == {"ccm", "pcm", "rpm", "rtm", "bhi", "apcm"}
    assert all(gate.consent for gate in g.values())
    assert (g["ccm"].min_conditions, g["ccm"].care_plan) == (2, True)  # G12, G13
    assert (g["pcm"].min_conditions, g["pcm"].care_plan) == (1, True)
    assert g["rpm"].established_patient  # G11
    assert not g["rtm"].established_patient


def test_policy(book2025: RuleBook, book2026: RuleBook) -> None:
    for book in (book2025, book2026):
        p = book.policy
        assert p.exclude_face_to_face  # G7 / D-8
        assert p.concurrent_staff_time == "once"  # G8 / D-7
        assert p.ccm_track_policy == "descriptor"
        assert p.inpatient_excluded_programs == ("ccm",)  # G17
        assert p.device_period_days == 30  # G1
        assert p.rtm_device_code == "98977"
        assert book.has(p.rtm_device_code)
    # D-11: the G0511 window exists in 2025 only.
    assert book2025.policy.g0511_transition_from == date(2025, 1, 1)
    assert book2025.policy.g0511_transition_to == date(2025, 6, 30)
    assert book2026.policy.g0511_transition_from is None
    assert book2025.policy.rtm_device_code_low_days is None
    assert book2026.policy.rtm_device_code_low_days == "98985"


# --- what used to be code (APCM levels G13, the flag order of §6.3) --------------------------

# The order billing.py hard-coded before the books held it: the books must keep it, or
# exclusive_conflict flags would change.
_FLAG_ORDER_BEFORE = (
    *("G0556", "G0557", "G0558"),
    *("99424", "99426"),
    *("98979", "98980", "98975", "98976", "98977", "98984", "98985"),
    *("99491", "99487", "99490"),
    *("99470", "99457", "99453", "99454", "99445"),
    "99484",
)


@pytest.mark.parametrize("book", _all_books(), ids=lambda b: str(b.year))
def test_flag_order_is_the_former_order_of_the_books_base_codes(book: RuleBook) -> None:
    bases = {c.code for c in book.codes.values() if c.role == "base"}
    assert book.flag_order == tuple(c for c in _FLAG_ORDER_BEFORE if c in bases)
    assert book.conflict_flag("99490", "99491") == "exclusive_conflict:99491+99490"
    assert book.conflict_flag("99490", "G0557") == "exclusive_conflict:G0557+99490"


@pytest.mark.parametrize("book", _all_books(), ids=lambda b: str(b.year))
@pytest.mark.parametrize(
    ("conditions", "qmb", "code"),
    [
        (0, False, "G0556"),
        (1, True, "G0556"),
        (2, False, "G0557"),
        (5, False, "G0557"),
        (2, True, "G0558"),
        (7, True, "G0558"),
    ],
)
def test_apcm_level_by_conditions_and_qmb(
    book: RuleBook, conditions: int, qmb: bool, code: str
) -> None:
    """G13: level 1 at most one chronic condition, 2 two or more, 3 two or more and QMB."""
    rule = book.monthly_code("apcm", conditions, qmb)
    assert rule is not None and rule.code == code

"""The shipped rule books (projections/rules/*.toml) against docs/rules.md.

Section numbers (§1, §3, §5, ...) and rule ids (G3, D-4, ...) refer to
docs/rules.md, the billing rules reference the books are transcribed from.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from projections.rules import SHIPPED_CATALOG, RuleBook

RULES_MD = Path(__file__).resolve().parents[2] / "docs" / "rules.md"

# docs/rules.md §1: every source id a book may cite (S27 RVU26A, S28 the CY 2027 proposed
# rule, S29 the G0511 transition's end).
RULES_SOURCE_IDS = frozenset({f"S{i}" for i in range(1, 30)} | {f"SEED-{i}" for i in range(4)})

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


def _section5_table(heading: str) -> list[dict[str, str]]:
    """The first Markdown table after the docs/rules.md §5 paragraph starting with
    ``heading``: one dict per row, keyed by the header's cells."""
    text = RULES_MD.read_text(encoding="utf-8")
    section = text[text.index("## 5. ") : text.index("## 6. ")]
    lines = section[section.index(heading) :].splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("| code |"))
    rows: list[list[str]] = []
    for ln in lines[start:]:
        if not ln.startswith("|"):
            break
        rows.append([cell.strip() for cell in ln.strip().strip("|").split("|")])
    header, body = rows[0], rows[2:]  # rows[1] is the |---| rule
    return [dict(zip(header, row, strict=True)) for row in body]


def _money(cell: str) -> float | None:
    return None if cell in ("—", "contractor-priced") else float(cell)


# docs/rules.md §5 "2026" (RVU26A, S27): status, RVUs and the four national amounts.
TABLE_2026 = _section5_table("**2026** (S27")
# docs/rules.md §5 "2027, provisional" (S28): the four national amounts.
TABLE_2027 = _section5_table("**2027, provisional**")
# RVU26A status C (contractor-priced): no national amount, unpriced (docs/rules.md §5).
STATUS_C_2026 = ("98978", "98986")

# Codes new in CY 2026 (docs/rules.md §3.3 S13, §3.4 S15).
NEW_2026 = ("99445", "99470", "98979", "98984", "98985", "98986")


@pytest.fixture(scope="module")
def book2025() -> RuleBook:
    return SHIPPED_CATALOG.for_month("2025-03")


@pytest.fixture(scope="module")
def book2026() -> RuleBook:
    return SHIPPED_CATALOG.for_month("2026-02")


@pytest.fixture(scope="module")
def book2027() -> RuleBook:
    return SHIPPED_CATALOG.for_month("2027-02")


def _all_books() -> tuple[RuleBook, ...]:
    return SHIPPED_CATALOG.books


# --- which book is in force ---------------------------------------------------------


def test_three_books_shipped_oldest_first() -> None:
    books = SHIPPED_CATALOG.books
    assert [(b.year, b.source) for b in books] == [
        (2025, "2025.toml"),
        (2026, "2026.toml"),
        (2027, "2027.toml"),
    ]
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
        ("2027-01", 2027, False),  # the provisional 2027 book: not extrapolated
        ("2027-12", 2027, False),
        ("2024-06", 2025, False),  # before the first book: the earliest, not flagged
        ("2028-01", 2027, True),  # after the last book: the newest, flagged by billing
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
    assert book2025.fee(code, facility=True) == fac
    # before 2026 one conversion factor for everyone (§5): the QP amounts are the same
    assert book2025.conversion_factor_qp == 32.3465
    assert book2025.fee(code, qp=True) == nf
    rule = book2025.code(code)
    assert rule.rvu_fac is not None
    assert round(rule.rvu_fac * book2025.conversion_factor, 2) == fac


def test_2025_ships_exactly_the_priced_codes(book2025: RuleBook) -> None:
    assert set(book2025.codes) == {code for code, _, _ in FEES_2025}
    assert not book2025.provisional and book2025.provisional_reason == ""


def test_2026_conversion_factors(book2026: RuleBook) -> None:
    # docs/rules.md §5: $33.4009 for non-qualifying APM participants, $33.5675 for QPs (S14).
    assert book2026.conversion_factor == 33.4009
    assert book2026.conversion_factor_qp == 33.5675
    assert book2026.conversion_factor_source == "S14"
    assert "RVU26A" in book2026.fees_from and "PPRRVU2026" in book2026.fees_from
    assert not book2026.provisional and book2026.provisional_reason == ""


def test_the_2026_table_of_rules_section5_is_read() -> None:
    """Guards the parser of the tests below: the table is there, with the issue's figures."""
    rows = {r["code"]: r for r in TABLE_2026}
    assert len(rows) == len(TABLE_2026) == 30
    assert (rows["99490"]["$ non-facility"], rows["99490"]["$ facility"]) == ("66.13", "43.76")
    assert rows["99490"]["$ non-facility QP"] == "66.46"
    assert rows["99458"]["$ non-facility"] == "41.42"
    assert rows["99445"]["$ non-facility"] == "52.11"
    assert {c for c, r in rows.items() if r["status"] == "C"} == set(STATUS_C_2026)


def test_2026_ships_exactly_the_codes_of_rules_section5(book2026: RuleBook) -> None:
    assert set(book2026.codes) == {r["code"] for r in TABLE_2026}


@pytest.mark.parametrize("row", TABLE_2026, ids=lambda r: r["code"])
def test_2026_fee_matches_rvu26a_in_rules_section5(book2026: RuleBook, row: dict) -> None:
    """docs/rules.md §5 2026 (S27): status, total RVUs, and the non-facility, facility and
    QP amounts of every code, from RVU26A."""
    code = row["code"]
    rule = book2026.code(code)
    assert rule.status == row["status"]
    assert "S27" in rule.sources
    assert (rule.rvu_nf, rule.rvu_fac) == (
        _money(row["RVU non-facility"]),
        _money(row["RVU facility"]),
    )
    assert book2026.fee(code) == _money(row["$ non-facility"])
    assert book2026.fee(code, facility=True) == _money(row["$ facility"])
    assert book2026.fee(code, qp=True) == _money(row["$ non-facility QP"])
    assert book2026.fee(code, qp=True, facility=True) == _money(row["$ facility QP"])


def test_2026_issue_figures(book2026: RuleBook) -> None:
    """Issue 13's "what must show", literally: 99490 $66.13 (facility $43.76, QP $66.46),
    99458 $41.42, 99445 $52.11."""
    assert book2026.fee("99490") == 66.13
    assert book2026.fee("99490", facility=True) == 43.76
    assert book2026.fee("99490", qp=True) == 66.46
    assert book2026.fee("99458") == 41.42
    assert book2026.fee("99445") == 52.11


@pytest.mark.parametrize("code", STATUS_C_2026)
def test_2026_status_c_codes_are_unpriced_and_say_why(book2026: RuleBook, code: str) -> None:
    rule = book2026.code(code)
    assert rule.status == "C"
    assert (rule.rvu_nf, rule.rvu_fac) == (None, None)
    assert book2026.fee(code) is None
    assert book2026.fee(code, qp=True, facility=True) is None
    assert "Unpriced" in rule.note and "status C" in rule.note


def test_2026_no_code_is_unpriced_for_lack_of_a_figure(book2026: RuleBook) -> None:
    """Once unpriced (no 2026 figure), 99470, 98979, 98984 and 98985 are priced from
    RVU26A; only the status C codes carry no fee."""
    unpriced = {c for c in book2026.codes if book2026.fee(c) is None}
    assert unpriced == set(STATUS_C_2026)
    for code in ("99470", "98979", "98984", "98985"):
        assert book2026.code(code).status == "A"
        assert book2026.fee(code) is not None, code


# --- the provisional 2027 book (docs/rules.md §5, §7.2) ---------------------------------


def test_2027_is_provisional_and_says_why(book2027: RuleBook) -> None:
    assert book2027.provisional
    reason = book2027.provisional_reason
    assert "RVU27A" in reason and "final rule" in reason and "S28" in reason
    # the proposed conversion factors of CMS-1848-P (S28)
    assert (book2027.conversion_factor, book2027.conversion_factor_qp) == (32.8409, 33.1693)
    assert book2027.conversion_factor_source == "S28"
    assert "RVU26A" in book2027.fees_from and "RVU27A" in book2027.fees_from


def test_2027_carries_the_2026_rules_and_rvus_forward(
    book2026: RuleBook, book2027: RuleBook
) -> None:
    """§7.2: the proposed rule changes no threshold, cap, band or documentation rule of
    this family; the 2026 RVUs stand until RVU27A."""
    assert {c: r.model_dump() for c, r in book2027.codes.items()} == {
        c: r.model_dump() for c, r in book2026.codes.items()
    }
    assert book2027.tracks == book2026.tracks
    assert book2027.exclusives == book2026.exclusives
    assert book2027.gates == book2026.gates
    assert book2027.policy == book2026.policy
    assert book2027.flag_order == book2026.flag_order


def test_the_2027_table_of_rules_section5_is_read() -> None:
    rows = {r["code"]: r for r in TABLE_2027}
    assert len(rows) == 30
    assert rows["99490"]["$ non-facility"] == "65.02"  # 1.98 x 32.8409


@pytest.mark.parametrize("row", TABLE_2027, ids=lambda r: r["code"])
def test_2027_fee_matches_rules_section5(book2027: RuleBook, row: dict) -> None:
    code = row["code"]
    assert book2027.fee(code) == _money(row["$ non-facility"])
    assert book2027.fee(code, facility=True) == _money(row["$ facility"])
    assert book2027.fee(code, qp=True) == _money(row["$ non-facility QP"])
    assert book2027.fee(code, qp=True, facility=True) == _money(row["$ facility QP"])


def test_2027_proposals_are_off_and_sourced(book2027: RuleBook) -> None:
    """§7.2 P1-P3: switches of the 2027 book, each off, each citing the proposed rule."""
    for name in ("rpm_rtm_initiating_visit", "rtm_established_patient", "rpm_rtm_employed_staff"):
        proposal = getattr(book2027.proposals, name)
        assert proposal is not None, name
        assert not proposal.enabled and proposal.summary
        assert proposal.sources == ("S28",)
        assert not book2027.proposal_on(name)


@pytest.mark.parametrize("year", [2025, 2026])
def test_final_books_have_no_proposals(year: int) -> None:
    book = SHIPPED_CATALOG.year(year)
    assert book.proposals.model_dump() == {
        "rpm_rtm_initiating_visit": None,
        "rtm_established_patient": None,
        "rpm_rtm_employed_staff": None,
    }
    assert not book.proposal_on("rpm_rtm_initiating_visit")


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
    cited += [(f"proposal {n}", p.sources) for n, p in book.proposals if p is not None]
    for what, sources in cited:
        assert sources, f"{what} cites no source"
        assert set(sources) <= RULES_SOURCE_IDS, what
        assert set(sources) <= set(book.source_ids), f"{what}: add its ids to book.source_ids"


@pytest.mark.parametrize(
    ("year", "ids"),
    [(2025, {"S29"}), (2026, {"S14", "S27"}), (2027, {"S27", "S28"})],
)
def test_each_book_lists_the_sources_of_its_fees_and_dates(year: int, ids: set[str]) -> None:
    """S29: the G0511 window's end (2025); S14 and S27: the 2026 CFs and RVU26A; S28: the
    proposed 2027 CFs (docs/rules.md §1)."""
    assert ids <= set(SHIPPED_CATALOG.year(year).source_ids)


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
    for code in ("99445", "98984", "98985", "98986"):
        rule = book2026.code(code)
        assert (rule.kind, rule.min_days, rule.max_days) == ("device", 2, 15)
    # 98978 (CBT, 16-30 days) is in the 2026 book only, unpriced (status C, §5)
    assert book2026.code("98978").min_days == 16 and not book2025.has("98978")


def test_device_day_bands(book2025: RuleBook, book2026: RuleBook) -> None:
    assert [r.code for r in book2025.device_codes("rpm")] == ["99454"]
    assert [r.code for r in book2026.device_codes("rpm")] == ["99445", "99454"]
    assert [r.code for r in book2025.device_codes("rtm")] == ["98976", "98977"]
    assert [r.code for r in book2026.device_codes("rtm")] == [
        *("98984", "98985", "98986"),  # 2-15 days
        *("98976", "98977", "98978"),  # 16-30 days
    ]
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
    book2027 = SHIPPED_CATALOG.year(2027)
    for book, expected in ((book2025, order_2025), (book2026, order_2026), (book2027, order_2026)):
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


def test_policy(book2025: RuleBook, book2026: RuleBook, book2027: RuleBook) -> None:
    for book in (book2025, book2026, book2027):
        p = book.policy
        assert p.exclude_face_to_face  # G7 / D-8
        assert p.concurrent_staff_time == "once"  # G8 / D-7
        assert p.ccm_track_policy == "descriptor"
        assert p.inpatient_excluded_programs == ("ccm",)  # G17
        assert p.device_period_days == 30  # G1
        assert p.rtm_device_code == "98977"
        assert book.has(p.rtm_device_code)
    # D-11 (S29): the G0511 window exists in 2025 only, through 30 September.
    assert book2025.policy.g0511_transition_from == date(2025, 1, 1)
    assert book2025.policy.g0511_transition_to == date(2025, 9, 30)
    for later in (book2026, book2027):
        assert later.policy.g0511_transition_from is None
        assert later.policy.g0511_transition_to is None
        assert later.policy.rtm_device_code_low_days == "98985"
    assert book2025.policy.rtm_device_code_low_days is None


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
# The RTM device codes that came into the books with RVU26A (98978, 98986: status C) are
# placed beside the other RTM device codes, each after its same-band neighbour.
_FLAG_ORDER_2026 = (
    *("G0556", "G0557", "G0558"),
    *("99424", "99426"),
    *("98979", "98980", "98975", "98976", "98977", "98978", "98984", "98985", "98986"),
    *("99491", "99487", "99490"),
    *("99470", "99457", "99453", "99454", "99445"),
    "99484",
)


@pytest.mark.parametrize("book", _all_books(), ids=lambda b: str(b.year))
def test_flag_order_keeps_the_former_order_of_the_books_base_codes(book: RuleBook) -> None:
    bases = {c.code for c in book.codes.values() if c.role == "base"}
    former = tuple(c for c in book.flag_order if c in _FLAG_ORDER_BEFORE)
    assert former == tuple(c for c in _FLAG_ORDER_BEFORE if c in bases)
    assert set(book.flag_order) == bases
    assert book.conflict_flag("99490", "99491") == "exclusive_conflict:99491+99490"
    assert book.conflict_flag("99490", "G0557") == "exclusive_conflict:G0557+99490"


def test_flag_order_of_the_2026_and_2027_books(book2026: RuleBook, book2027: RuleBook) -> None:
    assert book2026.flag_order == book2027.flag_order == _FLAG_ORDER_2026


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

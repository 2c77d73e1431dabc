"""Cross-checks of a book (references, gates, tracks, levels, flag order, sources, dates)
and of a catalog (consecutive books, no gap, no overlap)."""

from __future__ import annotations

from itertools import pairwise

import pytest

from projections.rules import SHIPPED_CATALOG, Problem, RuleBookError, RuleCatalog, parse_book
from support.rule_books import draft_2027, edited, shipped_text

BOOK = shipped_text(2026)
BOOK_2027 = shipped_text(2027)  # provisional, with [proposals] (docs/rules.md §7.2)


def problems(text: str, file: str = "draft.toml") -> list[str]:
    """``key: message`` of every problem."""
    with pytest.raises(RuleBookError) as caught:
        parse_book(text, file)
    return [f"{p.key}: {p.message}" for p in caught.value.problems]


def only(text: str, file: str = "draft.toml") -> str:
    [found] = problems(text, file)
    return found


# -- codes ---------------------------------------------------------------------------------


def test_an_addon_needs_a_known_base_of_its_family() -> None:
    assert problems(edited(BOOK, ('base = "99490"', 'base = "99999"')))[0] == (
        "codes[1].base: 99999 is not a code of this book (99439)"
    )
    assert problems(edited(BOOK, ('base = "99490"', 'base = "99424"'))) == [
        "codes[1].base: 99424 is not a base code of family ccm (99439)",
        "tracks[2].addon: 99439 is not an add-on of 99490 (ccm/staff)",
    ]


def test_an_addon_needs_a_step() -> None:
    assert "codes[1].step_minutes: an add-on needs a step" in only(
        edited(BOOK, ("step_minutes = 20 ", "step_minutes = 0 "))
    )


def test_a_code_defined_twice_is_refused() -> None:
    text = edited(BOOK, ('code = "99439"', 'code = "99490"'))
    assert "codes[1].code: 99490 is defined twice" in problems(text)


def test_a_time_code_on_no_track_is_refused() -> None:
    start = BOOK.index('[[tracks]]                             # §6.2 step 11\nfamily = "bhi"')
    end = BOOK.index("# ---", start)
    found = problems(BOOK[:start] + BOOK[end:])
    assert any(f.endswith("time code 99484 is on no track: never billed") for f in found)


def test_every_cited_source_is_listed_in_the_book() -> None:
    text = edited(BOOK, ('sources = ["S1", "S2", "S3", "S10", "S27"]', 'sources = ["S1", "S26"]'))
    assert only(text) == "codes[0].sources: S26 not in [book] source_ids"


# -- CMS status (docs/rules.md §5: status C is contractor-priced, no national amount) -------

# 98978 is the first status C code of the 2026 book (codes[19])
_98978_NOTE = (
    'note = "Unpriced: status C in RVU26A (S27), contractor-priced, no national amount. '
    'policy.rtm_device_code picks 98977 (MSK) by default."'
)


@pytest.mark.parametrize("key", ["rvu_nf", "rvu_fac"])
def test_a_status_c_code_with_an_rvu_is_refused(key: str) -> None:
    found = only(edited(BOOK, ('status = "C"\n', f'status = "C"\n{key} = 1.56\n')))
    assert found == (
        f"codes[19].{key}: status C has no national amount: leave the code unpriced (98978)"
    )


def test_a_status_a_code_without_an_rvu_is_refused() -> None:
    text = edited(BOOK, ('status = "A"\nrvu_nf = 1.98\n', 'status = "A"\n'))
    assert only(text) == "codes[0].rvu_nf: missing: status A has a national amount (99490)"


def test_a_status_c_code_says_why_it_is_unpriced() -> None:
    assert only(edited(BOOK, (_98978_NOTE, 'note = ""'))) == (
        "codes[19].note: missing: say why status C is unpriced (98978)"
    )


def test_an_unknown_status_is_refused() -> None:
    found = only(edited(BOOK, ('status = "A"', 'status = "Z"')))
    assert found.startswith("codes[0].status: 'Z' is not allowed") and "(99490)" in found


# -- provisional books and proposals (docs/rules.md §7.2) -----------------------------------

_REASON_2027 = (
    'provisional_reason = "CY 2027 final rule and RVU27A not read: proposed conversion '
    'factors (CMS-1848-P, S28) and the 2026 RVUs"'
)


def test_the_shipped_2027_book_passes() -> None:
    book = parse_book(BOOK_2027, "2027.toml")
    assert book.provisional and book.provisional_reason


@pytest.mark.parametrize("reason", ['provisional_reason = ""', 'provisional_reason = "  "', ""])
def test_a_provisional_book_without_a_reason_is_refused(reason: str) -> None:
    assert only(edited(BOOK_2027, (_REASON_2027, reason)), "2027.toml") == (
        "book.provisional_reason: missing: a provisional book says why it is not final"
    )


def test_only_a_provisional_book_gives_a_reason() -> None:
    text = edited(BOOK_2027, ("provisional = true", "provisional = false"))
    assert only(text, "2027.toml") == (
        "book.provisional_reason: only a provisional book gives a reason"
    )


def _switch_on(name: str) -> str:
    anchor = f"[proposals.{name}]"
    start = BOOK_2027.index(anchor)
    at = BOOK_2027.index("enabled = false", start)
    return BOOK_2027[:at] + "enabled = true" + BOOK_2027[at + len("enabled = false") :]


def test_enabling_rpm_rtm_employed_staff_is_refused_naming_the_key() -> None:
    """§7.2 P3: wire contract v1 cannot say who employs a staff member."""
    assert only(_switch_on("rpm_rtm_employed_staff"), "2027.toml") == (
        "proposals.rpm_rtm_employed_staff.enabled: cannot be enforced: wire contract v1 "
        "does not say whether staff are employed by the billing practice"
    )


@pytest.mark.parametrize("name", ["rpm_rtm_initiating_visit", "rtm_established_patient"])
def test_the_enforceable_proposals_may_be_switched_on(name: str) -> None:
    """§7.2 P1, P2: a copy of the book may switch them on to see what they would change."""
    book = parse_book(_switch_on(name), "2027.toml")
    assert book.proposal_on(name)
    assert not parse_book(BOOK_2027, "2027.toml").proposal_on(name)


def test_a_proposal_cites_listed_sources() -> None:
    old = 'summary = "RTM, like RPM, only for an established patient (G11)"\nsources = ["S28"]'
    text = edited(BOOK_2027, (old, old.replace('["S28"]', '["S29"]')))
    assert only(text, "2027.toml") == (
        "proposals.rtm_established_patient.sources: S29 not in [book] source_ids"
    )


# -- tracks, pairs, gates -------------------------------------------------------------------


def test_a_track_the_engine_asks_for_must_exist() -> None:
    text = edited(BOOK, ('name = "physician"', 'name = "doctor"'))
    assert only(text) == "tracks: the engine needs a ccm track named 'physician'"


def test_a_track_names_codes_of_its_family_in_order() -> None:
    text = edited(BOOK, ('addon = "99489"', 'addon = "99439"'))
    assert problems(text) == [
        "tracks[0].addon: 99439 is not an add-on of 99487 (ccm/complex)",
        "codes[5].code: time code 99489 is on no track: never billed",
    ]


def test_a_requirement_the_engine_does_not_read_is_refused() -> None:
    text = edited(
        BOOK,
        (
            'name = "staff"\nbase = "99490"',
            'name = "staff"\nbase = "99490"\nrequires = "complex_month"',
        ),
    )
    assert only(text) == (
        "tracks[2].requires: the engine reads a requirement on ccm/complex only (ccm/staff)"
    )


def test_track_order_settles_only_codes_of_one_family() -> None:
    old = 'a = "99457"\nb = "98980"\nscope = "any"\nresolution = "program_of_record"'
    text = edited(BOOK, (old, old.replace("program_of_record", "track_order")))
    assert "track_order settles codes of one family; rpm and rtm need" in only(text)


def test_program_of_record_inside_one_family_is_refused() -> None:
    old = 'a = "99491"\nb = "99490"\nscope = "any"\nresolution = "track_order"'
    text = edited(BOOK, (old, old.replace("track_order", "program_of_record")))
    assert "both codes are ccm: only track_order applies inside a family" in only(text)


def test_a_pair_names_known_codes() -> None:
    text = edited(BOOK, ('a = "99491"\nb = "99490"', 'a = "99491"\nb = "99999"'))
    assert only(text) == "exclusive[0].b: 99999 is not a code of this book (99491+99999)"


def test_a_gate_for_a_family_without_codes_is_refused() -> None:
    start = BOOK.index("# --- BHI")
    end = BOOK.index("# --- APCM")
    text = BOOK[:start] + BOOK[end:]
    text = edited(
        text,
        (
            'family = "bhi"\nname = "staff"\nbase = "99484"',
            'family = "rtm"\nname = "x"\nbase = "98980"',
        ),
    )
    assert "gates.bhi: no code of family bhi in this book" in problems(text)


# -- APCM levels, flag order, policy --------------------------------------------------------


def test_apcm_levels_must_not_overlap() -> None:
    text = edited(
        BOOK, ("level = { min_conditions = 2, qmb = true }", "level = { min_conditions = 2 }")
    )
    assert only(text) == (
        "codes[27].level: apcm: G0557 and G0558 all fit 2 chronic condition(s), qmb = false"
    )


def test_apcm_levels_must_leave_no_case_out() -> None:
    text = edited(BOOK, ("level = { max_conditions = 1 }", "level = { max_conditions = 0 }"))
    assert only(text) == "codes[27].level: apcm: no code fit 1 chronic condition(s), qmb = false"


def test_a_monthly_code_names_its_level() -> None:
    text = edited(BOOK, ("level = { max_conditions = 1 }", ""))
    assert "codes[27].level: a monthly code, and only one, names its level (G0556)" in problems(
        text
    )


def test_every_base_code_has_a_place_in_the_flag_order() -> None:
    text = edited(BOOK, ('"99470", "99457", "99453", "99454", "99445",', '"99470", "99457",'))
    assert only(text) == (
        "flag_order.exclusive_conflict: base code(s) missing from the order: 99453, 99454, 99445"
    )
    text = edited(BOOK, ('"99484",  ', '"99484", "99999", "99484",  '))
    assert set(problems(text)) == {
        "flag_order.exclusive_conflict: 99999 is not a code of this book",
        "flag_order.exclusive_conflict: 99484 is listed twice",
    }


def test_the_rtm_device_code_of_the_policy_is_an_rtm_device_code() -> None:
    text = edited(BOOK, ('rtm_device_code = "98977"', 'rtm_device_code = "99454"'))
    assert only(text) == "policy.rtm_device_code: 99454 is not an rtm device code of this book"


# -- dates ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "effective_from = 2026-01-01",
            "effective_from = 2026-01-02",
            "book.effective_from: 2026-01-02 is not the first day of a month",
        ),
        (
            "effective_to = 2026-12-31",
            "effective_to = 2026-12-30",
            "book.effective_to: 2026-12-30 is not the last day of a month",
        ),
        ("year = 2026", "year = 2027", "book.year: 2027 but effective_from is in 2026"),
    ],
)
def test_a_book_covers_whole_months_of_its_year(old: str, new: str, expected: str) -> None:
    assert expected in problems(edited(BOOK, (old, new)))


def test_a_file_named_for_a_year_holds_that_year() -> None:
    assert only(BOOK, "rules/2027.toml") == "book.year: 2026 in a file named 2027.toml"


def test_the_shipped_catalog_is_contiguous() -> None:
    books = SHIPPED_CATALOG.books
    for prev, nxt in pairwise(books):
        assert (nxt.effective_from - prev.effective_to).days == 1


def test_a_gap_between_books_is_refused() -> None:
    draft = draft_2027(("effective_from = 2027-01-01", "effective_from = 2027-02-01"))
    with pytest.raises(RuleBookError) as caught:
        SHIPPED_CATALOG.with_books(draft)
    [p] = caught.value.problems
    assert str(p) == (
        "2027.toml: book.effective_from: 2027-02-01 leaves a gap after 2026.toml "
        "(effective_to 2026-12-31): it should be 2027-01-01"
    )


def test_an_overlap_between_books_is_refused() -> None:
    longer = parse_book(edited(BOOK, ("effective_to = 2026-12-31", "effective_to = 2027-03-31")))
    with pytest.raises(RuleBookError) as caught:
        SHIPPED_CATALOG.with_books(longer, draft_2027())
    [p] = caught.value.problems
    assert str(p) == (
        "2027.toml: book.effective_from: 2027-01-01 leaves an overlap after <book> "
        "(effective_to 2027-03-31): it should be 2027-04-01"
    )


def test_two_books_of_one_year_are_refused() -> None:
    with pytest.raises(RuleBookError, match=r"2027 is also the year of 2027\.toml"):
        RuleCatalog([draft_2027(), draft_2027()])


def test_an_empty_catalog_is_refused() -> None:
    with pytest.raises(RuleBookError, match="no rule books"):
        RuleCatalog([])


def test_a_problem_reads_file_line_key_message() -> None:
    p = Problem("2027.toml", ("gates", "ccm", "care_plans"), "unknown key", 12)
    assert str(p) == "2027.toml:12: gates.ccm.care_plans: unknown key"
    assert str(Problem("x.toml", ("codes", 3, "kind"), "bad")) == "x.toml: codes[3].kind: bad"

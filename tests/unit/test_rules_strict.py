"""A rule book with a typo is refused, naming the file, the line and the key
(issue 10: each of these used to load and silently change billing)."""

from __future__ import annotations

import pytest

from projections.rules import Problem, RuleBookError, parse_book
from support.rule_books import edited, shipped_text

BOOK = shipped_text(2026)


def problems(text: str, file: str = "draft.toml") -> list[Problem]:
    with pytest.raises(RuleBookError) as caught:
        parse_book(text, file)
    return list(caught.value.problems)


def line_of(text: str, fragment: str) -> int:
    """1-based line of the first line containing ``fragment``."""
    return next(i for i, ln in enumerate(text.splitlines(), 1) if fragment in ln)


def test_the_shipped_books_load() -> None:
    for year in (2025, 2026, 2027):
        assert parse_book(shipped_text(year), f"{year}.toml").year == year


def test_care_plans_for_care_plan_is_refused_not_a_gate_turned_off() -> None:
    text = edited(BOOK, ("care_plan = true", "care_plans = true"))  # the first: gates.ccm
    found = {p.key: p for p in problems(text)}
    typo = found["gates.ccm.care_plans"]
    assert "unknown key" in typo.message and "did you mean 'care_plan'" in typo.message
    assert typo.line == line_of(text, "care_plans = true")
    assert "missing" in found["gates.ccm.care_plan"].message
    assert str(typo).startswith(f"draft.toml:{typo.line}: gates.ccm.care_plans: unknown key")


def test_a_misspelt_gate_family_is_refused() -> None:
    text = edited(BOOK, ("[gates.bhi]", "[gates.bhii]"))
    [p] = problems(text)
    assert p.key == "gates.bhii"
    assert "did you mean 'bhi'" in p.message and "ccm, pcm, rpm, rtm, bhi, apcm" in p.message
    assert p.line == line_of(text, "[gates.bhii]")


def test_a_gate_missing_for_a_family_with_codes_is_refused() -> None:
    start = BOOK.index("[gates.bhi]")
    end = BOOK.index("[gates.apcm]")
    [p] = problems(BOOK[:start] + BOOK[end:])
    assert p.key == "gates"
    assert p.message == "family bhi has codes but no [gates.bhi]"


def test_an_unknown_kind_is_refused() -> None:
    text = edited(BOOK, ('kind = "time"', 'kind = "tme"'))
    [p] = problems(text)
    assert p.key == "codes[0].kind"
    assert "'tme' is not allowed" in p.message and "'time'" in p.message
    assert "(99490)" in p.message
    assert p.line == line_of(text, 'kind = "tme"')


def test_an_unknown_resolution_is_refused() -> None:
    text = edited(BOOK, ('resolution = "allow_flagged"', 'resolution = "allow_flaged"'))
    [p] = problems(text)
    assert p.key.startswith("exclusive[") and p.key.endswith("].resolution")
    assert "'allow_flaged' is not allowed" in p.message and "(99490+99426)" in p.message


def test_an_unknown_requirement_is_refused() -> None:
    text = edited(BOOK, ('requires = "complex_month"', 'requires = "complex_months"'))
    [p] = problems(text)
    assert p.key == "tracks[0].requires"
    assert "'complex_months' is not allowed" in p.message and "(ccm/complex)" in p.message


@pytest.mark.parametrize(
    ("anchor", "key"),
    [
        ('descriptor = "Non-complex CCM, first 20 min', "codes[0].colour"),
        ("exclude_face_to_face = true", "policy.colour"),
        ("year = 2026", "book.colour"),
        ('name = "complex"', "tracks[0].colour"),
    ],
)
def test_an_unknown_key_anywhere_is_refused(anchor: str, key: str) -> None:
    text = edited(BOOK, (anchor, f'colour = "red"\n{anchor}'))
    [p] = problems(text)
    assert (p.key, p.line) == (key, line_of(text, 'colour = "red"'))
    assert p.message.startswith("unknown key")


@pytest.mark.parametrize(
    ("old", "new", "key"),
    [
        ("consent = true", "consent = 1", "gates.ccm.consent"),  # no coercion
        ("threshold_minutes = 20 ", "threshold_minutes = 20.5 ", "codes[0].threshold_minutes"),
        ('confidence = "C"', 'confidence = "X"', "codes[0].confidence"),
        ('family = "ccm"', 'family = "cmm"', "codes[0].family"),
        ('basis = "pooled"', 'basis = "everyone"', "tracks[0].basis"),
        ('scope = "any"', 'scope = "anyone"', "exclusive[0].scope"),
        (
            'concurrent_staff_time = "once"',
            'concurrent_staff_time = "twice"',
            "policy.concurrent_staff_time",
        ),
        (
            'inpatient_excluded_programs = ["ccm"]',
            'inpatient_excluded_programs = ["cm"]',
            "policy.inpatient_excluded_programs[0]",
        ),
        (
            'sources = ["S1", "S2", "S3", "S10", "S27"]',
            'sources = ["S1", "2"]',
            "codes[0].sources[1]",
        ),
        ('sources = ["S1", "S2", "S3", "S10", "S27"]', "sources = []", "codes[0].sources"),
        ('status = "A"', 'status = "a"', "codes[0].status"),  # PFS status indicators only
        ("rvu_nf = 1.98", "rvu_nf = -1.98", "codes[0].rvu_nf"),
        ("conversion_factor_qp = 33.5675", "conversion_factor_qp = 0", "book.conversion_factor_qp"),
        (
            "conversion_factor_qp = 33.5675",
            'conversion_factor_qp = "33.5675"',
            "book.conversion_factor_qp",
        ),
        ('code = "99490"', 'code = "9949"', "codes[0].code"),
        ("device_period_days = 30", "device_period_days = 28", "policy.device_period_days"),
    ],
)
def test_a_wrong_value_is_refused_with_its_key(old: str, new: str, key: str) -> None:
    found = problems(edited(BOOK, (old, new)))
    assert key in {p.key for p in found}, [str(p) for p in found]


def test_a_misspelt_proposal_is_refused_not_ignored() -> None:
    """A proposal switched on under a wrong name would silently stay off (§7.2)."""
    text = edited(
        shipped_text(2027), ("[proposals.rtm_established_patient]", "[proposals.rtm_established]")
    )
    [p] = problems(text, "2027.toml")
    assert p.key == "proposals.rtm_established"
    assert "unknown key" in p.message and "did you mean 'rtm_established_patient'" in p.message
    assert p.line == line_of(text, "[proposals.rtm_established]")


def test_a_proposal_needs_a_summary_and_sources() -> None:
    old = 'summary = "RTM, like RPM, only for an established patient (G11)"\n'
    found = {p.key for p in problems(edited(shipped_text(2027), (old, "")), "2027.toml")}
    assert found == {"proposals.rtm_established_patient.summary"}


def test_every_problem_is_reported_at_once() -> None:
    text = edited(BOOK, ('kind = "time"', 'kind = "tme"'), ("[gates.bhi]", "[gates.bhii]"))
    assert {p.key for p in problems(text)} == {"codes[0].kind", "gates.bhii"}


def test_not_toml_is_refused_with_the_parser_message() -> None:
    [p] = problems("[book\nyear = 2027\n", "bad.toml")
    assert str(p).startswith("bad.toml: not valid TOML:")

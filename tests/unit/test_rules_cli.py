"""``caretally rules list | show | check``: what a rule-book author runs."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner, Result

from streams.cli.main import cli
from support.rule_books import edited, shipped_text

YEAR_2027 = (
    ("year = 2026", "year = 2027"),
    ("effective_from = 2026-01-01", "effective_from = 2027-01-01"),
    ("effective_to = 2026-12-31", "effective_to = 2027-12-31"),
)


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, ["rules", *args], catch_exceptions=False)


def book(tmp_path: Path, name: str, *changes: tuple[str, str]) -> Path:
    path = tmp_path / name
    path.write_text(edited(shipped_text(2026), *YEAR_2027, *changes), encoding="utf-8")
    return path


def test_list_names_each_book() -> None:
    result = run("list")
    assert result.exit_code == 0
    assert "2025-01-01 .. 2025-12-31" in result.stdout and "2026.toml" in result.stdout
    assert "2027.toml" in result.stdout
    rows = orjson.loads(run("list", "--format", "json").stdout)
    assert [(r["year"], r["codes"], r["source"]) for r in rows] == [
        (2025, 23, "2025.toml"),
        (2026, 30, "2026.toml"),
        (2027, 30, "2027.toml"),
    ]
    # docs/rules.md §5: one CF before 2026, then non-QP and QP; 2027 the proposed ones (S28)
    assert [(r["conversion_factor"], r["conversion_factor_qp"]) for r in rows] == [
        (32.3465, 32.3465),
        (33.4009, 33.5675),
        (32.8409, 33.1693),
    ]
    for cf in ("32.3465 (32.3465)", "33.4009 (33.5675)", "32.8409 (33.1693)"):
        assert cf in result.stdout


def test_list_shows_the_provisional_year_and_its_reason() -> None:
    rows = orjson.loads(run("list", "--format", "json").stdout)
    assert [(r["year"], r["provisional"]) for r in rows] == [
        (2025, False),
        (2026, False),
        (2027, True),
    ]
    reason = rows[2]["provisional_reason"]
    assert "RVU27A" in reason and "S28" in reason
    assert [r["provisional_reason"] for r in rows[:2]] == ["", ""]
    table = run("list").stdout
    [year_cell] = [ln for ln in table.splitlines() if "2027-01-01 .. 2027-12-31" in ln]
    assert "2027 provisional" in year_cell
    assert not any("2026 provisional" in ln for ln in table.splitlines())
    words = " ".join(table.split())  # the reason line may wrap
    assert f"2027 is provisional: {reason}" in words
    assert words.count(" is provisional: ") == 1


def test_show_gives_thresholds_caps_pairs_tracks_gate_and_sources() -> None:
    facts = orjson.loads(run("show", "99439", "--format", "json").stdout)
    # the newest book that has the code: the provisional 2027 book
    assert (facts["year"], facts["rule"]["cap"], facts["rule"]["step_minutes"]) == (2027, 2, 20)
    assert facts["tracks"][0]["track"] == "ccm/staff" and facts["sources"]
    assert facts["gate"]["care_plan"] is True and facts["gate"]["min_conditions"] == 2
    pairs = orjson.loads(run("show", "99490", "--format", "json").stdout)["exclusive"]
    assert {"with": "99426", "scope": "any", "resolution": "allow_flagged"}.items() <= pairs[
        4
    ].items()
    table = run("show", "99453", "--year", "2025").stdout
    assert "99453 in the 2025 book" in table and "min_days" in table and "16" in table


def test_show_gives_the_fees_of_rules_section5() -> None:
    """docs/rules.md §5 2026 (RVU26A, S27): 99490 $66.13 non-facility, $43.76 facility,
    $66.46 QP; 2027 at the proposed CFs, provisional."""
    fee = orjson.loads(run("show", "99490", "--year", "2026", "--format", "json").stdout)["fee"]
    assert fee["status"] == "A"
    assert (fee["rvu_nf"], fee["rvu_fac"]) == (1.98, 1.31)
    assert (fee["national_nonfacility"], fee["national_facility"]) == (66.13, 43.76)
    assert (fee["national_nonfacility_qp"], fee["national_facility_qp"]) == (66.46, 43.97)
    assert fee["provisional"] is False and "RVU26A" in fee["fees_from"]
    table = run("show", "99490", "--year", "2026").stdout
    assert "status" in table and "A (CMS PFS status indicator)" in table
    assert "$66.13 non-facility (RVU 1.98 x CF 33.4009), $43.76 facility" in table
    assert "RVUs from" in table and "PROVISIONAL" not in table
    later = run("show", "99490", "--year", "2027").stdout
    assert "$65.02 non-facility (RVU 1.98 x CF 32.8409)" in later and "PROVISIONAL" in later


@pytest.mark.parametrize("code", ["98978", "98986"])
def test_show_of_a_status_c_code_says_unpriced(code: str) -> None:
    facts = orjson.loads(run("show", code, "--year", "2026", "--format", "json").stdout)
    fee = facts["fee"]
    assert fee["status"] == "C"
    assert (fee["rvu_nf"], fee["rvu_fac"]) == (None, None)
    amounts = ("national_nonfacility", "national_facility", "national_nonfacility_qp")
    assert [fee[k] for k in (*amounts, "national_facility_qp")] == [None] * 4
    assert "status C" in facts["note"]
    table = run("show", code, "--year", "2026").stdout
    [status] = [ln for ln in table.splitlines() if "CMS PFS status indicator" in ln]
    assert "C (CMS PFS status indicator)" in status
    [fee_row] = [ln for ln in table.splitlines() if "unpriced (no national amount" in ln]
    assert "$" not in fee_row and "$" not in table


def test_show_refuses_an_unknown_code_or_year() -> None:
    result = run("show", "99445", "--year", "2025")
    assert result.exit_code == 2
    assert "99445 is not in the 2025 book (it is in: 2026, 2027)" in result.output
    assert run("show", "12345").exit_code == 2
    assert "no rule book for 2030" in run("show", "99490", "--year", "2030").output


def test_check_accepts_a_good_draft(tmp_path: Path) -> None:
    path = book(tmp_path, "2027.toml")
    result = run("check", str(path), "--with-shipped")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        f"OK {path}: 2027, 2027-01-01 .. 2027-12-31, 30 codes",
        "OK with the shipped books: 2025, 2026, 2027",
    ]


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("care_plan = true", "care_plans = true", "gates.ccm.care_plans: unknown key"),
        ("[gates.bhi]", "[gates.bhii]", "gates.bhii: unknown key (did you mean 'bhi'?)"),
        ('kind = "time"', 'kind = "tme"', "codes[0].kind: 'tme' is not allowed"),
        (
            'resolution = "allow_flagged"',
            'resolution = "allow_flaged"',
            "].resolution: 'allow_flaged' is not allowed",
        ),
        (
            'requires = "complex_month"',
            'requires = "complex_months"',
            "tracks[0].requires: 'complex_months' is not allowed",
        ),
        ('confidence = "C"', 'confidence = "C"\nconfidense = "C"', "codes[0].confidense"),
        ("exclude_face_to_face = true", "exclude_f2f = true", "policy.exclude_f2f: unknown key"),
    ],
)
def test_check_refuses_each_typo_naming_file_line_and_key(
    tmp_path: Path, old: str, new: str, expected: str
) -> None:
    path = book(tmp_path, "2027.toml", (old, new))
    result = run("check", str(path))
    assert result.exit_code == 1
    [line] = [ln for ln in result.stdout.splitlines() if expected in ln]
    where = line.split(": ", 1)[0]
    assert where.startswith(f"{path}:") and where.rsplit(":", 1)[1].isdigit()
    assert "problem(s) found" in result.stderr


def test_check_with_shipped_refuses_a_gap(tmp_path: Path) -> None:
    path = book(
        tmp_path, "2027.toml", ("effective_from = 2027-01-01", "effective_from = 2027-02-01")
    )
    assert run("check", str(path)).exit_code == 0  # alone it is a fine book
    result = run("check", str(path), "--with-shipped")
    assert result.exit_code == 1
    assert result.stdout == (
        f"{path}: book.effective_from: 2027-02-01 leaves a gap after 2026.toml "
        "(effective_to 2026-12-31): it should be 2027-01-01\n"
    )


def test_check_reads_several_books_as_one_catalog(tmp_path: Path) -> None:
    good = book(tmp_path, "2027.toml")
    late = tmp_path / "2029.toml"
    late.write_text(
        edited(
            shipped_text(2026),
            ("year = 2026", "year = 2029"),
            ("effective_from = 2026-01-01", "effective_from = 2029-01-01"),
            ("effective_to = 2026-12-31", "effective_to = 2029-12-31"),
        ),
        encoding="utf-8",
    )
    result = run("check", str(good), str(late))
    assert result.exit_code == 1
    assert "leaves a gap after" in result.stdout


def test_check_refuses_a_missing_file(tmp_path: Path) -> None:
    assert run("check", str(tmp_path / "nope.toml")).exit_code == 2


def test_help_teaches_with_examples() -> None:
    for args in ((), ("list",), ("show",), ("check",)):
        text = run(*args, "--help").stdout
        assert "Examples:" in text and "caretally rules" in text

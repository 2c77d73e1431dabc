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
    rows = orjson.loads(run("list", "--format", "json").stdout)
    assert [(r["year"], r["codes"], r["source"]) for r in rows] == [
        (2025, 23, "2025.toml"),
        (2026, 28, "2026.toml"),
    ]


def test_show_gives_thresholds_caps_pairs_tracks_gate_and_sources() -> None:
    facts = orjson.loads(run("show", "99439", "--format", "json").stdout)
    assert (facts["year"], facts["rule"]["cap"], facts["rule"]["step_minutes"]) == (2026, 2, 20)
    assert facts["tracks"][0]["track"] == "ccm/staff" and facts["sources"]
    assert facts["gate"]["care_plan"] is True and facts["gate"]["min_conditions"] == 2
    pairs = orjson.loads(run("show", "99490", "--format", "json").stdout)["exclusive"]
    assert {"with": "99426", "scope": "any", "resolution": "allow_flagged"}.items() <= pairs[
        4
    ].items()
    table = run("show", "99453", "--year", "2025").stdout
    assert "99453 in the 2025 book" in table and "min_days" in table and "16" in table


def test_show_refuses_an_unknown_code_or_year() -> None:
    result = run("show", "99445", "--year", "2025")
    assert result.exit_code == 2
    assert "99445 is not in the 2025 book (it is in: 2026)" in result.output
    assert run("show", "12345").exit_code == 2
    assert "no rule book for 2030" in run("show", "99490", "--year", "2030").output


def test_check_accepts_a_good_draft(tmp_path: Path) -> None:
    path = book(tmp_path, "2027.toml")
    result = run("check", str(path), "--with-shipped")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        f"OK {path}: 2027, 2027-01-01 .. 2027-12-31, 28 codes",
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

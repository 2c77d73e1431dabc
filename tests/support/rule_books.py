"""Draft rule books for tests: the shipped text, edited, parsed without touching the package."""

from __future__ import annotations

from importlib import resources

from projections.rules import RuleBook, parse_book


def shipped_text(year: int) -> str:
    """The text of a shipped book (``projections/rules/<year>.toml``)."""
    return (resources.files("projections.rules") / f"{year}.toml").read_text(encoding="utf-8")


def edited(text: str, *changes: tuple[str, str]) -> str:
    """``text`` with each ``(old, new)`` replaced once; ``old`` must be there (a test whose
    edit silently missed would test the shipped book)."""
    for old, new in changes:
        assert old in text, f"not in the book: {old!r}"
        text = text.replace(old, new, 1)
    return text


def draft_2027(*changes: tuple[str, str]) -> RuleBook:
    """The 2026 book moved to 2027 (dates and year), with ``changes`` on top."""
    text = edited(
        shipped_text(2026),
        ("year = 2026", "year = 2027"),
        ("effective_from = 2026-01-01", "effective_from = 2027-01-01"),
        ("effective_to = 2026-12-31", "effective_to = 2027-12-31"),
    )
    return parse_book(edited(text, *changes), "2027.toml")

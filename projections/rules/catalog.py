"""Reading books and choosing the book of a month: :class:`RuleCatalog`.

The catalog is an argument of the core (``PatientContext``, ``engine``, ``claims``,
``audit``, ``alerts``): the shipped books are only its default value, so a test or a
user can evaluate a draft book by passing a catalog that holds it.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable
from datetime import date
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from projections.rules.book import RuleBook
from projections.rules.checks import check_book, check_catalog
from projections.rules.model import BookFile
from projections.rules.problems import Problem, RuleBookError, key_lines, validation_problems


def parse_book(text: str, file: str = "<book>") -> RuleBook:
    """A checked :class:`RuleBook` from TOML ``text``; :class:`RuleBookError` lists every
    problem (``file`` names the text in them)."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RuleBookError([Problem(file, (), f"not valid TOML: {exc}")]) from None
    lines = key_lines(text)
    try:
        doc = BookFile.model_validate(_tuples(raw))
    except ValidationError as exc:
        raise RuleBookError(validation_problems(exc, BookFile, file, lines, raw)) from None
    problems = check_book(doc, file, lines)
    if problems:
        raise RuleBookError(problems)
    return RuleBook.from_file(doc, file)


def read_book(path: Path) -> RuleBook:
    """:func:`parse_book` of a file (its name in messages)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RuleBookError([Problem(str(path), (), f"cannot read: {exc}")]) from None
    return parse_book(text, str(path))


def _tuples(value: Any) -> Any:
    """TOML arrays as tuples (the models are immutable and strict)."""
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


class RuleCatalog:
    """Rule books by month: consecutive years with no gap and no overlap.

    A month before the first book is evaluated with the first book; a month after the
    last with the last, and :meth:`extrapolated` says so (billing flags it
    ``rules_extrapolated:<year>``).
    """

    def __init__(self, books: Iterable[RuleBook]) -> None:
        ordered = tuple(sorted(books, key=lambda b: b.effective_from))
        if not ordered:
            raise RuleBookError([Problem("<catalog>", (), "no rule books")])
        problems = check_catalog(ordered)
        if problems:
            raise RuleBookError(problems)
        self.books = ordered
        self._by_month: dict[str, RuleBook] = {}
        self._last_month = ordered[-1].effective_to.strftime("%Y-%m")

    @classmethod
    def read(cls, paths: Iterable[Path]) -> RuleCatalog:
        """A catalog of book files; :class:`RuleBookError` lists every file's problems."""
        books, problems = read_each(paths)
        if problems:
            raise RuleBookError(problems)
        return cls(books)

    @classmethod
    def read_dir(cls, directory: Path) -> RuleCatalog:
        """A complete set of books: every ``*.toml`` file in ``directory``, in name order
        (``--rules DIR``: they replace the shipped books, they are not added to them).
        :class:`RuleBookError` lists every problem: a missing or empty directory, each
        file's, then the set's (a gap or an overlap between years)."""
        where = str(directory)
        try:
            if not directory.is_dir():
                why = "not a directory" if directory.exists() else "no such directory"
                raise RuleBookError([Problem(where, (), why)])
            paths = sorted(
                (p for p in directory.glob("*.toml") if p.is_file()), key=lambda p: p.name
            )
        except OSError as exc:
            raise RuleBookError([Problem(where, (), f"cannot read: {exc}")]) from None
        if not paths:
            raise RuleBookError([Problem(where, (), "holds no rule books (no *.toml file)")])
        return cls.read(paths)

    def with_books(self, *books: RuleBook) -> RuleCatalog:
        """This catalog with ``books`` added, each replacing a book of the same year."""
        years = {b.year for b in books}
        return RuleCatalog([*(b for b in self.books if b.year not in years), *books])

    @property
    def first(self) -> RuleBook:
        return self.books[0]

    @property
    def last(self) -> RuleBook:
        return self.books[-1]

    def year(self, year: int) -> RuleBook:
        for book in self.books:
            if book.year == year:
                return book
        have = ", ".join(str(b.year) for b in self.books)
        raise KeyError(f"no rule book for {year} (books: {have})")

    def for_month(self, month: str) -> RuleBook:
        """The book in force on the first day of ``month`` (``YYYY-MM``)."""
        book = self._by_month.get(month)
        if book is None:
            day = first_of_month(month)
            book = self.books[0]
            for candidate in self.books:
                if candidate.effective_from <= day:
                    book = candidate
            self._by_month[month] = book
        return book

    def extrapolated(self, month: str) -> bool:
        """True when ``month`` (``YYYY-MM``) is after the last book's range (priced with
        the last book)."""
        return month > self._last_month  # zero-padded YYYY-MM sorts as text


def read_each(paths: Iterable[Path]) -> tuple[list[RuleBook], list[Problem]]:
    """Every file read on its own: the books that parsed and every file's problems."""
    books: list[RuleBook] = []
    problems: list[Problem] = []
    for path in paths:
        try:
            books.append(read_book(path))
        except RuleBookError as exc:
            problems.extend(exc.problems)
    return books, problems


def check_files(
    paths: Iterable[Path], alongside: RuleCatalog | None = None
) -> tuple[list[RuleBook], list[Problem]]:
    """Read and check book files (``caretally rules check``): the books that passed and
    every problem found. Several books must follow one another; with ``alongside``, they
    must also fit that catalog (each replacing its book of the same year) with no gap or
    overlap. Those checks run once every file passes on its own."""
    books, problems = read_each(paths)
    if problems:
        return books, problems  # a gap left by a broken book would only be noise
    if len(books) > 1 or (alongside is not None and books):
        try:
            if alongside is None:
                RuleCatalog(books)
            else:
                alongside.with_books(*books)
        except RuleBookError as exc:
            problems.extend(exc.problems)
    return books, problems


def first_of_month(month: str) -> date:
    """``YYYY-MM`` -> its first day (ValueError naming the value on anything else)."""
    try:
        if len(month) != 7 or month[4] != "-":
            raise ValueError
        return date(int(month[:4]), int(month[5:7]), 1)
    except ValueError:
        raise ValueError(f"month must be YYYY-MM, got {month!r}") from None


def shipped_catalog() -> RuleCatalog:
    """The books shipped in this package (``projections/rules/*.toml``)."""
    books = []
    for entry in sorted(resources.files("projections.rules").iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".toml"):
            books.append(parse_book(entry.read_text(encoding="utf-8"), entry.name))
    return RuleCatalog(books)

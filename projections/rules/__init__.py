"""The billing rules as data: one TOML book per rule year (package data), read into
strict models, checked, and gathered in a :class:`RuleCatalog` the core takes as an
argument.

* :mod:`~projections.rules.model`: the shape of a book file (pydantic, unknown keys and
  values refused);
* :mod:`~projections.rules.checks`: what ties a book together, and books into a catalog;
* :mod:`~projections.rules.book`: :class:`RuleBook`, one year as the engine reads it;
* :mod:`~projections.rules.catalog`: reading books, :class:`RuleCatalog` (books by month);
* :mod:`~projections.rules.describe`: the books and a code as plain data, for people.

Each code, track, pair and gate carries the source ids of docs/rules.md §1; the procedure
of docs/rules.md §6.2 lives in :mod:`projections.billing`. ``SHIPPED_CATALOG`` (the
books of this package, read once at import) is the default value of the core's
``catalog`` arguments; nothing in the core looks books up any other way.
"""

from projections.rules.book import RuleBook
from projections.rules.catalog import (
    RuleCatalog,
    check_files,
    first_of_month,
    parse_book,
    read_book,
    shipped_catalog,
)
from projections.rules.model import (
    FAMILIES,
    Basis,
    CodeRule,
    Exclusive,
    Gate,
    Level,
    Policy,
    Track,
)
from projections.rules.problems import Problem, RuleBookError

SHIPPED_CATALOG: RuleCatalog = shipped_catalog()
"""The shipped books: the default ``catalog`` of the core."""

__all__ = [
    "FAMILIES",
    "SHIPPED_CATALOG",
    "Basis",
    "CodeRule",
    "Exclusive",
    "Gate",
    "Level",
    "Policy",
    "Problem",
    "RuleBook",
    "RuleBookError",
    "RuleCatalog",
    "Track",
    "check_files",
    "first_of_month",
    "parse_book",
    "read_book",
    "shipped_catalog",
]

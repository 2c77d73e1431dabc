"""The rule books a worker folds with (``caretally worker --rules DIR``), and their digest.

The books are configuration: every worker of one app id must use the same ones, or the
views on ``care.billing.v1`` would depend on which worker folded a patient. A fold
snapshot records the digest of the books it was folded with, and one folded with other
books is not restored (the partition is refolded from the log), so a worker started on
new books never serves months evaluated with the old ones.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel

from projections.rules import SHIPPED_CATALOG, RuleBook, RuleBookError, RuleCatalog


def load_books(directory: Path | None) -> RuleCatalog:
    """The books of ``directory`` (every ``*.toml``, replacing the shipped ones), or the
    shipped books; :class:`RuleBookError` lists every problem."""
    return SHIPPED_CATALOG if directory is None else RuleCatalog.read_dir(directory)


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    raise TypeError(f"not part of a rule book: {type(value).__name__}")


def _content(book: RuleBook) -> dict[str, Any]:
    """What the engine reads of a book: every field but where it was read from."""
    return {f.name: getattr(book, f.name) for f in dataclasses.fields(book) if f.name != "source"}


def books_digest(catalog: RuleCatalog) -> str:
    """16 hex digits of a hash of what the books say (not of their text: a comment or a
    file name changes nothing); equal books, equal digest, in every process."""
    data = orjson.dumps(
        [_content(b) for b in catalog.books], default=_plain, option=orjson.OPT_SORT_KEYS
    )
    return hashlib.sha256(data).hexdigest()[:16]


def books_summary(catalog: RuleCatalog, directory: Path | None) -> str:
    """One log line: where the books are from and, per year, its file and fee source."""
    where = "the shipped rule books" if directory is None else f"the rule books in {directory}"
    years = "; ".join(
        f"{b.year}{' provisional' if b.provisional else ''} ({b.source}, fees from "
        f"{b.fees_from or 'no CMS file named'})"
        for b in catalog.books
    )
    return f"evaluating billing with {where}: {years}; digest {books_digest(catalog)}"


__all__ = ["RuleBookError", "books_digest", "books_summary", "load_books"]

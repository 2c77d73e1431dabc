"""``caretally rules import-rvu``: read CMS's RVU file (a zip or its PPRRVU CSV), import it
into a year's rule book, and write the complete set of books into a directory.

The file I/O lives here; what the import decides (the fees, the book's text, the report) is
:mod:`projections.rules.fee_import`, reading the CSV :mod:`projections.rules.pprrvu`.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from projections.rules import SHIPPED_CATALOG, RuleCatalog
from projections.rules.fee_import import FeeImport, base_book, book_set, import_fees
from projections.rules.pprrvu import PprrvuError, choose_member, read_pprrvu
from streams.files.atomic import write_bytes

MAX_CSV_BYTES = 200 * 1024 * 1024
"""A PPRRVU CSV is a few megabytes; a zip member larger than this is refused."""


class RvuImportError(Exception):
    """The import was refused: the message says why (and what to do)."""


@dataclass(frozen=True)
class RvuSource:
    """The PPRRVU CSV as read: its bytes and where they came from."""

    path: Path  # the file given
    name: str  # the CSV's name
    member: str | None  # the zip member read (None: the file is the CSV)
    data: bytes

    @property
    def fees_from(self) -> str:
        """``[book] fees_from``: ``PPRRVU2026_Jan_nonQPP.csv (rvu26a.zip)``."""
        return self.name if self.member is None else f"{self.name} ({self.path.name})"


@dataclass(frozen=True)
class RvuImport:
    """An import done in memory: the source read, the result, and the set of books."""

    source: RvuSource
    result: FeeImport
    books: dict[str, str]  # file name -> text: the shipped books with the imported one


def read_source(path: Path) -> RvuSource:
    """The PPRRVU CSV of ``path``: the file itself, or the member of a zip chosen by
    :func:`~projections.rules.pprrvu.choose_member`."""
    try:
        if not zipfile.is_zipfile(path):
            return RvuSource(path, path.name, None, path.read_bytes())
        with zipfile.ZipFile(path) as archive:
            names = [i.filename for i in archive.infolist() if not i.is_dir()]
            member = choose_member(names)
            info = archive.getinfo(member)
            if info.file_size > MAX_CSV_BYTES:
                raise RvuImportError(f"{path}: {member} is {info.file_size} bytes: too large")
            data = archive.read(member)
    except PprrvuError as exc:
        raise RvuImportError(f"{path}: {exc}") from None
    except (OSError, zipfile.BadZipFile) as exc:
        raise RvuImportError(f"cannot read {path}: {exc}") from None
    return RvuSource(path, member.replace("\\", "/").rsplit("/", 1)[-1], member, data)


def shipped_texts() -> dict[str, str]:
    """The shipped books' text by file name (``projections/rules/*.toml``)."""
    entries = resources.files("projections.rules").iterdir()
    return {e.name: e.read_text(encoding="utf-8") for e in entries if e.name.endswith(".toml")}


def import_rvu(path: Path, year: int, catalog: RuleCatalog = SHIPPED_CATALOG) -> RvuImport:
    """Import the RVU file ``path`` into the book of ``year`` (the catalog's, or its latest
    before ``year`` carried forward); nothing is written."""
    source = read_source(path)
    try:
        rvu = read_pprrvu(source.data, source.name)
        base = base_book(catalog, year)
        texts = shipped_texts()
        result = import_fees(base, texts[base.source], rvu, year, source.fees_from)
        books = book_set(texts, result)
    except ValueError as exc:  # PprrvuError, FeeImportError, RuleBookError
        raise RvuImportError(str(exc)) from None
    return RvuImport(source, result, books)


def write_books(folder: Path, books: dict[str, str], force: bool) -> list[Path]:
    """Write ``books`` into ``folder`` (created if missing), each file replaced atomically.
    A folder that already holds files is refused unless ``force``."""
    if folder.exists() and not folder.is_dir():
        raise RvuImportError(f"{folder} is not a directory")
    if folder.is_dir() and any(folder.iterdir()) and not force:
        raise RvuImportError(
            f"{folder} is not empty: give --force to write the books into it anyway "
            "(books of the same names are replaced)"
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
        written = []
        for name, text in books.items():
            target = folder / name
            write_bytes(target, text.encode("utf-8"))
            target.chmod(0o644)  # a book, like the shipped ones (the temporary file was 0600)
            written.append(target)
    except OSError as exc:
        raise RvuImportError(f"cannot write into {folder}: {exc}") from None
    return written


def strangers(folder: Path, books: dict[str, str]) -> list[Path]:
    """Books in ``folder`` that are not part of the set written (``DIR/*.toml`` reads them)."""
    return sorted(p for p in folder.glob("*.toml") if p.name not in books)

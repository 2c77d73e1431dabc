"""Every citation of the repository's own docs resolves, and nothing points outside it.

Code, tests and rule books cite ``docs/rules.md §6.2 step 7``, rule ids (``G16``, ``G4b``,
``D-4``, ``C-3``), source ids in the books' ``sources = [...]`` arrays, confidence tags,
``docs/design.md "Alerts"`` (a heading or a quoted phrase, ``...`` eliding words) and
``docs/kafka-notes.md §0.2``. Each must name a section heading or an ``<a id="...">``
anchor of the doc, so a clone can follow every comment. References to the reference
documents the docs were written from (outside the repository) are refused.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SELF = Path(__file__).resolve().relative_to(ROOT).as_posix()  # its samples are bad on purpose
SCANNED_SUFFIXES = (".py", ".toml", ".md")

_HEADING = re.compile(r"^#{1,6}\s+(?:<a id=\"[^\"]*\"></a>\s*)*(\d+(?:\.\d+)*)\.?\s", re.M)
_ANCHOR = re.compile(r"<a id=\"([^\"]+)\"></a>")
_DOC_PATH = re.compile(r"\bdocs/([\w-]+\.md)\b")
# "§6.2", "§3.1a", "§6.2 step 7c", "§6.2 step 7(c)", "§6.2 steps 1-5"
_SECTION = re.compile(
    r"(?P<doc>docs/(?P<name>rules|kafka-notes)\.md\s+)?"
    r"§(?P<sec>\d+(?:\.\d+)*)(?P<sub>[a-z])?"
    r"(?:\s+steps?\s+(?P<step>\d+)(?:(?P<sl>[a-z])|\((?P<sp>[a-z])\))?(?:\s*[-–]\s*(?P<to>\d+))?)?"
)
# G1-G20 and G4a-G4d, not HCPCS codes (G0511) nor ICD-10 codes (G47.33)
_G_ID = re.compile(r"(?<![\w.-])(G\d{1,2}[a-z]?)(?![\w])(?!\.\d)")
_D_OR_C_ID = re.compile(r"(?<![\w-])([DC]-\d{1,2})(?![\w])")
_TOML_ID_LIST = re.compile(r"^\s*(?:sources|source_ids)\s*=\s*\[(?P<ids>[^\]]*)\]", re.M)
_TOML_SOURCE = re.compile(r"^\s*conversion_factor_source\s*=\s*\"(?P<id>[^\"]+)\"", re.M)
_TOML_TAG = re.compile(r"^\s*confidence\s*=\s*\"(?P<tag>[^\"]+)\"", re.M)
_QUOTED = re.compile(r"\s*[,;]?\s*(?:\"([^\"]+)\"|``([^`]+)``|“([^”]+)”)")
# The upstream reference documents (outside the repository) by name; spelled so that a
# grep for those names finds none in this file.
_OUTSIDE = re.compile(
    r"\bRULES(?:-2026-2027)?\.md\b|\bDESIGN\.md\b|\bKAFKA-NOTE[S]\b|\.\./share[d]\b|/work/share[d]\b"
)


@dataclass(frozen=True)
class Doc:
    sections: frozenset[str]
    anchors: frozenset[str]
    titles: frozenset[str]  # headings and `code spans`, lower case
    text: str  # lower case, markdown emphasis removed, whitespace collapsed

    @classmethod
    def parse(cls, markdown: str) -> Doc:
        bare = _ANCHOR.sub("", markdown)
        titles = [t.strip(" *") for t in re.findall(r"^#{1,6}\s+(.+)$", bare, re.M)]
        titles += re.findall(r"`([^`\n]+)`", re.sub(r"^```.*?^```", "", bare, flags=re.M | re.S))
        return cls(
            frozenset(_HEADING.findall(markdown)),
            frozenset(_ANCHOR.findall(markdown)),
            frozenset(t.lower() for t in titles),
            re.sub(r"\s+", " ", re.sub(r"[*`]", "", bare)).lower(),
        )

    def has_phrase(self, phrase: str) -> bool:
        """Whether the doc holds ``phrase``: a heading or code span when it is one or two
        words (``"Alerts"``, ``"caretally close"``), else a passage, ``...`` standing for up
        to a few lines of text."""
        said = re.sub(r"\s+", " ", phrase.lower()).strip()
        if len(said.split()) <= 2:
            return said in self.titles
        parts = [p.strip() for p in re.split(r"\.\.\.|…", said)]
        pattern = r".{0,300}?".join(re.escape(p) for p in parts if p)
        return bool(pattern) and re.search(pattern, self.text) is not None


@dataclass(frozen=True)
class Docs:
    rules: Doc
    design: Doc
    kafka: Doc
    names: frozenset[str]  # the files in docs/

    @classmethod
    def load(cls, folder: Path) -> Docs:
        def read(name: str) -> Doc:
            return Doc.parse((folder / name).read_text(encoding="utf-8"))

        return cls(
            read("rules.md"),
            read("design.md"),
            read("kafka-notes.md"),
            frozenset(p.name for p in folder.glob("*.md")),
        )


def _line(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def _sections(label: str, text: str, docs: Docs) -> Iterator[tuple[int, str]]:
    own = {"docs/rules.md": docs.rules, "docs/kafka-notes.md": docs.kafka}.get(label)
    for m in _SECTION.finditer(text):
        if m["name"] == "rules" or (m["name"] is None and own is docs.rules):
            targets, where = [docs.rules], "docs/rules.md"
        elif m["name"] == "kafka-notes" or (m["name"] is None and own is docs.kafka):
            targets, where = [docs.kafka], "docs/kafka-notes.md"
        else:  # a bare "§x" (a list after an explicit citation): either doc
            targets, where = [docs.rules, docs.kafka], "docs/rules.md or docs/kafka-notes.md"
        cited = m.group(0).removeprefix(m["doc"] or "")
        if m["sub"]:
            ok = any(m["sec"] + m["sub"] in d.anchors for d in targets)
        else:
            ok = any(m["sec"] in d.sections for d in targets)
        if ok and m["step"]:
            letter = m["sl"] or m["sp"] or ""
            steps = [f"step-{m['step']}{letter}"] + ([f"step-{m['to']}"] if m["to"] else [])
            ok = all(s in docs.rules.anchors for s in steps)
        if not ok:
            yield _line(text, m.start()), f"{cited} is not a section of {where}"


def _rule_ids(text: str, docs: Docs) -> Iterator[tuple[int, str]]:
    for pattern in (_G_ID, _D_OR_C_ID):
        for m in pattern.finditer(text):
            if m[1] not in docs.rules.anchors:
                yield _line(text, m.start()), f"rule id {m[1]} has no anchor in docs/rules.md"


def _book_ids(text: str, docs: Docs) -> Iterator[tuple[int, str]]:
    for m in _TOML_ID_LIST.finditer(text):
        for s in re.finditer(r"\"([^\"]+)\"", m["ids"]):
            if s[1] not in docs.rules.anchors:
                pos = m.start("ids") + s.start()
                yield _line(text, pos), f"source id {s[1]} has no anchor in docs/rules.md §1"
    for m in _TOML_SOURCE.finditer(text):
        if m["id"] not in docs.rules.anchors:
            yield _line(text, m.start()), f"source id {m['id']} has no anchor in docs/rules.md §1"
    for m in _TOML_TAG.finditer(text):
        if f"tag-{m['tag']}" not in docs.rules.anchors:
            yield _line(text, m.start()), f"confidence {m['tag']!r} is not a docs/rules.md tag"


def _design_phrases(text: str, docs: Docs) -> Iterator[tuple[int, str]]:
    for m in re.finditer(r"docs/design\.md", text):
        # the quotes that follow, across comment and docstring line breaks
        after = re.sub(r"\s*\n\s*(?:#+\s*)?", " ", text[m.end() : m.end() + 600])
        pos = len(after) - len(after.lstrip(" ("))
        while q := _QUOTED.match(after, pos):
            phrase = q[1] or q[2] or q[3]
            if not docs.design.has_phrase(phrase):
                yield _line(text, m.start()), f'"{phrase}" is not in docs/design.md'
            pos = q.end()


def _doc_paths(text: str, docs: Docs) -> Iterator[tuple[int, str]]:
    for m in _DOC_PATH.finditer(text):
        if m[1] not in docs.names:
            yield _line(text, m.start()), f"docs/{m[1]} does not exist"


def _outside(text: str) -> Iterator[tuple[int, str]]:
    for m in _OUTSIDE.finditer(text):
        yield _line(text, m.start()), f"{m[0]!r} points outside the repository: cite docs/ instead"


def problems(label: str, text: str, docs: Docs) -> list[str]:
    """Every unresolved citation in one file's ``text``, as ``label:line: what``."""
    found = [*_sections(label, text, docs), *_rule_ids(text, docs), *_design_phrases(text, docs)]
    found += [*_doc_paths(text, docs), *_outside(text)]
    if label.endswith(".toml"):
        found += _book_ids(text, docs)
    return [f"{label}:{line}: {what}" for line, what in sorted(found)]


def repository_files() -> list[str]:
    """Tracked files and new ones not ignored, relative to the root (a git checkout)."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"not a git checkout: {exc}")
    return sorted(
        p
        for p in set(out.splitlines())
        if p.endswith(SCANNED_SUFFIXES) and p != SELF and (ROOT / p).is_file()
    )


@pytest.fixture(scope="module")
def docs() -> Docs:
    return Docs.load(ROOT / "docs")


def test_every_citation_resolves(docs: Docs) -> None:
    files = repository_files()
    assert "projections/rules/2025.toml" in files, "the scan missed the rule books"
    found = [p for f in files for p in problems(f, (ROOT / f).read_text(encoding="utf-8"), docs)]
    assert not found, "unresolved doc citations:\n" + "\n".join(found)


def test_the_docs_carry_what_the_books_cite(docs: Docs) -> None:
    """The anchors the books and the engine lean on most exist (a guard on the guard)."""
    for anchor in ("S1", "S26", "SEED-0", "G4b", "G16", "D-12", "C-7", "tag-U", "step-7c"):
        assert anchor in docs.rules.anchors, anchor
    assert {"1", "3.1", "5", "6.2", "6.3", "7", "7.1", "8"} <= docs.rules.sections
    assert {"0.2", "0.3", "0.4", "0.5", "0.7", "2.3"} <= docs.kafka.sections


BAD_SAMPLE = (
    """\
# docs/rules.md §6.9 and docs/rules.md §6.2 step 14, §3.1z
# G21, G4e and D-13 decide nothing; C-9 neither
'''docs/design.md "No such heading", "Wire contract v9", "alerts go", "Dependencies ... engines"'''
see docs/kafka-notes.md §0.9 and docs/no-such-doc.md
"""
    + "# from ../share"  # in pieces: a grep for the old names finds none here
    + "d/RULES"
    + ".md and KAFKA-NOTE"
    + "S.md\n"
)

GOOD_SAMPLE = """\
# docs/rules.md §6.2 step 7(c), §6.2 steps 1-5, §3.1a, G4b, G16, D-4 and C-3
# G0511 and G47.33 are codes, not rules; ICD-10 is not D-10 either
'''docs/design.md "every fold is idempotent (event ids ...)", "Alerts", ``caretally replay``
(not: "elsewhere")
and docs/design.md "an activity across local midnight at a month's end is split. Seconds
accumulate"; docs/kafka-notes.md §0.2 (§0.7)'''
"""


def test_the_checker_names_each_bad_citation(docs: Docs) -> None:
    found = problems("sample.py", BAD_SAMPLE, docs)
    expected = [
        "sample.py:1: §6.9 is not a section of docs/rules.md",
        "sample.py:1: §6.2 step 14 is not a section of docs/rules.md",
        "sample.py:1: §3.1z is not a section of docs/rules.md or docs/kafka-notes.md",
        "sample.py:2: rule id G21 has no anchor in docs/rules.md",
        "sample.py:2: rule id G4e has no anchor in docs/rules.md",
        "sample.py:2: rule id D-13 has no anchor in docs/rules.md",
        "sample.py:2: rule id C-9 has no anchor in docs/rules.md",
        'sample.py:3: "No such heading" is not in docs/design.md',
        'sample.py:3: "Wire contract v9" is not in docs/design.md',
        'sample.py:3: "alerts go" is not in docs/design.md',
        'sample.py:3: "Dependencies ... engines" is not in docs/design.md',
        "sample.py:4: §0.9 is not a section of docs/kafka-notes.md",
        "sample.py:4: docs/no-such-doc.md does not exist",
    ]
    for line in expected:
        assert line in found, line
    outside = [p for p in found if p.startswith("sample.py:5:")]
    assert len(outside) == 3, outside  # the folder, the rules and the field notes by name
    assert len(found) == len(expected) + 3, found


def test_the_checker_accepts_good_citations(docs: Docs) -> None:
    assert problems("sample.py", GOOD_SAMPLE, docs) == []


def test_the_checker_reads_rule_book_ids(docs: Docs) -> None:
    book = 'sources = ["S1", "S99"]\nsource_ids = [\n  "S2",\n  "R7",\n]\nconfidence = "Q"\n'
    assert problems("book.toml", book, docs) == [
        "book.toml:1: source id S99 has no anchor in docs/rules.md §1",
        "book.toml:4: source id R7 has no anchor in docs/rules.md §1",
        "book.toml:6: confidence 'Q' is not a docs/rules.md tag",
    ]

"""Editing a rule book's TOML text in place, line by line, so its comments survive.

A book is written by people and read by auditors: a tool that changes a few values
(``caretally rules import-rvu``) edits the lines of those keys and leaves every other line
as it was, instead of dumping the parsed book again. Values are given as TOML literals
(:func:`toml_string`, :func:`toml_number`). The result is not checked here: whoever edits
parses it again (:func:`projections.rules.parse_book`) and compares what it says.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal

TABLE = re.compile(r"^\s*\[\[?\s*([A-Za-z0-9_.\"' -]+?)\s*\]\]?\s*(#.*)?$")
KEY = re.compile(r"^\s*([A-Za-z0-9_-]+)\s*=")


class BookTextError(ValueError):
    """The text has no such table or code to edit."""


@dataclass(frozen=True)
class _Entry:
    key: str
    start: int  # index of its first line
    end: int  # index after its last line


def toml_string(value: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's)."""
    return json.dumps(value, ensure_ascii=False)


def toml_number(value: Decimal) -> str:
    """A TOML float with the digits given (``1.30`` stays ``1.30``; ``2`` becomes ``2.0``)."""
    text = format(value, "f")
    return text if "." in text else text + ".0"


def set_table_keys(
    text: str,
    table: str,
    values: Mapping[str, str | None],
    order: Sequence[str] = (),
    comments: Mapping[str, str] | None = None,
) -> str:
    """``text`` with the keys of ``[table]`` set to ``values`` (TOML literals; None removes
    the key). See :func:`_set_keys` for where a new key goes."""
    lines = text.splitlines(keepends=True)
    for start, end in _tables(lines):
        if _table_name(lines[start]) == table:
            return "".join(_set_keys(lines, start, end, values, order, comments or {}))
    raise BookTextError(f"no [{table}] table")


def set_code_keys(
    text: str, code: str, values: Mapping[str, str | None], order: Sequence[str] = ()
) -> str:
    """``text`` with the keys of the ``[[codes]]`` block of ``code`` set to ``values``."""
    lines = text.splitlines(keepends=True)
    for start, end in _tables(lines):
        if _table_name(lines[start]) == "codes":
            entries = _entries(lines, start, end)
            for entry in entries:
                if entry.key == "code" and _literal(lines[entry.start]) == toml_string(code):
                    return "".join(_set_keys(lines, start, end, values, order, {}))
    raise BookTextError(f"no [[codes]] block with code = {toml_string(code)}")


def prepend_comment(text: str, comment: Sequence[str]) -> str:
    """``text`` with ``comment`` lines (``# `` added) before its first line."""
    newline = "\r\n" if "\r\n" in text else "\n"
    return "".join(f"# {line}".rstrip() + newline for line in comment) + text


# -- scanning ------------------------------------------------------------------------------


def _table_name(line: str) -> str | None:
    found = TABLE.match(line)
    return found.group(1).strip() if found else None


def _tables(lines: list[str]) -> list[tuple[int, int]]:
    """(header line, end) of every table: from its ``[name]`` line to the next one (a line
    inside a multi-line value, such as ``source_ids = [`` ... ``]``, is not a header)."""
    starts, depth = [], 0
    for i, line in enumerate(lines):
        if depth == 0 and _table_name(line) is not None:
            starts.append(i)
        else:
            depth = max(0, depth + _depth(line))
    return [(s, starts[n + 1] if n + 1 < len(starts) else len(lines)) for n, s in enumerate(starts)]


def _scan(text: str) -> tuple[int, str]:
    """Where a ``# comment`` starts in ``text`` (``len(text)`` if none), and the
    characters before it that are outside TOML strings."""
    outside: list[str] = []
    quote, escaped = "", False
    for n, ch in enumerate(text):
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\" and quote == '"':
                escaped = True
            elif ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch == "#":
            return n, "".join(outside)
        else:
            outside.append(ch)
    return len(text), "".join(outside)


def _depth(line: str) -> int:
    """Brackets and braces opened minus closed on ``line``, outside strings and comments."""
    code = _scan(line)[1]
    return sum(code.count(c) for c in "[{") - sum(code.count(c) for c in "]}")


def _entries(lines: list[str], start: int, end: int) -> list[_Entry]:
    """The key/value entries of the table whose header is line ``start``."""
    out: list[_Entry] = []
    i = start + 1
    while i < end:
        found = KEY.match(lines[i])
        if not found or lines[i].lstrip().startswith("#"):
            i += 1
            continue
        depth, j = _depth(lines[i]), i + 1
        while depth > 0 and j < end:
            depth += _depth(lines[j])
            j += 1
        out.append(_Entry(found.group(1), i, j))
        i = j
    return out


def _literal(line: str) -> str:
    """The value of a one-line ``key = value  # comment`` (the comment dropped)."""
    value = line.split("=", 1)[1]
    return value[: _scan(value)[0]].strip()


# -- editing -------------------------------------------------------------------------------


def _set_keys(
    lines: list[str],
    start: int,
    end: int,
    values: Mapping[str, str | None],
    order: Sequence[str],
    comments: Mapping[str, str],
) -> list[str]:
    """Set ``values`` in the table at ``lines[start:end]``. A key whose value is already
    that literal keeps its line (and comment); a changed key gets a new line (its old
    comment described the old value), with ``comments[key]`` if given; a new key goes
    after the nearest key before it in ``order`` that the table has, else before the
    nearest after it, else after the table's last entry."""
    newline = "\r\n" if lines and lines[0].endswith("\r\n") else "\n"
    block = lines[start:end]
    for key, value in values.items():
        entries = _entries(block, 0, len(block))
        here = [e for e in entries if e.key == key]
        if here:
            entry = here[0]
            if value is None:
                del block[entry.start : entry.end]
            elif entry.end - entry.start > 1 or _literal(block[entry.start]) != value:
                indent = block[entry.start][
                    : len(block[entry.start]) - len(block[entry.start].lstrip())
                ]
                block[entry.start : entry.end] = [
                    _line(indent, key, value, comments.get(key), newline)
                ]
            continue
        if value is None:
            continue
        block.insert(
            _insert_at(entries, key, order), _line("", key, value, comments.get(key), newline)
        )
    return [*lines[:start], *block, *lines[end:]]


def _line(indent: str, key: str, value: str, comment: str | None, newline: str) -> str:
    line = f"{indent}{key} = {value}"
    if comment:
        line = f"{line.ljust(38)} # {comment}"
    return line + newline


def _insert_at(entries: list[_Entry], key: str, order: Sequence[str]) -> int:
    where = {e.key: e for e in entries}
    if key in order:
        at = order.index(key)
        for before in reversed(order[:at]):
            if before in where:
                return where[before].end
        for after in order[at + 1 :]:
            if after in where:
                return where[after].start
    return entries[-1].end if entries else 1

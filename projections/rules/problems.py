"""What is wrong with a rule book, said so a person can fix it: file, line, key, problem."""

from __future__ import annotations

import re
import types
from dataclasses import dataclass
from difflib import get_close_matches
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

Loc = tuple[str | int, ...]
"""A key path into the book: ``("gates", "ccm", "care_plans")``, ``("codes", 3, "kind")``."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a book: ``2027.toml:57: codes[3].kind: ...``."""

    file: str
    loc: Loc
    message: str
    line: int | None = None

    @property
    def key(self) -> str:
        """The key path as written in messages: ``gates.ccm.care_plans``, ``codes[3].kind``."""
        out = ""
        for part in self.loc:
            out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
        return out

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.key}: {self.message}" if self.loc else f"{where}: {self.message}"


class RuleBookError(ValueError):
    """A rule book (or a catalog of books) that must not be used; ``problems`` lists why."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


# -- lines of a TOML text -------------------------------------------------------------------

_ARRAY_TABLE = re.compile(r"^\s*\[\[\s*([A-Za-z0-9_.\-]+)\s*\]\]")
_TABLE = re.compile(r"^\s*\[\s*([A-Za-z0-9_.\-]+)\s*\]")
_KEY = re.compile(r"^\s*([A-Za-z0-9_\-]+)\s*=")


def key_lines(text: str) -> dict[Loc, int]:
    """Line number (1-based) of every table header and ``key =`` line, by key path.

    A cheap scan, not a TOML parser: enough for the hand-written books (no dotted keys,
    no keys inside multi-line strings).
    """
    out: dict[Loc, int] = {}
    counts: dict[str, int] = {}
    table: Loc = ()
    for number, line in enumerate(text.splitlines(), start=1):
        if m := _ARRAY_TABLE.match(line):
            name = m.group(1)
            counts[name] = counts.get(name, 0) + 1
            table = (*name.split("."), counts[name] - 1)
        elif m := _TABLE.match(line):
            table = tuple(m.group(1).split("."))
        elif m := _KEY.match(line):
            out.setdefault((*table, m.group(1)), number)
            continue
        else:
            continue
        out.setdefault(table, number)
    return out


def line_of(lines: dict[Loc, int], loc: Loc) -> int | None:
    """The line of ``loc``, else of its nearest enclosing key or table."""
    for end in range(len(loc), 0, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return None


# -- pydantic errors in words ----------------------------------------------------------------


def validation_problems(
    error: ValidationError,
    root: type[BaseModel],
    file: str,
    lines: dict[Loc, int],
    raw: dict[str, Any] | None = None,
) -> list[Problem]:
    """One :class:`Problem` per pydantic error, worded for a book's author (``raw``: the
    parsed TOML, to name the code, track or pair of a list item)."""
    out = []
    for err in error.errors(include_url=False):
        loc: Loc = tuple(err["loc"])
        kind, value = err["type"], err.get("input")
        if kind == "extra_forbidden":
            message = _unknown_key(str(loc[-1]), _keys_at(root, loc[:-1]))
        elif kind == "missing":
            message = "missing (this key is required)"
        elif kind == "literal_error":
            message = f"{value!r} is not allowed: {_lower(err['msg'])}"
        elif kind == "value_error":
            message = str(err["ctx"]["error"]) if "ctx" in err else err["msg"]
        elif kind == "string_pattern_mismatch":
            message = f"{value!r} is not a valid {_what(loc)}"
        else:
            message = f"{_lower(err['msg'])} (got {value!r})"
        label = item_label(raw or {}, loc)
        if label:
            message += f" {label}"
        out.append(Problem(file, loc, message, line_of(lines, loc)))
    return out


def item_label(raw: dict[str, Any], loc: Loc) -> str:
    """``(99490)``, ``(ccm/staff)`` or ``(99490+99491)`` for an item of ``[[codes]]``,
    ``[[tracks]]`` or ``[[exclusive]]`` (empty elsewhere or when it cannot tell)."""
    if len(loc) < 2 or not isinstance(loc[1], int):
        return ""
    items = raw.get(str(loc[0]))
    if not isinstance(items, list | tuple) or not 0 <= loc[1] < len(items):
        return ""
    item = items[loc[1]]
    if not isinstance(item, dict):
        return ""
    if loc[0] == "codes" and "code" in item:
        return f"({item['code']})"
    if loc[0] == "tracks" and "family" in item and "name" in item:
        return f"({item['family']}/{item['name']})"
    if loc[0] == "exclusive" and "a" in item and "b" in item:
        return f"({item['a']}+{item['b']})"
    return ""


def _unknown_key(key: str, allowed: list[str]) -> str:
    near = get_close_matches(key, allowed, n=1, cutoff=0.6)
    text = "unknown key" + (f" (did you mean {near[0]!r}?)" if near else "")
    if allowed and len(allowed) <= 8:
        text += f"; allowed here: {', '.join(allowed)}"
    return text


def _what(loc: Loc) -> str:
    names = [p for p in loc if isinstance(p, str)]
    last = names[-1] if names else ""
    if "source" in last:
        return "source id (S<n> or SEED-<n>, docs/rules.md §1)"
    return "code (five letters or digits)"


def _lower(text: str) -> str:
    return text[:1].lower() + text[1:]


def _keys_at(root: type[BaseModel], loc: Loc) -> list[str]:
    """The keys the model allows at ``loc`` (empty when it cannot tell)."""
    current: Any = root
    for part in loc:
        model = _model_in(current)
        if model is None:
            return []
        if isinstance(part, int):
            continue  # an item of a list of models: same model
        field = model.model_fields.get(part)
        if field is None:
            return []
        current = field.annotation
    model = _model_in(current)
    return list(model.model_fields) if model is not None else []


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The model inside ``X``, ``X | None``, ``tuple[X, ...]`` or ``Annotated[X, ...]``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType, tuple, list, Annotated):
        for arg in get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None

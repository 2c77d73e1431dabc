"""CSV rows to wire-contract v1 JSON events (what ``caretally ingest --format csv`` sends).

One row is one event; the first non-blank row is the header and names the columns:

* Envelope columns: ``event_id``, ``type``, ``org_id``, ``recorded_at``, ``source``
  (required), ``patient_id`` (optional; leave the cell empty for practice-wide events such
  as ``practice.configured`` and ``month.closed``) and ``schema_version`` (optional; an
  empty cell or a missing column means 1).
* Every other column is ``data.<field>``, a field of the event's ``data`` object, e.g.
  ``data.activity_id``, ``data.minutes``, ``data.started_at``. The field must belong to
  some event type; which fields apply to a row depends on its ``type`` (see
  ``caretally schema``), so one file can mix types with a column per field in use.

Cells:

* Surrounding whitespace is stripped; an empty cell is omitted from the event (the field
  takes its default, or the event is rejected when the field is required).
* Each ``data`` field is converted by its kind in ``schemas.events`` (the model of the
  row's ``type``; for an unknown type, the field's kind in any model). Today:

  ======== ============================================== ==========================
  kind     fields                                         cell
  ======== ============================================== ==========================
  number   ``minutes``                                    ``25``, ``12.5``
  boolean  ``face_to_face``, ``interactive``, ``qmb``,     ``true`` / ``false``
           ``qualifying_apm_participant``
  list     ``chronic``                                    ``E11.9;I10``; ``[]`` empty
  text     everything else (ids, labels, timestamps,      as written
           dates ``YYYY-MM-DD``, enumerations)
  ======== ============================================== ==========================

  ``schema_version`` is an integer. Booleans are case-insensitive.
* Blank rows, and rows whose cells are all empty, are skipped.

Every other row becomes one event, as compact JSON (orjson) with the keys in wire-contract
order (``data`` fields in the order of the type's model, whatever the column order).
Problems are reported per row with the row's first line number (a quoted cell may span
lines), and the row still goes to ingress so the worker dead-letters it with its reason;
nothing is dropped:

* a cell that does not convert ("data.minutes: not a number") stays a string in the
  JSON, which the strict schema then rejects;
* a row with more or fewer cells than the header, or a row that is not valid UTF-8, is
  sent as its raw CSV text (not JSON);
* a row longer than ``EVENT_MAX_BYTES`` characters (a huge line, or a quoted field that
  never closes) is skipped to its end without being held whole and marked ``too_large``,
  with its :class:`~streams.files.logfile.Oversize` (an excerpt, the SHA-256 and size of the
  whole row's bytes) and, when the excerpt's complete cells hold them, its key:
  ``caretally ingest`` reports it, dead-letters it and does not send it.

Problems never quote a cell: cells may hold patient ids (PHI), so a problem names the
column and the kind of trouble. The header's problems name columns by position unless
the name is a known one (a "header" may really be a row of data).
"""

from __future__ import annotations

import csv
import difflib
import io
import math
import re
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal, TextIO

import orjson

from schemas.events import EVENT_TYPES
from streams.files.logfile import SKIP_CHUNK, Measure, Oversize, too_large_reason
from streams.kafka.limits import EVENT_MAX_BYTES
from streams.kafka.records import event_key

Kind = Literal["number", "boolean", "list", "text"]

ENVELOPE_REQUIRED = ("event_id", "type", "org_id", "recorded_at", "source")
ENVELOPE_OPTIONAL = ("patient_id", "schema_version")
# Key order of the JSON we write: the wire contract's (docs/design.md).
_ENVELOPE_ORDER = (
    "event_id",
    "type",
    "schema_version",
    "org_id",
    "patient_id",
    "recorded_at",
    "source",
)
DATA_PREFIX = "data."
LIST_SEPARATOR = ";"
EMPTY_LIST = "[]"

_INTEGER = re.compile(r"[+-]?\d+")


class CsvHeaderError(ValueError):
    """The header row does not describe events; nothing in the file can be converted."""


def _kind(annotation: Any) -> Kind:
    """The CSV kind of a pydantic field annotation (Optional/Annotated unwrapped)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _kind(args[0])
    if origin in (typing.Union, types.UnionType):
        kinds = {_kind(a) for a in args if a is not type(None)}
        return kinds.pop() if len(kinds) == 1 else "text"
    if origin in (list, tuple, set, frozenset):
        return "list"
    if origin is Literal:
        if all(isinstance(a, bool) for a in args):
            return "boolean"
        if all(isinstance(a, int | float) and not isinstance(a, bool) for a in args):
            return "number"
        return "text"
    if annotation is bool:
        return "boolean"
    if isinstance(annotation, type) and issubclass(annotation, int | float):
        return "number"
    return "text"


def _data_field_kinds() -> dict[str, dict[str, Kind]]:
    out: dict[str, dict[str, Kind]] = {}
    for name, model in EVENT_TYPES.items():
        data_model = model.model_fields["data"].annotation
        fields = getattr(data_model, "model_fields", {})
        out[name] = {f: _kind(info.annotation) for f, info in fields.items()}
    return out


DATA_FIELD_KINDS: dict[str, dict[str, Kind]] = _data_field_kinds()
"""Per event type: its ``data`` fields and their CSV kind (derived from ``schemas.events``)."""


def _any_kinds() -> dict[str, Kind]:
    merged: dict[str, Kind] = {}
    for fields in DATA_FIELD_KINDS.values():
        for field, kind in fields.items():
            merged[field] = kind if merged.get(field, kind) == kind else "text"
    return merged


ANY_FIELD_KINDS: dict[str, Kind] = _any_kinds()
"""Every known ``data`` field, for rows whose ``type`` is unknown."""


def fields_of_kind(kind: Kind) -> list[str]:
    """The known ``data`` fields of one kind, sorted (for help texts)."""
    return sorted(f for f, k in ANY_FIELD_KINDS.items() if k == kind)


def mapping_summary() -> str:
    """A short plain-text account of the CSV mapping (for ``--help``)."""
    return (
        "CSV: a header row names the columns. Envelope: "
        f"{', '.join(ENVELOPE_REQUIRED)}, optional patient_id (empty for practice-wide events) "
        "and schema_version (default 1). Every other column is data.FIELD. "
        f"Numbers: {', '.join(fields_of_kind('number'))}; "
        f"booleans (true/false): {', '.join(fields_of_kind('boolean'))}; "
        f"lists ('{LIST_SEPARATOR}'-separated, '{EMPTY_LIST}' for none): "
        f"{', '.join(fields_of_kind('list'))}; other fields are text as written. "
        "Empty cells are omitted."
    )


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    field: str
    in_data: bool


@dataclass(frozen=True, slots=True)
class CsvRecord:
    """One converted row: ``value`` goes to ingress under ``key``; ``error`` is set when the
    row could not be converted cleanly (it is then certain to be dead-lettered)."""

    line: int
    value: bytes
    key: bytes | None
    error: str | None = None
    too_large: bool = False
    oversize: Oversize | None = None


def parse_header(cells: list[str]) -> list[Column]:
    """Columns of a header row; raises :class:`CsvHeaderError` with what to fix."""
    names = [c.strip() for c in cells]
    problems = []
    seen: dict[str, int] = {}
    columns = []
    for number, name in enumerate(names, start=1):
        if name in seen:
            problems.append(f"{_label(number, name)} repeats column {seen[name]}")
        seen.setdefault(name, number)
        if name.startswith(DATA_PREFIX):
            field = name[len(DATA_PREFIX) :]
            if field not in ANY_FIELD_KINDS:
                problems.append(
                    f"column {number}: unknown data field{_hint(field, ANY_FIELD_KINDS, 'data.')}"
                )
            columns.append(Column(name, field, True))
        elif name in ENVELOPE_REQUIRED or name in ENVELOPE_OPTIONAL:
            columns.append(Column(name, name, False))
        else:
            known = ENVELOPE_REQUIRED + ENVELOPE_OPTIONAL
            expected = f"expected one of {', '.join(known)} or data.FIELD"
            problems.append(f"column {number}: unknown column ({expected}){_hint(name, known)}")
    missing = [n for n in ENVELOPE_REQUIRED if n not in seen]
    if missing:
        problems.append(f"missing column(s) {', '.join(missing)}")
        if len(missing) == len(ENVELOPE_REQUIRED):
            problems.append("is the first row a header?")
    if problems:
        raise CsvHeaderError("; ".join(problems))
    return columns


def _label(number: int, name: str) -> str:
    """A header column for a problem: its position, and its name only if it is a known one
    (a header row may really be data, and its cells patient ids)."""
    known = name in ENVELOPE_REQUIRED or name in ENVELOPE_OPTIONAL
    if name.startswith(DATA_PREFIX) and name[len(DATA_PREFIX) :] in ANY_FIELD_KINDS:
        known = True
    return f"column {number} ({name})" if known else f"column {number}"


def _hint(name: str, known: typing.Iterable[str], prefix: str = "") -> str:
    """`` (did you mean X?)`` with X one of ``known`` (never the name given), or nothing."""
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {prefix}{close[0]}?)" if close else ""


def _convert(kind: Kind, cell: str) -> tuple[Any, str | None]:
    """The JSON value of a non-empty cell, and a problem (the cell is kept as text then)."""
    if kind == "text":
        return cell, None
    if kind == "list":
        if cell == EMPTY_LIST:
            return [], None
        return [p.strip() for p in cell.split(LIST_SEPARATOR) if p.strip()], None
    if kind == "boolean":
        low = cell.lower()
        if low in ("true", "false"):
            return low == "true", None
        return cell, "not a boolean (write true or false)"
    if _INTEGER.fullmatch(cell):
        return int(cell), None
    try:
        number = float(cell)
    except ValueError:
        return cell, "not a number"
    if not math.isfinite(number):
        return cell, "not a finite number"
    return number, None


def convert_row(columns: list[Column], cells: list[str]) -> tuple[bytes, bytes | None, str | None]:
    """One row (as many cells as columns) to (JSON bytes, key, problems or None)."""
    envelope: dict[str, Any] = {}
    data: dict[str, Any] = {}
    raw_data: dict[str, str] = {}
    problems = []
    for column, cell in zip(columns, cells, strict=True):
        if not cell:
            continue
        value = cell.strip()
        if not value:
            continue
        if column.in_data:
            raw_data[column.field] = value
        elif column.field == "schema_version":
            if _INTEGER.fullmatch(value):
                envelope["schema_version"] = int(value)
            else:
                envelope["schema_version"] = value
                problems.append("schema_version: not an integer")
        else:
            envelope[column.field] = value
    envelope.setdefault("schema_version", 1)
    kinds = DATA_FIELD_KINDS.get(envelope.get("type", ""), ANY_FIELD_KINDS)
    # data fields in the model's order (as `caretally schema` lists them), then any others
    ordered = [f for f in kinds if f in raw_data] + [f for f in raw_data if f not in kinds]
    for field in ordered:
        converted, problem = _convert(kinds.get(field, "text"), raw_data[field])
        if problem:
            problems.append(f"data.{field}: {problem}")
        data[field] = converted
    event = {k: envelope[k] for k in _ENVELOPE_ORDER if k in envelope}
    event["data"] = data
    org_id = envelope.get("org_id")
    key = event_key(org_id, envelope.get("patient_id")) if org_id else None
    return orjson.dumps(event), key, "; ".join(problems) or None


class _RowTooLarge(Exception):
    """The current row is longer than the limit; it was skipped to its end."""


_LINE_ENDS = ("\n", "\r")


class _LineTap:
    """Iterates a text stream's lines for ``csv.reader`` and keeps those of the current row.

    Lines are read with a bound, and a row is held only up to ``limit`` characters: past
    that the rest of the row (to a line end outside quotes) is read and dropped, and
    :class:`_RowTooLarge` is raised through the reader, which starts afresh at the next
    line. The row's end is found by the parity of its quote characters, which is exact
    for the quoting ``csv.reader`` does (an escaped quote is two of them).
    """

    def __init__(self, text: TextIO, limit: int = EVENT_MAX_BYTES) -> None:
        self._text = text
        self._limit = limit
        self.lines: list[str] = []
        self.size = 0
        self.consumed = 0
        self.skipped: Oversize | None = None  # the last row skipped as too large

    def __iter__(self) -> _LineTap:
        return self

    def __next__(self) -> str:
        line = self._text.readline(self._limit + 2)
        if not line:
            raise StopIteration
        self.consumed += 1
        self.lines.append(line)
        self.size += len(line)
        if self.size > self._limit:
            self._skip_row()
            raise _RowTooLarge
        return line

    def _skip_row(self) -> None:
        """Drop the current row and read past its end without holding it, measuring its
        bytes (as read: ``surrogateescape`` gives back those that are not UTF-8)."""
        quotes = sum(line.count('"') for line in self.lines)
        measure = Measure()
        for line in self.lines:
            measure.feed(_encode(line))
        chunk = self.lines[-1]
        self.lines.clear()
        self.size = 0
        try:
            while chunk:
                if chunk.endswith(_LINE_ENDS) and quotes % 2 == 0:
                    return
                ended = chunk.endswith(_LINE_ENDS)
                chunk = self._text.readline(SKIP_CHUNK)
                measure.feed(_encode(chunk))
                quotes += chunk.count('"')
                self.consumed += ended and bool(chunk)
        finally:
            self.skipped = measure.result()

    def take(self) -> str:
        raw = "".join(self.lines)
        self.lines.clear()
        self.size = 0
        return raw


def _has_surrogates(text: str) -> bool:
    """Whether decoding with ``surrogateescape`` met bytes that are not UTF-8."""
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def read_csv_events(text: TextIO) -> Iterator[CsvRecord]:
    """Read the header now, and return an iterator converting the rows one by one.

    ``text`` should be opened with ``newline=""`` and ``errors="surrogateescape"`` so a
    row that is not UTF-8 is reported and sent as its original bytes. Raises
    :class:`CsvHeaderError` for a bad header; a file without any rows yields nothing.
    """
    tap = _LineTap(text)
    reader = csv.reader(tap, strict=False)
    columns = None
    while columns is None:
        start = tap.consumed + 1
        try:
            cells = next(reader)
        except StopIteration:
            return iter(())
        except csv.Error as exc:
            raise CsvHeaderError(f"line {start}: {exc}") from None
        except _RowTooLarge:
            raise CsvHeaderError(f"line {start}: {too_large_reason(what='header')}") from None
        tap.take()
        if not any(c.strip() for c in cells):
            continue
        if _has_surrogates("".join(cells)):
            raise CsvHeaderError(f"line {start}: the header is not valid UTF-8")
        columns = parse_header(cells)
    return _rows(tap, reader, columns)


def _rows(tap: _LineTap, reader: Iterator[list[str]], columns: list[Column]) -> Iterator[CsvRecord]:
    while True:
        start = tap.consumed + 1
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield CsvRecord(start, _raw_bytes(tap.take()), None, f"not a CSV row: {exc}")
            continue
        except _RowTooLarge:
            reason = too_large_reason(what="row")
            skipped, tap.skipped = tap.skipped, None
            key = _excerpt_key(columns, skipped.excerpt) if skipped else None
            yield CsvRecord(start, b"", key, reason, too_large=True, oversize=skipped)
            continue
        raw = tap.take()
        if not any(c.strip() for c in cells):
            continue
        if len(cells) != len(columns):
            count = f"row has {len(cells)} cells but the header has {len(columns)} columns"
            yield CsvRecord(start, _raw_bytes(raw), None, count)
        elif _has_surrogates(raw):
            yield CsvRecord(start, _raw_bytes(raw), None, "row is not valid UTF-8")
        else:
            value, key, problem = convert_row(columns, cells)
            yield CsvRecord(start, value, key, problem)


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _excerpt_key(columns: list[Column], excerpt: bytes) -> bytes | None:
    """The key of a row skipped as too large, from the cells complete in its excerpt (all
    but the last): ``org_id:patient_id`` as :func:`convert_row` makes it, or None when
    they are not all there (or not UTF-8)."""
    try:
        text = excerpt.decode("utf-8", "surrogateescape")
        cells = next(csv.reader(io.StringIO(text, newline=""), strict=False))[:-1]
    except (csv.Error, StopIteration):
        return None
    if len(cells) > len(columns):  # more cells than the header: sent raw, unkeyed
        return None
    found: dict[str, str] = {}
    for column, cell in zip(columns, cells, strict=False):
        if not column.in_data and column.field in ("org_id", "patient_id"):
            found[column.field] = cell.strip()
    has_patient = any(c.field == "patient_id" and not c.in_data for c in columns)
    org = found.get("org_id")
    if not org or (has_patient and "patient_id" not in found):
        return None
    if _has_surrogates(org + found.get("patient_id", "")):
        return None
    return event_key(org, found.get("patient_id") or None)


def _raw_bytes(raw: str) -> bytes:
    """A row's original bytes (line endings trimmed)."""
    return raw.rstrip("\r\n").encode("utf-8", "surrogateescape")

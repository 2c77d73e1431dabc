"""The claim files of a close: ``claims-<org>-<digest>-<YYYY-MM>.csv`` and ``.json``,
each replaced atomically."""

from __future__ import annotations

import csv
import hashlib
import io
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

from projections.claims import FIELDS, ClaimLine
from streams.files.atomic import write_bytes

STEM_ORG_CHARS = 48  # of the org's readable rendering in a claim file name
FORMATS = ("csv", "json")


def claims_stem(org: str, month: str) -> str:
    """``claims-<org>-<digest>-<YYYY-MM>``: the org made readable and file-name safe
    (ASCII letters, digits, ``.``, ``_``, ``-``; anything else becomes ``_``; at most
    :data:`STEM_ORG_CHARS` characters), then 16 hex digits of a hash of the exact org id.
    Orgs that render alike (``a_b``, ``a b``, two CJK names, ``Org``/``org`` on a
    case-insensitive file system) still get names of their own."""
    readable = re.sub(r"[^A-Za-z0-9._-]", "_", org)[:STEM_ORG_CHARS]
    digest = hashlib.blake2b(org.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()
    return f"claims-{readable}-{digest}-{month}"


def _money(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def csv_text(lines: Iterable[ClaimLine]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(FIELDS)
    for ln in lines:
        row = ln.row()
        row["fee"] = _money(ln.fee)
        row["estimated_payment"] = _money(ln.estimated_payment)
        row["payment_provisional"] = "true" if ln.payment_provisional else "false"
        row["billing_practitioner_id"] = ln.practitioner_id or ""
        writer.writerow([row[f] for f in FIELDS])
    return buf.getvalue()


def json_bytes(lines: list[ClaimLine], meta: dict[str, Any]) -> bytes:
    doc = {
        **meta,
        "line_count": len(lines),
        "estimated_payment": round(sum(ln.estimated_payment for ln in lines), 2),
        "payment_provisional": any(ln.payment_provisional for ln in lines),
        "lines": [ln.row() for ln in lines],
    }
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n"


def write_claims(
    lines: list[ClaimLine],
    directory: Path,
    org: str,
    month: str,
    formats: tuple[str, ...],
    meta: dict[str, Any],
) -> list[Path]:
    """Write the claim files (``csv``, ``json``) atomically; returns their paths."""
    stem = claims_stem(org, month)
    written = []
    if "csv" in formats:
        path = directory / f"{stem}.csv"
        write_bytes(path, csv_text(lines).encode())
        written.append(path)
    if "json" in formats:
        path = directory / f"{stem}.json"
        write_bytes(path, json_bytes(lines, meta))
        written.append(path)
    return written

"""The claim files of a close: ``claims-<org>-<digest>-<YYYY-MM>.csv``, ``.json`` and the
837P-shaped ``.837p.json`` (docs/claims.md), each replaced atomically."""

from __future__ import annotations

import csv
import hashlib
import io
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

from projections.claims import FIELDS, ClaimLine, undotted
from streams.files.atomic import write_bytes

STEM_ORG_CHARS = 48  # of the org's readable rendering in a claim file name
FORMATS = ("csv", "json", "837p")
SUFFIXES = {"csv": ".csv", "json": ".json", "837p": ".837p.json"}
LIST_SEPARATOR = ";"  # of a list column in the CSV (diagnosis_codes, needs_review)


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
        row["diagnosis_codes"] = LIST_SEPARATOR.join(ln.diagnosis_codes)
        row["needs_review"] = LIST_SEPARATOR.join(ln.needs_review)
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


# -- the 837P-shaped export ----------------------------------------------------------

NOTE_837P = (
    "Not an X12 837P transaction: claim data caretally holds, laid out after the 837P "
    "(005010X222A1) loops. Every null is a datum caretally does not know (listed in each "
    "claim's unknown_to_caretally); the practice's billing system must supply them, set the "
    "charges and build the transaction."
)
NOTE_INSTITUTIONAL = (
    "This practice is configured as an RHC or FQHC: Medicare pays RHC/FQHC services on the "
    "institutional claim (837I), not the professional 837P; check how your payer wants "
    "these lines before using this shape."
)


def _nulls(node: Any, path: str, out: list[str]) -> None:
    """Append the path of every null in ``node`` (``[]`` standing for any list item),
    leaving out caretally's own records (the ``caretally`` objects: a null ``fee`` there
    is a code not priced, not a datum to supply). A null ``caretally_practitioner_id``
    inside a loop is listed: no practitioner of record (device lines), so caretally does
    not know the rendering provider."""
    if node is None:
        if path not in out:
            out.append(path)
    elif isinstance(node, dict):
        for key, value in node.items():
            if key != "caretally":
                _nulls(value, f"{path}.{key}" if path else key, out)
    elif isinstance(node, list):
        for item in node:
            _nulls(item, f"{path}[]", out)


def _service_line(n: int, ln: ClaimLine) -> dict[str, Any]:
    return {
        "LX_line_number": n,
        "SV1_professional_service": {
            "procedure_code_qualifier": "HC",  # HCPCS/CPT
            "procedure_code": ln.code,
            "procedure_modifiers": None,
            "line_charge_amount": None,
            "unit_basis": "UN",
            "units": ln.units,
            "place_of_service": ln.place_of_service,
            "diagnosis_code_pointers": None,
        },
        "DTP_472_service_date": {
            "qualifier": "472",
            "format": "D8",
            "date": ln.date_of_service.strftime("%Y%m%d"),
        },
        "caretally": {
            "claim_line_id": ln.claim_line_id,
            "family": ln.family,
            "date_of_service": ln.date_of_service.isoformat(),
            "date_of_service_basis": ln.basis,
            "fee": ln.fee,
            "estimated_payment": ln.estimated_payment,
            "payment_provisional": ln.payment_provisional,
            "needs_review": list(ln.needs_review),
        },
    }


def _claim(lines: list[ClaimLine]) -> dict[str, Any]:
    """One claim: the lines of one patient-month and billing practitioner (they share the
    diagnoses and the place of service)."""
    first = lines[0]
    codes = [undotted(c) for c in first.diagnosis_codes]
    # the 837P requires a principal diagnosis: none on record (or codes not kept) is a
    # datum caretally does not know, so null and listed, not an empty list
    diagnoses = [
        {"qualifier": "ABK" if i == 0 else "ABF", "code": code} for i, code in enumerate(codes)
    ]
    claim: dict[str, Any] = {
        "loop_2010AA_billing_provider": {
            "name": None,
            "npi": None,
            "taxonomy_code": None,
            "tax_id": None,
            "address": None,
        },
        "loop_2000B_subscriber": {
            "SBR_payer_responsibility_code": None,
            "SBR_individual_relationship_code": None,
            "loop_2010BA_subscriber_name": {
                "last_name": None,
                "first_name": None,
                "member_id": None,
                "address": None,
                "birth_date": None,
                "gender_code": None,
            },
            "loop_2010BB_payer_name": {"payer_name": None, "payer_id": None},
        },
        "loop_2300_claim": {
            "CLM_patient_control_number": None,
            "CLM_total_charge_amount": None,
            "CLM_place_of_service": first.place_of_service,
            "CLM_claim_frequency_code": None,
            "HI_diagnosis_codes": diagnoses or None,
        },
        "loop_2310B_rendering_provider": {
            "caretally_practitioner_id": first.practitioner_id,
            "npi": None,
            "taxonomy_code": None,
        },
        "loop_2400_service_lines": [_service_line(n, ln) for n, ln in enumerate(lines, 1)],
        "caretally": {
            "org_id": first.org_id,
            "patient_id": first.patient_id,
            "month": first.month,
            "billing_practitioner_id": first.practitioner_id,
            "diagnosis_codes_omitted": first.diagnosis_codes_omitted,
            "estimated_payment": round(sum(ln.estimated_payment for ln in lines), 2),
            "needs_review": sorted({r for ln in lines for r in ln.needs_review}),
        },
    }
    unknown: list[str] = []
    _nulls(claim, "", unknown)
    claim["unknown_to_caretally"] = unknown
    return claim


def claims_837p(lines: list[ClaimLine], meta: dict[str, Any]) -> dict[str, Any]:
    """The 837P-shaped document of a close's claim lines (docs/claims.md): one claim per
    patient-month and billing practitioner, in the lines' order."""
    groups: dict[tuple[str, str, str | None], list[ClaimLine]] = {}
    for ln in lines:
        groups.setdefault((ln.patient_id, ln.month, ln.practitioner_id), []).append(ln)
    notes = [NOTE_837P]
    if any(ln.place_of_service in ("50", "72") for ln in lines):
        notes.append(NOTE_INSTITUTIONAL)
    return {
        "note": " ".join(notes),
        "shape": "caretally 837P-shaped claims v1",
        **meta,
        "claim_count": len(groups),
        "line_count": len(lines),
        "claims": [_claim(group) for group in groups.values()],
    }


def write_claims(
    lines: list[ClaimLine],
    directory: Path,
    org: str,
    month: str,
    formats: tuple[str, ...],
    meta: dict[str, Any],
) -> list[Path]:
    """Write the claim files (``csv``, ``json``, ``837p``) atomically; returns their paths."""
    unknown = set(formats) - set(FORMATS)
    if unknown:
        raise ValueError(f"unknown claim file format(s): {', '.join(sorted(unknown))}")
    stem = claims_stem(org, month)
    written = []
    for fmt in FORMATS:
        if fmt not in formats:
            continue
        path = directory / f"{stem}{SUFFIXES[fmt]}"
        if fmt == "csv":
            data = csv_text(lines).encode()
        elif fmt == "json":
            data = json_bytes(lines, meta)
        else:
            data = orjson.dumps(claims_837p(lines, meta), option=orjson.OPT_INDENT_2) + b"\n"
        write_bytes(path, data)
        written.append(path)
    return written

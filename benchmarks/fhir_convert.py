"""FHIR R4 in: how many resources a second ``streams.fhir`` maps, and where the time goes.

    python benchmarks/fhir_convert.py [--patients 500] [--repeat 3] [--out FILE.json]

A batch Bundle of ``--patients`` copies of the test fixture's patient
(``tests/fixtures/fhir/bundle.json``: Patient, Practitioner, Device, 3 Conditions, 2
Consents, a CarePlan, 2 EpisodesOfCare, 4 Encounters, a Procedure, a Task, an
Observation), each copy with its own ids, is converted with
:func:`streams.fhir.convert.convert_document` ``--repeat`` times (best time kept), and
the same resources as NDJSON (literal ``Patient/<id>`` references, as a Bulk Data
export has them) with :func:`~streams.fhir.convert.convert_ndjson`. Also
timed alone: validating every resource with its fhir.resources R4B model, the share of
the conversion the library takes. The machine is shared: compare the figures of one run
with each other.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fhir.resources.R4B import get_fhir_model_class

from streams.fhir.convert import convert_document, convert_ndjson

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "fhir" / "bundle.json"


def bundle(patients: int) -> dict[str, Any]:
    """``patients`` copies of the fixture's entries, every id and urn made unique."""
    base = orjson.loads(FIXTURE.read_bytes())
    text = orjson.dumps(base["entry"]).decode()
    ids = {e["resource"].get("id") for e in base["entry"]} - {None}
    urns = {e["fullUrl"] for e in base["entry"] if e.get("fullUrl", "").startswith("urn:uuid:")}
    entries: list[Any] = []
    for n in range(patients):
        copy_text = text
        for rid in sorted(ids, key=len, reverse=True):
            copy_text = copy_text.replace(f'"{rid}"', f'"{rid}-{n}"')
            copy_text = copy_text.replace(f'/{rid}"', f'/{rid}-{n}"')
        copy_text = copy_text.replace('"P-000123"', f'"P-{n:06d}"')  # the patient's identifier
        for urn in sorted(urns, key=len, reverse=True):
            copy_text = copy_text.replace(urn, f"{urn[:-6]}{n:06d}")
        entries.extend(json.loads(copy_text))
    doc = copy.deepcopy(base)
    doc["type"] = "batch"
    doc["entry"] = entries
    return doc


def ndjson(doc: dict[str, Any]) -> list[bytes]:
    """The Bundle's resources as a Bulk Data export has them: one per line, the patient by
    literal reference (``Patient/<id>``) instead of the Bundle's ``urn:uuid:``."""
    lines, urn_to_ref = [], {}
    for entry in doc["entry"]:
        resource = entry["resource"]
        if resource["resourceType"] == "Patient":
            resource = {**resource, "id": resource["identifier"][0]["value"]}
            urn_to_ref[entry["fullUrl"]] = f"Patient/{resource['id']}"
        text = orjson.dumps(resource).decode()
        for urn, ref in urn_to_ref.items():
            text = text.replace(urn, ref)
        lines.append(text.encode())
    return lines


def best(fn: Any, repeat: int) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - started)
    return min(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--patients", type=int, default=500)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    doc = bundle(args.patients)
    raw = orjson.dumps(doc)
    resources = [e["resource"] for e in doc["entry"]]
    lines = ndjson(doc)

    bundle_s, conversion = best(lambda: convert_document(raw, "practice-17"), args.repeat)
    assert not conversion.problems, conversion.problems[:3]
    ndjson_s, by_line = best(lambda: convert_ndjson(lines, "practice-17"), args.repeat)
    assert not by_line.problems, by_line.problems[:3]

    def validate_all() -> int:
        for r in resources:
            get_fhir_model_class(r["resourceType"]).model_validate(r)
        return len(resources)

    validate_s, _ = best(validate_all, args.repeat)
    result = {
        "benchmark": "fhir_convert",
        "python": platform.python_version(),
        "patients": args.patients,
        "resources": len(resources),
        "bundle_bytes": len(raw),
        "events": len(conversion.events),
        "bundle_s": round(bundle_s, 3),
        "bundle_resources_per_s": round(len(resources) / bundle_s),
        "ndjson_s": round(ndjson_s, 3),
        "ndjson_resources_per_s": round(len(resources) / ndjson_s),
        "ndjson_events": len(by_line.events),
        "r4b_validation_s": round(validate_s, 3),
        "r4b_validation_share": round(validate_s / bundle_s, 2),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()

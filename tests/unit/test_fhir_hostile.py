"""Hostile FHIR input (docs/fhir.md "Problems and OperationOutcome"): whatever one entry
holds, it is that entry's problem, never a crash of the conversion; and a reason never
repeats what may be PHI."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from streams.fhir import mapping
from streams.fhir.convert import (
    Conversion,
    FhirInputError,
    convert_document,
    convert_input,
    convert_ndjson,
)
from streams.ingest.fhir_input import fhir_records

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "fhir"
ORG = "practice-17"


def _bundle(*resources: dict[str, Any], **entry: Any) -> bytes:
    entries = [{**entry, "resource": r} for r in resources]
    return _dumps({"resourceType": "Bundle", "type": "batch", "entry": entries})


def _dumps(value: Any) -> bytes:
    return json.dumps(value).encode()  # orjson writes at most 255 levels


def _nest(levels: int) -> dict[str, Any]:
    """Extensions in extensions: ~140 levels exhausted Python's stack in the validation."""
    ext: dict[str, Any] = {"url": "urn:x", "valueString": "y"}
    for _ in range(levels):
        ext = {"url": "urn:x", "extension": [ext]}
    return ext


def _encounter(**fields: Any) -> dict[str, Any]:
    bundle = orjson.loads((FIXTURES / "bundle.json").read_bytes())
    call = next(e["resource"] for e in bundle["entry"] if e["resource"].get("id") == "enc-call-1")
    call.pop("episodeOfCare")  # what it gave, on the Encounter itself
    call["subject"] = {"reference": "Patient/P-1"}
    call["serviceType"] = {"coding": [{"system": "urn:caretally:program", "code": "ccm"}]}
    call["extension"] = [{"url": "urn:caretally:extension:billing-practitioner",
                          "valueReference": {"reference": "Practitioner/DR-1"}}]  # fmt: skip
    return {**call, **fields}


def _only_problem(conversion: Conversion) -> str:
    (problem,) = conversion.problems
    assert conversion.events == []
    return problem.reason


def test_deep_nesting_is_a_problem_of_its_entry_in_every_input() -> None:
    deep = {"resourceType": "Patient", "id": "p", "extension": [_nest(200)]}
    too_deep = "nested deeper than 64 levels"
    assert too_deep in _only_problem(convert_document(_bundle(deep), ORG))
    assert too_deep in _only_problem(convert_document(_dumps(deep), ORG))
    assert too_deep in _only_problem(convert_ndjson([_dumps(deep)], ORG))
    shell = _bundle({"resourceType": "Patient", "id": "p"}, extension=[_nest(200)])
    assert too_deep in _only_problem(convert_document(shell, ORG))
    bundle = orjson.loads(_bundle())
    bundle["meta"] = {"extension": [_nest(200)]}
    with pytest.raises(FhirInputError, match="Bundle: nested deeper"):
        convert_document(_dumps(bundle), ORG)


def test_out_of_range_times_and_lengths_are_problems() -> None:
    start = {"start": "2025-03-03T10:00:00-05:00"}
    huge = _encounter(period=start, length={"value": 1e30, "code": "min"})
    reason = _only_problem(convert_document(_bundle(huge), ORG))
    assert "Encounter.length: more than 0 and at most 1440 minutes" in reason
    assert convert_document(_bundle(_encounter()), ORG).problems == []  # the rest is fine
    late = _encounter(
        period={"start": "9999-12-31T23:59:00-14:00"}, length={"value": 10, "code": "min"}
    )
    assert "Encounter.period.start: out of range" in _only_problem(
        convert_document(_bundle(late), ORG)
    )


def test_a_wrong_type_where_an_identifier_goes_is_a_problem() -> None:
    odd = {"resourceType": "Encounter", "identifier": 5}
    assert "Encounter.identifier" in _only_problem(convert_document(orjson.dumps(odd), ORG))
    assert "Encounter.identifier" in _only_problem(convert_ndjson([orjson.dumps(odd)], ORG))


def test_any_failure_while_mapping_one_entry_is_that_entrys_problem(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(resource: dict[str, Any], ctx: mapping.Context) -> mapping.Mapped:
        raise ZeroDivisionError("P-1 divided")

    monkeypatch.setitem(mapping.MAPPERS, "Encounter", broken)
    stay = {**_encounter(), "id": "other", "resourceType": "Procedure"}
    conversion = convert_document(_bundle(_encounter(), stay), ORG)
    assert conversion.problems[0].reason == "could not be read: ZeroDivisionError"
    assert conversion.problems[0].code == "exception"


def test_reasons_name_element_names_and_resource_types_only() -> None:
    odd = _encounter(MRN12345="x", subject={"reference": "Doe/John-Smith-1950"})
    reason = _only_problem(convert_document(_bundle(odd), ORG))
    assert "Encounter.<unknown field>: not an element" in reason and "MRN" not in reason
    del odd["MRN12345"]
    reason = _only_problem(convert_document(_bundle(odd), ORG))
    assert reason == "subject: must refer to a Patient, not another resource"
    odd["subject"] = {"reference": "Group/g1"}
    assert _only_problem(convert_document(_bundle(odd), ORG)).endswith("not a Group")


def test_ingest_and_convert_read_input_alike() -> None:
    """One function tells a document from NDJSON, and a JSON array is refused by both."""
    array = b'[{"resourceType": "Patient", "id": "p"}]'
    for read in (
        lambda: convert_input(array, ORG),
        lambda: list(fhir_records(io.BytesIO(array), ORG)),
    ):
        with pytest.raises(FhirInputError, match="a JSON array is not FHIR input"):
            read()
    lines = b'{"resourceType": "Patient", "id": "p"}\n{"resourceType": "Basic"}\n'
    (letter,) = fhir_records(io.BytesIO(lines), ORG)
    assert (letter.line, letter.value, letter.letter_only) == (
        2,
        b'{"resourceType": "Basic"}',
        True,
    )

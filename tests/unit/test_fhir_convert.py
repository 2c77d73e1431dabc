"""FHIR R4 in (docs/fhir.md): the fixture Bundle maps to the events a person would write by
hand, bills the same, re-sends change nothing, a new version amends, bad entries are named."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import orjson
import pytest
from fhir.resources.R4B.operationoutcome import OperationOutcome

from projections.engine import billing
from schemas.events import parse_event
from streams.fhir.convert import (
    Conversion,
    FhirInputError,
    convert_document,
    convert_ndjson,
    operation_outcome,
)
from streams.files.logfile import FoldStats, fold_lines

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "fhir"
ORG = "practice-17"
PATIENT = "P-000123"  # the Patient entry's identifier: it has no id (a conditional create)


def _bundle() -> dict[str, Any]:
    return orjson.loads((FIXTURES / "bundle.json").read_bytes())


def _convert(bundle: dict[str, Any]) -> Conversion:
    return convert_document(orjson.dumps(bundle), ORG, source="fhir")


def _fold(raws: list[bytes]) -> tuple[list[dict[str, Any]], FoldStats]:
    """Fold a log as `caretally replay --input` does; the billing views and the counts."""
    ledger, stats = fold_lines(enumerate(raws, 1))
    return [b.view() for b in billing(ledger)], stats


def _resource(bundle: dict[str, Any], rid: str) -> dict[str, Any]:
    return next(e["resource"] for e in bundle["entry"] if e["resource"].get("id") == rid)


def _hand_written() -> list[dict[str, Any]]:
    """The fixture's meaning written in the wire format by hand (other ids, other source)."""
    n = 0

    def ev(type_: str, recorded_at: str, data: dict[str, Any]) -> dict[str, Any]:
        nonlocal n
        n += 1
        return {
            "event_id": f"hand-{n}",
            "type": type_,
            "schema_version": 1,
            "org_id": ORG,
            "patient_id": PATIENT,
            "recorded_at": recorded_at,
            "source": "by-hand",
            "data": data,
        }

    def activity(aid: str, staff: str, role: str, start: str, end: str, **kw: Any) -> dict:
        return {"activity_id": aid, "staff_id": staff, "staff_role": role,
                "practitioner_id": "DR-1", "program": "ccm", "activity": "x",
                "started_at": start, "ended_at": end, **kw}  # fmt: skip

    return [
        ev("conditions.recorded", "2025-01-05T15:05:00Z", {"chronic": ["E11.9", "I10"]}),
        ev("consent.recorded", "2025-01-06T14:00:00Z",
           {"program": "ccm", "practitioner_id": "DR-1", "method": "written", "on": "2025-01-06"}),
        ev("consent.recorded", "2025-01-06T14:10:00Z",
           {"program": "rpm", "practitioner_id": "DR-1", "method": "verbal", "on": "2025-01-06"}),
        ev("care_plan.recorded", "2025-01-06T15:00:00Z",
           {"program": "ccm", "on": "2025-01-06", "complexity": "moderate"}),
        ev("enrollment.recorded", "2025-01-06T15:30:00Z",
           {"program": "ccm", "practitioner_id": "DR-1", "on": "2025-01-06"}),
        ev("enrollment.recorded", "2025-01-06T15:35:00Z",
           {"program": "rpm", "practitioner_id": "DR-1", "on": "2025-01-06"}),
        ev("activity.logged", "2025-03-03T15:30:00Z",
           activity("call-1", "RN-1", "clinical_staff", "2025-03-03T15:00:00Z",
                    "2025-03-03T15:25:00Z", interactive=True)),
        ev("activity.logged", "2025-03-10T14:20:00Z",
           activity("proc-1", "RN-2", "clinical_staff", "2025-03-10T14:00:00Z",
                    "2025-03-10T14:12:00Z")),
        ev("activity.logged", "2025-03-12T16:00:00Z",
           activity("task-1", "DR-1", "physician", "2025-03-12T15:00:00Z",
                    "2025-03-12T15:15:00Z")),
        ev("activity.voided", "2025-03-04T09:00:00Z", {"activity_id": "call-0", "reason": "x"}),
        ev("stay.recorded", "2025-03-22T18:00:00Z",
           {"setting": "inpatient", "admitted_on": "2025-03-20", "discharged_on": "2025-03-22"}),
        ev("device.reading", "2025-03-05T13:00:05Z",
           {"device_id": "cuff-7", "program": "rpm", "taken_at": "2025-03-05T13:00:00Z"}),
    ]  # fmt: skip


def test_the_bundle_maps_every_resource_to_its_event() -> None:
    conversion = _convert(_bundle())
    assert conversion.problems == []
    assert (conversion.entries, conversion.bundle_type) == (17, "transaction")
    events = [orjson.loads(e) for e in conversion.events]
    assert [e["type"] for e in events] == [
        "conditions.recorded",
        "consent.recorded",
        "consent.recorded",
        "care_plan.recorded",
        "enrollment.recorded",
        "enrollment.recorded",
        "activity.logged",  # Encounter VR
        "activity.logged",  # Procedure 99490
        "activity.logged",  # Task
        "activity.voided",  # Encounter entered-in-error
        "stay.recorded",  # Encounter IMP
        "device.reading",  # Observation with a device
    ]
    assert {e["patient_id"] for e in events} == {PATIENT}  # urn:uuid -> the Patient entry
    assert {(e["org_id"], e["source"]) for e in events} == {(ORG, "fhir")}
    # Patient, Practitioner, Device: references only; the three Conditions share one event
    assert conversion.entry_events[:6] == [[], [], [], [0], [0], [0]]
    assert conversion.entry_events[6:] == [[i] for i in range(1, 12)]
    conditions, consent, _, plan, enrollment, _, call, proc, task, void, stay, reading = events
    assert conditions["data"] == {"chronic": ["E11.9", "I10"]}  # the resolved one left out
    # the version, and the versions of the entries it was read with (the urn:uuid Patient)
    assert consent["event_id"].startswith("fhir:Consent/consent-ccm/_history/1/_context/")
    assert consent["data"] == {
        "program": "ccm",
        "practitioner_id": "DR-1",
        "method": "written",
        "on": "2025-01-06",
    }
    assert plan["data"] == {"program": "ccm", "on": "2025-01-06", "complexity": "moderate"}
    assert enrollment["data"] == {"program": "ccm", "practitioner_id": "DR-1", "on": "2025-01-06"}
    assert call["recorded_at"] == "2025-03-03T15:30:00+00:00"  # meta.lastUpdated
    assert call["data"] == {
        "activity_id": "fhir.Encounter.enc-call-1",
        "staff_id": "RN-1",
        "staff_role": "clinical_staff",
        "practitioner_id": "DR-1",  # from its EpisodeOfCare's careManager
        "program": "ccm",  # from its EpisodeOfCare's type
        "activity": "care coordination call",
        "started_at": "2025-03-03T10:00:00-05:00",
        "ended_at": "2025-03-03T10:25:00-05:00",
        "interactive": True,
    }
    assert (proc["data"]["program"], proc["data"]["practitioner_id"]) == ("ccm", "DR-1")  # CPT
    assert task["data"]["staff_role"] == "physician"
    assert task["event_id"].startswith("fhir:Task/task-review-1/_history/3/_context/")
    assert void["data"]["activity_id"] == "fhir.Encounter.enc-call-0"
    assert stay["data"] == {
        "setting": "inpatient",
        "admitted_on": "2025-03-20",
        "discharged_on": "2025-03-22",
    }
    assert reading["data"] == {
        "device_id": "cuff-7",
        "program": "rpm",
        "taken_at": "2025-03-05T08:00:00-05:00",
    }
    for raw in conversion.events:
        parse_event(raw)


def test_converted_events_bill_as_the_same_events_written_by_hand() -> None:
    converted, stats = _fold(_convert(_bundle()).events)
    by_hand, _ = _fold([orjson.dumps(e) for e in _hand_written()])
    assert stats.bad == 0
    assert converted == by_hand
    march = next(v for v in converted if v["month"] == "2025-03")
    assert march["billable"]  # the comparison is about something billed


def test_converting_and_folding_twice_changes_nothing() -> None:
    first, second = _convert(_bundle()), _convert(_bundle())
    assert first.events == second.events  # byte-identical
    once, _ = _fold(first.events)
    twice, stats = _fold(first.events + second.events)
    assert (stats.applied, stats.duplicates, stats.bad) == (12, 12, 0)
    assert twice == once


def test_a_new_version_of_an_encounter_amends_its_activity() -> None:
    bundle = _bundle()
    before = _convert(bundle)
    encounter = _resource(bundle, "enc-call-1")
    encounter["meta"] = {"versionId": "2", "lastUpdated": "2025-03-04T10:00:00Z"}
    encounter["period"]["end"] = "2025-03-03T10:40:00-05:00"  # 25 -> 40 minutes
    after = _convert({"resourceType": "Bundle", "type": "batch", "entry": [
        {"fullUrl": e.get("fullUrl"), "resource": e["resource"]} if e.get("fullUrl")
        else {"resource": e["resource"]} for e in bundle["entry"]
    ]})  # fmt: skip
    amended = [orjson.loads(e) for e in after.events if b"enc-call-1" in e]
    assert amended[0]["event_id"].startswith("fhir:Encounter/enc-call-1/_history/2/")
    assert amended[0]["data"]["activity_id"] == "fhir.Encounter.enc-call-1"  # stable
    views_before, _ = _fold(before.events)
    views_after, stats = _fold(before.events + after.events)
    assert (stats.applied, stats.bad) == (13, 0)  # only the new version is new
    minutes = {v["month"]: v["minutes"] for v in views_before}
    minutes_after = {v["month"]: v["minutes"] for v in views_after}
    assert minutes["2025-03"]["ccm"] + 15 == minutes_after["2025-03"]["ccm"]


def test_without_a_version_id_the_content_names_the_version() -> None:
    bundle = _bundle()
    for entry in bundle["entry"]:
        entry["resource"].pop("meta", None)
        if entry["resource"]["resourceType"] == "Condition":
            entry["resource"]["recordedDate"] = "2025-01-05"  # the fallback of recorded_at
    _resource(bundle, "enc-call-0")["period"] = {"end": "2025-03-02T09:20:00Z"}
    once, again = _convert(bundle), _convert(copy.deepcopy(bundle))
    assert once.problems == [] and once.events == again.events
    call = next(orjson.loads(e) for e in once.events if b"enc-call-1" in e)
    assert call["event_id"].startswith("fhir:Encounter/enc-call-1/_content/")
    assert call["recorded_at"] == "2025-03-03T10:25:00-05:00"  # fallback: period.end
    _resource(bundle, "enc-call-1")["period"]["end"] = "2025-03-03T10:30:00-05:00"
    changed = next(orjson.loads(e) for e in _convert(bundle).events if b"enc-call-1" in e)
    assert changed["event_id"] != call["event_id"]
    assert changed["data"]["activity_id"] == call["data"]["activity_id"]


CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
STAFF_ROLE = "urn:caretally:staff-role"
BAD_ENTRIES: list[tuple[dict[str, Any], str, str]] = [
    (  # not mapped at all
        {"resource": {"resourceType": "MedicationRequest", "id": "m1"}},
        "not-supported",
        "resource type 'MedicationRequest' is not mapped",
    ),
    (  # invalid R4: the field is named
        {"resource": {"resourceType": "Encounter", "id": "e9", "status": "finished",
                      "class": {"code": "VR"}, "period": {"start": "yesterday"}}},
        "invalid",
        "Encounter.period.start:",
    ),
    (  # an activity without an end
        {"resource": {"resourceType": "Procedure", "id": "p9", "status": "completed",
                      "subject": {"reference": "Patient/P-9"},
                      "code": {"coding": [{"system": "http://www.ama-assn.org/go/cpt",
                                           "code": "99490"}]},
                      "performedDateTime": "2025-03-03T10:00:00Z"}},
        "required",
        "Procedure.performedPeriod: missing",
    ),
    (  # no billing practitioner
        {"resource": {"resourceType": "Procedure", "id": "p8", "status": "completed",
                      "subject": {"reference": "Patient/P-9"},
                      "code": {"coding": [{"system": "http://www.ama-assn.org/go/cpt",
                                           "code": "99490"}]},
                      "performer": [{"actor": {"reference": "Practitioner/RN-1"},
                                     "function": {"coding": [{"system": STAFF_ROLE,
                                                              "code": "clinical_staff"}]}}],
                      "performedPeriod": {"start": "2025-03-03T10:00:00Z",
                                          "end": "2025-03-03T10:20:00Z"}}},
        "required",
        "billing practitioner: not known",
    ),
    (  # not ICD-10-CM
        {"resource": {"resourceType": "Condition", "id": "c9",
                      "clinicalStatus": {"coding": [{"system": CLINICAL, "code": "active"}]},
                      "code": {"coding": [{"system": "http://snomed.info/sct",
                                           "code": "44054006"}]},
                      "subject": {"reference": "Patient/P-9"}, "recordedDate": "2025-01-02"}},
        "required",
        "no ICD-10-CM coding",
    ),
    (  # a urn:uuid patient that is not in the Bundle
        {"resource": {"resourceType": "EpisodeOfCare", "id": "eoc9", "status": "active",
                      "type": [{"coding": [{"system": "urn:caretally:program", "code": "ccm"}]}],
                      "patient": {"reference": "urn:uuid:00000000-0000-0000-0000-000000000000"},
                      "careManager": {"reference": "Practitioner/DR-1"},
                      "period": {"start": "2025-01-01"}}},
        "required",
        "EpisodeOfCare.patient: a uuid reference with no entry",
    ),
    (  # an id the wire contract refuses (':' separates key parts)
        {"resource": {"resourceType": "CarePlan", "id": "cp9", "status": "active",
                      "intent": "plan", "created": "2025-01-02",
                      "category": [{"coding": [{"system": "urn:caretally:program",
                                                "code": "ccm"}]}],
                      "subject": {"identifier": {"value": "MRN:9"}}}},
        "invalid",
        "patient_id: must be printable text without ':'",
    ),
]  # fmt: skip


def test_bad_entries_are_problems_named_in_an_operation_outcome() -> None:
    bundle = _bundle()
    good = len(bundle["entry"])
    bundle["entry"] += [entry for entry, _, _ in BAD_ENTRIES]
    conversion = _convert(bundle)
    assert len(conversion.events) == 12  # the good entries still convert
    assert [p.entry for p in conversion.problems] == list(range(good, good + len(BAD_ENTRIES)))
    for problem, (_, code, reason) in zip(conversion.problems, BAD_ENTRIES, strict=True):
        assert problem.code == code and reason in problem.reason, problem
    assert conversion.entry_events[good:] == [[]] * len(BAD_ENTRIES)
    outcome = operation_outcome(conversion.problems)
    OperationOutcome.model_validate(outcome)  # a valid FHIR resource
    issues = outcome["issue"]
    assert issues[0]["expression"] == [f"Bundle.entry[{good}]"]
    assert issues[1] == {
        "severity": "error",
        "code": "invalid",
        "diagnostics": conversion.problems[1].resource + ": " + conversion.problems[1].reason,
        "expression": [f"Bundle.entry[{good + 1}]"],
    }
    assert "P-9" not in orjson.dumps(outcome).decode()  # reasons never repeat a patient id


def test_ndjson_resolves_literal_references_and_numbers_lines() -> None:
    entries = [e["resource"] for e in _bundle()["entry"]]
    for resource in entries:  # a Bulk export: references are literal
        for key in ("subject", "patient", "for"):
            if key in resource:
                resource[key] = {"reference": f"Patient/{PATIENT}"}
    lines = [orjson.dumps(r) for r in entries[1:]] + [b"", b"{not json"]
    conversion = convert_ndjson(lines, ORG)
    assert conversion.bundle_type is None and conversion.entries == len(lines)
    assert len(conversion.events) == 12
    assert [(p.entry, p.where, p.code) for p in conversion.problems] == [
        (len(lines), f"line {len(lines)}", "structure")
    ]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"<Bundle/>", "not JSON"),
        (b"[1, 2]", "a JSON array is not FHIR input"),
        (b"5", "a JSON object"),
        (b'{"resourceType": "Bundle", "type": "searchset"}', "Bundle.type 'searchset'"),
    ],
)
def test_an_unreadable_document_is_refused_whole(raw: bytes, message: str) -> None:
    with pytest.raises(FhirInputError, match=message):
        convert_document(raw, ORG)

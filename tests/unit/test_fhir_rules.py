"""The FHIR mapping's rules of identity and meaning (docs/fhir.md "Identity", "Mapping"):
a changed context is a new event, never a conflict; ids are stable and never an SSN; an
opt-out revokes, on the day it happened; time needs an explicit role and says
interactive only when told; a patient's list is sent whole or not at all."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import orjson

from streams.fhir.convert import Conversion, convert_document, convert_ndjson
from streams.files.logfile import fold_lines

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "fhir"
ORG = "practice-17"
CONTACT = "urn:caretally:contact"


def _bundle() -> dict[str, Any]:
    return orjson.loads((FIXTURES / "bundle.json").read_bytes())


def _convert(bundle: dict[str, Any]) -> Conversion:
    return convert_document(orjson.dumps(bundle), ORG)


def _resource(bundle: dict[str, Any], rid: str) -> dict[str, Any]:
    return next(e["resource"] for e in bundle["entry"] if e["resource"].get("id") == rid)


def _event(conversion: Conversion, rid: str) -> dict[str, Any]:
    (found,) = [orjson.loads(e) for e in conversion.events if f"/{rid}/".encode() in e]
    return found


def _reasons(conversion: Conversion) -> dict[int, str]:
    return {p.entry: p.reason for p in conversion.problems}


def _no_conflict(before: Conversion, after: Conversion) -> None:
    """The ledger's rule: one event id, one body."""
    bodies = {orjson.loads(e)["event_id"]: e for e in before.events}
    for raw in after.events:
        assert bodies.get(orjson.loads(raw)["event_id"], raw) == raw
    _, stats = fold_lines(enumerate(before.events + after.events, 1))
    assert stats.bad == 0


def test_a_changed_context_is_a_new_event_of_the_same_activity_not_a_conflict() -> None:
    bundle = _bundle()
    before = _convert(bundle)
    episode = _resource(bundle, "eoc-ccm")  # the Encounter's practitioner comes from it
    episode["meta"]["versionId"] = "2"
    episode["careManager"] = {"reference": "Practitioner/DR-2"}
    after = _convert(bundle)
    _no_conflict(before, after)
    old, new = _event(before, "enc-call-1"), _event(after, "enc-call-1")
    assert (old["data"]["practitioner_id"], new["data"]["practitioner_id"]) == ("DR-1", "DR-2")
    assert new["event_id"] != old["event_id"]
    assert new["data"]["activity_id"] == old["data"]["activity_id"]  # an amendment
    # the urn:uuid Patient now sent with its server id: every event is new, none conflicts
    _resource_patient = bundle["entry"][0]["resource"]
    _resource_patient["id"] = "srv-42"
    renamed = _convert(bundle)
    assert {orjson.loads(e)["patient_id"] for e in renamed.events} == {"srv-42"}
    _no_conflict(after, renamed)


def test_the_patient_id_is_the_mr_and_never_an_ssn_or_mbi() -> None:
    bundle = _bundle()
    patient = bundle["entry"][0]["resource"]
    mr = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]}
    patient["identifier"] = [
        {"system": "http://hl7.org/fhir/sid/us-ssn", "value": "123-45-6789"},
        {"system": "urn:oid:1.2.3", "value": "ACCT-9"},
        {"system": "urn:oid:2.16.840.1.113883.3.7418", "type": mr, "value": "P-000123"},
    ]
    assert {orjson.loads(e)["patient_id"] for e in _convert(bundle).events} == {"P-000123"}
    patient["identifier"] = [{"system": "http://hl7.org/fhir/sid/us-mbi", "value": "1EG4TE5MK73"}]
    refused = _convert(bundle)
    assert refused.events == []
    assert "no id and no identifier that may name it" in refused.problems[0].reason
    assert "1EG4TE5MK73" not in str(refused.problems)
    # a logical reference by SSN is refused too
    encounter = _resource(bundle, "enc-stay-1")
    encounter["subject"] = {"identifier": {"system": "http://hl7.org/fhir/sid/us-ssn",
                                           "value": "123-45-6789"}}  # fmt: skip
    assert "an SSN or MBI is never an id" in _reasons(_convert(bundle))[15]


def test_a_resource_without_id_or_identifier_is_a_problem_not_a_placeholder_key() -> None:
    """A urn:uuid fullUrl changes on every send: as a key it would make each re-send a new
    activity, and a void would never reach the original."""
    bundle = _bundle()
    stay = bundle["entry"][15]
    stay["resource"].pop("id")
    stay["fullUrl"] = "urn:uuid:0b9a2d1e-8f3c-4d5e-9a6b-7c8d9e0f1a2b"
    conversion = _convert(bundle)
    assert "needs an id or an identifier" in _reasons(conversion)[15]
    assert not any(b"0b9a2d1e" in e for e in conversion.events)


def test_the_same_resource_or_fullurl_twice_in_a_bundle_is_a_problem_bdl_7() -> None:
    bundle = _bundle()
    other = copy.deepcopy(bundle["entry"][0])  # the same fullUrl, another patient
    other["resource"]["identifier"][0]["value"] = "OTHER-PATIENT"
    bundle["entry"].insert(1, other)
    again = copy.deepcopy(_resource(bundle, "proc-ccm-1"))  # the same Procedure/id
    again["performedPeriod"]["end"] = "2025-03-10T14:30:00Z"
    bundle["entry"].append({"resource": again})
    conversion = _convert(bundle)
    reasons = _reasons(conversion)
    assert sorted(reasons) == [1, len(bundle["entry"]) - 1]
    assert all("bdl-7" in r for r in reasons.values())
    assert {orjson.loads(e)["patient_id"] for e in conversion.events} == {"P-000123"}
    assert _event(conversion, "proc-ccm-1")["data"]["ended_at"] == "2025-03-10T14:12:00+00:00"


def test_an_opt_out_revokes_and_a_revocation_is_dated_when_it_ended() -> None:
    bundle = _bundle()
    consent = _resource(bundle, "consent-ccm")  # dateTime 2025-01-06: when it was given
    consent["provision"]["type"] = "deny"
    consent["provision"]["period"] = {"start": "2025-02-03"}
    opt_out = _event(_convert(bundle), "consent-ccm")
    assert (opt_out["type"], opt_out["data"]["on"]) == ("consent.revoked", "2025-02-03")

    consent["provision"]["type"] = "permit"
    consent["provision"].pop("period")
    consent["status"] = "inactive"
    consent["meta"] = {"versionId": "2", "lastUpdated": "2025-06-10T10:00:00-04:00"}
    withdrawn = _event(_convert(bundle), "consent-ccm")
    assert (withdrawn["type"], withdrawn["data"]["on"]) == ("consent.revoked", "2025-06-10")
    consent["provision"]["period"] = {"start": "2025-01-06", "end": "2025-05-31"}
    assert _event(_convert(bundle), "consent-ccm")["data"]["on"] == "2025-05-31"
    consent["provision"].pop("period")
    consent.pop("meta")
    assert "Consent.provision.period.end" in _reasons(_convert(bundle))[6]


def test_time_needs_a_staff_role_and_is_interactive_only_when_coded() -> None:
    bundle = _bundle()
    call = _resource(bundle, "enc-call-1")
    call["type"] = [{"text": "portal message"}]  # VR, but no interactive coding
    assert "interactive" not in _event(_convert(bundle), "enc-call-1")["data"]
    call["type"][0]["coding"] = [{"system": CONTACT, "code": "interactive"}]
    assert _event(_convert(bundle), "enc-call-1")["data"]["interactive"] is True
    call["participant"][0].pop("type")
    reason = _reasons(_convert(bundle))[11]
    assert reason.startswith("staff role: not known; add a coding of urn:caretally:staff-role")
    assert reason.endswith("to Encounter.participant[0].type")


def test_an_encounter_length_is_the_time_spent_even_with_a_period_end() -> None:
    bundle = _bundle()
    call = _resource(bundle, "enc-call-1")
    call["period"] = {"start": "2025-03-03T10:00:00-05:00", "end": "2025-03-03T11:00:00-05:00"}
    call["length"] = {"value": 10, "unit": "min", "code": "min"}
    data = _event(_convert(bundle), "enc-call-1")["data"]
    assert (data["started_at"], data["minutes"]) == ("2025-03-03T10:00:00-05:00", 10)
    assert "ended_at" not in data  # the contract refuses minutes that disagree with it


def test_a_condition_that_is_a_problem_withholds_its_patients_list() -> None:
    """The list replaces the previous one: leaving a bad Condition out would shrink it."""
    bundle = _bundle()
    snomed_only = copy.deepcopy(_resource(bundle, "cond-htn"))
    snomed_only["id"] = "cond-snomed"
    snomed_only["code"]["coding"] = snomed_only["code"]["coding"][:1]
    other = copy.deepcopy(_resource(bundle, "cond-dm"))  # another patient's list stands
    other.update(id="cond-other", subject={"reference": "Patient/P-2"})
    bundle["entry"] += [{"resource": snomed_only}, {"resource": other}]
    conversion = _convert(bundle)
    reasons = _reasons(conversion)
    assert sorted(reasons) == [3, 4, 5, 17]  # the patient's four Conditions
    assert "no ICD-10-CM coding" in reasons[17] and "withheld" in reasons[17]
    assert all(
        reasons[i].startswith("withheld: the Condition at Bundle.entry[17]") for i in (3, 4, 5)
    )
    lists = [orjson.loads(e) for e in conversion.events if b"conditions.recorded" in e]
    assert [(e["patient_id"], e["data"]["chronic"]) for e in lists] == [("P-2", ["E11.9"])]


def test_a_condition_version_sent_twice_with_different_content_is_a_problem() -> None:
    conditions = [
        e["resource"] for e in _bundle()["entry"] if e["resource"]["resourceType"] == "Condition"
    ]
    for c in conditions:
        c["subject"] = {"reference": "Patient/P-1"}
    changed = copy.deepcopy(conditions[0])
    changed["code"]["coding"][0]["code"] = "E10.9"
    lines = [orjson.dumps(c) for c in [*conditions, conditions[0], changed]]
    conversion = convert_ndjson(lines, ORG)
    reasons = _reasons(conversion)
    assert "same resource version" in reasons[5]
    assert not any(b"conditions.recorded" in e for e in conversion.events)  # withheld
    # an identical line again changes nothing
    same = convert_ndjson(lines[:4], ORG)
    assert same.problems == [] and same.entry_events[3] == same.entry_events[0] == [0]


def test_a_date_alone_is_recorded_at_its_noon_utc() -> None:
    """Midnight UTC is the day before in every US zone."""
    bundle = _bundle()
    plan = _resource(bundle, "plan-ccm")
    plan.pop("meta")  # recorded_at falls back to created: 2025-01-06
    assert _event(_convert(bundle), "plan-ccm")["recorded_at"] == "2025-01-06T12:00:00+00:00"

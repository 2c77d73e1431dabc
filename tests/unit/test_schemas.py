"""The wire contract v1 (docs/design.md "Wire contract v1"): what parses, what is rejected and
with which reason, and the ``caretally schema`` command that hands it to EHR vendors."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from schemas import EVENT_TYPES, EventRejected, parse_event
from streams.cli.main import cli

ENVELOPE: dict[str, Any] = {
    "event_id": "ehr-main:000001",
    "schema_version": 1,
    "org_id": "practice-17",
    "patient_id": "P-000123",
    "recorded_at": "2025-03-14T20:02:11Z",
    "source": "ehr-main",
}
CONSENT = {"program": "ccm", "practitioner_id": "DR-1", "method": "verbal", "on": "2025-03-01"}
ACTIVITY = {
    "activity_id": "act-1",
    "staff_id": "RN-1",
    "staff_role": "clinical_staff",
    "practitioner_id": "DR-1",
    "program": "ccm",
    "activity": "medication_review",
    "started_at": "2025-03-14T10:00:00-04:00",
    "minutes": 20,
}
# One valid `data` per type, as docs/design.md's table lists them (practice events omit patient_id).
VALID_DATA: dict[str, dict[str, Any]] = {
    "practice.configured": {"timezone": "America/Chicago", "facility_type": "fqhc"},
    "activity.logged": ACTIVITY,
    "activity.voided": {"activity_id": "act-1", "reason": "entered in error"},
    "consent.recorded": CONSENT,
    "consent.revoked": {**CONSENT, "method": "written", "on": "2025-06-10"},
    "care_plan.recorded": {"program": "ccm", "on": "2025-03-02", "complexity": "moderate"},
    "conditions.recorded": {"chronic": ["E11.9", "I10", "N18.30"]},
    "enrollment.recorded": {
        "program": "apcm",
        "practitioner_id": "DR-1",
        "on": "2025-03-01",
        "qmb": True,
    },
    "visit.recorded": {"practitioner_id": "DR-1", "on": "2024-11-20", "kind": "awv"},
    "stay.recorded": {
        "setting": "inpatient",
        "admitted_on": "2025-03-05",
        "discharged_on": "2025-03-07",
    },
    "device.reading": {
        "device_id": "BP-77",
        "program": "rpm",
        "taken_at": "2025-03-14T07:31:00-04:00",
    },
    "month.closed": {"month": "2025-03"},
}
PRACTICE_TYPES = {"practice.configured", "month.closed"}


def event(type_: str = "activity.logged", **data: Any) -> dict[str, Any]:
    ev = {**copy.deepcopy(ENVELOPE), "type": type_, "data": copy.deepcopy(VALID_DATA[type_])}
    if type_ in PRACTICE_TYPES:
        del ev["patient_id"]
    ev["data"].update(data)
    return ev


def rejected(ev: dict[str, Any] | bytes) -> str:
    raw = ev if isinstance(ev, bytes) else orjson.dumps(ev)
    with pytest.raises(EventRejected) as info:
        parse_event(raw)
    assert str(info.value) == info.value.reason
    return info.value.reason


# --- valid events ---------------------------------------------------------------------------


def test_twelve_event_types() -> None:
    """DESIGN wire contract: twelve event types."""
    assert sorted(EVENT_TYPES) == sorted(VALID_DATA)
    assert len(EVENT_TYPES) == 12


@pytest.mark.parametrize("type_", sorted(VALID_DATA))
def test_valid_event_of_every_type_parses(type_: str) -> None:
    """DESIGN wire contract: a valid event of each type parses into its model, as bytes or str."""
    ev = event(type_)
    parsed = parse_event(orjson.dumps(ev))
    assert type(parsed) is EVENT_TYPES[type_]
    assert parsed.type == type_
    assert parsed.event_id == ENVELOPE["event_id"]
    assert parsed.patient_id == (None if type_ in PRACTICE_TYPES else "P-000123")
    assert parse_event(json.dumps(ev)) == parsed


def test_defaults_of_optional_fields() -> None:
    """DESIGN wire contract: timezone defaults to America/New_York, facility to office;
    face_to_face and interactive default to false."""
    ev = event("practice.configured")
    ev["data"] = {}
    practice = parse_event(orjson.dumps(ev))
    assert practice.data.timezone == "America/New_York"
    assert practice.data.facility_type == "office"
    assert practice.data.qualifying_apm_participant is False
    assert practice.data.fee_schedule == "non_facility"
    act = parse_event(orjson.dumps(event())).data
    assert (act.face_to_face, act.interactive, act.note_digest, act.ended_at) == (
        False,
        False,
        None,
        None,
    )
    assert act.seconds == 1200


@pytest.mark.parametrize("qp", [False, True])
@pytest.mark.parametrize("fees", ["non_facility", "facility"])
def test_payment_settings_of_a_practice(qp: bool, fees: str) -> None:
    """DESIGN wire contract: practice.configured's optional payment settings (docs/rules.md
    §5) parse as sent, alongside the older fields."""
    ev = event("practice.configured", qualifying_apm_participant=qp, fee_schedule=fees)
    data = parse_event(orjson.dumps(ev)).data
    assert (data.qualifying_apm_participant, data.fee_schedule) == (qp, fees)
    assert (data.timezone, data.facility_type) == ("America/Chicago", "fqhc")


def test_schema_documents_the_payment_settings() -> None:
    """`caretally schema` hands EHR vendors each setting with its values, default and why."""
    result = CliRunner().invoke(cli, ["schema", "--type", "practice.configured"])
    assert result.exit_code == 0, result.output
    props = json.loads(result.stdout)["$defs"]["PracticeConfiguredData"]["properties"]
    qp, fees = props["qualifying_apm_participant"], props["fee_schedule"]
    assert (qp["type"], qp["default"]) == ("boolean", False)
    assert (fees["enum"], fees["default"]) == (["non_facility", "facility"], "non_facility")
    assert "conversion factor" in qp["description"] and "facility" in fees["description"]


def test_ended_at_form_and_dst() -> None:
    """DESIGN wire contract: ``ended_at`` instead of ``minutes``; elapsed time on instants."""
    ev = event(started_at="2025-03-09T01:50:00-05:00", ended_at="2025-03-09T03:10:00-04:00")
    del ev["data"]["minutes"]
    assert parse_event(orjson.dumps(ev)).data.seconds == 1200


def test_event_id_of_128_characters_is_accepted() -> None:
    """DESIGN wire contract: ``event_id`` ≤ 128 characters."""
    ev = event()
    ev["event_id"] = "x" * 128
    assert parse_event(orjson.dumps(ev)).event_id == "x" * 128


def test_activity_of_exactly_24_hours_is_accepted() -> None:
    """DESIGN wire contract: longer than 24 h is rejected, so 24 h itself is allowed."""
    assert parse_event(orjson.dumps(event(minutes=1440))).data.seconds == 86400
    ev = event(ended_at="2025-03-15T10:00:00-04:00")
    del ev["data"]["minutes"]
    assert parse_event(orjson.dumps(ev)).data.seconds == 86400


# --- rejections -------------------------------------------------------------------------------


def _without(path: str) -> Callable[[dict[str, Any]], None]:
    def drop(ev: dict[str, Any]) -> None:
        target = ev
        *parents, last = path.split(".")
        for p in parents:
            target = target[p]
        del target[last]

    return drop


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def put(ev: dict[str, Any]) -> None:
        target = ev
        *parents, last = path.split(".")
        for p in parents:
            target = target[p]
        target[last] = value

    return put


def _activity_ending(ended_at: str) -> Callable[[dict[str, Any]], None]:
    def put(ev: dict[str, Any]) -> None:
        del ev["data"]["minutes"]
        ev["data"]["ended_at"] = ended_at

    return put


REJECTIONS: list[tuple[str, str, Callable[[dict[str, Any]], None], str]] = [
    # (id, type, mutation, exact reason)
    (
        "unknown type",
        "activity.logged",
        _set("type", "activity.deleted"),
        "type: unknown type; expected one of " + ", ".join(sorted(VALID_DATA)),
    ),
    ("missing type", "activity.logged", _without("type"), "type: missing"),
    (
        "schema_version 2",
        "activity.logged",
        _set("schema_version", 2),
        "schema_version: unsupported schema_version; this service speaks version 1",
    ),
    (
        "schema_version as string",
        "activity.logged",
        _set("schema_version", "1"),
        "schema_version: unsupported schema_version; this service speaks version 1",
    ),
    (
        "missing data.staff_id",
        "activity.logged",
        _without("data.staff_id"),
        "data.staff_id: Field required",
    ),
    ("missing org_id", "consent.recorded", _without("org_id"), "org_id: Field required"),
    (
        "minutes as string",
        "activity.logged",
        _set("data.minutes", "20"),
        "data.minutes: Input should be a valid number",
    ),
    (
        "minutes as bool",
        "activity.logged",
        _set("data.minutes", True),
        "data.minutes: Input should be a valid number",
    ),
    (
        "zero minutes",
        "activity.logged",
        _set("data.minutes", 0),
        "data.minutes: Input should be greater than 0",
    ),
    (
        "face_to_face as yes",
        "activity.logged",
        _set("data.face_to_face", "yes"),
        "data.face_to_face: Input should be a valid boolean",
    ),
    (
        "naive started_at",
        "activity.logged",
        _set("data.started_at", "2025-03-14T10:00:00"),
        "data.started_at: Input should have timezone info",
    ),
    (
        "naive recorded_at",
        "activity.logged",
        _set("recorded_at", "2025-03-14T20:02:11"),
        "recorded_at: Input should have timezone info",
    ),
    (
        "naive taken_at",
        "device.reading",
        _set("data.taken_at", "2025-03-14T07:31:00"),
        "data.taken_at: Input should have timezone info",
    ),
    (
        "ended_at before started_at",
        "activity.logged",
        _activity_ending("2025-03-14T09:59:00-04:00"),
        "data.ended_at: must be after started_at",
    ),
    (
        "ended_at equal to started_at",
        "activity.logged",
        _activity_ending("2025-03-14T10:00:00-04:00"),
        "data.ended_at: must be after started_at",
    ),
    (
        "ended_at over 24 h",
        "activity.logged",
        _activity_ending("2025-03-15T10:01:00-04:00"),
        "data.ended_at: an activity may last at most 24 h after started_at",
    ),
    (
        "minutes 1441",
        "activity.logged",
        _set("data.minutes", 1441),
        "data.minutes: Input should be less than or equal to 1440",
    ),
    (
        "event_id of 129",
        "activity.logged",
        _set("event_id", "x" * 129),
        "event_id: String should have at most 128 characters",
    ),
    (
        "empty event_id",
        "activity.logged",
        _set("event_id", ""),
        "event_id: String should have at least 1 character",
    ),
    (
        "bad IANA zone",
        "practice.configured",
        _set("data.timezone", "Mars/Olympus_Mons"),
        "data.timezone: unknown IANA time zone 'Mars/Olympus_Mons'",
    ),
    (
        "path as zone",
        "practice.configured",
        _set("data.timezone", "../../etc/passwd"),
        "data.timezone: unknown IANA time zone '../../etc/passwd'",
    ),
    (
        "unknown fee_schedule",
        "practice.configured",
        _set("data.fee_schedule", "hospital"),
        "data.fee_schedule: Input should be 'non_facility' or 'facility'",
    ),
    (
        "fee_schedule in capitals",
        "practice.configured",
        _set("data.fee_schedule", "FACILITY"),
        "data.fee_schedule: Input should be 'non_facility' or 'facility'",
    ),
    (
        "qualifying_apm_participant as a string",
        "practice.configured",
        _set("data.qualifying_apm_participant", "true"),
        "data.qualifying_apm_participant: Input should be a valid boolean",
    ),
    (
        "qualifying_apm_participant as a number",
        "practice.configured",
        _set("data.qualifying_apm_participant", 1),
        "data.qualifying_apm_participant: Input should be a valid boolean",
    ),
    (
        "extra envelope field",
        "activity.logged",
        _set("note", "free text"),
        "note: not in the wire contract (see `caretally schema`)",
    ),
    (
        "extra data field",
        "activity.logged",
        _set("data.note_text", "free text"),
        "data.note_text: not in the wire contract (see `caretally schema`)",
    ),
    (
        "extra field named like a patient id",
        "activity.logged",
        _set("data.P-7Q3X9Z", 1),
        "data.<unknown field>: not in the wire contract (see `caretally schema`)",
    ),
    (
        "patient_id missing",
        "activity.logged",
        _without("patient_id"),
        "patient_id: Field required",
    ),
    (
        "patient_id on a practice event",
        "month.closed",
        _set("patient_id", "P-000123"),
        "patient_id: Input should be null",
    ),
    (
        "neither ended_at nor minutes",
        "activity.logged",
        _without("data.minutes"),
        "data: give ended_at or minutes",
    ),
    (
        "minutes disagree with ended_at",
        "activity.logged",
        _set("data.ended_at", "2025-03-14T10:45:00-04:00"),
        "data.minutes: disagrees with ended_at - started_at",
    ),
    (
        "unknown program",
        "activity.logged",
        _set("data.program", "apcm"),
        "data.program: Input should be 'ccm', 'pcm', 'rpm', 'rtm', 'bhi' or 'tcm'",
    ),
    (
        "bad month",
        "month.closed",
        _set("data.month", "2025-13"),
        "data.month: String should match pattern '^[0-9]{4}-(0[1-9]|1[0-2])$'",
    ),
    (
        "discharge before admission",
        "stay.recorded",
        _set("data.discharged_on", "2025-03-04"),
        "data: discharged_on must not be before admitted_on",
    ),
]


@pytest.mark.parametrize(
    ("type_", "mutate", "reason"),
    [pytest.param(t, m, r, id=i) for i, t, m, r in REJECTIONS],
)
def test_rejected_with_a_reason_naming_the_field(
    type_: str, mutate: Callable[[dict[str, Any]], None], reason: str
) -> None:
    """DESIGN wire contract: unknown type or schema_version, missing fields, wrong types, an
    end before its start, an activity longer than 24 h: rejected with a reason."""
    ev = event(type_)
    mutate(ev)
    assert rejected(ev) == reason


@pytest.mark.parametrize(
    ("raw", "reason_start"),
    [
        (b'{"event_id": "e1", "type": ', "event: Invalid JSON: "),
        (b"not json at all", "event: Invalid JSON: "),
        (b"", "event: Invalid JSON: "),
        (b"[]", "event: Input should be an object"),
    ],
)
def test_malformed_json_is_rejected(raw: bytes, reason_start: str) -> None:
    """DESIGN wire contract: a line that is not a JSON object is rejected with a reason."""
    assert rejected(raw).startswith(reason_start)


def test_every_error_is_reported() -> None:
    """Every error names its field, so a vendor can fix a feed from one message."""
    ev = event()
    del ev["data"]["staff_id"]
    ev["data"]["face_to_face"] = "yes"
    assert rejected(ev) == (
        "data.staff_id: Field required; data.face_to_face: Input should be a valid boolean"
    )


def test_reasons_do_not_echo_input() -> None:
    """EventRejected.reason is "safe to show its sender": it names fields, not values."""
    ev = event()
    ev["data"]["staff_id"] = {"ssn": "123-45-6789"}
    reason = rejected(ev)
    assert reason == "data.staff_id: Input should be a valid string"
    assert "123-45-6789" not in reason


# --- caretally schema -----------------------------------------------------------------------------


def test_schema_command_prints_all_twelve() -> None:
    """DESIGN command line: ``caretally schema`` prints the JSON Schema of every type."""
    result = CliRunner().invoke(cli, ["schema"])
    assert result.exit_code == 0, result.output
    schemas = json.loads(result.stdout)
    assert sorted(schemas) == sorted(VALID_DATA)
    for name, schema in schemas.items():
        assert "properties" in schema
        assert schema["properties"]["type"]["const"] == name
        assert {"event_id", "schema_version", "org_id", "recorded_at", "data"} <= set(
            schema["required"]
        )
        assert schema["additionalProperties"] is False
    assert "patient_id" in schemas["activity.logged"]["required"]
    assert "patient_id" not in schemas["month.closed"]["required"]


def test_schema_command_one_type() -> None:
    """``caretally schema --type activity.logged`` prints that type alone, as a standalone
    JSON Schema document."""
    result = CliRunner().invoke(cli, ["schema", "--type", "activity.logged"])
    assert result.exit_code == 0, result.output
    schema = json.loads(result.stdout)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["title"] == "ActivityLogged"
    data = schema["$defs"]["ActivityLoggedData"]
    assert {"staff_id", "started_at", "ended_at", "minutes"} <= set(data["properties"])


def test_schema_command_unknown_type() -> None:
    """An unknown ``--type`` exits non-zero and names the known types."""
    result = CliRunner().invoke(cli, ["schema", "--type", "activity.deleted"])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert "Invalid value for '--type': 'activity.deleted' is not one of" in result.stderr
    assert "activity.logged" in result.stderr and "month.closed" in result.stderr

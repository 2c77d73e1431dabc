"""FHIR R4 in through the pipeline's doors (docs/fhir.md): ``caretally ingest`` of a Bundle
and ``POST /fhir/r4`` put the events ``caretally convert`` would write on ingress, answer
each entry (an OperationOutcome for what cannot be mapped), dead-letter what they refuse,
and what the worker bills from them is what an offline fold of the same events bills."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import orjson

from projections.engine import billing
from streams.cli.exits import EXIT_BAD_LINES
from streams.fhir.convert import convert_document
from streams.files.logfile import fold_lines
from streams.kafka.broker import EmbeddedBroker
from streams.kafka.records import header
from streams.kafka.topics import Topics
from support.http import Api, eventually, served_pipeline
from support.ingest import ingest, read_deadletter, read_ingress, read_topic

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "fhir" / "bundle.json"
FHIR = {"Content-Type": "application/fhir+json"}


def bundle(kind: str = "transaction") -> dict[str, Any]:
    doc = orjson.loads(FIXTURE.read_bytes())
    doc["type"] = kind
    return doc


def with_bad_entry(doc: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """The Bundle with an Encounter that names no patient appended; its index."""
    bad = copy.deepcopy(
        next(e for e in doc["entry"] if e["resource"]["resourceType"] == "Encounter")
    )
    bad["resource"]["id"] = "no-subject"
    bad["resource"].pop("subject", None)
    bad.pop("fullUrl", None)
    doc["entry"].append(bad)
    return doc, len(doc["entry"]) - 1


def events_of(doc: dict[str, Any], org: str) -> list[bytes]:
    return convert_document(orjson.dumps(doc), org).events


def post(api: Api, doc: dict[str, Any] | bytes, key: str, **headers: str) -> tuple[int, Any]:
    body = doc if isinstance(doc, bytes) else orjson.dumps(doc)
    status, _, raw = api.request("POST", "/fhir/r4", body, {**FHIR, **headers}, key=key)
    return status, orjson.loads(raw)


def test_ingest_sends_the_mapped_events_and_dead_letters_the_unmapped_entry(
    broker: EmbeddedBroker, topics: Topics, tmp_path: Path
) -> None:
    doc, bad = with_bad_entry(bundle("batch"))
    path = tmp_path / "bundle.json"
    path.write_bytes(orjson.dumps(doc))
    expected = events_of(doc, "practice-17")
    assert expected

    without_org = ingest(broker, topics, str(path))
    assert without_org.exit_code == 2 and "--org" in without_org.stderr

    result = ingest(broker, topics, str(path), "--org", "practice-17")
    assert result.exit_code == EXIT_BAD_LINES, result.output
    assert f"{path}:{bad + 1}: rejected: Bundle.entry[{bad}]:" in result.stderr
    assert "1 FHIR entry not mapped: dead-lettered" in result.stdout
    sent = read_ingress(broker, topics, len(expected)).records
    assert sorted(r.value for r in sent) == sorted(expected)
    (letter,) = read_deadletter(broker, topics, 1)
    assert orjson.loads(letter.value) == doc["entry"][bad]
    assert (header(letter.headers, "reason") or b"").startswith(f"Bundle.entry[{bad}]: ".encode())
    assert header(letter.headers, "source_offset") == str(bad + 1).encode()
    assert letter.key == b"practice-17:"


def test_replay_refuses_fhir_and_says_how_to_read_it(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from streams.cli.main import cli

    path = tmp_path / "bundle.json"
    path.write_bytes(FIXTURE.read_bytes())
    result = CliRunner().invoke(cli, ["replay", "--input", str(path)])
    assert result.exit_code == 2
    assert "it is FHIR" in result.stderr and "caretally convert --from fhir" in result.stderr


def test_post_fhir_batch_answers_each_entry_and_writes_what_maps(api: Api) -> None:
    doc, bad = with_bad_entry(bundle("batch"))
    expected = events_of(doc, "org-a")
    status, answer = post(api, doc, api.key_a)
    assert status == 200, answer
    assert answer["resourceType"] == "Bundle" and answer["type"] == "batch-response"
    statuses = [e["response"]["status"] for e in answer["entry"]]
    assert len(statuses) == len(doc["entry"])
    assert statuses[bad] == "400 Bad Request"
    outcome = answer["entry"][bad]["response"]["outcome"]
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["expression"] == [f"Bundle.entry[{bad}]"]
    assert "202 Accepted" in statuses and statuses[0] == "200 OK"  # the Patient: references
    # every event on ingress, keyed org_id:patient_id of the key's org
    seen = values_until(api, api.topics.ingress, b"org-a:", len(expected))
    assert sorted(seen) == sorted(expected)
    (letter,) = values_until(api, api.topics.deadletter, b"org-a:", 1)
    assert orjson.loads(letter) == doc["entry"][bad]


def test_post_fhir_transaction_is_all_or_nothing(api: Api) -> None:
    doc, bad = with_bad_entry(bundle("transaction"))
    for entry in doc["entry"]:  # events no other test sends
        resource = entry["resource"]
        if "id" in resource:
            resource["id"] = f"txn-{resource['id']}"
    status, answer = post(api, doc, api.key_b)
    assert status == 400
    assert answer["resourceType"] == "OperationOutcome"
    assert [i["expression"] for i in answer["issue"]] == [[f"Bundle.entry[{bad}]"]]
    # nothing of it reached ingress: a batch of org-b sent after it arrives alone
    later = {**bundle("batch"), "entry": bundle("batch")["entry"][:4]}  # a Condition
    assert post(api, later, api.key_b)[0] == 200
    values = values_until(api, api.topics.ingress, b"org-b:", len(events_of(later, "org-b")))
    assert sorted(values) == sorted(events_of(later, "org-b"))
    assert not any(b"txn-" in v for v in values)


def test_post_fhir_refusals_are_operation_outcomes(api: Api) -> None:
    status, answer = post(api, {"resourceType": "Patient", "id": "x"}, api.key_a)
    assert (status, answer["resourceType"]) == (400, "OperationOutcome")
    assert "Bundle" in answer["issue"][0]["diagnostics"]
    status, answer = post(api, b"{not json", api.key_a)
    assert (status, answer["resourceType"]) == (400, "OperationOutcome")
    status, _, raw = api.request(
        "POST", "/fhir/r4", orjson.dumps(bundle()), {"Content-Type": "text/plain"}, key=api.key_a
    )
    assert (status, orjson.loads(raw)["resourceType"]) == (415, "OperationOutcome")
    status, _, raw = api.request("POST", "/fhir/r4", orjson.dumps(bundle()), FHIR)
    assert status == 401  # a key, as every write of the API


def test_a_bundle_posted_to_fhir_bills_as_its_events_folded_offline_and_resending_changes_nothing(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    org = "org-fhir"
    doc = bundle("transaction")
    ledger, _ = fold_lines(enumerate(events_of(doc, org), 1))
    expected = {(v["patient_id"], v["month"]): v for v in (b.view() for b in billing(ledger))}
    assert any(v["billable"] for v in expected.values())

    with served_pipeline(broker, tmp_path, org) as api:
        key = api.key_a

        def served() -> bool:
            return all(
                api.get(f"/v1/orgs/{org}/patients/{p}/months/{m}", key)[1] == v
                for (p, m), v in expected.items()
            )

        assert post(api, doc, key)[0] == 200
        eventually(served, 30)
        assert post(api, doc, key)[0] == 200  # the same Bundle again
        # the gate drops exact re-sends: no conflict is dead-lettered, the views stand
        marker = orjson.loads(events_of(bundle("batch"), org)[0])
        marker["event_id"] = "after-the-resend"
        assert api.post(orjson.dumps(marker), "application/json", key)[0] == 202
        eventually(lambda: _logged(broker, api.topics, "after-the-resend"), 30)
        assert served()
        assert read_topic(broker, api.topics.deadletter, 0).records == []


def _logged(broker: EmbeddedBroker, topics: Topics, event_id: str) -> bool:
    records = read_topic(broker, topics.events, 0).records
    return any(orjson.loads(r.value)["event_id"] == event_id for r in records)


def values_until(api: Api, topic: str, key_prefix: bytes, count: int) -> list[bytes]:
    """The values on ``topic`` whose key starts with ``key_prefix``, once there are
    ``count`` of them (a record of the others may come first)."""
    found: list[bytes] = []

    def arrived() -> bool:
        records = read_topic(_Bootstrap(api.bootstrap), topic, 0).records  # type: ignore[arg-type]
        found[:] = [r.value for r in records if r.key and r.key.startswith(key_prefix)]
        return len(found) >= count

    eventually(arrived, 15)
    return found


class _Bootstrap:
    """What read_topic needs of a broker: its address."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap

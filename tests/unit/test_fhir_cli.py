"""`caretally convert --from fhir FILE` as a user drives it: NDJSON events on stdout, one
stderr line per entry that could not be mapped, exit codes as everywhere (streams/cli/exits.py)."""

from __future__ import annotations

import gzip
from pathlib import Path

import orjson
from click.testing import CliRunner

from schemas.events import parse_event
from streams.cli.exits import EXIT_BAD_LINES
from streams.cli.main import cli

BUNDLE = Path(__file__).resolve().parents[1] / "fixtures" / "fhir" / "bundle.json"


def _run(*args: str, stdin: bytes | None = None):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(cli, ["convert", "--from", "fhir", *args], input=stdin)


def test_a_bundle_converts_to_wire_ndjson_with_exit_0(tmp_path: Path) -> None:
    result = _run(str(BUNDLE), "--org", "practice-17")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 12
    assert all(parse_event(line).org_id == "practice-17" for line in lines)
    assert "12 event(s), 0 problem(s)" in result.stderr
    # the same through stdin, gzip-compressed, to a file
    out = tmp_path / "events.ndjson"
    again = _run("-", "--org", "practice-17", "--output", str(out),
                 stdin=gzip.compress(BUNDLE.read_bytes()))  # fmt: skip
    assert again.exit_code == 0, again.output
    assert out.read_text().splitlines() == lines


def test_problems_are_one_stderr_line_each_and_exit_3(tmp_path: Path) -> None:
    bundle = orjson.loads(BUNDLE.read_bytes())
    bundle["entry"].append({"resource": {"resourceType": "Flag", "id": "f1"}})
    bundle["entry"].append({"request": {"method": "DELETE", "url": "Encounter/x"}})
    path = tmp_path / "bundle.json"
    path.write_bytes(orjson.dumps(bundle, option=orjson.OPT_INDENT_2))  # pretty: one document
    result = _run(str(path), "--org", "practice-17")
    assert result.exit_code == EXIT_BAD_LINES
    assert len(result.stdout.splitlines()) == 12  # the good entries are still written
    problems = [line for line in result.stderr.splitlines() if "Bundle.entry[" in line]
    assert problems == [
        f"{path}: Bundle.entry[17] Flag/f1: resource type 'Flag' is not mapped; mapped are "
        "CarePlan, Condition, Consent, Encounter, EpisodeOfCare, Observation, Procedure, Task "
        "(and Device, Organization, Patient, Practitioner, PractitionerRole for references)",
        f"{path}: Bundle.entry[18]: request.method DELETE is not mapped; send the resource "
        "with status entered-in-error to withdraw what it recorded",
    ]


def test_ndjson_is_told_apart_by_content(tmp_path: Path) -> None:
    encounter = next(
        e["resource"]
        for e in orjson.loads(BUNDLE.read_bytes())["entry"]
        if e["resource"].get("id") == "enc-stay-1"
    )
    encounter["subject"] = {"reference": "Patient/P-1"}
    path = tmp_path / "Encounter.ndjson"
    path.write_bytes(orjson.dumps(encounter) + b"\n" + b'{"resourceType": "Basic"}\n')
    result = _run(str(path), "--org", "practice-17")
    assert result.exit_code == EXIT_BAD_LINES
    assert orjson.loads(result.stdout)["type"] == "stay.recorded"
    assert f"{path}: line 2: resource type 'Basic' is not mapped" in result.stderr
    assert "converted 2 NDJSON lines" in result.stderr  # the final newline ends line 2


def test_every_gzip_member_is_read(tmp_path: Path) -> None:
    """A gzip file may be several members (e.g. `cat a.gz b.gz`): all of them are input."""
    entries = orjson.loads(BUNDLE.read_bytes())["entry"]
    stays = []
    for n in (1, 2):
        stay = next(e["resource"] for e in entries if e["resource"].get("id") == "enc-stay-1")
        stays.append({**stay, "id": f"stay-{n}", "subject": {"reference": "Patient/P-1"}})
    path = tmp_path / "Encounter.ndjson.gz"
    path.write_bytes(b"".join(gzip.compress(orjson.dumps(s) + b"\n") for s in stays))
    result = _run(str(path), "--org", "practice-17")
    assert result.exit_code == 0, result.output
    assert [orjson.loads(line)["data"]["setting"] for line in result.stdout.splitlines()] == [
        "inpatient",
        "inpatient",
    ]


def test_input_that_is_no_fhir_is_a_usage_error_as_for_ingest_and_replay(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_text('{"resourceType": "Bundle", "type": "history"}')
    result = _run(str(path), "--org", "practice-17")
    assert result.exit_code == 2
    assert "Bundle.type 'history' is not accepted" in result.stderr
    assert result.stdout == ""
    for text in ("not json at all\n", '[{"resourceType": "Patient"}]', "5\n6\n"):
        path.write_text(text)
        assert _run(str(path), "--org", "practice-17").exit_code == 2, text
    assert _run(str(tmp_path / "missing.json"), "--org", "practice-17").exit_code == 2
    assert _run(str(path)).exit_code == 2  # --org is required
    assert _run(str(path), "--org", "a/b").exit_code == 2  # not an org id

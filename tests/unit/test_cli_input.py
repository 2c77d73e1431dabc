"""`--input` means one thing: `replay` and `audit` read the same events from an NDJSON
file, the same file gzip-compressed, stdin, a CSV file and the archive, and give the
same billing and the same audit."""

from __future__ import annotations

import csv
import gzip
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from schemas.events import parse_event
from streams.archive.store import write_events
from streams.cli.main import cli
from streams.demo.synthetic import generate_practice_log, write_ndjson

ORG, PATIENT, MONTH = "practice-17", "P-000002", "2025-03"
ENVELOPE = ["event_id", "type", "org_id", "patient_id", "recorded_at", "source"]


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ";".join(value) if value else "[]"
    return str(value)


def write_csv(events: list[dict[str, Any]], path: Path) -> None:
    """The events as `caretally ingest` takes CSV: the envelope, then data.FIELD columns."""
    fields = sorted({k for e in events for k in e["data"]})
    with open(path, "w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(ENVELOPE + [f"data.{f}" for f in fields])
        for e in events:
            envelope = [e.get(k) or "" for k in ENVELOPE]
            data = [_cell(e["data"][f]) if f in e["data"] else "" for f in fields]
            writer.writerow(envelope + data)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("inputs")
    events = list(generate_practice_log(seed=5, patients=8, months=(MONTH,)))
    paths = {"ndjson": tmp / "log.ndjson", "gzip": tmp / "log.ndjson.gz", "csv": tmp / "log.csv"}
    write_ndjson(events, paths["ndjson"])
    paths["gzip"].write_bytes(gzip.compress(paths["ndjson"].read_bytes()))
    write_csv(events, paths["csv"])
    raws = [orjson.dumps(e) for e in events]
    paths["archive"] = tmp / "archive"
    write_events(paths["archive"], ((parse_event(r), r) for r in raws), partitions=2)
    return paths


def invoke(*args: str, stdin: bytes | None = None) -> str:
    result = CliRunner().invoke(cli, list(args), input=stdin)
    assert result.exit_code == 0, result.output
    return result.stdout


def test_replay_reads_every_kind_of_input_alike(inputs: dict[str, Path]) -> None:
    want = invoke("replay", "--input", str(inputs["ndjson"]))
    assert len(want.splitlines()) >= 8
    for kind in ("gzip", "csv", "archive"):
        assert invoke("replay", "--input", str(inputs[kind]), "--workers", "1") == want, kind
    assert invoke("replay", "--input", "-", stdin=inputs["gzip"].read_bytes()) == want
    piped_csv = invoke("replay", "--input", "-", "--input-format", "csv", stdin=b"")
    assert piped_csv == ""  # an empty CSV: nothing, and no error


def test_audit_reads_every_kind_of_input_alike(inputs: dict[str, Path]) -> None:
    args = ["audit", "--org", ORG, "--patient", PATIENT, "--month", MONTH, "--format", "csv"]
    want = invoke(*args, "--input", str(inputs["ndjson"]))
    assert PATIENT in want
    for kind in ("gzip", "csv", "archive"):
        assert invoke(*args, "--input", str(inputs[kind])) == want, kind
    assert invoke(*args, "--input", "-", stdin=inputs["ndjson"].read_bytes()) == want


def test_a_bad_csv_row_is_reported_by_its_line(inputs: dict[str, Path], tmp_path: Path) -> None:
    lines = inputs["csv"].read_text().splitlines()
    lines[3] = lines[3].replace(",practice-17,", ",practice:17,", 1)  # its org_id
    broken = tmp_path / "broken.csv"
    broken.write_text("\n".join(lines) + "\n")
    result = CliRunner().invoke(cli, ["replay", "--input", str(broken)])
    assert result.exit_code == 3
    assert f"{broken}:4: rejected: org_id" in result.stderr

"""``caretally ingest`` without a broker: a clear error when none answers, CSV header
problems as usage errors, the CSV cell conversions, the exit code shared with replay."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from streams.cli.main import cli
from streams.ingest.csv_events import ANY_FIELD_KINDS, CsvHeaderError, read_csv_events
from streams.kafka.broker import free_port
from streams.kafka.topics import Topics
from support.ingest import ingest, practice_lines


def test_unreachable_broker_fails_fast(topics: Topics, tmp_path: Path) -> None:
    path = tmp_path / "events.ndjson"
    path.write_bytes(b"\n".join(practice_lines(patients=1)))
    address = f"127.0.0.1:{free_port()}"
    started = time.monotonic()

    result = CliRunner().invoke(cli, ["ingest", "--input", str(path), "--bootstrap", address])

    assert time.monotonic() - started < 5
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        f"error: no Kafka broker answers at {address} "
        "(start one with `caretally broker`, or pass --bootstrap)"
    )
    assert result.stdout == ""


def test_csv_header_errors_are_usage_errors(tmp_path: Path, topics: Topics) -> None:
    path = tmp_path / "feed.csv"
    path.write_text("event_id,type,org_id,recorded_at,data.minuts,colour\n")

    result = ingest(None, topics, str(path))  # no broker needed: nothing is sent

    assert result.exit_code == 2
    assert "column 5: unknown data field (did you mean data.minutes?)" in result.stderr
    assert "column 6: unknown column" in result.stderr
    assert "minuts" not in result.stderr and "colour" not in result.stderr  # cells may be PHI
    assert "missing column(s) source" in result.stderr


def test_csv_kinds_match_the_documented_mapping() -> None:
    """The module docstring and --help list these; a schema change must update them."""
    typed = {f: k for f, k in ANY_FIELD_KINDS.items() if k != "text"}
    assert typed == {
        "minutes": "number",
        "face_to_face": "boolean",
        "interactive": "boolean",
        "qmb": "boolean",
        "qualifying_apm_participant": "boolean",
        "chronic": "list",
    }


def test_csv_edge_cells() -> None:
    import io

    text = (
        "event_id,type,org_id,patient_id,recorded_at,source,schema_version,data.chronic\n"
        "c1,conditions.recorded,o,p,2025-03-01T00:00:00Z,s,,[]\n"
        "c2,conditions.recorded,o,p,2025-03-01T00:00:00Z,s,2,\n"
        "c3,conditions.recorded,o,p,2025-03-01T00:00:00Z,s,one,A00\n"
    )
    rows = list(read_csv_events(io.StringIO(text, newline="")))
    first, second, third = (orjson.loads(r.value) for r in rows)
    assert first["schema_version"] == 1 and first["data"] == {"chronic": []}
    assert rows[0].error is None
    assert second["schema_version"] == 2 and second["data"] == {}
    assert rows[2].error == "schema_version: not an integer"
    assert third["schema_version"] == "one"
    assert list(read_csv_events(io.StringIO("\n\n"))) == []
    with pytest.raises(CsvHeaderError, match=r"column 2 \(event_id\) repeats column 1"):
        read_csv_events(io.StringIO("event_id,event_id,type,org_id,recorded_at,source\n"))

"""``caretally sql``: the archive's views return the replay's numbers, and nothing writes."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from projections.engine import fold
from schemas.events import parse_event
from streams.archive.sql import ArchiveSql, SqlRejected
from streams.archive.store import write_events
from streams.cli.main import cli
from streams.demo.synthetic import generate_practice_log, write_ndjson


@pytest.fixture(scope="module")
def archived(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The same events as an NDJSON log and as a 3-partition archive, with a re-sent event."""
    tmp = tmp_path_factory.mktemp("sql")
    events = list(generate_practice_log(seed=11, patients=30, months=("2025-03", "2025-04")))
    events.insert(len(events) // 2, events[5])  # an exact re-send: counted once
    log = tmp / "log.ndjson"
    write_ndjson(events, log)
    raws = [orjson.dumps(e) for e in events]
    write_events(tmp / "archive", ((parse_event(r), r) for r in raws), partitions=3)
    return log, tmp / "archive"


def _run(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


def test_patient_months_view_is_the_replay(archived: tuple[Path, Path]) -> None:
    log, archive = archived
    replayed = [orjson.loads(line) for line in _run("replay", "--input", str(log)).splitlines()]
    rows = [
        orjson.loads(line)
        for line in _run(
            "sql",
            "SELECT * FROM patient_months ORDER BY org_id, patient_id, month",
            "--input",
            str(archive),
            "--format",
            "json",
        ).splitlines()
    ]
    assert rows == replayed
    assert len(rows) > 30


def test_activities_and_events_views_match_the_fold(archived: tuple[Path, Path]) -> None:
    log, archive = archived
    events = [parse_event(line) for line in log.read_bytes().splitlines() if line.strip()]
    ledger = fold(events)
    current = {
        (pid, a.activity_id): (a.program, a.staff_id, a.end - a.start)
        for (_, pid), p in ledger.patients.items()
        for a in p.activities.values()
    }
    db = ArchiveSql(archive)
    try:
        _, rows = db.query(
            "SELECT patient_id, activity_id, program, staff_id, "
            "epoch(ended_at) - epoch(started_at) FROM activities"
        )
        assert {(r[0], r[1]): (r[2], r[3], int(r[4])) for r in rows} == current
        _, rows = db.query("SELECT count(*), count(DISTINCT event_id) FROM events")
        n, distinct = next(rows)
        assert n == distinct == len({e.event_id for e in events}) < len(events)
        _, rows = db.query("SELECT event->>'$.type', type FROM events")
        assert all(a == b for a, b in rows)
        names, _ = db.query("SELECT * FROM events LIMIT 0")
        assert "month" not in names and "org" not in names  # no hive folder columns
    finally:
        db.close()


@pytest.mark.parametrize(
    "statement",
    [
        "COPY (SELECT 1) TO 'x.csv'",
        "CREATE TABLE t AS SELECT 1",
        "SELECT 1; DROP VIEW events",
        "ATTACH 'other.db'",
        "INSTALL httpfs",
        "EXPLAIN ANALYZE COPY (SELECT 42) TO 'x.csv'",
        "explain  analyse COPY (SELECT 42) TO 'x.csv'",
    ],
)
def test_only_read_only_statements_run(archived: tuple[Path, Path], statement: str) -> None:
    _, archive = archived
    db = ArchiveSql(archive)
    try:
        with pytest.raises(SqlRejected, match="only read-only"):
            db.query(statement)
    finally:
        db.close()
    result = CliRunner().invoke(cli, ["sql", statement, "--input", str(archive)])
    assert result.exit_code == 2
    assert "only read-only" in result.output
    assert not Path("x.csv").exists()


def test_sql_errors_are_clear(archived: tuple[Path, Path], tmp_path: Path) -> None:
    _, archive = archived
    result = CliRunner().invoke(cli, ["sql", "SELECT nope FROM events", "--input", str(archive)])
    assert result.exit_code == 1
    assert "nope" in result.output
    result = CliRunner().invoke(cli, ["sql", "SELECT 1", "--input", str(tmp_path / "none")])
    assert result.exit_code == 2
    assert "no archive" in result.output


def test_csv_and_table_formats(archived: tuple[Path, Path]) -> None:
    _, archive = archived
    q = "SELECT program, count(*) AS n FROM activities GROUP BY program ORDER BY program"
    csv_out = _run("sql", q, "--input", str(archive), "--format", "csv").splitlines()
    assert csv_out[0] == "program,n"
    table = _run("sql", q, "--input", str(archive))
    for line in csv_out[1:]:
        program, n = line.split(",")
        assert program in table and n in table

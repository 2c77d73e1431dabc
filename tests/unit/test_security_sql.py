"""``caretally sql`` is read-only by DuckDB's own account, and its connection is locked.

Each attack of the security review (issue #9, item 3) goes through the real CLI against
a real archive: ``EXPLAIN (ANALYZE)`` around ``COPY``, ``CREATE``, ``ATTACH`` and
``INSTALL``, with comments before or inside the keywords, forging a committed flush
into the archive, dropping a file into a worker's state folder; then what a plain
``SELECT`` could still do (read other files, outlast any patience) and the help text.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner, Result

from schemas.events import parse_event
from streams.archive.store import COMMITTED, archive_files, org_dir, write_events
from streams.cli.main import cli
from streams.demo.synthetic import generate_practice_log

PAYMENTS = "SELECT round(sum(estimated_payment), 2) FROM patient_months"


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sec-sql") / "archive"
    events = list(generate_practice_log(seed=3, patients=12, months=("2025-03",)))
    raws = [orjson.dumps(e) for e in events]
    write_events(root, ((parse_event(r), r) for r in raws), partitions=2)
    return root


def sql(archive: Path, query: str, *opts: str) -> Result:
    return CliRunner().invoke(cli, ["sql", query, "--input", str(archive), *opts])


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _refused(result: Result) -> None:
    assert result.exit_code == 2, result.output
    assert "only read-only queries are allowed" in result.output


@pytest.mark.parametrize(
    "template",
    [
        "EXPLAIN (ANALYZE) COPY (SELECT 1) TO '{out}/x.csv'",
        "/* c */ EXPLAIN ANALYZE COPY (SELECT 1) TO '{out}/x.csv'",
        "EXPLAIN /* c */ ANALYZE COPY (SELECT 1) TO '{out}/x.csv'",
        "EXPLAIN\n-- c\nANALYSE COPY (SELECT 1) TO '{out}/x.csv' (FORMAT csv)",
        "EXPLAIN (ANALYZE) CREATE TABLE t AS SELECT 1",
        "ATTACH '{out}/x.duckdb'",
        "EXPLAIN (ANALYZE) INSTALL httpfs",
        "EXPLAIN SELECT 1",
        "SELECT 1; SELECT 2",
        "SET enable_external_access = true",
        "PRAGMA version",
        "CALL pragma_version()",
    ],
)
def test_anything_but_one_select_is_refused_and_writes_nothing(
    archive: Path, tmp_path: Path, template: str
) -> None:
    before = snapshot(archive)
    _refused(sql(archive, template.format(out=tmp_path)))
    assert list(tmp_path.iterdir()) == []
    assert snapshot(archive) == before


def test_a_forged_flush_cannot_be_written_into_the_archive(archive: Path) -> None:
    """The review's forgery: rows copied under new offsets plus a commit marker, so that
    replay, billing and restore would take them as archived events."""
    paid = sql(archive, PAYMENTS, "--format", "csv")
    assert paid.exit_code == 0, paid.output
    before = snapshot(archive)
    source = archive_files(archive)[0]
    folder = archive / org_dir("practice-17") / "month=2025-03"
    forged_file = folder / "p0-900000-900999.parquet"
    forged_mark = archive / COMMITTED / "p0-900000-900999"
    _refused(
        sql(
            archive,
            f'EXPLAIN (ANALYZE) COPY (SELECT * REPLACE ("offset" + 900000 AS "offset", '
            f"event_id || '-f' AS event_id) FROM read_parquet('{source}')) "
            f"TO '{forged_file}' (FORMAT parquet)",
        )
    )
    _refused(sql(archive, f"EXPLAIN (ANALYZE) COPY (SELECT 1) TO '{forged_mark}' (HEADER false)"))
    assert not forged_file.exists() and not forged_mark.exists()
    assert snapshot(archive) == before
    assert sql(archive, PAYMENTS, "--format", "csv").output == paid.output


def test_nothing_lands_in_a_worker_state_folder(archive: Path, tmp_path: Path) -> None:
    """The review wrote a pickle that a worker then loaded; any file would do."""
    state = tmp_path / "state"
    state.mkdir()
    target = state / "billing-0.pickle"
    _refused(
        sql(
            archive,
            f"/**/EXPLAIN (ANALYZE) COPY (SELECT 'payload') TO '{target}' "
            "(FORMAT csv, HEADER false)",
        )
    )
    assert list(state.iterdir()) == []


@pytest.mark.parametrize(
    "query",
    [
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM read_text('/etc/hostname')",
        "SELECT * FROM glob('/etc/*')",
    ],
)
def test_a_select_reads_no_file_outside_the_archive(archive: Path, query: str) -> None:
    result = sql(archive, query, "--format", "csv")
    assert result.exit_code == 1, result.output
    assert "disabled by configuration" in result.output
    assert "root:" not in result.output


def test_the_views_still_read_the_archive_with_the_connection_locked(archive: Path) -> None:
    result = sql(
        archive,
        "SELECT current_setting('enable_external_access'), "
        "current_setting('lock_configuration'), "
        "(SELECT count(*) FROM events) > 0, (SELECT count(*) FROM activities) > 0",
        "--format",
        "csv",
    )
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[1] == "False,True,True,True"


def test_a_query_is_stopped_at_its_timeout(archive: Path) -> None:
    result = sql(archive, "SELECT count(*) FROM range(1000000000000)", "--timeout", "1")
    assert result.exit_code == 1, result.output
    assert "ran longer than 1 s" in result.output


def test_help_says_read_only_not_a_sandbox() -> None:
    result = CliRunner().invoke(cli, ["sql", "--help"])
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "Read-only" in text and "not a sandbox" in text and "EXPLAIN" in text

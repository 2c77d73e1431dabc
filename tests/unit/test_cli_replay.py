"""`caretally replay` and `caretally demo` as a user drives them (docs/design.md command line)."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from streams.cli.exits import EXIT_BAD_LINES
from streams.cli.main import cli
from support.builders import Log


def _log_file(tmp_path: Path, extra_lines: list[bytes] | None = None) -> Path:
    log = Log()
    log.practice()
    for patient in ("P-2", "P-1"):  # out of order on purpose: output is sorted
        log.documented(patient)
        log.activity(
            patient,
            f"{patient}-a1",
            "2025-03-03T10:00:00-05:00",
            25,
            recorded_at="2025-03-03T16:00:00Z",
        )
        log.activity(
            patient,
            f"{patient}-a2",
            "2025-04-03T10:00:00-04:00",
            45,
            recorded_at="2025-04-03T16:00:00Z",
        )
    lines = [orjson.dumps(e) for e in log.raw]
    lines[4:4] = extra_lines or []
    path = tmp_path / "events.ndjson"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def _json_lines(text: str) -> list[dict]:
    return [orjson.loads(line) for line in text.splitlines() if line.strip()]


def test_replay_prints_one_sorted_line_per_patient_month(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["replay", "--input", str(_log_file(tmp_path))])
    assert result.exit_code == 0, result.output
    views = _json_lines(result.stdout)
    assert [(v["patient_id"], v["month"]) for v in views] == [
        ("P-1", "2025-03"),
        ("P-1", "2025-04"),
        ("P-2", "2025-03"),
        ("P-2", "2025-04"),
    ]
    assert set(views[0]) == {
        "org_id",
        "patient_id",
        "month",
        "rule_year",
        "minutes",
        "billable",
        "blocked",
        "flags",
        "estimated_payment",
        "payment_provisional",
    }
    assert views[1]["billable"] == [{"code": "99439", "units": 1}, {"code": "99490", "units": 1}]
    assert views[1]["estimated_payment"] == 106.42
    assert [v["payment_provisional"] for v in views] == [False] * 4  # 2025: a final book


def test_bad_lines_are_reported_with_line_number_and_skipped(tmp_path: Path) -> None:
    bad = [b"{not json", b'{"event_id": "x", "type": "activity.bogus"}']
    path = _log_file(tmp_path, bad)
    result = CliRunner().invoke(cli, ["replay", "--input", str(path)])
    assert result.exit_code == EXIT_BAD_LINES
    assert f"{path}:5: rejected: event: Invalid JSON" in result.stderr
    assert f"{path}:6: rejected: type: unknown type" in result.stderr
    assert "2 rejected" in result.stderr
    assert len(_json_lines(result.stdout)) == 4  # the good lines still replay


def test_conflicting_duplicate_is_rejected_and_exact_duplicate_ignored(tmp_path: Path) -> None:
    path = _log_file(tmp_path)
    lines = path.read_bytes().splitlines()
    first_activity = next(i for i, ln in enumerate(lines) if b"activity.logged" in ln)
    exact = lines[first_activity]
    changed = exact.replace(b'"minutes":25', b'"minutes":26')
    path.write_bytes(b"\n".join([*lines, exact, changed]) + b"\n")
    result = CliRunner().invoke(cli, ["replay", "--input", str(path)])
    assert result.exit_code == EXIT_BAD_LINES
    assert f"{path}:{len(lines) + 2}: rejected: event_id: already used" in result.stderr
    assert "1 duplicate" in result.stderr


def test_as_of_shows_what_was_known_then(tmp_path: Path) -> None:
    path = _log_file(tmp_path)
    result = CliRunner().invoke(
        cli, ["replay", "--input", str(path), "--as-of", "2025-03-31T23:59:59-04:00"]
    )
    assert result.exit_code == 0
    assert [v["month"] for v in _json_lines(result.stdout)] == ["2025-03", "2025-03"]


def test_as_of_needs_an_offset(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli, ["replay", "--input", str(_log_file(tmp_path)), "--as-of", "2025-03-31T00:00:00"]
    )
    assert result.exit_code == 2
    assert "UTC offset" in result.stderr


def test_csv_and_table_formats(tmp_path: Path) -> None:
    path = _log_file(tmp_path)
    out = CliRunner().invoke(cli, ["replay", "--input", str(path), "--format", "csv"]).stdout
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 4
    assert rows[1]["billable"] == "99439x1 99490x1"
    assert rows[1]["estimated_payment"] == "106.42"
    assert {r["rule_year"] for r in rows} == {"2025"}  # every format names the book
    table = CliRunner().invoke(cli, ["replay", "--input", str(path), "--format", "table"]).stdout
    assert "99439x1 99490x1" in table and "4 patient-month(s)" in table
    assert "rules" in table and "2025" in table


def test_missing_input_file_is_a_clear_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["replay", "--input", str(tmp_path / "nope.ndjson")])
    assert result.exit_code == 2
    assert "does not exist" in result.stderr


def test_console_script_runs_as_a_process(tmp_path: Path) -> None:
    """The installed entry point, not just the click object."""
    path = _log_file(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "streams.cli", "replay", "--input", str(path)],
        capture_output=True,
        check=False,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == 4


@pytest.mark.parametrize("args", [["--help"], ["replay", "--help"], ["demo", "--help"]])
def test_help_teaches(args: list[str]) -> None:
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0
    assert "Usage:" in result.output and len(result.output.splitlines()) > 5


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["demo", "--month", "2025-13"], "'2025-13' is not a month; write YYYY-MM"),
        (["demo", "--month", "March"], "'March' is not a month"),
        (["demo", "--patients", "0"], "Invalid value for '--patients'"),
        (["demo", "--save-log", "/nonexistent/dir/x.ndjson"], "does not exist"),
    ],
)
def test_demo_rejects_bad_options_without_a_traceback(args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2
    assert message in result.stderr
    assert "Traceback" not in result.output


def test_gzip_input_replays_as_the_plain_file(tmp_path: Path) -> None:
    import gzip

    plain = _log_file(tmp_path)
    path = tmp_path / "events.ndjson.gz"
    path.write_bytes(gzip.compress(plain.read_bytes()))
    result = CliRunner().invoke(cli, ["replay", "--input", str(path)])
    assert result.exit_code == 0, result.output
    assert result.stdout == CliRunner().invoke(cli, ["replay", "--input", str(plain)]).stdout


def test_empty_file_warns(tmp_path: Path) -> None:
    path = tmp_path / "empty.ndjson"
    path.write_bytes(b"")
    result = CliRunner().invoke(cli, ["replay", "--input", str(path)])
    assert result.exit_code == 0
    assert "holds no events" in result.stderr
    assert result.stdout == ""


def test_json_errors_give_the_column_within_the_line(tmp_path: Path) -> None:
    path = _log_file(tmp_path, [b'{"event_id": oops}'])
    result = CliRunner().invoke(cli, ["replay", "--input", str(path)])
    assert f"{path}:5: rejected: event: Invalid JSON: expected value at column 14" in (
        result.stderr
    )


def test_bare_command_prints_help() -> None:
    result = CliRunner().invoke(cli, [])
    assert result.exit_code == 0
    assert "Start here:" in result.output and "replay" in result.output


def test_as_of_leaves_out_months_not_yet_begun(tmp_path: Path) -> None:
    """As of March 20 an April patient-month (here from a device period that ends in
    April) is not shown: nothing in April was known yet."""
    log = Log()
    log.practice()
    log.visit("P-1")
    log.consent("P-1", "rpm")
    log.enrollment("P-1", "rpm", on="2025-03-10", recorded_at="2025-03-10T12:00:00Z")
    for day in range(10, 20):
        log.reading("P-1", f"2025-03-{day}T08:00:00-04:00", recorded_at="2025-03-19T12:00:00Z")
    path = tmp_path / "rpm.ndjson"
    path.write_bytes(b"\n".join(orjson.dumps(e) for e in log.raw) + b"\n")
    full = CliRunner().invoke(cli, ["replay", "--input", str(path)])
    assert [v["month"] for v in _json_lines(full.stdout)] == ["2025-03", "2025-04"]
    early = CliRunner().invoke(
        cli, ["replay", "--input", str(path), "--as-of", "2025-03-20T00:00:00Z"]
    )
    assert [v["month"] for v in _json_lines(early.stdout)] == ["2025-03"]


def test_a_line_that_breaks_the_published_contract_fails_the_replay_and_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An injected bug: every view gains a field PatientMonthView does not have."""
    from projections.billing import MonthBilling

    real = MonthBilling.view
    monkeypatch.setattr(MonthBilling, "view", lambda self: {**real(self), "extra": 1})
    out = tmp_path / "views.ndjson"
    result = CliRunner().invoke(
        cli, ["replay", "--input", str(_log_file(tmp_path)), "--output", str(out)]
    )
    assert result.exit_code == 1, result.output
    assert "does not match the published contract (extra)" in result.stderr
    assert not out.exists()

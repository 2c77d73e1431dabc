"""The shared options at work: old spellings still work (one deprecation line on stderr)
but not beside the new one; org ids and months are refused with a clear error wherever
they are taken; --output writes the output to a file and nothing to stdout; progress
bars appear only on a terminal's stderr and never touch stdout. No broker: each check
stops before a command would connect (or names an address nothing answers at)."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner, Result

from schemas.events import parse_event
from streams.archive.store import write_events
from streams.cli.main import cli
from streams.demo.synthetic import generate_practice_log, write_ndjson

NOWHERE = "127.0.0.1:1"  # nothing answers there


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), env=env)


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A month of a small practice as an NDJSON log and as an archive."""
    tmp = tmp_path_factory.mktemp("options")
    events = list(generate_practice_log(seed=3, patients=6, months=("2025-03",)))
    log = tmp / "log.ndjson"
    write_ndjson(events, log)
    raws = [orjson.dumps(e) for e in events]
    write_events(tmp / "archive", ((parse_event(r), r) for r in raws), partitions=2)
    return log, tmp / "archive"


# -- old spellings -------------------------------------------------------------------------


def test_sql_archive_still_reads_the_archive(sample: tuple[Path, Path]) -> None:
    _, archive = sample
    query = "SELECT count(*) AS n FROM events"
    new = run("sql", query, "--input", str(archive), "--format", "json")
    old = run("sql", query, "--archive", str(archive), "--format", "json")
    assert new.exit_code == old.exit_code == 0, old.output
    assert old.stdout == new.stdout and orjson.loads(new.stdout)["n"] > 0
    assert old.stderr.splitlines() == ["--archive is deprecated: use --input"]
    assert new.stderr == ""


def test_restore_archive_still_names_the_archive(tmp_path: Path) -> None:
    missing = tmp_path / "gone"
    result = run("restore", "--archive", str(missing), "--bootstrap", NOWHERE)
    assert result.exit_code == 2
    assert "--archive is deprecated: use --input" in result.stderr
    assert f"{missing} does not exist" in result.stderr and "--input" in result.stderr


def test_ingest_file_argument_and_format_still_work(tmp_path: Path) -> None:
    events = tmp_path / "events.ndjson"
    events.write_bytes(b'{"not": "csv"}\n')
    result = run("ingest", str(events), "--format", "csv", "--bootstrap", NOWHERE)
    assert result.exit_code == 2, result.output
    assert "the FILE argument is deprecated: use --input" in result.stderr
    assert "--format is deprecated: use --input-format" in result.stderr
    assert "CSV header" in result.stderr  # the file was read, as CSV


def test_close_format_and_month_argument_still_work() -> None:
    result = run("close", "--org", "o", "2025-03", "--format", "csv", "--bootstrap", NOWHERE)
    assert result.exit_code == 1  # past the options, at the broker
    assert "the YYYY-MM argument is deprecated: use --month" in result.stderr
    assert "--format is deprecated: use --claims-format" in result.stderr
    result = run("close", "--org", "o", "2025-13")
    assert result.exit_code == 2 and "'2025-13' is not a month" in result.stderr
    result = run("close", "--org", "o", "2025-03", "--format", "xml")
    assert result.exit_code == 2 and "'xml' is not one of" in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["sql", "SELECT 1", "--archive", "a", "--input", "b"],
        ["restore", "--archive", "a", "--input", "b"],
        ["ingest", "a.ndjson", "--input", "b.ndjson"],
        ["ingest", "--input", "b.ndjson", "--format", "csv", "--input-format", "csv"],
        ["close", "--org", "o", "--month", "2025-03", "2025-03"],
        ["close", "--org", "o", "--month", "2025-03", "--format", "csv", "--claims-format", "csv"],
    ],
)
def test_old_and_new_spelling_together_are_refused(args: list[str]) -> None:
    result = run(*args, "--bootstrap", NOWHERE) if args[0] != "sql" else run(*args)
    assert result.exit_code == 2
    assert "is the old spelling of" in result.stderr


def test_a_required_input_is_asked_for() -> None:
    for args in (["ingest"], ["close", "--org", "o"]):
        result = run(*args)
        assert result.exit_code == 2 and "Missing option" in result.stderr


# -- validation ----------------------------------------------------------------------------


@pytest.mark.parametrize("org", ["a:b", "a/b", " edge", "tab\there", "x" * 129, ""])
def test_keys_create_refuses_an_org_id_the_contract_refuses(org: str, tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    result = run("keys", "create", "--org", org, "--keys", str(keys))
    assert result.exit_code == 2, result.output
    assert "is not an org id" in result.stderr and "printable text" in result.stderr
    assert not keys.exists()


def test_keys_create_takes_an_org_id_the_contract_takes(tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    result = run("keys", "create", "--org", "診療所 17", "--keys", str(keys))
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("ct_")


@pytest.mark.parametrize("command", [["audit", "--patient", "P"], ["close", "--month", "2025-03"]])
def test_every_org_option_checks_the_id(command: list[str]) -> None:
    result = run(*command, "--org", "a:b", "--month", "2025-03")
    assert result.exit_code == 2 and "is not an org id" in result.stderr


@pytest.mark.parametrize(
    "command",
    [
        ["audit", "--org", "o", "--patient", "P"],
        ["close", "--org", "o"],
        ["demo", "--offline"],
    ],
)
def test_every_month_option_checks_the_month(command: list[str]) -> None:
    result = run(*command, "--month", "2025-3")
    assert result.exit_code == 2 and "'2025-3' is not a month" in result.stderr


# -- output --------------------------------------------------------------------------------


def test_output_writes_the_file_and_nothing_to_stdout(
    sample: tuple[Path, Path], tmp_path: Path
) -> None:
    log, archive = sample
    printed = run("replay", "--input", str(log)).stdout
    cases = {
        "replay": ["replay", "--input", str(log)],
        "schema": ["schema", "--type", "activity.logged"],
        "sql": ["sql", "SELECT count(*) FROM events", "--input", str(archive)],
    }
    for name, args in cases.items():
        out = tmp_path / f"{name}.out"
        result = run(*args, "--output", str(out))
        assert result.exit_code == 0, result.output
        assert result.stdout == "" and out.stat().st_size > 0, name
        assert "wrote " in result.stderr and str(out) in result.stderr
    assert (tmp_path / "replay.out").read_text() == printed


def test_output_needs_an_existing_folder(tmp_path: Path) -> None:
    result = run("schema", "--output", str(tmp_path / "no" / "such.json"))
    assert result.exit_code == 2 and "does not exist" in result.stderr


# -- progress ------------------------------------------------------------------------------


def _replay_with_stderr(log: Path, stderr: int, *extra: str) -> tuple[bytes, int]:
    proc = subprocess.run(
        [sys.executable, "-m", "streams.cli", "replay", "--input", str(log), *extra],
        stdout=subprocess.PIPE,
        stderr=stderr,
        timeout=120,
        env={**os.environ, "COLUMNS": "100", "TERM": "xterm"},
    )
    return proc.stdout, proc.returncode


def _drain(fd: int) -> bytes:
    out = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # the other end closed
            return out
        if not chunk:
            return out
        out += chunk


def test_a_progress_bar_only_on_a_terminal_and_never_on_stdout(
    sample: tuple[Path, Path], tmp_path: Path
) -> None:
    log, _ = sample
    big = tmp_path / "big.ndjson"  # enough lines for the fold to report its progress
    big.write_bytes(log.read_bytes() * 40)
    piped, code = _replay_with_stderr(big, subprocess.DEVNULL)
    assert code == 0
    main, other = pty.openpty()
    try:
        on_terminal, code = _replay_with_stderr(big, other)
        os.close(other)
        drawn = _drain(main)
    finally:
        os.close(main)
    assert code == 0 and on_terminal == piped  # stdout alike, bar or not
    assert b"replaying big.ndjson" in drawn and b"\x1b[" in drawn  # a bar was drawn
    main, other = pty.openpty()
    try:
        _, code = _replay_with_stderr(big, other, "--no-progress")
        os.close(other)
        plain = _drain(main)
    finally:
        os.close(main)
    assert code == 0 and b"replaying big.ndjson" not in plain

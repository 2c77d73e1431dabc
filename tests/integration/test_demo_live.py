"""`caretally demo` live: it starts its own embedded broker and worker, and what it
summarises is what an offline replay of its saved log, and of its archive, gives."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from streams.cli.main import cli


def _json_lines(text: str) -> list[dict]:
    return [orjson.loads(line) for line in text.splitlines() if line.strip()]


def test_demo_runs_and_summarises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    saved, archive = tmp_path / "demo.ndjson", tmp_path / "archive"
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # the worker it starts runs here too
    result = CliRunner().invoke(
        cli, ["demo", "--patients", "12", "--save-log", str(saved), "--archive", str(archive)]
    )
    assert result.exit_code == 0, result.output
    assert list(cwd.iterdir()) == []  # nothing left behind unless asked (no Faust data dir)
    assert "billing summary" in result.output
    assert "estimated payment" in result.output
    # the saved log replays offline to the same patient-months the demo summarised
    replay = CliRunner().invoke(cli, ["replay", "--input", str(saved)])
    assert replay.exit_code == 0
    assert f"billing summary ({len(_json_lines(replay.stdout))} patient-months)" in " ".join(
        result.output.split()
    )
    # ... and so does the archive the demo's archiver wrote (the DuckDB replay)
    from_archive = CliRunner().invoke(cli, ["replay", "--input", str(archive), "--workers", "1"])
    assert from_archive.exit_code == 0, from_archive.output
    assert _json_lines(from_archive.stdout) == _json_lines(replay.stdout)

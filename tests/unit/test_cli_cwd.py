"""Nothing is left in the current folder unless asked: the offline demo and the commands
that read files write only where they are told, and Faust's data directory (which Faust
would make as ``<app id>-data`` in the current folder) lives in the worker's state folder.
The live demo is checked the same way in tests/integration/test_demo_live.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from streams.cli.main import cli
from streams.kafka.topics import Topics
from streams.worker.app import WorkerConfig, build_app


@pytest.fixture
def cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cwd"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder


def test_offline_demo_and_readers_leave_the_folder_empty(cwd: Path, tmp_path: Path) -> None:
    log = tmp_path / "kept" / "sample.ndjson"
    log.parent.mkdir()
    runner = CliRunner()
    steps = [
        ["demo", "--offline", "--patients", "4", "--save-log", str(log)],
        ["replay", "--input", str(log), "--format", "table"],
        [
            *("audit", "--input", str(log), "--org", "practice-17", "--patient", "P-000001"),
            *("--month", "2025-03", "--format", "json"),
        ],
        ["schema"],
    ]
    for args in steps:
        result = runner.invoke(cli, args)
        assert result.exit_code == 0, (args, result.output)
    assert log.stat().st_size > 0
    assert list(cwd.iterdir()) == []


def test_faust_keeps_its_data_directory_in_the_state_folder(cwd: Path, tmp_path: Path) -> None:
    topics = Topics(prefix="t.")
    state = tmp_path / "state"
    for role in ("all", "gate"):
        cfg = WorkerConfig(kafka="127.0.0.1:1", topics=topics, role=role, state_dir=state)
        app = build_app(cfg, {topics.events: "log-id", topics.staff: "staff-id"})
        assert app.conf.datadir == state / f"faust-{role}"
        app._create_directories()  # what Faust does when the worker starts
    assert sorted(p.name for p in state.iterdir()) == ["faust-all", "faust-gate"]
    assert list(cwd.iterdir()) == []

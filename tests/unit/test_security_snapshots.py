"""Security hardening (#9), items 4 and 10: the worker's snapshots are data, never code;
its state folders are private; a worker follows its log across a broker restart.

* A pickle planted in the state folder is never opened (it used to run as the worker).
* Fold a prefix, snapshot, load into a fresh slot, fold the rest: the same outputs and
  billing as one uninterrupted fold (the data-only codec loses nothing).
* State folders are created 0700; a group/world-writable one, or another user's, is
  refused by ``caretally worker`` with a one-line error.
* A worker left running while the broker restarts (new, empty topics) and the log is
  restored refolds the new log instead of skipping every offset it had passed.

The planted pickle and the broker restart run a real worker on a real broker:
tests/integration/test_security_snapshots_pipeline.py.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from projections.staff import StaffProjector
from streams.demo.synthetic import generate_events, generate_practice_log
from streams.kafka.broker import free_port
from streams.worker import state_codec
from streams.worker.app import staff_item
from streams.worker.partition import STAFF, FoldPartition
from streams.worker.snapshots import Slot, SnapshotStore


def lines_of(events: Any) -> list[bytes]:
    return [orjson.dumps(e) for e in events]


# -- the data-only codec round-trips the fold ----------------------------------------


def _outputs(part: FoldPartition, raws: list[bytes]) -> list[tuple[Any, ...]]:
    return [(o.topic, o.key, o.value, o.headers) for raw in raws for o in part.apply(raw)]


def _staff_alerts(proj: StaffProjector, outs: list[tuple[Any, ...]]) -> list[Any]:
    return [a for o in outs if o[0] == STAFF for a in proj.apply(staff_item(o[2]))]


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    seed=st.integers(min_value=0, max_value=10_000),
    size=st.integers(min_value=50, max_value=500),
    cut=st.floats(min_value=0.0, max_value=1.0),
)
def test_fold_snapshot_load_and_fold_the_rest_equals_one_fold(
    seed: int, size: int, cut: float
) -> None:
    raws = lines_of(generate_events(size, seed=seed, orgs=2))
    at = int(len(raws) * cut)
    whole = FoldPartition()
    expected = _outputs(whole, raws[:at])
    now = whole.latest or datetime(2025, 3, 20, tzinfo=UTC)
    expected += [(o.topic, o.key, o.value, o.headers) for o in whole.sweep(now)]
    expected += _outputs(whole, raws[at:])
    whole_staff = StaffProjector()
    expected_staff = _staff_alerts(whole_staff, expected)

    first = FoldPartition()
    head = _outputs(first, raws[:at])
    head += [(o.topic, o.key, o.value, o.headers) for o in first.sweep(now)]
    first_staff = StaffProjector()
    staff_head = _staff_alerts(first_staff, head)
    with tempfile.TemporaryDirectory() as tmp:
        folds = SnapshotStore(Path(tmp) / "s", "fold", log_id="log-1")
        staffs = SnapshotStore(Path(tmp) / "s", "staff", log_id="staff-1")
        folds.save(0, Slot(first, next_offset=at, dirty=True))
        staffs.save(0, Slot(first_staff, next_offset=len(head), dirty=True))
        fold_slot, staff_slot = folds.load(0), staffs.load(0)
    assert fold_slot is not None and staff_slot is not None
    assert fold_slot.next_offset == at
    rest = _outputs(fold_slot.state, raws[at:])
    assert head + rest == expected
    assert staff_head + _staff_alerts(staff_slot.state, rest) == expected_staff
    final = fold_slot.state.projector
    assert [b.view() for b in final.billing()] == [b.view() for b in whole.projector.billing()]
    assert final.closed_claims == whole.projector.closed_claims
    assert fold_slot.state.swept == whole.swept and fold_slot.state.latest == whole.latest
    assert state_codec.encode(fold_slot.state) == state_codec.encode(whole)
    assert state_codec.encode(staff_slot.state) == state_codec.encode(whole_staff)


def test_the_codec_builds_only_state_types() -> None:
    """Data naming anything but a registered state class is refused, not imported."""
    for doc in (
        {"$": "os.system", "v": {"command": "touch /tmp/x"}},
        {"$": "FoldPartition", "v": {"projector": None, "swept": {}, "latest": None, "x": 1}},
        {"$": "Outcome", "v": {}},
        {"__reduce__": "x"},
    ):
        with pytest.raises(state_codec.CodecError):
            state_codec.decode(orjson.dumps(doc))
    with pytest.raises(state_codec.CodecError):
        state_codec.encode(object())


def test_a_snapshot_that_is_not_a_private_file_of_ours_is_ignored(tmp_path: Path) -> None:
    part = FoldPartition()
    _outputs(part, lines_of(generate_practice_log(seed=1, patients=3)))
    store = SnapshotStore(tmp_path / "s", "fold", log_id="log-1")
    store.save(1, Slot(part, next_offset=7))
    path = tmp_path / "s" / "fold-1.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert store.load(1) is not None
    os.chmod(path, 0o666)  # anyone could have written it
    assert store.load(1) is None
    os.chmod(path, 0o600)
    (tmp_path / "s" / "fold-2.json").symlink_to(path)
    assert store.load(2) is None
    assert SnapshotStore(tmp_path / "s", "fold", log_id="log-2").load(1) is None


# -- private state folders ----------------------------------------------------------------


def run_worker_cli(state_dir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """``caretally worker`` against a port nothing listens on: it stops at its checks."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "streams.cli.main",
            "worker",
            "--bootstrap",
            f"127.0.0.1:{free_port()}",
            "--state-dir",
            str(state_dir),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "CARETALLY_TOPIC_PREFIX": ""},
    )


def test_state_folders_are_created_0700(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o755)
    state = tmp_path / "a" / "b"
    run_worker_cli(state, "--app-id", "app1")
    for folder in (tmp_path / "a", state, state / "app1"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    store = SnapshotStore(tmp_path / "x" / "y", "fold", log_id="l")
    store.save(0, Slot(FoldPartition()))
    assert stat.S_IMODE((tmp_path / "x").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "x" / "y").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "x" / "y" / "fold-0.json").stat().st_mode) == 0o600


@pytest.mark.parametrize("mode", [0o777, 0o775, 0o1777])
def test_a_state_folder_others_can_write_is_refused(tmp_path: Path, mode: int) -> None:
    state = tmp_path / "state"
    state.mkdir()
    os.chmod(state, mode)
    done = run_worker_cli(state)
    assert done.returncode != 0
    assert "group- or world-writable" in done.stderr, done.stderr
    assert str(state) in done.stderr
    assert "Traceback" not in done.stderr
    assert not list(state.iterdir())  # nothing written into it


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a folder to another user")
def test_a_state_folder_of_another_user_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    (state / "caretally").mkdir(parents=True, mode=0o700)
    os.chown(state / "caretally", 65534, 65534)
    done = run_worker_cli(state)
    assert done.returncode != 0
    assert "belongs to another user" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr

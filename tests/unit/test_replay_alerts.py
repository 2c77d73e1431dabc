"""`caretally replay --alerts` (docs/design.md "The command line"): the alerts of a log,
offline, are what the worker sends to ``care.alerts.v1`` for the same records: the same
values byte for byte (so the same ids), in the same order, from a file or the archive.

The reference is the worker's own code run without a broker: ``FoldPartition`` (its
fold) record by record, the ``care.staff.v1`` records it sends through ``staff_item`` and
a ``StaffProjector`` per staff key (its staff agent), and ``FoldPartition.sweep`` (its
daily sweep) at noon of ``--today`` in the practice's zone.
"""

from __future__ import annotations

import csv
import gzip
import io
from collections import Counter
from datetime import UTC, date, datetime, time
from pathlib import Path
from zoneinfo import ZoneInfo

import orjson
import pytest
from click.testing import CliRunner, Result

from projections.staff import StaffProjector
from schemas.events import parse_event
from streams.archive.store import read_raw, write_events
from streams.cli.exits import EXIT_BAD_LINES
from streams.cli.main import cli
from streams.demo.synthetic import generate_practice_log
from streams.files.logfile import BadLine
from streams.kafka.records import alert_value, staff_item
from streams.render.alerts import CSV_COLUMNS
from streams.worker.alert_replay import AlertStats, replay_alerts
from streams.worker.partition import ALERTS, STAFF, FoldPartition
from support.builders import Log

NY = "America/New_York"
EVERY_KIND_BUT_THE_SWEEP = {
    "threshold_crossed",
    "threshold_revoked",
    "overlap",
    "double_count",
    "staff_overlap",
    "late_activity",
}


def worker_alerts(raws: list[bytes], today: date | None = None, tz: str = NY) -> list[bytes]:
    """The ``care.alerts.v1`` values the worker sends for the log ``raws`` (see module doc)."""
    part = FoldPartition()
    staff: dict[bytes, StaffProjector] = {}
    out: list[bytes] = []
    for raw in raws:
        outs = part.apply(raw)
        out += [o.value for o in outs if o.topic == ALERTS and o.value is not None]
        for o in outs:
            if o.topic == STAFF:
                assert o.key is not None and o.value is not None
                fold = staff.setdefault(o.key, StaffProjector())
                out += [alert_value(a) for a in fold.apply(staff_item(o.value))]
    if today is not None:
        now = datetime.combine(today, time(12), ZoneInfo(tz))
        out += [o.value for o in part.sweep(now) if o.value is not None]
    return out


def offline(
    raws: list[bytes], as_of: datetime | None = None, today: date | None = None
) -> list[bytes]:
    return list(replay_alerts(enumerate(raws, 1), as_of=as_of, today=today))


def kinds(values: list[bytes]) -> Counter[str]:
    return Counter(orjson.loads(v)["kind"] for v in values)


def hand_built() -> Log:
    """Every kind an event raises: crossed, revoked, overlap, double count, staff overlap,
    late activity (a month closed, then an activity and a void in it); P-4 ends March 5
    minutes short of 99490, for the sweep. ``recorded_at`` rises with the log."""
    log = Log(recorded_at="2025-03-01T12:00:00Z")
    log.practice(timezone=NY)
    for patient in ("P-1", "P-2", "P-3", "P-4"):
        log.documented(patient)
    log.consent("P-1", "bhi")
    log.recorded_at = "2025-03-03T20:00:00Z"
    log.activity("P-1", "a1", "2025-03-03T10:00:00-05:00", 20)  # 10:00-10:20: crossed
    log.activity("P-1", "a2", "2025-03-03T10:10:00-05:00", 20)  # overlaps a1
    log.activity("P-1", "b1", "2025-03-03T10:25:00-05:00", 30, program="bhi")  # double count
    log.activity("P-2", "c1", "2025-03-03T10:15:00-05:00", 25)  # RN-1 on P-1 then too
    log.recorded_at = "2025-03-10T20:00:00Z"
    log.activity("P-3", "t1", "2025-03-10T10:00:00-04:00", 15, staff="RN-3")
    log.activity("P-3", "t2", "2025-03-11T10:00:00-04:00", 10, staff="RN-3")  # crossed
    log.void("P-3", "t2")  # revoked
    log.activity("P-4", "d1", "2025-03-12T10:00:00-04:00", 15, staff="RN-4")
    log.recorded_at = "2025-04-07T19:00:00Z"
    log.close("2025-03")
    log.recorded_at = "2025-04-08T15:00:00Z"
    log.activity("P-3", "t3", "2025-03-31T10:00:00-04:00", 10, staff="RN-3")  # late
    log.void("P-1", "a1")  # late, a void
    return log


def raws_of(log: Log) -> list[bytes]:
    return [orjson.dumps(e) for e in log.raw]


def practice_log() -> list[bytes]:
    # seed 14: two months, a close, late activities, staff overlaps (about 1,000 events)
    events = generate_practice_log(seed=14, patients=40, months=("2025-03", "2025-04"))
    return [orjson.dumps(e) for e in events]


def write_log(tmp_path: Path, raws: list[bytes], name: str = "events.ndjson") -> Path:
    path = tmp_path / name
    path.write_bytes(b"\n".join(raws) + b"\n")
    return path


def archive(root: Path, raws: list[bytes], partitions: int, flush_rows: int = 7) -> Path:
    events = ((parse_event(r), r) for r in raws)
    write_events(root, events, partitions=partitions, flush_rows=flush_rows)
    return root


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, ["replay", "--alerts", *args])


# -- the same alerts as the worker ---------------------------------------------------------


def test_a_hand_built_log_gives_the_workers_alerts_byte_for_byte() -> None:
    raws = raws_of(hand_built())
    expected = worker_alerts(raws)
    got = offline(raws)
    assert got == expected
    found = kinds(got)
    assert set(found) >= EVERY_KIND_BUT_THE_SWEEP, found
    assert found["late_activity"] == 2
    assert found["staff_overlap"] == 6  # c1 on P-2 meets a1, a2, b1 on P-1: 3 pairs, 2 sides
    assert "threshold_approaching" not in found  # the sweep runs only with --today
    ids = [orjson.loads(v)["alert_id"] for v in got]
    assert len(set(ids)) == len(ids)


def test_a_generated_practice_log_gives_the_workers_alerts_byte_for_byte() -> None:
    raws = practice_log()
    got = offline(raws)
    assert got == worker_alerts(raws)
    found = kinds(got)
    assert {"threshold_crossed", "staff_overlap", "late_activity"} <= set(found), found


@pytest.mark.parametrize("partitions", [1, 3])
def test_the_archive_gives_the_same_alerts_as_the_log(tmp_path: Path, partitions: int) -> None:
    raws = practice_log()
    root = archive(tmp_path / "archive", raws, partitions, flush_rows=200)
    got = list(replay_alerts(enumerate(read_raw(root), 1)))
    assert got == worker_alerts(raws)
    hand = raws_of(hand_built())
    root = archive(tmp_path / "hand", hand, partitions)
    assert list(replay_alerts(enumerate(read_raw(root), 1))) == worker_alerts(hand)


def test_as_of_leaves_out_what_was_recorded_later(tmp_path: Path) -> None:
    raws = raws_of(hand_built())
    cut = datetime(2025, 4, 1, tzinfo=UTC)  # before the close
    known = [r for r in raws if parse_event(r).recorded_at <= cut]
    stats = AlertStats()
    got = list(replay_alerts(enumerate(raws, 1), as_of=cut, stats=stats))
    assert got == worker_alerts(known)
    assert got == offline(raws)[: len(got)] and len(got) < len(offline(raws))
    assert "late_activity" not in kinds(got)
    assert stats.skipped_as_of == len(raws) - len(known) > 0
    root = archive(tmp_path / "archive", raws, 2)
    assert list(replay_alerts(enumerate(read_raw(root, as_of=cut), 1), as_of=cut)) == got


def test_today_adds_the_daily_sweep_after_the_replay() -> None:
    raws = raws_of(hand_built())
    plain = offline(raws)
    swept = offline(raws, today=date(2025, 3, 26))
    assert swept == worker_alerts(raws, today=date(2025, 3, 26))
    assert swept[: len(plain)] == plain
    tail = [orjson.loads(v) for v in swept[len(plain) :]]
    assert [(a["kind"], a["patient_id"], a["code"]) for a in tail] == [
        ("threshold_approaching", "P-4", "99490")
    ]
    assert tail[0]["cause_event_id"] is None
    assert "5 more minute(s) with 5 day(s) left" in tail[0]["detail"]
    # too early in the month, or another month: nothing approaches
    assert offline(raws, today=date(2025, 3, 10)) == plain
    assert offline(raws, today=date(2025, 5, 30)) == plain


def test_an_activity_moved_to_another_staff_member_overlaps_as_theirs() -> None:
    """An amendment that re-assigns an activity leaves the old staff member's intervals
    and joins the new one's: it overlaps the new one's other patient."""
    log = Log(recorded_at="2025-03-03T20:00:00Z")
    log.practice(timezone=NY)
    log.activity("P-1", "a1", "2025-03-03T10:00:00-05:00", 20, staff="RN-1")
    log.activity("P-1", "a1", "2025-03-03T10:00:00-05:00", 20, staff="RN-2")  # re-assigned
    log.activity("P-2", "b1", "2025-03-03T10:05:00-05:00", 20, staff="RN-2")
    got = [orjson.loads(v) for v in offline(raws_of(log))]
    overlaps = [a for a in got if a["kind"] == "staff_overlap"]
    assert sorted(a["patient_id"] for a in overlaps) == ["P-1", "P-2"]
    assert all("staff RN-2" in a["detail"] for a in overlaps)


def test_bad_records_are_reported_and_skipped_as_replay_does() -> None:
    raws = raws_of(hand_built())
    lines: list[tuple[int, bytes | str]] = list(enumerate(raws, 1))
    lines[3:3] = [(100, b"{not json"), (101, "too_large: line longer than 9 bytes")]
    lines.append((102, raws[-1]))  # re-sent: a duplicate, no alert
    conflict = orjson.loads(raws[-1]) | {"source": "another body"}
    lines.append((103, orjson.dumps(conflict)))  # the same event_id, another body
    bad: list[BadLine] = []
    stats = AlertStats()
    got = list(replay_alerts(lines, on_bad=bad.append, stats=stats))
    assert got == worker_alerts(raws)
    assert [b.line for b in bad] == [100, 101, 103] and stats.bad == 3
    assert bad[0].reason.startswith("event: Invalid JSON")
    assert bad[2].reason.startswith("event_id: already used")  # the worker dead-letters it
    assert (stats.records, stats.applied, stats.duplicates) == (len(raws) + 4, len(raws), 1)
    assert stats.alerts == len(got)


# -- the command -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[bytes], Path, Path]:
    """The hand-built log as an NDJSON file and as a two-partition archive."""
    tmp = tmp_path_factory.mktemp("alerts")
    raws = raws_of(hand_built())
    return raws, write_log(tmp, raws), archive(tmp / "archive", raws, 2)


@pytest.mark.parametrize("source", ["file", "archive"])
def test_json_is_one_alert_per_line_as_the_worker_sends_it(
    sample: tuple[list[bytes], Path, Path], source: str
) -> None:
    raws, log, root = sample
    result = run("--input", str(log if source == "file" else root))
    assert result.exit_code == 0, result.output
    assert result.stdout.encode().splitlines() == worker_alerts(raws)
    assert f"{len(worker_alerts(raws))} alert(s)" in result.stderr
    assert "P-1" not in result.stderr  # no patient id in the summary


def test_csv_has_a_header_and_every_field(sample: tuple[list[bytes], Path, Path]) -> None:
    raws, log, _root = sample
    result = run("--input", str(log), "--format", "csv", "--today", "2025-03-26")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert list(rows[0]) == CSV_COLUMNS
    expected = [orjson.loads(v) for v in worker_alerts(raws, today=date(2025, 3, 26))]
    assert rows == [{k: "" if a[k] is None else str(a[k]) for k in CSV_COLUMNS} for a in expected]
    assert rows[-1]["kind"] == "threshold_approaching"


def test_table_is_readable(sample: tuple[list[bytes], Path, Path], tmp_path: Path) -> None:
    raws, log, _root = sample
    out = tmp_path / "alerts.txt"
    result = run("--input", str(log), "--format", "table", "--output", str(out))
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    text = out.read_text(encoding="utf-8")
    n = len(worker_alerts(raws))
    assert f"{n} alert(s): " in text and "late_activity 2" in text
    assert "staff_overlap" in text and "lands in closed month 2025-03" in text


def test_as_of_and_today_on_the_command_line(sample: tuple[list[bytes], Path, Path]) -> None:
    raws, _log, root = sample
    cut = "2025-04-01T00:00:00Z"
    result = run("--input", str(root), "--as-of", cut, "--today", "2025-03-26")
    assert result.exit_code == 0, result.output
    known = [r for r in raws if parse_event(r).recorded_at <= datetime(2025, 4, 1, tzinfo=UTC)]
    assert result.stdout.encode().splitlines() == worker_alerts(known, today=date(2025, 3, 26))


def test_bad_lines_exit_3_with_their_line_number(tmp_path: Path) -> None:
    raws = raws_of(hand_built())
    path = write_log(tmp_path, [*raws[:4], b"{not json", *raws[4:]])
    result = run("--input", str(path))
    assert result.exit_code == EXIT_BAD_LINES
    assert f"{path}:5: rejected: event: Invalid JSON" in result.stderr
    assert result.stdout.encode().splitlines() == worker_alerts(raws)
    assert "1 rejected" in result.stderr


def test_a_file_that_cannot_be_read_to_its_end_fails(tmp_path: Path) -> None:
    whole = gzip.compress(b"\n".join(raws_of(hand_built())) + b"\n")
    path = tmp_path / "events.ndjson.gz"
    path.write_bytes(whole[: len(whole) // 2])  # cut short
    result = run("--input", str(path))
    assert result.exit_code == 1, result.output
    assert f"error: reading {path} failed: " in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["replay", "--today", "2025-03-26"], "--today is the day of the threshold_approaching"),
        (["replay", "--alerts", "--workers", "2"], "--workers shares the billing replay"),
        (["replay", "--alerts", "--today", "2025-3-26"], "'2025-3-26' is not a date"),
        (["replay", "--alerts", "--today", "2025-02-30"], "'2025-02-30' is not a date"),
    ],
)
def test_options_that_do_not_go_together_are_usage_errors(
    sample: tuple[list[bytes], Path, Path], args: list[str], message: str
) -> None:
    _raws, log, _root = sample
    result = CliRunner().invoke(cli, [*args, "--input", str(log)])
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert result.stdout == ""

"""No org id can stop the archive (issue #9, item 5).

The archive used to percent-encode the org id into one folder name: 100 ``%`` (300
bytes) or 43 CJK characters (387 bytes) exceed the 255-byte limit of a file name, the
flush fails with ``File name too long``, and ``caretally archive`` stops at that offset
on every restart, for every practice. Now the folder is a fixed-length key and the id
stays in the rows (and in ``_orgs.json`` for people); every reader takes it from the
rows, so archives of the old layout (or of both) still read the same.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
import pytest
from builders import Log
from click.testing import CliRunner
from kafka import KafkaProducer

from projections.engine import replay
from schemas.events import parse_event
from streams.archive.archiver import archive_once
from streams.archive.restore import LogWriter
from streams.archive.store import archive_files, org_dir, org_months, read_raw, write_events
from streams.cli.main import cli
from streams.kafka.broker import EmbeddedBroker
from streams.kafka.topics import Topics, ensure_topics

PARTS = 3
PERCENT = "%" * 100  # 300 bytes percent-encoded
CJK = "診療所" * 20  # 60 characters, 180 bytes of UTF-8, 540 percent-encoded
PLAIN = "practice-ok"
DOCTOR = "dr. 診療所 #2"  # short enough for the old layout too
NAME_MAX = 255


def org_log(org: str, tag: str) -> list[bytes]:
    """A billable CCM month of two patients of ``org`` (event ids short: the org is long)."""
    log = Log(org=org, recorded_at="2025-03-20T12:00:00Z")
    log.practice()
    for patient in ("P-1", "P-2"):
        log.documented(patient)
        log.activity(patient, f"a-{patient}", "2025-03-03T10:00:00-05:00", 25)
    log.activity("P-1", "a-more", "2025-03-10T10:00:00-05:00", 22)
    for i, ev in enumerate(log.raw):
        ev["event_id"] = f"{tag}-e{i}"
    return [orjson.dumps(e) for e in log.raw]


def all_lines() -> list[bytes]:
    return org_log(PLAIN, "k") + org_log(PERCENT, "p") + org_log(CJK, "c")


def fold_views(lines: list[bytes]) -> list[dict[str, Any]]:
    return [b.view() for b in replay([parse_event(line) for line in lines])]


def cli_json(*args: str) -> list[dict[str, Any]]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return [orjson.loads(line) for line in result.stdout.splitlines()]


def sql_views(root: Path) -> list[dict[str, Any]]:
    q = "SELECT * FROM patient_months ORDER BY org_id, patient_id, month"
    return cli_json("sql", q, "--archive", str(root), "--format", "json")


def test_long_and_cjk_org_ids_are_archived_and_read_back(
    broker: EmbeddedBroker, topics: Topics, tmp_path: Path
) -> None:
    ensure_topics(broker.bootstrap, topics, PARTS)
    lines = all_lines()
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=5)
    writer = LogWriter(producer, topics, PARTS)
    for line in lines:
        writer.write(line)
    producer.flush()
    producer.close()
    assert writer.acked == writer.records

    root = tmp_path / "archive"
    stats = archive_once(broker.bootstrap, topics, root, flush_rows=4)
    assert stats.rows == writer.records and stats.deadlettered == 0

    names = [p.name for p in root.rglob("*")]
    assert max(len(n.encode()) for n in names) < 64 < NAME_MAX
    assert {org for org, _ in org_months(root)} == {PLAIN, PERCENT, CJK}
    assert set(json.loads((root / "_orgs.json").read_text(encoding="utf-8")).values()) == {
        PLAIN,
        PERCENT,
        CJK,
    }

    expected = fold_views(lines)
    assert {v["org_id"] for v in expected} == {PLAIN, PERCENT, CJK}
    assert all(v["billable"] for v in expected)
    assert cli_json("replay", "--input", str(root)) == expected
    assert sql_views(root) == expected
    wanted = {
        e.event_id
        for e in map(parse_event, lines)
        if e.org_id == CJK and getattr(e, "patient_id", None) in (None, "P-1")
    }
    assert {parse_event(r).event_id for r in read_raw(root, org_id=CJK, patient_id="P-1")} == (
        wanted
    )

    # a restart resumes after them (nothing to do, no error)
    again = archive_once(broker.bootstrap, topics, root, flush_rows=4)
    assert again.rows == 0


def test_an_archive_in_the_old_folder_layout_still_reads_the_same(tmp_path: Path) -> None:
    """Readers never take the org from a folder name: an archive written with the old
    percent-encoded names (short ids fitted) and one mixing both layouts read alike."""
    lines = org_log(PLAIN, "k") + org_log(DOCTOR, "d")
    root = tmp_path / "archive"
    write_events(root, ((parse_event(r), r) for r in lines), partitions=2, flush_rows=3)
    expected = fold_views(lines)
    assert sql_views(root) == expected
    before = sorted(read_raw(root))

    old = tmp_path / "old"
    shutil.copytree(root, old)
    (old / "_orgs.json").unlink(missing_ok=True)  # the old layout had no manifest
    old_name = old / f"org={quote(DOCTOR, safe='')}"
    if not old_name.exists():  # one org moves to the old layout: a mixed archive
        (old / org_dir(DOCTOR)).rename(old_name)
    assert len(archive_files(old)) == len(archive_files(root))
    assert sorted(read_raw(old)) == before
    assert cli_json("replay", "--input", str(old)) == expected
    assert sql_views(old) == expected
    assert {org for org, _ in org_months(old)} >= {DOCTOR}


@pytest.mark.parametrize("org", [PERCENT, CJK], ids=["percent", "cjk"])
def test_write_events_takes_an_org_id_of_any_length(tmp_path: Path, org: str) -> None:
    lines = org_log(org, "x")
    root = tmp_path / "archive"
    assert write_events(root, ((parse_event(r), r) for r in lines), partitions=1) == len(lines)
    assert cli_json("replay", "--input", str(root)) == fold_views(lines)

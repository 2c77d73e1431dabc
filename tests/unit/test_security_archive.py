"""No org id can stop the archive (issue #9, item 5).

The archive used to percent-encode the org id into one folder name: 100 ``%`` (300
bytes) or 43 CJK characters (387 bytes) exceed the 255-byte limit of a file name, the
flush fails with ``File name too long``, and ``caretally archive`` stops at that offset
on every restart, for every practice. Now the folder is a fixed-length key and the id
stays in the rows (and in ``_orgs.json`` for people); every reader takes it from the
rows, so archives of the old layout (or of both) still read the same. Archived from a
real broker: tests/integration/test_security_archive_pipeline.py.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import quote

import pytest

from schemas.events import parse_event
from streams.archive.store import archive_files, org_dir, org_months, read_raw, write_events
from support.archive import CJK, DOCTOR, PERCENT, PLAIN, cli_json, fold_views, org_log, sql_views


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

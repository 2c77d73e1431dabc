"""No org id can stop the archive (issue #9, item 5), on a real broker: ids of 300
percent-encoded bytes or 60 CJK characters are archived from the log and read back by
replay, SQL and ``read_raw`` (the layouts without a broker: tests/unit/test_security_archive.py).
"""

from __future__ import annotations

import json
from pathlib import Path

from kafka import KafkaProducer

from schemas.events import parse_event
from streams.archive.archiver import archive_once
from streams.archive.restore import LogWriter
from streams.archive.store import org_months, read_raw
from streams.kafka.broker import EmbeddedBroker
from streams.kafka.topics import Topics, ensure_topics
from support.archive import (
    CJK,
    NAME_MAX,
    PARTS,
    PERCENT,
    PLAIN,
    all_lines,
    cli_json,
    fold_views,
    sql_views,
)


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

"""The archive as tests check it: a log written as the gate writes it, read back record by
record, and the archive's rows held to it (exactly once, flushes tiling each partition);
org ids no file name can hold, and what the archive's readers give for them."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import duckdb
import orjson
from click.testing import CliRunner
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from projections.engine import replay
from schemas.events import parse_event
from streams.archive.archiver import fetch_highwaters
from streams.archive.restore import LogWriter
from streams.archive.store import archive_files, committed, next_offsets
from streams.cli.main import cli
from streams.demo.synthetic import generate_events
from streams.kafka.topics import Topics
from support.builders import Log

PARTS = 3


def lines_of(n: int, seed: int) -> list[bytes]:
    return [orjson.dumps(e) for e in generate_events(n, seed=seed, orgs=2)]


def producer(bootstrap: str) -> Any:
    return KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, batch_size=64 * 1024)


def write_log(bootstrap: str, topics: Topics, lines: list[bytes]) -> int:
    """Write lines straight to the log as the ingress gate would (keys, headers, broadcast)."""
    p = producer(bootstrap)
    writer = LogWriter(p, topics, PARTS)
    for line in lines:
        writer.write(line)
    p.flush()
    p.close()
    assert writer.acked == writer.records
    return writer.records


def read_records(bootstrap: str, topic: str, parts: int = PARTS) -> dict[tuple[int, int], Any]:
    """Every record of a topic, by (partition, offset), read up to the fetch highwater."""
    ends = fetch_highwaters(bootstrap, topic, range(parts))
    c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    tps = [TopicPartition(topic, p) for p in range(parts)]
    c.assign(tps)
    for tp in tps:
        c.seek(tp, 0)
    out: dict[tuple[int, int], Any] = {}
    deadline = time.monotonic() + 60
    while any(c.position(tp) < ends[tp.partition] for tp in tps):
        assert time.monotonic() < deadline, "the log could not be read back"
        for tp, records in c.poll(timeout_ms=200).items():
            for r in records:
                out[(tp.partition, r.offset)] = r
    c.close()
    assert len(out) == sum(ends.values())
    return out


def read_log(bootstrap: str, topic: str, parts: int = PARTS) -> dict[tuple[int, int], bytes]:
    """Every record's value, by (partition, offset)."""
    return {k: r.value for k, r in read_records(bootstrap, topic, parts).items()}


def archived(root: Path) -> list[tuple[int, int, bytes]]:
    files = [str(p) for p in archive_files(root)]
    if not files:
        return []
    con = duckdb.connect()
    try:
        rows = con.execute(
            'SELECT partition, "offset", raw FROM read_parquet(?)', [files]
        ).fetchall()
    finally:
        con.close()
    return [(p, o, bytes(r)) for p, o, r in rows]


def assert_exactly_once(root: Path, log: dict[tuple[int, int], bytes]) -> None:
    """Every (partition, offset) of the log is archived once, with its exact bytes, and the
    committed flushes tile each partition from 0 with no gap or overlap."""
    rows = archived(root)
    seen = Counter((p, o) for p, o, _ in rows)
    dupes = {k: n for k, n in seen.items() if n > 1}
    assert not dupes, f"archived more than once: {sorted(dupes)[:10]}"
    assert set(seen) == set(log), (
        f"missing {sorted(set(log) - set(seen))[:10]}, extra {sorted(set(seen) - set(log))[:10]}"
    )
    assert all(raw == log[(p, o)] for p, o, raw in rows)
    by_part: dict[int, list[Any]] = {}
    for f in sorted(committed(root)):
        by_part.setdefault(f.partition, []).append(f)
    for p, flushes in by_part.items():
        expect = 0
        for f in flushes:
            assert f.first == expect, f"partition {p}: flush {f.name} after offset {expect - 1}"
            expect = f.last + 1
    ends: dict[int, int] = {}
    for p, o in log:
        ends[p] = max(ends.get(p, 0), o + 1)
    assert next_offsets(root) == ends


# --- org ids of any length (issue #9, item 5) ---------------------------------------------

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
    return cli_json("sql", q, "--input", str(root), "--format", "json")

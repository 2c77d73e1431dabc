"""Claim line ids and claim file names (issue #9, item 13) through ``caretally close`` and
the worker on a real broker (the rules themselves: tests/unit/test_security_claims.py).

* Orgs whose ids render alike each get their own claim file pair.
* Exported claim line ids are keyed by the close: the attacker who knows the formula of the
  unkeyed design learns nothing, and the worker's ``late_activity`` alert, an offline fold
  of the log and ``--export-only`` all name the same line.
"""

from __future__ import annotations

import asyncio
import csv
import io
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from projections.engine import Projector
from schemas.events import parse_event
from streams.cli.main import cli
from streams.demo.client import Follower, produce
from streams.demo.live import expected_views
from streams.kafka.broker import EmbeddedBroker
from streams.kafka.log_reader import read_to_end
from streams.kafka.topics import Topics, ensure_topics
from support.builders import Log
from support.claims import TARGET, guesses
from support.pipeline import worker_for

MARCH = "2025-03"
PARTS = 3


def run_close(broker: EmbeddedBroker, topics: Topics, out: Path, *args: str) -> Any:
    base = ["close", "--bootstrap", broker.bootstrap, "--topic-prefix", topics.prefix]
    return CliRunner().invoke(cli, [*base, "--claims-dir", str(out), *args])


@pytest.mark.slow
def test_close_writes_one_file_pair_per_org_however_alike_the_ids(
    broker: EmbeddedBroker, topics: Topics, tmp_path: Path
) -> None:
    """Before: ``a_b`` and ``a b`` (and the two CJK names) wrote the same
    ``claims-a_b-2025-03.csv``, the second close overwriting the first practice's claims."""
    ensure_topics(broker.bootstrap, topics, PARTS)
    orgs = ["a_b", "a b", "診療所", "診療室"]
    for org in orgs:
        result = run_close(broker, topics, tmp_path, "--org", org, "--month", MARCH, "--force")
        assert result.exit_code == 0, result.output
    docs = [orjson.loads(p.read_bytes()) for p in sorted(tmp_path.glob("*.json"))]
    assert sorted(d["org_id"] for d in docs) == sorted(orgs)
    assert len(list(tmp_path.glob("*.csv"))) == len(orgs)


def month_log() -> Log:
    log = Log(recorded_at="2025-02-01T12:00:00Z")
    log.practice(timezone="America/Chicago")
    for pid in (TARGET, "P-000456"):
        log.documented(pid)
    log.activity(TARGET, "a1", "2025-03-03T10:00:00-06:00", 25)
    log.activity("P-000456", "b1", "2025-03-06T10:00:00-06:00", 21, staff="RN-2")
    return log


async def offline_late_alerts(bootstrap: str, topic: str) -> list[str]:
    """``late_activity`` details of a Projector per partition folding the log itself
    (what the worker does, and what any replay of the log reproduces)."""
    by_partition: dict[int, list[bytes]] = defaultdict(list)
    async for record in read_to_end(bootstrap, topic, range(PARTS)):
        by_partition[record.partition].append(record.value)
    out = []
    for _, values in sorted(by_partition.items()):
        proj = Projector()
        for raw in values:
            for alert in proj.step(parse_event(raw), raw).alerts:
                if alert.kind == "late_activity":
                    out.append(alert.detail)
    return out


@pytest.mark.slow
def test_close_ids_are_keyed_and_agree_with_the_alerts_and_export_only(
    broker: EmbeddedBroker, topics: Topics, tmp_path: Path
) -> None:
    log = month_log()
    lines = [orjson.dumps(e) for e in log.raw]
    expected = expected_views(lines)
    worker = worker_for(broker, topics, tmp_path).start()
    out = tmp_path / "claims"
    out.mkdir()
    late = Log(recorded_at="2025-04-03T12:00:00Z")
    late.activity(TARGET, "a2", "2025-03-28T10:00:00-05:00", 20, event_id="late-a2")

    async def feed() -> None:
        async with Follower(broker.bootstrap, topics, PARTS) as f:
            await produce(broker.bootstrap, topics.ingress, lines)
            assert await f.until(lambda got: got.views() == expected, 60, quiet=0.5)

    async def late_and_alerts() -> list[dict[str, Any]]:
        async with Follower(broker.bootstrap, topics, PARTS) as f:
            await produce(broker.bootstrap, topics.ingress, [orjson.dumps(late.raw[0])])
            assert await f.until(
                lambda got: any(a["kind"] == "late_activity" for a in got.alerts), 30
            )
            return f.got.alerts

    try:
        asyncio.run(feed())
        done = run_close(broker, topics, out, "--org", "o1", "--month", MARCH)
        first = {p.name: p.read_bytes() for p in out.iterdir()}
        export = run_close(broker, topics, out, "--org", "o1", "--month", MARCH, "--export-only")
        alerts = asyncio.run(late_and_alerts())
        offline = asyncio.run(offline_late_alerts(broker.bootstrap, topics.events))
    finally:
        assert worker.stop() == 0, (tmp_path / "worker.log").read_text()[-3000:]

    assert done.exit_code == 0 and export.exit_code == 0, done.output + export.output
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first  # --export-only: same ids
    [csv_path] = out.glob("*.csv")
    rows = list(csv.DictReader(io.StringIO(csv_path.read_text())))
    [line] = [r for r in rows if r["patient_id"] == TARGET]
    assert line["code"] == "99490"
    # the attacker who knows the formula learns nothing from the exported id
    assert guesses(line["claim_line_id"], "o1", MARCH, "99490", "DR-1") == []
    # the worker's alert and an offline fold of the same log name the exported line
    [alert] = [a for a in alerts if a["kind"] == "late_activity"]
    named = f"99490 by DR-1 (claim line {line['claim_line_id']}): x1 at close, x1 now"
    assert named in alert["detail"]
    assert offline == [alert["detail"]]

"""``caretally close`` end to end: a real broker and worker, its claim files held to the
core's billing of the month, and a late activity whose alert on care.alerts.v1 names the
exported claim line (the pure claim rules: tests/unit/test_close.py)."""

from __future__ import annotations

import asyncio
import csv
import io
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from projections.claims import month_claims
from projections.engine import fold
from streams.cli.main import cli
from streams.close.claim_files import claims_stem
from streams.demo.client import Follower, produce
from streams.demo.live import expected_views
from streams.kafka.broker import EmbeddedBroker
from streams.kafka.topics import Topics
from support.builders import Log
from support.pipeline import PARTS, worker_for

P, Q = "P-000123", "P-000456"
MARCH = "2025-03"


def month_log() -> Log:
    """Two patients of o1 billed in March (one with an add-on), one below threshold, a
    second org, and April time that the March claims must ignore."""
    log = Log(recorded_at="2025-02-01T12:00:00Z")
    log.practice(timezone="America/Chicago")
    for pid in (P, Q, "P-000789"):
        log.documented(pid)
    log.activity(P, "a1", "2025-03-03T10:00:00-06:00", 25)
    log.activity(P, "a2", "2025-03-17T10:00:00-05:00", 20)
    log.activity(Q, "b1", "2025-03-06T10:00:00-06:00", 21, staff="RN-2")
    log.activity("P-000789", "c1", "2025-03-06T10:00:00-06:00", 12)
    log.activity(P, "a9", "2025-04-02T10:00:00-05:00", 30)
    other = Log(org="o2", recorded_at="2025-02-01T12:00:00Z")
    other.documented("P-000999")
    other.activity("P-000999", "z1", "2025-03-06T10:00:00-05:00", 30)
    log.raw.extend(other.raw)
    return log


def run_close(broker: EmbeddedBroker, topics: Topics, out: Path, *args: str) -> Any:
    base = ["close", "--bootstrap", broker.bootstrap, "--topic-prefix", topics.prefix]
    return CliRunner().invoke(cli, [*base, "--claims-dir", str(out), *args])


@pytest.mark.slow
def test_close_exports_the_core_billing_and_a_late_activity_names_its_line(
    broker: EmbeddedBroker, topics: Topics, tmp_path: Path
) -> None:
    log = month_log()
    lines = [orjson.dumps(e) for e in log.raw]
    expected = expected_views(lines)
    worker = worker_for(broker, topics, tmp_path).start()
    out = tmp_path / "claims"
    out.mkdir()
    late = Log(recorded_at="2025-04-03T12:00:00Z")
    late.activity(Q, "b2", "2025-03-28T10:00:00-05:00", 20, staff="RN-2", event_id="late-b2")

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
        early = run_close(broker, topics, out, "--org", "o1", "--month", "2099-01")  # not over yet
        nobody = run_close(broker, topics, out, "--org", "nobody", "--month", MARCH)  # no such org
        done = run_close(broker, topics, out, "--org", "o1", "--month", MARCH)
        first_files = {p.name: p.read_bytes() for p in out.iterdir()}
        closed = run_close(broker, topics, out, "--org", "o1", "--month", MARCH)  # already closed
        export = run_close(broker, topics, out, "--org", "o1", "--month", MARCH, "--export-only")
        alerts = asyncio.run(late_and_alerts())
    finally:
        assert worker.stop() == 0, (tmp_path / "worker.log").read_text()[-3000:]

    assert (early.exit_code, nobody.exit_code) == (4, 4), early.output + nobody.output
    assert "has not ended yet" in early.output and "America/Chicago" in early.output
    assert "no records of org 'nobody'" in nobody.output
    assert done.exit_code == 0, done.output
    assert "3 claim line(s) for 2 patient(s), estimated payment $166.91" in done.output
    assert P not in done.output and Q not in done.output

    # the files hold exactly the core's claim lines of the month (an offline fold of the
    # same events: all of them were in the log before the close; ids keyed by the close)
    stem = out / claims_stem("o1", MARCH)
    doc = orjson.loads(stem.with_suffix(".json").read_bytes())
    want, total = month_claims(fold(log.events()), "o1", MARCH, doc["month_closed_event_id"])
    assert (
        total
        == round(
            sum(b.estimated_payment for b in log.billing() if (b.org_id, b.month) == ("o1", MARCH)),
            2,
        )
        == 166.91
    )
    rows = list(csv.DictReader(io.StringIO(stem.with_suffix(".csv").read_text())))
    assert rows == [
        {
            **{k: str(v) for k, v in ln.row().items()},
            "fee": f"{ln.fee:.2f}",
            "estimated_payment": f"{ln.estimated_payment:.2f}",
            "payment_provisional": "false",  # a 2025 month is priced by a final book
            "diagnosis_codes": ";".join(ln.diagnosis_codes),
            "needs_review": ";".join(ln.needs_review),
        }
        for ln in want
    ]
    assert {(r["place_of_service"], r["diagnosis_codes"], r["needs_review"]) for r in rows} == {
        ("11", "E11.9;I10", "")  # an office; the list recorded in February (docs/claims.md)
    }
    assert doc["lines"] == [ln.row() for ln in want]
    assert (doc["org_id"], doc["month"], doc["line_count"], doc["estimated_payment"]) == (
        "o1",
        MARCH,
        3,
        166.91,
    )
    assert sorted(doc["log_offsets"]) == ["0", "1", "2"]
    assert {(r["patient_id"], r["code"], r["date_of_service"]) for r in rows} == {
        (P, "99490", "2025-03-17"),
        (P, "99439", "2025-03-17"),
        (Q, "99490", "2025-03-06"),
    }

    # a second close is refused; --export-only rewrites the same files byte for byte
    assert closed.exit_code == 4 and "already closed" in closed.output
    assert doc["month_closed_event_id"] in closed.output
    assert export.exit_code == 0, export.output
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first_files

    # the late activity's alert on care.alerts.v1 names the exported claim line
    [alert] = [a for a in alerts if a["kind"] == "late_activity"]
    [line] = [r for r in rows if r["patient_id"] == Q]
    assert (alert["patient_id"], alert["month"], alert["code"]) == (Q, MARCH, "99490")
    assert alert["cause_event_id"] == "late-b2"
    assert (
        f"99490 by DR-1 (claim line {line['claim_line_id']}): x1 at close, x1 now"
        in (alert["detail"])
    )

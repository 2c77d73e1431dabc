"""Security of claim exports (issue #9, item 13): claim line ids and claim file names.

* A claim line id must not let someone who sees it (in a claim file excerpt, an alert,
  a log line) but not the org's event log test patient-id guesses: it is keyed by the
  ``event_id`` of the ``month.closed`` that produced the line, which ``caretally close``
  makes random. Replays of the same log, the worker's ``late_activity`` alerts and
  ``caretally close --export-only`` still agree on every id.
* Claim files of two orgs never share a name, however alike the org ids render.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson
import pytest
from builders import Log
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from test_pipeline import worker_for

from projections.claims import month_claims
from projections.engine import Projector, fold
from schemas.events import parse_event
from streams.cli.main import cli
from streams.close.month_close import claims_stem
from streams.demo.client import Follower, produce
from streams.demo.live import expected_views
from streams.kafka.broker import EmbeddedBroker
from streams.kafka.log_reader import read_to_end
from streams.kafka.topics import Topics, ensure_topics

MARCH = "2025-03"
PARTS = 3
TARGET = "P-000123"
# what an attacker holding a claim line id might try: a handful of plausible patient ids
CANDIDATES = ["P-000121", "P-000122", TARGET, "P-000124", "P-000125"]


def unkeyed(org: str, patient: str, month: str, code: str, practitioner: str) -> str:
    """The claim line id formula of the unkeyed design (all its inputs guessable)."""
    parts = "\x1f".join([org, patient, month, code, practitioner])
    return hashlib.blake2b(parts.encode(), digest_size=12).hexdigest()


def guesses(line_id: str, org: str, month: str, code: str, practitioner: str) -> list[str]:
    """The candidates whose unkeyed id matches ``line_id`` (what the attacker learns)."""
    return [p for p in CANDIDATES if unkeyed(org, p, month, code, practitioner) == line_id]


def ccm_month(org: str = "o1", close_id: str | None = None) -> Log:
    log = Log(org=org)
    log.practice()
    log.documented(TARGET)
    log.activity(TARGET, "a1", "2025-03-03T10:00:00-05:00", 25)
    log.close(MARCH, event_id=close_id)
    return log


def test_a_claim_line_id_does_not_give_the_patient_away() -> None:
    """The attacker knows org, month, code and practitioner (all on a claim) and five
    candidate patient ids; the id must not single out the patient."""
    log = ccm_month(close_id="month-closed-2025-03-5b0f2c1e9a8d4f7b8c3e6a1d2f4b9c07")
    [line] = month_claims(fold(log.events()), "o1", MARCH)[0]
    assert (line.patient_id, line.code) == (TARGET, "99490")
    assert guesses(line.claim_line_id, "o1", MARCH, "99490", "DR-1") == []


def test_a_claim_line_id_is_not_a_function_of_the_claim_alone() -> None:
    """Same org, patient, month, practitioner and code, closed by two different
    ``month.closed`` events: two ids (the key is the close, not anything on the claim).
    The same log folded twice gives the same id."""
    ids = []
    for close_id in ("close-one-1f0e3d2c", "close-two-9a8b7c6d", "close-one-1f0e3d2c"):
        [line] = month_claims(fold(ccm_month(close_id=close_id).events()), "o1", MARCH)[0]
        ids.append(line.claim_line_id)
    assert ids[0] != ids[1]
    assert ids[0] == ids[2]


# -- claim file names -----------------------------------------------------------------------

ALIKE = ["a_b", "a b", "a?b", "A_b", "A_B", "診療所", "診療室", "ab" * 64, "ab" * 63 + "ac"]


def test_claim_file_names_of_orgs_that_render_alike_differ() -> None:
    """Different orgs never share a claim file name, even on a case-insensitive file
    system; the name stays readable and within file-name limits."""
    stems = [claims_stem(org, MARCH) for org in ALIKE]
    assert len({s.casefold() for s in stems}) == len(ALIKE)
    assert claims_stem("practice-17", MARCH).startswith("claims-practice-17-")
    assert all(s.endswith(MARCH) and len(s.encode()) < 200 and "/" not in s for s in stems)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=20), min_size=2, max_size=6, unique=True))
def test_distinct_orgs_get_distinct_claim_file_names(orgs: list[str]) -> None:
    stems = {claims_stem(org, MARCH).casefold() for org in orgs}
    assert len(stems) == len(orgs)


# -- through the command and the worker on a real broker ------------------------------------


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
        result = run_close(broker, topics, tmp_path, "--org", org, MARCH, "--force")
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
        done = run_close(broker, topics, out, "--org", "o1", MARCH)
        first = {p.name: p.read_bytes() for p in out.iterdir()}
        export = run_close(broker, topics, out, "--org", "o1", MARCH, "--export-only")
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

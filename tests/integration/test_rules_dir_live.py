"""``caretally worker --rules DIR`` on a real broker: the fold prices with the books of the
folder, a restart with the same books restores its snapshots and keeps pricing with them,
and a restart with other books refolds the log rather than keep months priced with the
old ones; ``caretally close --rules DIR`` prices the claim lines with them (the offline
commands: tests/unit/test_cli_rules_dir.py).

``caretally serve`` takes no --rules: it evaluates nothing, it serves the views the
worker puts on care.billing.v1 (streams/http/state_cache.py), so its billing is the
worker's books."""

from __future__ import annotations

import asyncio
import re
import time
from importlib import resources
from pathlib import Path

import orjson
from click.testing import CliRunner

from projections.engine import replay
from projections.rules import SHIPPED_CATALOG, RuleCatalog
from schemas.events import parse_event
from streams.cli.main import cli
from streams.close.claim_files import claims_stem
from streams.demo.client import Follower, produce
from streams.kafka.broker import EmbeddedBroker
from streams.kafka.records import billing_key
from streams.kafka.topics import Topics
from support.builders import Log
from support.pipeline import PARTS, worker_for

P, Q = "P-000123", "P-000456"
REFOLDING = "set of rule books; refolding"


def draft_books(folder: Path) -> Path:
    """The shipped books, 99490's 2026 non-facility RVU one higher."""
    folder.mkdir()
    for entry in resources.files("projections.rules").iterdir():
        if entry.name.endswith(".toml"):
            text = entry.read_text(encoding="utf-8")
            if entry.name == "2026.toml":
                start = text.index('code = "99490"')
                rvu = re.compile(r"^rvu_nf = ([0-9.]+)", re.M).search(text, start)
                assert rvu is not None and text.find("[[codes]]", start) > rvu.start()
                new = f"rvu_nf = {float(rvu.group(1)) + 1:.2f}"
                text = text[: rvu.start()] + new + text[rvu.end() :]
            (folder / entry.name).write_text(text, encoding="utf-8")
    return folder


def expected(raws: list[bytes], catalog: RuleCatalog) -> dict[bytes, bytes]:
    """care.billing.v1 as the core evaluates ``raws`` with ``catalog``."""
    return {
        billing_key(b.org_id, b.patient_id, b.month): orjson.dumps(b.view())
        for b in replay([parse_event(r) for r in raws], catalog=catalog)
    }


def test_the_worker_folds_with_the_books_of_its_folder(
    broker: EmbeddedBroker, topics: Topics, tmp_path: Path
) -> None:
    books = draft_books(tmp_path / "books")
    draft = RuleCatalog.read_dir(books)
    log = Log(recorded_at="2026-02-01T12:00:00Z")
    log.practice()
    for pid in (P, Q):
        log.documented(pid, plan_on="2026-01-05")
    log.activity(P, "a1", "2026-03-03T10:00:00-05:00", 25)
    log.activity(Q, "b1", "2026-03-04T10:00:00-05:00", 22)
    first = [orjson.dumps(e) for e in log.raw]
    log.activity(P, "a2", "2026-03-05T10:00:00-05:00", 5)
    second = [orjson.dumps(log.raw[-1])]
    log.practice()  # the same settings again, on every partition: each one folds again
    third = [orjson.dumps(log.raw[-1])]
    with_rules = ("--rules", str(books), "--snapshot-interval", "0.2")
    state = tmp_path / "state"

    def run(lines: list[bytes], want: dict[bytes, bytes], *args: str) -> str:
        """A worker with ``args`` on ``lines`` (besides what the log holds) until the
        billing topic holds ``want``; its log."""
        log_path = tmp_path / "worker.log"
        log_path.write_bytes(b"")
        worker = worker_for(broker, topics, tmp_path, *args).start()

        async def feed() -> bool:
            async with Follower(broker.bootstrap, topics, PARTS) as f:
                await produce(broker.bootstrap, topics.ingress, lines)
                return await f.until(lambda got: got.views() == want, 60, quiet=0.5)

        try:
            assert asyncio.run(feed()), log_path.read_text()[-3000:]
            if "--rules" in args:  # a snapshot of what it folded, before it stops
                time.sleep(0.6)
                assert any(state.rglob("fold-*.json"))
        finally:
            assert worker.stop() == 0, log_path.read_text()[-3000:]
        return log_path.read_text()

    # a worker on the draft prices 99490 with it
    want = expected(first, draft)
    fee = draft.year(2026).fee("99490")
    assert fee is not None and fee != SHIPPED_CATALOG.year(2026).fee("99490")
    view = orjson.loads(want[billing_key("o1", P, "2026-03")])
    assert view["estimated_payment"] == fee
    out = run(first, want, *with_rules)
    assert f"the rule books in {books}: 2025" in out and "fees from" in out

    # restarted on the same books: its snapshots are restored and still priced with them
    out = run(second, expected(first + second, draft), *with_rules)
    assert REFOLDING not in out

    # restarted on the shipped books: the snapshots of the draft are refolded, not kept
    out = run(third, expected(first + second + third, SHIPPED_CATALOG))
    assert REFOLDING in out

    # the month closed with the draft: its claim lines are priced with it
    claims = tmp_path / "claims"
    args = ["close", "--bootstrap", broker.bootstrap, "--topic-prefix", topics.prefix]
    args += ["--org", "o1", "--month", "2026-03", "--force", "--claims-dir", str(claims)]
    done = CliRunner().invoke(cli, [*args, "--rules", str(books)])
    assert done.exit_code == 0, done.output
    assert f"rules: {books} (" in done.stderr
    doc = orjson.loads((claims / claims_stem("o1", "2026-03")).with_suffix(".json").read_bytes())
    paid = {(ln["patient_id"], ln["code"]): ln["fee"] for ln in doc["lines"]}
    assert paid[P, "99490"] == paid[Q, "99490"] == fee

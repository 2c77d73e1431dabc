"""``--rules DIR``: the offline commands evaluate with the rule books of a folder (every
``*.toml``, a complete set replacing the shipped books), say which on stderr, and refuse a
folder that is missing, empty or holds a book that fails a check, naming every problem
``file:line: key``. The worker's side without a broker: its books digest in the fold
snapshots, and the configured books on a restored fold (the live worker:
tests/integration/test_rules_dir_live.py)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner, Result

from projections.engine import Projector
from projections.rules import SHIPPED_CATALOG, RuleCatalog
from schemas.events import parse_event
from streams.archive.store import write_events
from streams.cli.main import cli
from streams.worker.app import Partitions
from streams.worker.books import books_digest
from streams.worker.partition import FoldPartition
from streams.worker.snapshots import Slot, SnapshotStore
from support.builders import Log

ORG, P, Q = "o1", "P-000123", "P-000456"
MONTH = "2026-03"
USAGE = 2  # click's usage error: a --rules folder that cannot be used


def shipped_copy(folder: Path) -> Path:
    """The shipped books copied into ``folder`` (created)."""
    folder.mkdir()
    for entry in resources.files("projections.rules").iterdir():
        if entry.name.endswith(".toml"):
            (folder / entry.name).write_text(entry.read_text(encoding="utf-8"), encoding="utf-8")
    return folder


def draft(tmp_path: Path) -> Path:
    """The shipped books with two changes in 2026: 99490's non-facility RVU one higher,
    and threshold_approaching only within 3 minutes (10 shipped)."""
    folder = shipped_copy(tmp_path / "books")
    book = folder / "2026.toml"
    text = book.read_text(encoding="utf-8")
    start = text.index('code = "99490"')
    rvu = re.compile(r"^rvu_nf = ([0-9.]+)", re.M).search(text, start)
    assert rvu is not None and text.find("[[codes]]", start) > rvu.start()  # 99490's own
    text = f"{text[: rvu.start()]}rvu_nf = {float(rvu.group(1)) + 1:.2f}{text[rvu.end() :]}"
    old = "approaching_within_minutes = 10"
    assert old in text
    book.write_text(text.replace(old, "approaching_within_minutes = 3", 1), encoding="utf-8")
    return folder


def month_log() -> Log:
    """P bills 99490 once in March 2026 (25 minutes); Q has 15 (5 short of it)."""
    log = Log(recorded_at="2026-02-01T12:00:00Z")
    log.practice()
    for pid in (P, Q):
        log.documented(pid, plan_on="2026-01-05")
    log.activity(P, "a1", "2026-03-03T10:00:00-05:00", 25)
    log.activity(Q, "b1", "2026-03-04T10:00:00-05:00", 15)
    return log


def ndjson(log: Log, path: Path) -> Path:
    path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in log.raw))
    return path


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def views(result: Result) -> dict[str, dict[str, object]]:
    assert result.exit_code == 0, result.output
    return {v["patient_id"]: v for v in map(orjson.loads, result.stdout.splitlines())}


def fees(folder: Path) -> tuple[float, float]:
    """99490's 2026 fee in the shipped books and in ``folder``'s (they differ)."""
    shipped = SHIPPED_CATALOG.year(2026).fee("99490")
    drafted = RuleCatalog.read_dir(folder).year(2026).fee("99490")
    assert shipped is not None and drafted is not None and drafted > shipped
    return shipped, drafted


# -- the books of a folder ------------------------------------------------------------------


def test_replay_prices_with_the_books_of_the_folder(tmp_path: Path) -> None:
    books = draft(tmp_path)
    shipped_fee, draft_fee = fees(books)
    path = ndjson(month_log(), tmp_path / "events.ndjson")
    shipped = run("replay", "--input", str(path))
    drafted = run("replay", "--input", str(path), "--rules", str(books))
    assert views(shipped)[P]["estimated_payment"] == shipped_fee
    assert views(drafted)[P]["estimated_payment"] == draft_fee
    assert views(drafted)[P]["billable"] == views(shipped)[P]["billable"]  # only the fee
    # which books, on stderr only (stdout is the JSON lines parsed above)
    years = ", ".join(f"{b.year}{' provisional' * b.provisional}" for b in SHIPPED_CATALOG.books)
    assert f"rules: {books} ({years})" in drafted.stderr
    assert "rules:" not in shipped.stderr


def test_a_copy_of_the_shipped_books_changes_nothing(tmp_path: Path) -> None:
    path = ndjson(month_log(), tmp_path / "events.ndjson")
    same = shipped_copy(tmp_path / "same")
    assert views(run("replay", "--input", str(path), "--rules", str(same))) == views(
        run("replay", "--input", str(path))
    )


def test_the_archive_replay_and_sql_use_the_folder(tmp_path: Path) -> None:
    books = draft(tmp_path)
    _, draft_fee = fees(books)
    log = month_log()
    root = tmp_path / "archive"
    raws = [orjson.dumps(e) for e in log.raw]
    write_events(root, [(parse_event(r), r) for r in raws], partitions=2)
    path = ndjson(log, tmp_path / "events.ndjson")
    from_file = views(run("replay", "--input", str(path), "--rules", str(books)))
    # two processes: the books travel to each share
    args = ("replay", "--input", str(root), "--workers", "2", "--rules", str(books))
    assert views(run(*args)) == from_file
    query = f"SELECT estimated_payment FROM patient_months WHERE patient_id = '{P}'"
    sql = run("sql", query, "--input", str(root), "--format", "json", "--rules", str(books))
    assert sql.exit_code == 0, sql.output
    assert orjson.loads(sql.stdout) == {"estimated_payment": draft_fee}


def test_audit_evaluates_the_month_with_the_folder(tmp_path: Path) -> None:
    books = draft(tmp_path)
    shipped_fee, draft_fee = fees(books)
    path = ndjson(month_log(), tmp_path / "events.ndjson")
    base = ["audit", "--input", str(path), "--org", ORG, "--patient", P, "--month", MONTH]
    paid = []
    for extra in ([], ["--rules", str(books)]):
        result = run(*base, "--format", "json", *extra)
        assert result.exit_code == 0, result.output
        paid.append(orjson.loads(result.stdout)["billing"]["estimated_payment"])
    assert paid == [shipped_fee, draft_fee]


def test_replay_alerts_sweeps_with_the_folder(tmp_path: Path) -> None:
    """Q is 5 minutes short on 2026-03-26: approaching with the shipped books (within 10
    minutes), not with the draft's (within 3)."""
    books = draft(tmp_path)
    path = ndjson(month_log(), tmp_path / "events.ndjson")
    args = ["replay", "--alerts", "--input", str(path), "--today", "2026-03-26"]
    kinds = []
    for extra in ([], ["--rules", str(books)]):
        result = run(*args, *extra)
        assert result.exit_code == 0, result.output
        kinds.append([orjson.loads(line)["kind"] for line in result.stdout.splitlines()])
    assert "threshold_approaching" in kinds[0]
    assert "threshold_approaching" not in kinds[1]
    assert kinds[1] == [k for k in kinds[0] if k != "threshold_approaching"]


# -- folders refused ------------------------------------------------------------------------

COMMANDS = {
    "replay": ["replay", "--input", "{log}"],
    "audit": ["audit", "--input", "{log}", "--org", ORG, "--patient", P, "--month", MONTH],
    "close": ["close", "--bootstrap", "127.0.0.1:1", "--org", ORG, "--month", MONTH],
    "sql": ["sql", "SELECT 1", "--input", "{log}"],
    "worker": ["worker", "--bootstrap", "127.0.0.1:1"],  # refused before any connection
}


def refused(tmp_path: Path, command: str, folder: Path) -> Result:
    log = ndjson(month_log(), tmp_path / "events.ndjson")
    args = [a.replace("{log}", str(log)) for a in COMMANDS[command]]
    result = run(*args, "--rules", str(folder))
    assert result.exit_code == USAGE, result.output
    assert result.stdout == ""
    return result


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_broken_book_is_refused_with_every_problem(tmp_path: Path, command: str) -> None:
    books = shipped_copy(tmp_path / "books")
    lines = {}
    for year, (old, new) in {
        2025: ("threshold_minutes = 20", 'threshold_minutes = "twenty"'),
        2026: ("[policy]", "[policy]\nno_such_key = 1"),
    }.items():
        book = books / f"{year}.toml"
        text = book.read_text(encoding="utf-8")
        assert old in text
        text = text.replace(old, new, 1)
        book.write_text(text, encoding="utf-8")
        lines[year] = text[: text.index(new)].count("\n") + 1 + new.count("\n")
    err = refused(tmp_path, command, books).stderr
    assert f"{books / '2025.toml'}:{lines[2025]}: codes[" in err
    assert f"{books / '2026.toml'}:{lines[2026]}: policy.no_such_key:" in err
    assert "2 problem(s)" in err


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_an_empty_or_missing_folder_is_refused(tmp_path: Path, command: str) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "README.txt").write_text("no books here")
    assert "holds no rule books" in refused(tmp_path, command, empty).stderr
    assert "no such directory" in refused(tmp_path, command, tmp_path / "nowhere").stderr


def test_a_folder_is_a_complete_set_not_an_addition(tmp_path: Path) -> None:
    """Without 2026 the set has a gap: refused, not filled in with the shipped 2026."""
    books = shipped_copy(tmp_path / "books")
    (books / "2026.toml").unlink()
    err = refused(tmp_path, "replay", books).stderr
    assert f"{books / '2027.toml'}: book.effective_from:" in err and "a gap" in err


# -- the worker's fold state ----------------------------------------------------------------


def test_the_books_digest_is_of_what_the_books_say(tmp_path: Path) -> None:
    same = RuleCatalog.read_dir(shipped_copy(tmp_path / "same"))
    assert books_digest(same) == books_digest(SHIPPED_CATALOG)  # other files, same books
    assert books_digest(RuleCatalog.read_dir(draft(tmp_path))) != books_digest(SHIPPED_CATALOG)


def test_a_fold_snapshot_of_other_books_is_refolded(tmp_path: Path) -> None:
    """A snapshot is restored only with the books it was folded with, and the restored
    fold evaluates with the configured books (the codec does not keep them)."""
    catalog = RuleCatalog.read_dir(draft(tmp_path))
    drafted, shipped = books_digest(catalog), books_digest(SHIPPED_CATALOG)
    state = tmp_path / "state"
    part = FoldPartition()
    for event in month_log().events():
        part.apply_event(event)
    SnapshotStore(state, "fold", "log-1", shipped).save(0, Slot(part, 7))
    assert SnapshotStore(state, "fold", "log-1", drafted).load(0) is None

    def configured(fold: FoldPartition) -> None:
        fold.projector.catalog = catalog

    parts = Partitions(SnapshotStore(state, "fold", "log-1", shipped), FoldPartition, configured)
    slot = parts.get(0)
    assert slot.next_offset == 7 and slot.state.projector.catalog is catalog


def test_the_worker_sweep_uses_the_books_of_its_fold(tmp_path: Path) -> None:
    """The daily sweep of a fold reads its own books' alert policy (Q 5 minutes short on
    2026-03-26: within 10 minutes shipped, not within the draft's 3)."""
    catalog = RuleCatalog.read_dir(draft(tmp_path))
    now = datetime(2026, 3, 26, 16, tzinfo=UTC)
    kinds = []
    for fold in (FoldPartition(), FoldPartition(Projector(catalog=catalog))):
        for event in month_log().events():
            fold.apply_event(event)
        kinds.append([out.kind for out in fold.sweep(now)])
    assert kinds == [["threshold_approaching"], []]

"""Several ``caretally worker`` processes sharing one app id, as the scale-out tests run
them: topics of a chosen partition count, each member's web port probed, and the checks of
what they wrote together (the log, the alerts) against the offline fold."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import re
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import orjson
from click.testing import CliRunner

from schemas.events import EventRejected, parse_event
from streams.cli.main import cli
from streams.demo.client import WorkerProcess
from streams.kafka.broker import EmbeddedBroker
from streams.kafka.log_writer import practice_wide
from streams.kafka.topics import Topics, ensure_topics

WAIT = 90.0
"""Seconds any one condition of a scale-out test may take (a rebalance after a SIGKILL
waits out the 6 s session; four workers share two cores)."""


def member(
    broker: EmbeddedBroker, topics: Topics, parts: int, tmp_path: Path, name: str, *extra: str
) -> WorkerProcess:
    """A worker (not started) of the app ``app-<prefix>`` on ``topics`` (created with
    ``parts`` partitions each), its own state folder ``tmp_path/name``, its log
    ``tmp_path/name.log`` and its own web port."""
    ensure_topics(broker.bootstrap, topics, parts)
    return WorkerProcess(
        broker.bootstrap,
        topics,
        parts,
        tmp_path / name,
        "--app-id",
        f"app-{topics.prefix}",
        "--sweep-interval",
        "3600",
        "--loglevel",
        "info",  # the rebalances, index rebuilds and catch-ups, for a failure's message
        *extra,
        log_path=tmp_path / f"{name}.log",
    )


def logs(tmp_path: Path, names: Iterable[str], chars: int = 4000) -> str:
    """The ends of the named workers' logs (for a failed assertion's message)."""
    out = []
    for name in names:
        path = tmp_path / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else "(no log)"
        out.append(f"--- {name}.log ---\n{text[-chars:]}")
    return "\n".join(out)


# --- the web port ----------------------------------------------------------------------


def probe(port: int, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """(status, body) of ``GET path`` on 127.0.0.1:``port``; (0, b"") when nothing answers."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    except OSError:
        return 0, b""
    finally:
        conn.close()


def assigned(worker: WorkerProcess, role: str) -> int:
    """The partitions ``worker`` holds in ``role``'s group, as its /healthz says (-1: no answer)."""
    status, body = probe(worker.web_port, "/healthz")
    if status != 200:
        return -1
    return int(orjson.loads(body)["assigned_partitions"].get(role, 0))


_SAMPLE = re.compile(r"^(\w+)\{([^}]*)\} (\S+)$")


def samples(worker: WorkerProcess, name: str) -> list[tuple[dict[str, str], float]]:
    """The samples of metric ``name`` on ``worker``'s /metrics: (labels, value)."""
    status, body = probe(worker.web_port, "/metrics")
    out = []
    for line in body.decode().splitlines() if status == 200 else []:
        m = _SAMPLE.match(line)
        if m and m.group(1) == name:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
            out.append((labels, float(m.group(3))))
    return out


def owned(worker: WorkerProcess, topic: str) -> set[int]:
    """The partitions of ``topic`` that ``worker`` reads (those it reports lag for: known
    after its first fetch of each)."""
    return {
        int(labels["partition"])
        for labels, _ in samples(worker, "caretally_consumer_lag_records")
        if labels.get("topic") == topic
    }


async def wait_for(check: Callable[[], bool], what: str, timeout: float = WAIT) -> float:
    """Poll ``check`` (blocking, quick) until it holds; the seconds it took. Fails with
    ``what`` after ``timeout`` seconds."""
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < timeout, f"{what}: not within {timeout:.0f} s"
        await asyncio.sleep(0.25)
    return time.monotonic() - start


# --- what the workers wrote ------------------------------------------------------------


def event_ids(lines: Iterable[bytes]) -> set[tuple[str, str]]:
    """The (org_id, event_id) of every valid line: what the log must hold."""
    out = set()
    for line in lines:
        with contextlib.suppress(EventRejected):
            e = parse_event(line)
            out.add((e.org_id, e.event_id))
    return out


def log_copies(records: Iterable[Any]) -> dict[tuple[str, str], list[int]]:
    """The log's records by (org_id, event_id): the partition of each copy."""
    copies: dict[tuple[str, str], list[int]] = defaultdict(list)
    for r in records:
        e = parse_event(r.value)
        copies[(e.org_id, e.event_id)].append(r.partition)
    return dict(copies)


def assert_each_event_once(records: list[Any], lines: Iterable[bytes], parts: int) -> None:
    """The log holds the event of every valid line once (a practice-wide one once on each
    of its ``parts`` partitions, any other once in all) and nothing else."""
    wanted = event_ids(lines)
    copies = log_copies(records)
    events = [parse_event(r.value) for r in records]
    wide = {(e.org_id, e.event_id) for e in events if practice_wide(e)}
    assert set(copies) == wanted, (
        f"missing {len(wanted - set(copies))}, unexpected {len(set(copies) - wanted)}"
    )
    twice = {k: v for k, v in copies.items() if k not in wide and len(v) != 1}
    assert not twice, f"events in the log more than once: {sorted(twice.items())[:5]}"
    wrong = {k: v for k, v in copies.items() if k in wide and sorted(v) != list(range(parts))}
    assert not wrong, f"practice-wide events not once per partition: {sorted(wrong.items())[:5]}"
    assert wide, "no practice-wide event: the check of their copies ran on nothing"


def cli_alerts(lines: list[bytes], path: Path) -> list[dict[str, Any]]:
    """``caretally replay --alerts`` of ``lines`` (written to ``path``), as printed."""
    path.write_bytes(b"\n".join(lines) + b"\n")
    result = CliRunner().invoke(
        cli, ["replay", "--alerts", "--input", str(path), "--format", "json", "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    return [orjson.loads(line) for line in result.stdout.splitlines() if line.strip()]


OVERLAP = "staff_overlap"


def core_ids(alerts: Iterable[dict[str, Any]]) -> dict[str, str]:
    """Alert id -> kind of the alerts a log partition's fold derives (all but
    ``staff_overlap``): the same ids however the log is partitioned and folded."""
    return {a["alert_id"]: a["kind"] for a in alerts if a["kind"] != OVERLAP}


def overlaps(alerts: Iterable[dict[str, Any]]) -> set[tuple[str, str, str, str]]:
    """The ``staff_overlap`` alerts as (org, patient, month, detail). Not by id: an
    overlap's id names the event whose interval reached the staff projection second
    (``projections.staff``), and the worker's folds of several log partitions feed
    ``care.staff.v1`` in an order of their own, where ``caretally replay`` follows the
    file; the detail names both activities and the overlap, whichever came first."""
    return {
        (a["org_id"], a["patient_id"], a["month"], a["detail"])
        for a in alerts
        if a["kind"] == OVERLAP
    }


def differences(got: dict[bytes, bytes], want: dict[bytes, bytes]) -> str:
    """How two sets of billing views differ, in counts (and a few keys)."""
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    other = sorted(k for k in set(got) & set(want) if got[k] != want[k])
    return (
        f"views: {len(missing)} missing {missing[:3]}, {len(extra)} extra {extra[:3]}, "
        f"{len(other)} different {other[:3]}"
    )

"""``caretally demo`` on a broker: the whole pipeline, end to end, in about 30 seconds.

Starts the embedded broker (unless one is named or already answers), a worker and
the archiver (a thread following the log into a Parquet archive), then
feeds a month of synthetic EHR traffic for a sample practice into ``care.ingress.v1``
at a visible pace, prints alerts as they come off ``care.alerts.v1``, and ends with
the billing summary read from ``care.billing.v1`` — checked against an offline
replay of the same events — and the archive, drained to the log's end, before
shutting everything down.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console

from projections.engine import replay
from schemas.events import EventRejected, parse_event
from schemas.views import Alert
from streams.archive.archiver import ArchiveError, Archiver, archived_events
from streams.demo.client import Follower, WorkerProcess, produce
from streams.demo.offline import _print_alert, summary_table
from streams.demo.synthetic import generate_practice_log, write_ndjson
from streams.kafka.broker import EmbeddedBroker
from streams.kafka.clients import Connection, connection_problem
from streams.kafka.records import billing_key
from streams.kafka.settings import KafkaSettings
from streams.kafka.topics import Topics, ensure_topics

PARTITIONS = 4


class DemoError(RuntimeError):
    pass


def expected_views(lines: list[bytes]) -> dict[bytes, bytes]:
    """What ``caretally replay`` gives for the same lines, keyed like care.billing.v1."""
    events = []
    for line in lines:
        with contextlib.suppress(EventRejected):
            events.append(parse_event(line))
    return {
        billing_key(b.org_id, b.patient_id, b.month): orjson.dumps(b.view()) for b in replay(events)
    }


def run_live_demo(
    console: Console,
    *,
    patients: int = 40,
    month: str = "2025-03",
    seed: int = 7,
    feed_seconds: float = 25.0,
    kafka: KafkaSettings | None = None,
    topic_prefix: str = "",
    log_path: Path | None = None,
    show_alerts: int = 60,
    archive_dir: Path | None = None,
) -> dict[str, Any]:
    started = time.monotonic()
    if archive_dir is not None and archive_dir.exists() and any(archive_dir.iterdir()):
        raise DemoError(f"{archive_dir} is not empty; give --archive a new or empty folder")
    raw = list(generate_practice_log(seed=seed, patients=patients, months=(month,)))
    if log_path is not None:
        write_ndjson(raw, log_path)
    lines = [orjson.dumps(obj) for obj in raw]
    broker: EmbeddedBroker | None = None
    if kafka is not None:
        problem = connection_problem(kafka)
        if problem is not None:
            raise DemoError(problem)
        where: KafkaSettings = kafka
    else:
        console.print("[dim]starting the embedded broker (Tansu, memory only, loopback)...[/]")
        broker = EmbeddedBroker().start()
        where = KafkaSettings.of(broker.bootstrap)
    topics = Topics(prefix=f"{topic_prefix}demo-{uuid.uuid4().hex[:8]}.")
    archiving = False
    with tempfile.TemporaryDirectory(prefix="caretally-demo-") as tmp:
        kept = archive_dir is not None
        archive_dir = archive_dir if archive_dir is not None else Path(tmp) / "archive"
        archiver = Archiver(
            where, topics, archive_dir, group_id=f"caretally-archiver-{topics.prefix}"
        )
        worker = WorkerProcess(
            where,
            topics,
            PARTITIONS,
            Path(tmp) / "state",
            "--sweep-clock",
            "log",
            "--sweep-interval",
            "1",
            "--snapshot-interval",
            "5",
            "--app-id",
            f"caretally-{topics.prefix}",
            log_path=Path(tmp) / "worker.log",
        )
        try:
            ensure_topics(where, topics, PARTITIONS)
            console.rule(
                f"[bold]caretally demo[/] - {patients} patients, {month}, "
                f"{len(lines)} events via {where.describe()}"
            )
            worker.start()
            archiver.start()
            archiving = True
            result = asyncio.run(
                _feed_and_follow(console, where, topics, lines, feed_seconds, show_alerts, worker)
            )
            archiving = False
            try:
                stats = archiver.finish(drain=True)  # to the log's end; the worker is done
            except ArchiveError as exc:
                raise DemoError(f"the archiver failed: {exc}") from None
            result["archived"] = archived_events(archive_dir)
            where_to = (
                f"to [bold]{archive_dir}[/]; replay them with "
                f"`caretally replay --input {archive_dir}`"
                if kept
                else "(a temporary archive: keep it with --archive DIR)"
            )
            console.print(
                f"archived {result['archived']:,} events ({stats.rows:,} log records in "
                f"{stats.files} Parquet files) {where_to}"
            )
        finally:
            if archiving:
                with contextlib.suppress(Exception):
                    archiver.finish(drain=False, timeout=10)
            worker.stop()
            if broker is not None:
                broker.stop()
    result["seconds"] = round(time.monotonic() - started, 1)
    console.print(f"[dim]done in {result['seconds']} s; worker, archiver and broker stopped[/]")
    return result


async def _feed_and_follow(
    console: Console,
    kafka: Connection,
    topics: Topics,
    lines: list[bytes],
    feed_seconds: float,
    show_alerts: int,
    worker: WorkerProcess,
) -> dict[str, Any]:
    expected = expected_views(lines)
    kinds: Counter[str] = Counter()
    aliases: dict[str, str] = {}
    shown = 0
    async with Follower(kafka, topics, PARTITIONS) as follower:

        def show(arrived: list[tuple[str, Any]]) -> None:
            nonlocal shown
            for kind, record in arrived:
                if kind == "alerts":
                    alert = Alert.model_validate_json(record.value)
                    kinds[alert.kind] += 1
                    if shown < show_alerts:
                        _print_alert(console, alert, aliases)
                        shown += 1
                elif kind == "deadletter":
                    reason = dict(record.headers or []).get("reason", b"").decode()
                    console.print(f"[red]dead-lettered[/] {reason}")

        async def follow(until: asyncio.Event) -> None:
            while not until.is_set():
                show(await follower.poll(100))

        fed = asyncio.Event()
        task = asyncio.create_task(follow(fed))
        rate = max(len(lines) / max(feed_seconds, 0.1), 1.0)
        await produce(kafka, topics.ingress, lines, rate=rate, linger_ms=5)
        fed.set()
        await task
        deadline = time.monotonic() + 60
        while follower.got.views() != expected and time.monotonic() < deadline:
            if worker.proc is not None and worker.proc.poll() is not None:
                raise DemoError(f"the worker exited with code {worker.proc.returncode}")
            show(await follower.poll(200))
        for _ in range(5):  # late alerts of the last events (sweep, staff overlap)
            show(await follower.poll(200))
    if shown < sum(kinds.values()):
        console.print(f"[dim]... and {sum(kinds.values()) - shown} more alerts[/]")
    views = [orjson.loads(v) for _k, v in sorted(follower.got.views().items())]
    matches = follower.got.views() == expected
    summary_table(console, views)
    payment = round(sum(v["estimated_payment"] for v in views), 2)
    console.print(
        f"alerts by kind: {dict(sorted(kinds.items()))}; "
        f"{len(follower.got.deadletter)} dead-lettered; estimated payment [bold]${payment:,.2f}[/]"
    )
    verdict = "[green]matches[/]" if matches else "[red]DIFFERS FROM[/]"
    console.print(
        f"care.billing.v1 {verdict} an offline `caretally replay` of the same events "
        f"({len(expected)} patient-months)"
    )
    if not matches:
        raise DemoError("streaming billing differs from the offline replay")
    return {
        "events": len(lines),
        "alerts": sum(kinds.values()),
        "patient_months": len(views),
        "deadletter": len(follower.got.deadletter),
        "estimated_payment": payment,
        "kinds": dict(kinds),
    }

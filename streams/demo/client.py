"""Client side of the pipeline: feed ingress, follow billing views, alerts and dead letters.

Shared by ``caretally demo``, the integration tests and ``benchmarks/pipeline.py``.
Reads are direct (no consumer group: no join wait) from the start of each topic.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from streams.kafka.broker import free_port
from streams.kafka.clients import (
    DEMO_PRODUCER,
    FOLLOWER_CONSUMER,
    AIOKafkaConsumer,
    AioTopicPartition,
    Connection,
    aio_consumer,
    aio_producer,
)
from streams.kafka.records import key_of
from streams.kafka.settings import KafkaSettings, child_environment
from streams.kafka.topics import Topics


async def produce(
    kafka: Connection,
    topic: str,
    lines: Iterable[bytes],
    *,
    linger_ms: int = 5,
    rate: float | None = None,
    on_sent: Any = None,
) -> int:
    """Send raw lines (keyed by their org and patient) with acks=all; ``rate`` in lines/s."""
    producer = aio_producer(kafka, DEMO_PRODUCER, linger_ms=linger_ms)
    await producer.start()
    n = 0
    start = time.perf_counter()
    try:
        futures = []
        for raw in lines:
            if rate:
                due = start + n / rate
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            futures.append(await producer.send(topic, value=raw, key=key_of(raw)))
            n += 1
            if on_sent is not None:
                on_sent(n, raw)
            if len(futures) >= 5000:
                await asyncio.gather(*futures)
                futures.clear()
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return n


@dataclass
class Collected:
    billing: dict[bytes, bytes | None] = field(default_factory=dict)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    deadletter: list[Any] = field(default_factory=list)

    def views(self) -> dict[bytes, bytes]:
        return {k: v for k, v in self.billing.items() if v is not None}


class Follower:
    """Reads billing, alerts and dead-letter topics from the start, as they grow."""

    def __init__(self, kafka: Connection, topics: Topics, partitions: int) -> None:
        self.kafka = kafka
        self.topics = topics
        self.partitions = partitions
        self.got = Collected()
        self._consumer: AIOKafkaConsumer | None = None

    async def __aenter__(self) -> Follower:
        c = aio_consumer(self.kafka, FOLLOWER_CONSUMER)
        await c.start()
        t = self.topics
        tps = [
            AioTopicPartition(n, p)
            for n in (t.billing, t.alerts, t.deadletter)
            for p in range(self.partitions)
        ]
        c.assign(tps)
        await c.seek_to_beginning(*tps)
        self._consumer = c
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._consumer is not None:
            await self._consumer.stop()

    async def poll(self, timeout_ms: int = 200) -> list[tuple[str, Any]]:
        """One fetch; returns what arrived as (topic kind, record)."""
        assert self._consumer is not None
        t = self.topics
        out = []
        batches = await self._consumer.getmany(timeout_ms=timeout_ms, max_records=10000)
        for tp, records in batches.items():
            for r in records:
                if tp.topic == t.billing:
                    self.got.billing[r.key] = r.value
                    out.append(("billing", r))
                elif tp.topic == t.alerts:
                    self.got.alerts.append(orjson.loads(r.value))
                    out.append(("alerts", r))
                else:
                    self.got.deadletter.append(r)
                    out.append(("deadletter", r))
        return out

    async def until(self, done: Any, timeout: float, quiet: float = 0.0) -> bool:
        """Poll until ``done(collected)`` holds (and nothing new came for ``quiet`` s)."""
        deadline = time.monotonic() + timeout
        last = time.monotonic()
        while time.monotonic() < deadline:
            if await self.poll():
                last = time.monotonic()
            elif done(self.got) and time.monotonic() - last >= quiet:
                return True
        return False


class WorkerProcess:
    """``caretally worker`` as a child process (stopped with SIGTERM, or killed)."""

    def __init__(
        self,
        kafka: Connection,
        topics: Topics,
        partitions: int,
        state_dir: Path,
        *extra: str,
        log_path: Path | None = None,
    ) -> None:
        settings = KafkaSettings.of(kafka)
        self.env = child_environment(settings)  # TLS and SASL settings pass this way
        self.args = [
            sys.executable,
            "-m",
            "streams.cli.main",
            "worker",
            "--bootstrap",
            settings.bootstrap,
            "--topic-prefix",
            topics.prefix,
            "--partitions",
            str(partitions),
            "--state-dir",
            str(state_dir),
            *extra,
        ]
        # its own port for /healthz, /readyz and /metrics: two workers never collide
        if "--web-port" in extra:
            self.web_port = int(extra[extra.index("--web-port") + 1])
        else:
            self.web_port = free_port()
            self.args += ["--web-port", str(self.web_port)]
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(
            self.args,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.env,
        )
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 20.0) -> int | None:
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        return proc.returncode

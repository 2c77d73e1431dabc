"""The pages of ``caretally serve``: how long each page takes, and how soon an open
worklist learns of a change.

    python benchmarks/web_pages.py [--events 20000,100000] [--updates 20] [--repeat 10]
                                   [--out FILE.json]

One fresh embedded broker (a free loopback port, stopped at the end). For each size in
``--events``: fresh topics, a ``caretally worker`` child process, ``serve`` with its pages
in this process (its own thread and event loop, on a free loopback port), and a log of
that many synthetic events of one practice (``generate_events``) produced to ingress and
awaited until ``care.billing.v1`` holds every view the offline replay computes. Then, as
a signed-in browser would (cookie session, plain HTTP, no browser):

* **Pages.** Each page ``--repeat`` times, sequentially: the worklist of the busiest month
  and its groups fragment (from the in-memory read model), the patient-month page of the
  busiest patient-month (reads the patient's log partition, runs the audit), the close
  preview of that month (folds the org's whole log), the alerts page. p50 and max in ms.
* **Live.** ``GET /live`` open; ``--updates`` times: one ``activity.logged`` of a new
  patient in the busiest month is posted to ``/v1/events`` (so its billing view is new),
  and we time the 202, the ``event: billing`` of that month on the stream (the whole
  path: ingress, gate, log, fold, billing topic, read model, stream), and the groups
  fragment fetched after it, which names the new patient. p50 and max in ms.

The machine is shared: compare the figures of one run with each other, not with runs on
other days.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streams.demo.client import Follower, WorkerProcess, produce
from streams.demo.live import expected_views
from streams.demo.synthetic import generate_events
from streams.http.api_keys import ApiKeyStore, create_key
from streams.http.app import Server, build_app, start
from streams.kafka.broker import EmbeddedBroker
from streams.kafka.topics import Topics, ensure_topics
from streams.web.config import WebConfig

PARTITIONS = 4
TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')


class ServeThread:
    """``serve`` (API and pages) on a free loopback port, in a thread of its own."""

    def __init__(self, app: Any) -> None:
        self.app, self.port = app, 0
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
            server: Server = await start(self.app, "127.0.0.1", 0, shutdown_timeout=2.0)
            self.port = server.port
            self._ready.set()
            try:
                await self._stop.wait()
            finally:
                await server.close()

        asyncio.run(main())

    def __enter__(self) -> ServeThread:
        self._thread.start()
        if not self._ready.wait(60):
            raise RuntimeError("serve did not start")
        return self

    def __exit__(self, *_: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(20)


def ms(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(statistics.median(values) * 1000, 1),
        "max_ms": round(max(values) * 1000, 1),
        "n": len(values),
    }


def busiest(lines: list[bytes]) -> tuple[str, str, str]:
    """(org, month, patient) of the patient-month with the most activity events."""
    counts: Counter[tuple[str, str, str]] = Counter()
    for raw in lines:
        e = orjson.loads(raw)
        if e["type"] == "activity.logged":
            counts[(e["org_id"], e["data"]["started_at"][:7], e["patient_id"])] += 1
    return counts.most_common(1)[0][0]


def new_activity(org: str, month: str, n: int) -> dict[str, Any]:
    return {
        "event_id": f"bench-{uuid.uuid4().hex}",
        "type": "activity.logged",
        "schema_version": 1,
        "org_id": org,
        "patient_id": f"BENCH-{n:04d}",
        "recorded_at": datetime.now(UTC).isoformat(),
        "source": "benchmark",
        "data": {
            "activity_id": f"bench-a{n}",
            "staff_id": "RN-B",
            "staff_role": "clinical_staff",
            "practitioner_id": "DR-B",
            "program": "ccm",
            "activity": "care_coordination",
            "started_at": f"{month}-10T15:00:00Z",
            "minutes": 5,
        },
    }


async def session(client: aiohttp.ClientSession, base: str, key: str) -> None:
    for _ in range(600):  # the read model catches up with the billing topic first
        if (await client.get(f"{base}/readyz")).status == 200:
            break
        await asyncio.sleep(0.1)
    form = await (await client.get(f"{base}/signin")).text()
    token = TOKEN.search(form)
    assert token is not None
    r = await client.post(f"{base}/signin", data={"csrf_token": token.group(1), "api_key": key})
    assert r.status == 200 and "/worklist" in str(r.url), r.status


async def measure(
    port: int, key: str, org: str, month: str, patient: str, args: Any
) -> dict[str, Any]:
    base = f"http://127.0.0.1:{port}"
    pages = {
        "worklist": f"/worklist?month={month}",
        "worklist_groups": f"/worklist/groups?month={month}",
        "patient_month": f"/patients/{patient}/months/{month}",
        "close_preview": f"/months/{month}/close",
        "alerts": "/alerts",
    }
    out: dict[str, Any] = {}
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as client:
        await session(client, base, key)
        for name, path in pages.items():
            took = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                r = await client.get(base + path)
                body = await r.read()
                took.append(time.perf_counter() - t0)
                assert r.status == 200, (name, r.status, body[:200])
            out[name] = {**ms(took), "bytes": len(body)}
        live = await client.get(f"{base}/live", timeout=aiohttp.ClientTimeout(total=None))
        await live.content.readuntil(b"\n\n")
        accepted, streamed, fetched = [], [], []
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        for n in range(args.updates):
            event = new_activity(org, month, n)
            t0 = time.perf_counter()
            r = await client.post(f"{base}/v1/events", data=orjson.dumps(event), headers=headers)
            assert r.status == 202, await r.text()
            accepted.append(time.perf_counter() - t0)
            want = b'"month":"%s"' % month.encode()
            while True:
                chunk = await asyncio.wait_for(live.content.readuntil(b"\n\n"), 30)
                if chunk.startswith(b"event: billing") and want in chunk:
                    break
            streamed.append(time.perf_counter() - t0)
            groups = await (await client.get(f"{base}/worklist/groups?month={month}")).text()
            fetched.append(time.perf_counter() - t0)
            if event["patient_id"] not in groups:  # the change came in two records: once more
                while event["patient_id"] not in groups:
                    await asyncio.wait_for(live.content.readuntil(b"\n\n"), 30)
                    groups = await (
                        await client.get(f"{base}/worklist/groups?month={month}")
                    ).text()
                fetched[-1] = time.perf_counter() - t0
            await asyncio.sleep(0.5)
        live.close()
        out["live"] = {
            "post_202": ms(accepted),
            "post_to_billing_event": ms(streamed),
            "post_to_worklist_updated": ms(fetched),
        }
    return out


async def load(broker: EmbeddedBroker, topics: Topics, lines: list[bytes]) -> float:
    expected = expected_views(lines)
    t0 = time.perf_counter()
    async with Follower(broker.bootstrap, topics, PARTITIONS) as f:
        await produce(broker.bootstrap, topics.ingress, lines)
        if not await f.until(lambda got: got.views() == expected, 900, quiet=1.0):
            raise RuntimeError("the worker did not publish every view")
    return time.perf_counter() - t0


def run_size(broker: EmbeddedBroker, events: int, tmp: Path, args: Any) -> dict[str, Any]:
    topics = Topics(prefix=f"b{uuid.uuid4().hex[:8]}.")
    ensure_topics(broker.bootstrap, topics, PARTITIONS)
    lines = [orjson.dumps(e) for e in generate_events(events, orgs=1)]
    org, month, patient = busiest(lines)
    state = tmp / f"state-{topics.prefix}"
    worker = WorkerProcess(
        broker.bootstrap,
        topics,
        PARTITIONS,
        state,
        "--sweep-interval",
        "86400",
        log_path=tmp / "worker.log",
    ).start()
    try:
        loaded = asyncio.run(load(broker, topics, lines))
        keys_path = tmp / f"keys-{topics.prefix}json"
        _, key = create_key(keys_path, org)
        pages = WebConfig(broker.bootstrap, topics.events, tmp / "claims")
        app = build_app(broker.bootstrap, topics, ApiKeyStore(keys_path), pages=pages)
        with ServeThread(app) as serve:
            figures = asyncio.run(measure(serve.port, key, org, month, patient, args))
    finally:
        worker.stop()
    return {"events": len(lines), "load_s": round(loaded, 1), "month": month, **figures}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", default="20000,100000", help="log sizes, comma-separated")
    parser.add_argument("--updates", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    sizes = [int(x) for x in args.events.split(",")]
    results = []
    with tempfile.TemporaryDirectory() as d, EmbeddedBroker(log_path=Path(d) / "tansu.log") as b:
        for n in sizes:
            results.append(run_size(b, n, Path(d), args))
            print(json.dumps(results[-1], indent=1), flush=True)
    doc = {
        "benchmark": "web_pages",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "partitions": PARTITIONS,
        "runs": results,
    }
    if args.out:
        args.out.write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()

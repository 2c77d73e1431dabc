"""#9 items 6 and 12 on a real broker: one tenant cannot stall billing for the others.

* per-org token buckets on ``POST /v1/events`` (all events; practice-wide ones tighter),
  on a real server on loopback;
* end to end through a real worker: org A's burst does not hold back org B's alert beyond
  a stated bound, and SIGTERM stops the worker in the middle of the burst.

The bounds themselves, the fold's pauses and the repeated settings:
tests/unit/test_security_fairness.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from projections.ledger import MAX_ACTIVITY_VERSIONS as ACTIVITY_BOUND
from streams.demo.client import Follower, produce
from streams.http.api_keys import ApiKeyStore, create_key
from streams.http.app import build_app
from streams.kafka.broker import EmbeddedBroker
from streams.kafka.topics import Topics, ensure_topics
from support.builders import Log, one_minute_activities
from support.http import Api, ServerThread, eventually
from support.pipeline import PARTS, offline_alert_ids, worker_for

# -- rate limits on POST /v1/events (a real server on loopback, a real broker) ---------------


@contextlib.contextmanager
def _api(broker: EmbeddedBroker, tmp_path: Path, **kw: Any) -> Iterator[Api]:
    from kafka import KafkaProducer

    topics = Topics(prefix=f"t{uuid.uuid4().hex[:10]}.")
    ensure_topics(broker.bootstrap, topics, partitions=2)
    keys_path = tmp_path / "api-keys.json"
    _, key_a = create_key(keys_path, "org-a")
    _, key_b = create_key(keys_path, "org-b")
    app = build_app(broker.bootstrap, topics, ApiKeyStore(keys_path, recheck_s=0.0), **kw)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", linger_ms=0)
    try:
        with ServerThread(app) as server:
            api = Api(broker.bootstrap, topics, server.port, key_a, key_b, keys_path, producer)
            eventually(lambda: api.get("/healthz")[1]["caught_up"] is True, 30)
            yield api
    finally:
        producer.close()


def _event(org: str, n: int, patient: str | None = "P-1") -> bytes:
    log = Log(org=org)
    if patient is None:
        log.practice(event_id=f"{org}-cfg-{n}")
    else:
        log.activity(patient, f"a{n}", "2025-03-03T10:00:00Z", 5, event_id=f"{org}-e{n}")
    return orjson.dumps(log.raw[0])


def test_a_batch_beyond_a_minute_of_the_default_limit_is_refused(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    """With the default limits: an NDJSON body of more lines than an org may send in a
    minute is refused before any of it is parsed (each line counts, valid or not)."""
    with _api(broker, tmp_path) as api:
        body = b"{}\n" * 6001
        status, _, raw = api.request(
            "POST", "/v1/events", body, {"Content-Type": "application/x-ndjson"}, key=api.key_a
        )
        assert status == 413, raw[:300]
        assert b"a minute" in raw
        status, _ = api.post(_event("org-a", 1), "application/json", api.key_a)
        assert status == 202  # the refused batch cost nothing


def test_each_org_has_its_own_token_bucket(broker: EmbeddedBroker, tmp_path: Path) -> None:
    from streams.http.rate_limit import OrgRateLimits

    with _api(broker, tmp_path, rate_limits=OrgRateLimits(5, 2)) as api:
        for n in range(5):
            assert api.post(_event("org-a", n), "application/json", api.key_a)[0] == 202
        status, headers, raw = api.request(
            "POST",
            "/v1/events",
            _event("org-a", 9),
            {"Content-Type": "application/json"},
            key=api.key_a,
        )
        assert status == 429 and b"rate limit" in raw
        assert 1 <= int(headers["retry-after"]) <= 60
        # org B is not held back by org A's burst
        assert api.post(_event("org-b", 1), "application/json", api.key_b)[0] == 202
        # practice-wide events have their own, tighter bucket
        for n in range(2):
            assert api.post(_event("org-b", n, None), "application/json", api.key_b)[0] == 202
        status, headers, raw = api.request(
            "POST",
            "/v1/events",
            _event("org-b", 3, None),
            {"Content-Type": "application/json"},
            key=api.key_b,
        )
        assert status == 429 and b"practice-wide" in raw and int(headers["retry-after"]) >= 1


# -- the pipeline: a real broker and a real worker process -------------------------------------

ALERT_BOUND_S = 15.0
"""How long org B's alert may take behind org A's burst. It took 1.8 s here
(the gate passes A's 3,000 events, the fold applies 200 and refuses the rest); the rest
is room for a 2-core machine shared with other work. Before the bound the fold spent
minutes on A's patient-month, so any bound under a minute tells the two apart."""
SIGTERM_AFTER_S = 8.0
"""How long after org A's first output the worker is asked to stop: deep in the burst."""
SIGTERM_BOUND_S = 6.0
"""How long a worker may take to exit after SIGTERM in the middle of a long fold: 1.3-1.5 s
here, most of it Faust's own shutdown. The fold lets the loop run at least every 50 ms
(measured with PYTHONASYNCIODEBUG: no callback over 0.1 s during this burst; 105 of
them, up to 0.38 s, before the bound and the yields)."""


def _burst() -> list[bytes]:
    """Org A: one patient-month with 3,000 activities, then 60 patients at the bound."""
    log = Log(org="org-a")
    log.practice()
    one_minute_activities(log, "PA", 3000)
    for p in range(60):
        one_minute_activities(log, f"PA-{p}", ACTIVITY_BOUND)
    return [orjson.dumps(e) for e in log.raw]


def _org_b() -> tuple[list[bytes], bytes]:
    """Org B's documented patient at 19 minutes, and the activity that crosses 20."""
    log = Log(org="org-b")
    log.practice()
    log.documented("PB")
    log.activity("PB", "b1", "2025-03-03T10:00:00Z", 19)
    setup = [orjson.dumps(e) for e in log.raw]
    log.activity("PB", "b2", "2025-03-04T10:00:00Z", 2)
    return setup, orjson.dumps(log.raw[-1])


def _started(worker: Any) -> None:
    assert worker.proc is not None and worker.proc.poll() is None, "the worker died"


@pytest.mark.slow
def test_one_orgs_burst_does_not_hold_back_another_orgs_alert(
    broker: EmbeddedBroker, topics: Topics, tmp_path: Path
) -> None:
    setup, crossing = _org_b()
    expected = {
        aid
        for aid, a in offline_alert_ids([*setup, crossing]).items()
        if a.cause_event_id == orjson.loads(crossing)["event_id"]
    }
    assert expected  # the crossing event raises threshold_crossed
    worker = worker_for(broker, topics, tmp_path).start()

    async def scenario() -> float | None:
        async with Follower(broker.bootstrap, topics, PARTS) as follower:
            await produce(broker.bootstrap, topics.ingress, setup)
            assert await follower.until(lambda got: len(got.billing) >= 1, 120), "no start"
            await produce(broker.bootstrap, topics.ingress, _burst()[:3001])
            sent = time.monotonic()
            await produce(broker.bootstrap, topics.ingress, [crossing])
            arrived = await follower.until(
                lambda got: expected <= {a["alert_id"] for a in got.alerts}, ALERT_BOUND_S
            )
            return time.monotonic() - sent if arrived else None

    try:
        took = asyncio.run(scenario())
        _started(worker)
    finally:
        worker.stop(timeout=5)
    assert took is not None, f"org B's alert did not arrive within {ALERT_BOUND_S} s"
    print(f"org B's alert arrived {took:.1f} s after it was sent")


@pytest.mark.slow
def test_sigterm_stops_a_worker_in_the_middle_of_a_long_fold(
    broker: EmbeddedBroker, topics: Topics, tmp_path: Path
) -> None:
    setup, _ = _org_b()
    worker = worker_for(broker, topics, tmp_path).start()

    async def scenario() -> None:
        async with Follower(broker.bootstrap, topics, PARTS) as follower:
            await produce(broker.bootstrap, topics.ingress, setup)
            assert await follower.until(lambda got: len(got.billing) >= 1, 120), "no start"
            seen = len(follower.got.billing)
            await produce(broker.bootstrap, topics.ingress, _burst())
            # the fold has begun on org A's events and has been at it long enough to lag
            # behind the gate (full batches); 60 patient-months at the bound are about
            # 27 s of fold work on this machine (2026-12)
            await follower.until(lambda got: len(got.billing) > seen, 20)
            await asyncio.sleep(SIGTERM_AFTER_S)

    try:
        asyncio.run(scenario())
        assert worker.proc is not None and worker.proc.poll() is None
        asked = time.monotonic()
        worker.proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            worker.proc.wait(SIGTERM_BOUND_S)
        took = time.monotonic() - asked
        exited = worker.proc.poll() is not None
    finally:
        worker.kill()
    assert exited, f"the worker ignored SIGTERM for {took:.0f} s"
    print(f"the worker exited {took:.1f} s after SIGTERM")

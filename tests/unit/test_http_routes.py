"""The HTTP routes in process: real HTTP on loopback, a state cache fed without a broker.

``routes_app`` is ``build_app`` without the Kafka clients, so what every route answers
(auth, tenancy, warm-up, validation, the views and alerts themselves) is tested here in
milliseconds; ``tests/integration/test_http_api.py`` runs the same app against the broker.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
from aiohttp.test_utils import TestClient, TestServer

from streams.http.api_keys import ApiKeyStore, create_key
from streams.http.app import routes_app
from streams.http.state_cache import StateCache
from streams.kafka.records import billing_key
from streams.kafka.topics import Topics
from support.http import activity, alert, progress, view

MONTH = "2025-03"


def fed_cache() -> StateCache:
    """Two orgs' billing and alerts, applied as the follower would apply records."""
    cache = StateCache("127.0.0.1:1", Topics(prefix="unused."))  # never started
    for org in ("org-a", "org-b"):
        ready = view(org, "P-1", billable=["99490"])
        near = view(org, "P-2", ccm=15.0)
        cache.apply_billing(
            billing_key(org, "P-1", MONTH), orjson.dumps(ready), orjson.dumps(progress())
        )
        cache.apply_billing(
            billing_key(org, "P-2", MONTH),
            orjson.dumps(near),
            orjson.dumps(progress(("99490", 900, 1200))),
        )
        for n in range(3):
            cache.apply_alert(orjson.dumps(alert(org, "P-1", n)))
    cache.caught_up_now()
    return cache


Call = Callable[[TestClient[Any, Any], str], Awaitable[None]]


def run(tmp_path: Path, body: Call, cache: StateCache | None = None) -> None:
    keys_file = tmp_path / "keys.json"
    _, key_a = create_key(keys_file, "org-a")
    create_key(keys_file, "org-b")

    async def main() -> None:
        app = routes_app(
            cache if cache is not None else fed_cache(),
            Topics(prefix="unused."),
            ApiKeyStore(keys_file),
            heartbeat_s=0.05,
        )
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            await body(client, key_a)

    asyncio.run(main())


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_a_month_view_is_the_stored_line_and_only_for_its_own_org(tmp_path: Path) -> None:
    cache = fed_cache()

    async def body(client: TestClient[Any, Any], key: str) -> None:
        own = await client.get(f"/v1/orgs/org-a/patients/P-1/months/{MONTH}", headers=auth(key))
        assert own.status == 200
        entry = cache.month_view("org-a", "P-1", MONTH)
        assert entry is not None and await own.read() == entry.raw
        other = await client.get(f"/v1/orgs/org-b/patients/P-1/months/{MONTH}", headers=auth(key))
        assert other.status == 403
        assert "org-b" not in await other.text()
        missing = await client.get(f"/v1/orgs/org-a/patients/P-9/months/{MONTH}", headers=auth(key))
        assert missing.status == 404
        bad = await client.get("/v1/orgs/org-a/patients/P-1/months/2025-13", headers=auth(key))
        assert (bad.status, await bad.json()) == (400, {"error": "month must be YYYY-MM"})

    run(tmp_path, body, cache)


def test_every_route_but_healthz_needs_a_key(tmp_path: Path) -> None:
    async def body(client: TestClient[Any, Any], key: str) -> None:
        for path in (f"/v1/orgs/org-a/worklist?month={MONTH}", "/v1/orgs/org-a/alerts"):
            assert (await client.get(path)).status == 401
            wrong = await client.get(path, headers=auth("ct_not-a-key"))
            assert wrong.status == 401
        post = await client.post("/v1/events", data=b"{}")
        assert post.status == 401
        health = await client.get("/healthz")
        assert health.status == 503  # no consumer: the truth, not "live"
        nowhere = await client.get("/nowhere", headers=auth(key))
        assert nowhere.status == 404 and "error" in await nowhere.json()

    run(tmp_path, body)


def test_the_worklist_groups_the_orgs_months_by_status(tmp_path: Path) -> None:
    async def body(client: TestClient[Any, Any], key: str) -> None:
        resp = await client.get(f"/v1/orgs/org-a/worklist?month={MONTH}", headers=auth(key))
        assert resp.status == 200
        got = await resp.json()
        assert got["month"] == MONTH
        assert [i["patient_id"] for i in got["billable"]] == ["P-1"]
        assert [i["patient_id"] for i in got["in_progress"]] == ["P-2"]
        no_month = await client.get("/v1/orgs/org-a/worklist", headers=auth(key))
        assert no_month.status == 400

    run(tmp_path, body)


def test_reads_wait_until_the_cache_has_caught_up(tmp_path: Path) -> None:
    cache = StateCache("127.0.0.1:1", Topics(prefix="unused."))

    async def body(client: TestClient[Any, Any], key: str) -> None:
        path = f"/v1/orgs/org-a/worklist?month={MONTH}"
        early = await client.get(path, headers=auth(key))
        assert early.status == 503 and early.headers["Retry-After"] == "1"
        cache.caught_up_now()
        assert (await client.get(path, headers=auth(key))).status == 200

    run(tmp_path, body, cache)


def test_the_alert_stream_replays_the_orgs_alerts_then_live_ones(tmp_path: Path) -> None:
    cache = fed_cache()

    async def body(client: TestClient[Any, Any], key: str) -> None:
        resp = await client.get("/v1/orgs/org-a/alerts?replay=2", headers=auth(key))
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        seen: list[str] = []

        async def read_ids(n: int) -> None:
            while len(seen) < n:
                line = (await resp.content.readline()).decode()
                if line.startswith("id: "):
                    seen.append(line[4:].strip())

        await asyncio.wait_for(read_ids(2), 5)
        assert seen == ["org-a-P-1-al1", "org-a-P-1-al2"]
        cache.apply_alert(orjson.dumps(alert("org-b", "P-1", 7)))  # another org's: not sent
        cache.apply_alert(orjson.dumps(alert("org-a", "P-1", 8)))
        await asyncio.wait_for(read_ids(3), 5)
        assert seen[2] == "org-a-P-1-al8"
        resp.close()
        other = await client.get("/v1/orgs/org-b/alerts", headers=auth(key))
        assert other.status == 403
        bad = await client.get("/v1/orgs/org-a/alerts?replay=x", headers=auth(key))
        assert bad.status == 400

    run(tmp_path, body, cache)


def test_events_are_validated_before_the_missing_producer_is_noticed(tmp_path: Path) -> None:
    async def body(client: TestClient[Any, Any], key: str) -> None:
        bad = await client.post(
            "/v1/events",
            data=b'{"event_type": "activity.logged"}',
            headers={**auth(key), "Content-Type": "application/json"},
        )
        assert bad.status == 400
        assert await bad.json() == {
            "accepted": 0,
            "rejected": 1,
            "errors": [{"line": 1, "reason": "type: missing"}],
        }
        good = await client.post(
            "/v1/events",
            data=orjson.dumps(activity("org-a", "P-1")),
            headers={**auth(key), "Content-Type": "application/json"},
        )
        assert good.status == 503 and "error" in await good.json()
        foreign = await client.post(
            "/v1/events",
            data=orjson.dumps(activity("org-b", "P-1")),
            headers={**auth(key), "Content-Type": "application/json"},
        )
        assert foreign.status == 400  # an event of another org is refused like any bad line
        (reason,) = [e["reason"] for e in (await foreign.json())["errors"]]
        assert "org" in reason and "org-b" not in reason

    run(tmp_path, body)

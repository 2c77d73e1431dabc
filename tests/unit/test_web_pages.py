"""The pages of ``caretally serve`` in process: real HTTP on loopback, sessions, CSRF,
tenancy, the worklist's groups and the live stream, over a state cache fed without a
broker (the browser tests in tests/integration/test_web_browser.py run them end to end)."""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient, TestServer

from streams.http.api_keys import ApiKeyStore, create_key, revoke_key
from streams.http.app import routes_app
from streams.http.routes import CACHE
from streams.http.state_cache import StateCache
from streams.kafka.records import billing_key
from streams.kafka.topics import Topics
from streams.web import sessions
from streams.web.auth import SESSIONS, safe_next
from streams.web.config import WebConfig
from streams.web.heavy import HeavyWork
from support.http import alert, progress, view

MONTH = "2025-03"
NOW = datetime(2025, 3, 20, 15, 0, tzinfo=UTC)  # 12 days left in March (Chicago)
CONTEXT = orjson.dumps({"timezone": "America/Chicago", "practitioners": ["dr-1"]})


def fed_cache() -> StateCache:
    cache = StateCache("127.0.0.1:1", Topics(prefix="unused."))  # never started
    for org, ready, near in (("org-a", "A-READY", "A-NEAR"), ("org-b", "B-READY", "B-NEAR")):
        put(cache, org, ready, view(org, ready, billable=["99490"], ccm=22.0), [])
        put(cache, org, near, view(org, near, ccm=15.0), progress(("99490", 900, 1200)))
        cache.apply_alert(orjson.dumps(alert(org, ready, 1)))
    blocked = view("org-a", "A-BLOCKED", blocked=["99490"], ccm=25.0)
    blocked["blocked"][0]["reasons"] = ["missing_consent"]
    put(cache, "org-a", "A-BLOCKED", blocked, [])
    clash = view("org-a", "A-CLASH", billable=["99490"], ccm=30.0)
    clash["flags"] = ["exclusive_conflict:99424+99490"]
    put(cache, "org-a", "A-CLASH", clash, [])
    cache.caught_up_now()
    return cache


def put(
    cache: StateCache, org: str, patient: str, v: dict[str, Any], p: list[dict[str, Any]]
) -> None:
    cache.apply_billing(billing_key(org, patient, MONTH), orjson.dumps(v), orjson.dumps(p), CONTEXT)


Body = Callable[[TestClient[Any, Any], dict[str, str]], Awaitable[None]]


def run(tmp_path: Path, body: Body, *, secure: bool = False) -> None:
    keys_file = tmp_path / "keys.json"
    rec_a, key_a = create_key(keys_file, "org-a")
    rec_b, key_b = create_key(keys_file, "org-b")
    pages = WebConfig(
        "127.0.0.1:1", "unused.care.events.v1", tmp_path / "claims", secure_cookies=secure
    )

    async def main() -> None:
        app = routes_app(
            fed_cache(),
            Topics(prefix="unused."),
            ApiKeyStore(keys_file, recheck_s=0.0),
            heartbeat_s=0.05,
            pages=pages,
            clock=lambda: NOW,
        )
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            info = {
                "a": key_a,
                "b": key_b,
                "id_a": rec_a.key_id,
                "id_b": rec_b.key_id,
                "keys": str(keys_file),
            }
            await body(client, info)

    asyncio.run(main())


TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')


async def sign_in(client: TestClient[Any, Any], key: str) -> str:
    """Sign in through the form; the session's CSRF token (from the worklist page)."""
    form = await client.get("/signin")
    token = TOKEN.search(await form.text())
    assert token is not None
    done = await client.post(
        "/signin",
        data={"csrf_token": token.group(1), "api_key": key, "next": "/worklist"},
        allow_redirects=False,
    )
    assert done.status == 303, await done.text()
    page = await client.get(f"/worklist?month={MONTH}")
    found = TOKEN.search(await page.text())
    assert found is not None
    return found.group(1)


def groups(html: str) -> dict[str, list[str]]:
    """group name -> patients listed in it, in order."""
    out: dict[str, list[str]] = {}
    for part in html.split('<section class="group group-')[1:]:
        name = part.split(" ", 1)[0].rstrip('"')
        out[name] = re.findall(r'<tr data-patient="([^"]+)"', part)
    return out


def listed(html: str) -> list[str]:
    """Every patient listed, group after group."""
    return [pid for pids in groups(html).values() for pid in pids]


def test_pages_need_a_session_and_send_the_browser_to_sign_in(tmp_path: Path) -> None:
    async def body(client: TestClient[Any, Any], k: dict[str, str]) -> None:
        r = await client.get(f"/worklist?month={MONTH}", allow_redirects=False)
        assert r.status == 303 and r.headers["Location"].startswith("/signin?next=")
        assert "worklist" in r.headers["Location"]
        # an API key never opens a page, and a page's session never opens the API
        bearer = {"Authorization": f"Bearer {k['a']}"}
        r = await client.get("/worklist", headers=bearer, allow_redirects=False)
        assert r.status == 303
        await sign_in(client, k["a"])
        api = await client.get(f"/v1/orgs/org-a/worklist?month={MONTH}")
        assert api.status == 401

    run(tmp_path, body)


def test_sign_in_sets_a_strict_http_only_cookie_and_refuses_a_bad_key_or_token(
    tmp_path: Path,
) -> None:
    async def body(client: TestClient[Any, Any], k: dict[str, str]) -> None:
        form = await client.get("/signin")
        token = TOKEN.search(await form.text())
        assert token is not None and form.headers["Content-Security-Policy"].startswith(
            "default-src 'self'"
        )
        no_token = await client.post("/signin", data={"api_key": k["a"]}, allow_redirects=False)
        assert no_token.status == 403
        wrong = await client.post(
            "/signin", data={"csrf_token": token.group(1), "api_key": "ct_nope"}
        )
        assert wrong.status == 401 and "not an active key" in await wrong.text()
        token2 = TOKEN.search(await wrong.text())
        assert token2 is not None
        ok = await client.post(
            "/signin",
            data={"csrf_token": token2.group(1), "api_key": k["a"], "next": "//evil.example/x"},
            allow_redirects=False,
        )
        assert ok.status == 303 and ok.headers["Location"] == "/worklist"  # never off-site
        cookie = next(
            v for h, v in ok.raw_headers if h == b"Set-Cookie" and b"caretally_session" in v
        )
        assert b"HttpOnly" in cookie and b"SameSite=Strict" in cookie and b"Secure" not in cookie

    run(tmp_path, body)


def test_cookies_are_secure_when_told_that_tls_ends_at_a_proxy(tmp_path: Path) -> None:
    async def body(client: TestClient[Any, Any], k: dict[str, str]) -> None:
        form = await client.get("/signin")
        cookie = form.headers["Set-Cookie"]
        assert "caretally_signin=" in cookie and "Secure" in cookie and "HttpOnly" in cookie

    run(tmp_path, body, secure=True)


def test_the_worklist_groups_patients_and_shows_only_the_sessions_org(tmp_path: Path) -> None:
    async def body(client: TestClient[Any, Any], k: dict[str, str]) -> None:
        await sign_in(client, k["a"])
        page = await client.get(f"/worklist?month={MONTH}")
        html = await page.text()
        assert groups(html) == {
            "ready": ["A-READY"],
            "near": ["A-NEAR"],
            "blocked": ["A-BLOCKED"],
            "conflicts": ["A-CLASH"],
            "other": [],
        }
        assert "B-READY" not in html and "B-NEAR" not in html and "org-b" not in html
        # 15 minutes in 19 1/2 of 31 days: 24 by the month's end at that pace
        assert "5 min to go, 12 days left" in html and "on pace" in html
        assert "No consent from the patient" in html and "consent.recorded" in html
        assert "Codes that cannot be billed together: 99424 and 99490" in html
        assert 'aria-label="99490: 15 of 20 minutes"' in html
        assert page.headers["Cache-Control"] == "no-store"

    run(tmp_path, body)


def test_filters_and_search_narrow_the_worklist(tmp_path: Path) -> None:
    async def body(client: TestClient[Any, Any], k: dict[str, str]) -> None:
        await sign_in(client, k["a"])
        only_ready = await (await client.get(f"/worklist?month={MONTH}&status=ready")).text()
        assert groups(only_ready)["ready"] == ["A-READY"] and groups(only_ready)["near"] == []
        search = await (await client.get(f"/worklist/groups?month={MONTH}&q=near")).text()
        assert listed(search) == ["A-NEAR"]
        nobody = await (
            await client.get(f"/worklist/groups?month={MONTH}&practitioner=dr-9")
        ).text()
        assert listed(nobody) == []
        bad = await client.get("/worklist?month=March")
        assert bad.status == 400 and "YYYY-MM" in await bad.text()

    run(tmp_path, body)


def test_a_form_post_without_the_csrf_token_is_refused(tmp_path: Path) -> None:
    async def body(client: TestClient[Any, Any], k: dict[str, str]) -> None:
        token = await sign_in(client, k["a"])
        for path in ("/signout", f"/months/{MONTH}/close"):
            r = await client.post(path, data={"confirm": "yes"}, allow_redirects=False)
            assert r.status == 403, path
            r = await client.post(path, data={"csrf_token": "x" + token}, allow_redirects=False)
            assert r.status == 403, path
        other_site = await client.post(
            "/signout",
            data={"csrf_token": token},
            headers={"Origin": "http://evil.example"},
            allow_redirects=False,
        )
        assert other_site.status == 403
        still = await client.get(f"/worklist?month={MONTH}", allow_redirects=False)
        assert still.status == 200  # none of those signed out
        out = await client.post("/signout", data={"csrf_token": token}, allow_redirects=False)
        assert out.status == 303
        gone = await client.get(f"/worklist?month={MONTH}", allow_redirects=False)
        assert gone.status == 303

    run(tmp_path, body)


def test_sessions_expire_when_idle_and_end_with_their_key(tmp_path: Path) -> None:
    async def body(client: TestClient[Any, Any], k: dict[str, str]) -> None:
        await sign_in(client, k["a"])
        store = client.server.app[SESSIONS]
        t = [1000.0]
        store.clock = lambda: t[0]
        for s in store._sessions.values():
            s.started = s.seen = t[0]
        t[0] += store.idle_s - 1
        assert (await client.get("/alerts", allow_redirects=False)).status == 200
        t[0] += store.idle_s + 1
        assert (await client.get("/alerts", allow_redirects=False)).status == 303
        await sign_in(client, k["b"])
        assert (await client.get("/alerts", allow_redirects=False)).status == 200
        revoke_key(Path(k["keys"]), k["id_b"])
        assert (await client.get("/alerts", allow_redirects=False)).status == 303

    run(tmp_path, body)


async def read_until(r: ClientResponse, needle: bytes) -> bytes:
    got = b""
    while needle not in got:
        chunk = await asyncio.wait_for(r.content.readany(), 5)
        assert chunk, got
        got += chunk
    return got


def test_the_live_stream_says_which_month_changed_and_brings_new_alerts(tmp_path: Path) -> None:
    async def body(client: TestClient[Any, Any], k: dict[str, str]) -> None:
        await sign_in(client, k["a"])
        cache = client.server.app[CACHE]
        r = await client.get("/live")
        assert r.headers["Content-Type"] == "text/event-stream"
        await read_until(r, b": caretally live")
        # another org's change and alert never reach this stream
        put(cache, "org-b", "B-NEAR", view("org-b", "B-NEAR", billable=["99490"]), [])
        cache.apply_alert(orjson.dumps(alert("org-b", "B-NEAR", 7)))
        put(cache, "org-a", "A-NEAR", view("org-a", "A-NEAR", billable=["99490"]), [])
        got = await read_until(r, b"event: billing")
        cache.apply_alert(orjson.dumps(alert("org-a", "A-NEAR", 8)))
        got += await read_until(r, b"event: alert")
        assert b'data: {"month":"2025-03"}' in got and b"A-NEAR-al8" in got
        assert b"B-NEAR" not in got
        r.close()
        after = await (await client.get(f"/worklist/groups?month={MONTH}")).text()
        assert "A-NEAR" in groups(after)["ready"]

    run(tmp_path, body)


def test_sign_in_never_sends_the_browser_to_another_site(tmp_path: Path) -> None:
    async def body(client: TestClient[Any, Any], k: dict[str, str]) -> None:
        for target in ("//evil.example/x", "/\\evil.example", "/\t/evil.example", "/ /x", "x"):
            form = await client.get("/signin")
            token = TOKEN.search(await form.text())
            assert token is not None
            ok = await client.post(
                "/signin",
                data={"csrf_token": token.group(1), "api_key": k["a"], "next": target},
                allow_redirects=False,
            )
            assert (ok.status, ok.headers["Location"]) == (303, "/worklist"), repr(target)
            page = TOKEN.search(await (await client.get(f"/worklist?month={MONTH}")).text())
            assert page is not None
            await client.post("/signout", data={"csrf_token": page.group(1)})
        assert safe_next("/patients/P-1/months/2025-03?as_of=x") == (
            "/patients/P-1/months/2025-03?as_of=x"
        )

    run(tmp_path, body)


def test_an_open_page_does_not_keep_its_session_from_going_idle(tmp_path: Path) -> None:
    async def body(client: TestClient[Any, Any], k: dict[str, str]) -> None:
        await sign_in(client, k["a"])
        store = client.server.app[SESSIONS]
        t = [1000.0]
        store.clock = lambda: t[0]
        for s in store._sessions.values():
            s.started = s.seen = t[0]
        t[0] += store.idle_s * 0.75  # the worklist refreshing itself, as live.js does
        assert (await client.get(f"/worklist/groups?month={MONTH}")).status == 200
        t[0] += store.idle_s * 0.75  # that refresh did not count as the person's
        r = await client.get(f"/worklist/groups?month={MONTH}")
        assert r.status == 401  # signed out, and no redirect for a fetch
        assert len(store) == 0

    run(tmp_path, body)


def test_one_orgs_sign_ins_never_sign_out_another_org(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr(sessions, "MAX_PER_ORG", 3)

    async def body(client: TestClient[Any, Any], k: dict[str, str]) -> None:
        store = client.server.app[SESSIONS]
        first_a = store.sign_in(k["a"])
        bs = [store.sign_in(k["b"]) for _ in range(5)]
        assert first_a is not None and store.get(first_a.sid) is first_a
        alive = [b for b in bs if b is not None and store.get(b.sid) is not None]
        assert alive == bs[-3:]  # org-b's own oldest went

    run(tmp_path, body)


def test_pages_wait_for_the_read_model_like_the_api(tmp_path: Path) -> None:
    async def body(client: TestClient[Any, Any], k: dict[str, str]) -> None:
        await sign_in(client, k["a"])
        client.server.app[CACHE]._lag.caught_up = False
        for path in (f"/worklist?month={MONTH}", "/alerts", "/live"):
            r = await client.get(path)
            assert (r.status, r.headers.get("Retry-After")) == (503, "1"), path

    run(tmp_path, body)


def test_a_month_in_other_digits_is_refused(tmp_path: Path) -> None:
    async def body(client: TestClient[Any, Any], k: dict[str, str]) -> None:
        token = await sign_in(client, k["a"])
        for path in ("/worklist?month=２０２６-03", "/months/２０２６-03/close"):
            assert (await client.get(path)).status == 400, path
        post = await client.post(
            "/months/２０２６-03/close", data={"csrf_token": token, "confirm": "yes"}
        )
        assert post.status == 400

    run(tmp_path, body)


def test_log_work_is_bounded_per_org_and_leaves_room_for_others() -> None:
    heavy = HeavyWork(workers=4, per_org=2)
    release = threading.Event()

    async def main() -> None:
        busy = [asyncio.create_task(heavy.run("org-a", release.wait)) for _ in range(2)]
        await asyncio.sleep(0.05)
        try:
            await heavy.run("org-a", lambda: True)
            raise AssertionError("a third piece of org-a's work was not refused")
        except web.HTTPTooManyRequests as exc:
            assert exc.headers["Retry-After"] == "2"
        assert await heavy.run("org-b", lambda: "done") == "done"  # not kept waiting
        release.set()
        assert await asyncio.gather(*busy) == [True, True]
        assert await heavy.run("org-a", lambda: 1) == 1  # freed again

    try:
        asyncio.run(main())
    finally:
        heavy.close()

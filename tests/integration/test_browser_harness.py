"""The browser harness itself (tests/support/browser.py): headless Chromium loads a page from
a loopback server, runs its script, and posts its form with what was typed."""

from __future__ import annotations

import asyncio
import secrets
import threading
from collections.abc import Iterator

import pytest
from aiohttp import web

from support.browser import CHROMIUM_ARGS, chromium, fill_and_submit, text_of, wait_until

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>harness</title></head>
<body>
<h1 id="status">waiting</h1>
<form id="note" method="post" action="/notes">
  <label>Minutes <input name="minutes"></label>
  <button type="submit">Save</button>
</form>
<script>
fetch("/token").then((r) => r.json()).then((d) => {
  document.getElementById("status").textContent = "token " + d.token;
});
</script>
</body></html>
"""


class PageServer:
    """A tiny aiohttp app on a free loopback port in a thread: the page, a JSON token only
    its script fetches, and the form's target, which records what it receives."""

    def __init__(self) -> None:
        self.token = secrets.token_hex(8)
        self.posts: list[dict[str, str]] = []
        self.port = 0
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), daemon=True)

    def _app(self) -> web.Application:
        async def page(_: web.Request) -> web.Response:
            return web.Response(text=PAGE, content_type="text/html")

        async def token(_: web.Request) -> web.Response:
            return web.json_response({"token": self.token})

        async def notes(request: web.Request) -> web.Response:
            form = await request.post()
            self.posts.append({k: str(v) for k, v in form.items()})
            return web.Response(text='<p id="saved">saved</p>', content_type="text/html")

        app = web.Application()
        app.router.add_get("/", page)
        app.router.add_get("/token", token)
        app.router.add_post("/notes", notes)
        return app

    async def _main(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        runner = web.AppRunner(self._app())
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self.port = runner.addresses[0][1]
            self._ready.set()
            await self._stop.wait()
        finally:
            await runner.cleanup()

    def __enter__(self) -> PageServer:
        self._thread.start()
        assert self._ready.wait(10), "page server did not start"
        return self

    def __exit__(self, *_: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        assert not self._thread.is_alive(), "page server did not stop"


@pytest.fixture
def server() -> Iterator[PageServer]:
    with PageServer() as s:
        yield s


def test_chromium_runs_the_script_and_posts_the_form(server: PageServer) -> None:
    with chromium() as driver:
        driver.get(f"http://127.0.0.1:{server.port}/")
        wait_until(
            driver,
            lambda d: text_of(d, "#status") == f"token {server.token}",
            message="the page's script did not show the fetched token",
        )

        fill_and_submit(driver, "form#note", {"minutes": "17"})
        wait_until(driver, lambda d: d.current_url.endswith("/notes"), message="no post")

        assert text_of(driver, "#saved") == "saved"
        assert server.posts == [{"minutes": "17"}]


def test_chromium_runs_with_the_harness_flags_and_no_proxy() -> None:
    """What the running browser reports, not what the harness meant to pass: every flag of
    CHROMIUM_ARGS is on its command line and no proxy is (nor in the session)."""
    with chromium() as driver:
        driver.get("chrome://version")
        command_line = text_of(driver, "#command_line").split()
        assert driver.capabilities["proxy"] == {}
    missing = [arg for arg in CHROMIUM_ARGS if arg not in command_line]
    assert not missing, f"flags missing from {command_line}"
    assert not [arg for arg in command_line if arg.startswith("--proxy")]

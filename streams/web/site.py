"""The pages' routes, templates and the answers every page shares (security headers,
HTML errors)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web

from projections.calendar import DEFAULT_TIMEZONE, local_date
from streams.http.routes import ERROR_PAGE
from streams.web import words
from streams.web.auth import SESSION, SESSIONS, signin, signin_form
from streams.web.config import WEB, WebConfig
from streams.web.heavy import HEAVY, HeavyWork
from streams.web.sessions import CSRF_FIELD, SessionStore

HERE = Path(__file__).parent
JINJA = web.AppKey("jinja", jinja2.Environment)
CLOCK = web.AppKey("clock", object)  # () -> aware datetime; tests pass their own instant

# no inline script or style, nothing from another origin; pages hold PHI: no caching, and
# no Referer (URLs name patients) to another site
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
        "frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
}


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["money"] = lambda v: f"${float(v):,.2f}"
    env.filters["minutes"] = lambda v: f"{float(v):g}"
    env.globals.update(
        flag=words.flag, reason=words.reason, alert_kind=words.alert_kind, program=words.program
    )
    return env


def now(request: web.Request) -> datetime:
    clock = request.app[CLOCK]
    return clock() if callable(clock) else datetime.now(UTC)


def this_month(request: web.Request, tz: str | None) -> str:
    """The current month in the practice's zone."""
    return local_date(int(now(request).timestamp()), tz or DEFAULT_TIMEZONE).strftime("%Y-%m")


def render(request: web.Request, template: str, status: int = 200, **context: Any) -> web.Response:
    session = request.get(SESSION)
    page = (
        request.app[JINJA]
        .get_template(template)
        .render(
            org=session.org_id if session else None,
            csrf_field=CSRF_FIELD,
            csrf_token=session.csrf if session else "",
            path=request.path,
            **context,
        )
    )
    return web.Response(
        text=page, status=status, content_type="text/html", headers=SECURITY_HEADERS
    )


def error_page(
    request: web.Request, status: int, title: str, message: str, headers: dict[str, str]
) -> web.StreamResponse:
    """An error of a page as a page (``ERROR_PAGE`` of :mod:`streams.http.routes`)."""
    page = render(request, "error.html", status=status, title=title, message=message)
    page.headers.update(headers)
    return page


async def home(request: web.Request) -> web.StreamResponse:
    raise web.HTTPSeeOther("/worklist")


def add_pages(app: web.Application, config: WebConfig, keys: Any, clock: Any = None) -> None:
    """Mount the pages on ``app`` (its middlewares must include
    :func:`~streams.web.auth.require_session`)."""
    from streams.web import alerts_page, close_page, live, patient_page, worklist_page
    from streams.web.auth import signout

    app[WEB] = config
    app[SESSIONS] = SessionStore(keys, config.session_idle_s, config.session_max_s)
    app[JINJA] = _environment()
    app[CLOCK] = clock
    app[HEAVY] = HeavyWork()
    app[ERROR_PAGE] = error_page

    async def _stop_heavy(app: web.Application) -> None:
        app[HEAVY].close()

    app.on_cleanup.append(_stop_heavy)
    r = app.router
    r.add_get("/", home)
    r.add_get("/signin", signin_form)
    r.add_post("/signin", signin)
    r.add_post("/signout", signout)
    r.add_get("/worklist", worklist_page.worklist)
    r.add_get("/worklist/groups", worklist_page.groups)
    r.add_get("/live", live.stream)
    r.add_get("/patients/{patient}/months/{month}", patient_page.patient_month)
    r.add_get("/months/{month}/close", close_page.preview)
    r.add_post("/months/{month}/close", close_page.close)
    r.add_get("/months/{month}/claims.{fmt}", close_page.download)
    r.add_get("/alerts", alerts_page.alerts)
    r.add_static("/static/", HERE / "static", append_version=False)

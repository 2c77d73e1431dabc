"""The pages' routes, templates and the answers every page shares (security headers,
HTML errors)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web

from projections.calendar import DEFAULT_TIMEZONE, local_date
from streams.web import words
from streams.web.auth import SESSION, SESSIONS, is_page, require_session, signin, signin_form
from streams.web.config import WEB, WebConfig
from streams.web.heavy import HEAVY, HeavyWork
from streams.web.sessions import CSRF_FIELD, SessionStore

log = logging.getLogger("caretally.serve")

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


@web.middleware
async def html_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """A page's errors as a page (the API keeps its JSON errors)."""
    if not is_page(request):
        return await handler(request)
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        page = render(
            request, "error.html", status=exc.status, title=exc.reason, message=exc.text or ""
        )
        if "Retry-After" in exc.headers:
            page.headers["Retry-After"] = exc.headers["Retry-After"]
        return page
    except Exception as exc:  # its text may quote ids: the type at ERROR, the rest at DEBUG
        log.error("internal error on a page (%s)", type(exc).__name__)
        log.debug("traceback of that internal error", exc_info=True)
        return render(
            request,
            "error.html",
            status=500,
            title="Internal error",
            message="Something went wrong on our side; the error is logged.",
        )


async def home(request: web.Request) -> web.StreamResponse:
    raise web.HTTPSeeOther("/worklist")


def add_pages(app: web.Application, config: WebConfig, keys: Any, clock: Any = None) -> None:
    """Mount the pages on ``app`` (its middlewares must include :func:`html_errors` and
    :func:`~streams.web.auth.require_session`, in that order)."""
    from streams.web import alerts_page, close_page, live, patient_page, worklist_page
    from streams.web.auth import signout

    app[WEB] = config
    app[SESSIONS] = SessionStore(keys, config.session_idle_s, config.session_max_s)
    app[JINJA] = _environment()
    app[CLOCK] = clock
    app[HEAVY] = HeavyWork()

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


PAGE_MIDDLEWARES = (html_errors, require_session)

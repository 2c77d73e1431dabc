"""Sign-in, sign-out and the middleware that guards every page.

Pages need a session cookie (:mod:`streams.web.sessions`); the JSON API under ``/v1/``
keeps its API keys and never accepts the cookie, so a page's session cannot be replayed
against the API and an API key in a header never opens a page. Every POST of a page must
carry the session's CSRF token (form field ``csrf_token`` or header ``X-CSRF-Token``) and,
when the browser says where it comes from, an ``Origin`` of this server; the sign-in form
uses a double-submit token instead, as there is no session yet.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable
from urllib.parse import quote, urlsplit

from aiohttp import web

from streams.web.config import WEB
from streams.web.sessions import (
    COOKIE,
    CSRF_FIELD,
    SIGNIN_COOKIE,
    Session,
    SessionStore,
    TooManySessions,
    same_token,
)

log = logging.getLogger("caretally.serve")

SESSIONS = web.AppKey("sessions", SessionStore)
SESSION = web.RequestKey("session", Session)
OPEN_PATHS = frozenset({"/signin", "/favicon.ico"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})  # nothing changes on them
PARTS_OF_PAGES = frozenset({"/live", "/worklist/groups"})  # fetched by a page: 401, no redirect
API_PREFIXES = ("/v1/", "/fhir/")  # the JSON API and the FHIR endpoint: keys, never sessions
API_PUBLIC = frozenset({"/healthz", "/readyz", "/metrics", "/openapi.json"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def is_page(request: web.Request) -> bool:
    """Whether a request is for the pages: the app serves them and the path is not the JSON
    API's or a probe's."""
    path = request.path
    return WEB in request.app and not path.startswith(API_PREFIXES) and path not in API_PUBLIC


def _secure(request: web.Request) -> bool:
    return request.secure or request.app[WEB].secure_cookies


def set_cookie(response: web.StreamResponse, request: web.Request, name: str, value: str) -> None:
    response.set_cookie(
        name, value, httponly=True, samesite="Strict", secure=_secure(request), path="/"
    )


def _same_origin(request: web.Request) -> bool:
    """Whether a post comes from this site as far as the browser says: ``Sec-Fetch-Site``
    when sent (browsers do), else an ``Origin`` naming this host. A client that sends
    neither (not a browser) passes here; the CSRF token still applies."""
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None:
        return site == "same-origin"
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    return origin != "null" and urlsplit(origin).netloc == request.host


async def csrf_ok(request: web.Request, expected: str) -> bool:
    if not _same_origin(request):
        return False
    given = request.headers.get("X-CSRF-Token")
    if given is None and request.content_type in (
        "application/x-www-form-urlencoded",
        "multipart/form-data",
    ):
        form = await request.post()
        value = form.get(CSRF_FIELD)
        given = value if isinstance(value, str) else None
    return same_token(given, expected)


def see_other(location: str) -> web.Response:
    """A 303 to ``location`` (a response, not a raised exception: it carries cookies)."""
    return web.Response(status=303, headers={"Location": location, "Cache-Control": "no-store"})


def safe_next(target: str | None) -> str:
    """A local path to go to after sign-in, never another site: one ``/``, then no
    second ``/`` or ``\\``, and no space or control character anywhere (browsers drop tabs
    and newlines, so ``/\\t/evil.example`` would be ``//evil.example``)."""
    if (
        not target
        or not target.startswith("/")
        or target[1:2] in ("/", "\\")
        or "\\" in target
        or not target.isprintable()
        or any(c.isspace() for c in target)
    ):
        return "/worklist"
    return target


@web.middleware
async def require_session(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Pages need a live session, and a POST its CSRF token; others pass through."""
    path = request.path
    if not is_page(request) or path in OPEN_PATHS or path.startswith("/static/"):
        return await handler(request)
    # a page's own fetches (the live stream, the worklist's refresh) are not a person
    # doing something: they do not keep a session from going idle
    session = request.app[SESSIONS].get(request.cookies.get(COOKIE), path not in PARTS_OF_PAGES)
    if session is None:
        if request.method == "GET" and path not in PARTS_OF_PAGES:
            raise web.HTTPSeeOther(f"/signin?next={quote(request.path_qs, safe='')}")
        raise web.HTTPUnauthorized(text="signed out: sign in again")
    if request.method not in SAFE_METHODS and not await csrf_ok(request, session.csrf):
        log.warning("refused a page form post without a valid CSRF token")
        raise web.HTTPForbidden(text="the form is stale or did not come from this site")
    request[SESSION] = session
    return await handler(request)


async def signin_form(request: web.Request) -> web.StreamResponse:
    from streams.web.site import render

    if request.app[SESSIONS].get(request.cookies.get(COOKIE)) is not None:
        raise web.HTTPSeeOther(safe_next(request.query.get("next")))
    token = secrets.token_urlsafe(32)
    response = render(
        request, "signin.html", signin_token=token, next=safe_next(request.query.get("next"))
    )
    set_cookie(response, request, SIGNIN_COOKIE, token)
    return response


async def signin(request: web.Request) -> web.StreamResponse:
    from streams.web.site import render

    expected = request.cookies.get(SIGNIN_COOKIE)
    if not expected or not await csrf_ok(request, expected):
        log.warning("refused a sign-in post without a valid CSRF token")
        raise web.HTTPForbidden(text="the sign-in form is stale; load it again")
    form = await request.post()
    key, target = form.get("api_key"), form.get("next")
    try:
        session = request.app[SESSIONS].sign_in(key if isinstance(key, str) else "")
    except TooManySessions:
        log.warning("sign-in refused: the session store is full")
        raise web.HTTPServiceUnavailable(
            text="Too many people are signed in right now; try again in a few minutes.",
            headers={"Retry-After": "60"},
        ) from None
    if session is None:
        token = secrets.token_urlsafe(32)
        response = render(
            request,
            "signin.html",
            status=401,
            signin_token=token,
            next=safe_next(target if isinstance(target, str) else None),
            error="That API key is not an active key. Check it, or ask for a new one.",
        )
        set_cookie(response, request, SIGNIN_COOKIE, token)
        return response
    log.info("a page session started")
    response = see_other(safe_next(target if isinstance(target, str) else None))
    set_cookie(response, request, COOKIE, session.sid)
    response.del_cookie(SIGNIN_COOKIE, path="/")
    return response


async def signout(request: web.Request) -> web.StreamResponse:
    request.app[SESSIONS].sign_out(request[SESSION].sid)
    response = see_other("/signin")
    response.del_cookie(COOKIE, path="/")
    return response

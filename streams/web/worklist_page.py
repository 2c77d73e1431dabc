"""The worklist page of a month, and its groups alone (what the live page fetches again
when billing changes)."""

from __future__ import annotations

from urllib.parse import urlencode

from aiohttp import web

from streams.http.routes import CACHE, MONTH_RE
from streams.http.state_cache import StateCache
from streams.web import worklist as wl
from streams.web.auth import SESSION
from streams.web.site import now, render, this_month


def caught_up(request: web.Request) -> StateCache:
    """The read model, once it has read its topics to the end (before: 503, as the API)."""
    cache = request.app[CACHE]
    if not cache.caught_up:
        raise web.HTTPServiceUnavailable(
            text="Still reading billing state; this page loads in a moment.",
            headers={"Retry-After": "1"},
        )
    return cache


def month_of(request: web.Request, cache: StateCache, org: str) -> str:
    """``?month=YYYY-MM``, else the current month in the practice's zone."""
    month = request.query.get("month", "").strip()
    if month:
        if not MONTH_RE.fullmatch(month):
            raise web.HTTPBadRequest(text="month must be YYYY-MM, e.g. 2026-03")
        return month
    return this_month(request, cache.org_timezone(org))


def alerted(cache: StateCache, org: str, month: str, kind: str) -> set[str]:
    """Patients of the org with an alert of ``kind`` in ``month``."""
    return {a.patient_id for a in cache.org_alerts(org) if a.kind == kind and a.month == month}


def build(request: web.Request) -> wl.Worklist:
    cache = caught_up(request)
    org = request[SESSION].org_id
    month = month_of(request, cache, org)
    q = request.query
    status = q.get("status", "")
    if status and status not in wl.STATUSES:
        raise web.HTTPBadRequest(text=f"status must be one of {', '.join(wl.STATUSES)}")
    return wl.build(
        cache.org_months(org, month),
        month,
        now(request),
        tz=cache.org_timezone(org),
        program=q.get("program", ""),
        practitioner=q.get("practitioner", ""),
        status=status,
        query=q.get("q", "").strip(),
        staff_overlaps=alerted(cache, org, month, "staff_overlap"),
        late=alerted(cache, org, month, "late_activity"),
    )


def _filters(request: web.Request) -> dict[str, str]:
    return {k: request.query.get(k, "") for k in ("program", "practitioner", "status", "q")}


async def worklist(request: web.Request) -> web.StreamResponse:
    work = build(request)
    live = "/live?" + urlencode({"month": work.month})
    return render(
        request,
        "worklist.html",
        work=work,
        groups=wl.GROUPS,
        filters=_filters(request),
        live_url=live,
        months=_neighbours(work.month),
    )


async def groups(request: web.Request) -> web.StreamResponse:
    return render(request, "_worklist_groups.html", work=build(request), groups=wl.GROUPS)


def _neighbours(month: str) -> tuple[str, str]:
    y, m = int(month[:4]), int(month[5:])
    prev = f"{y - 1}-12" if m == 1 else f"{y}-{m - 1:02d}"
    nxt = f"{y + 1}-01" if m == 12 else f"{y}-{m + 1:02d}"
    return prev, nxt

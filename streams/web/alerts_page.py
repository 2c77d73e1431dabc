"""The org's alerts, newest first, filterable by kind; new ones arrive live."""

from __future__ import annotations

from aiohttp import web

from schemas.views import Alert
from streams.web import words
from streams.web.auth import SESSION
from streams.web.site import render
from streams.web.worklist_page import caught_up

MAX_SHOWN = 500


async def alerts(request: web.Request) -> web.StreamResponse:
    org = request[SESSION].org_id
    kind = request.query.get("kind", "")
    if kind and kind not in words.ALERT_KINDS:
        raise web.HTTPBadRequest(text=f"kind must be one of {', '.join(words.ALERT_KINDS)}")
    shown: list[Alert] = []
    for stored in reversed(caught_up(request).org_alerts(org)):
        if kind and stored.kind != kind:
            continue
        shown.append(Alert.model_validate_json(stored.data))
        if len(shown) == MAX_SHOWN:
            break
    return render(request, "alerts.html", alerts=shown, kind=kind, kinds=words.ALERT_KINDS)

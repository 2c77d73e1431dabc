"""A patient-month: the audit report (as ``caretally audit`` builds it, from the live log),
the month's minutes by day, "as of" an earlier instant, and its alerts."""

from __future__ import annotations

import asyncio
from datetime import datetime
from zoneinfo import ZoneInfo

from aiohttp import web

from projections.audit import AuditNotFound, audit_month
from projections.billing import PROVISIONAL_FLAG_PREFIXES
from projections.calendar import DEFAULT_TIMEZONE
from schemas.views import Alert
from streams.close.log_scan import patient_log
from streams.http.routes import CACHE, MONTH_RE
from streams.kafka.topics import partition_counts
from streams.render.audit import header, sections
from streams.web.auth import SESSION
from streams.web.chart import minutes_by_day
from streams.web.config import WEB
from streams.web.site import render

MAX_ALERTS = 200


def parse_as_of(text: str, tz: str) -> datetime | None:
    """``?as_of=``: an ISO instant; without an offset it is read in the practice's zone
    (what a ``datetime-local`` field sends)."""
    text = text.strip()
    if not text:
        return None
    try:
        ts = datetime.fromisoformat(text)
    except ValueError:
        raise web.HTTPBadRequest(
            text="as of must be a date and time, e.g. 2026-03-15T17:00"
        ) from None
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=ZoneInfo(tz))


async def patient_month(request: web.Request) -> web.StreamResponse:
    org = request[SESSION].org_id
    patient, month = request.match_info["patient"], request.match_info["month"]
    if not MONTH_RE.fullmatch(month):
        raise web.HTTPBadRequest(text="month must be YYYY-MM")
    cache, config = request.app[CACHE], request.app[WEB]
    entry = cache.month_view(org, patient, month)
    tz = entry.timezone if entry is not None else cache.org_timezone(org) or DEFAULT_TIMEZONE
    as_of = parse_as_of(request.query.get("as_of", ""), tz)
    loop = asyncio.get_running_loop()
    counts = await loop.run_in_executor(None, partition_counts, config.kafka, [config.log_topic])
    events = await patient_log(
        config.kafka, config.log_topic, counts[config.log_topic], org, patient
    )
    try:
        report = await loop.run_in_executor(
            None, lambda: audit_month(events, org, patient, month, as_of, config.catalog)
        )
    except AuditNotFound:
        raise web.HTTPNotFound(text="Nothing is known of that patient in that month.") from None
    alerts: list[Alert] = []
    for stored in reversed(cache.org_alerts(org)):  # newest first
        alert = Alert.model_validate_json(stored.data)
        if alert.patient_id == patient and alert.month == month:
            alerts.append(alert)
            if len(alerts) == MAX_ALERTS:
                break
    return render(
        request,
        "patient_month.html",
        report=report,
        header=header(report),
        sections=sections(report),
        chart=minutes_by_day(report),
        alerts=alerts,
        provisional=any(f.startswith(PROVISIONAL_FLAG_PREFIXES) for f in report.billing.flags),
        as_of=request.query.get("as_of", ""),
        patient=patient,
        month=month,
    )

"""A patient-month: the audit report (as ``caretally audit`` builds it, from the live log),
the month's minutes by day, "as of" an earlier instant, and its alerts."""

from __future__ import annotations

import asyncio
from datetime import datetime
from zoneinfo import ZoneInfo

from aiohttp import web

from projections.audit import AuditNotFound, AuditReport, audit_month
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
from streams.web.heavy import HEAVY
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
    if cache.caught_up and not cache.knows_patient(org, patient):
        # nothing of that patient in the org's billing: no need to read the log
        raise web.HTTPNotFound(text="Nothing is known of that patient in that month.")

    def audit() -> AuditReport:
        topic = config.log_topic
        partitions = partition_counts(config.kafka, [topic])[topic]
        events = asyncio.run(patient_log(config.kafka, topic, partitions, org, patient))
        return audit_month(events, org, patient, month, as_of, config.catalog)

    try:
        report = await request.app[HEAVY].run(org, audit)
    except AuditNotFound:
        raise web.HTTPNotFound(text="Nothing is known of that patient in that month.") from None
    alerts: list[Alert] = []
    for stored in reversed(cache.org_alerts(org)):  # newest first
        if stored.patient_id == patient and stored.month == month:
            alerts.append(Alert.model_validate_json(stored.data))
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

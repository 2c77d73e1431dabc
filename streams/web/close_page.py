"""Month close from a page: a preview of the claim lines, the close itself (the service of
``caretally close``, :mod:`streams.close.service`) after a confirmation, and the claim
files to download (written again from the latest close, exactly as
``caretally close --export-only`` writes them)."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from aiohttp import web

from streams.close.service import (
    CloseError,
    CloseRefused,
    CloseRequest,
    close_month,
    preview_month,
)
from streams.http.routes import CACHE, MONTH_RE
from streams.web.auth import SESSION
from streams.web.config import WEB
from streams.web.heavy import HEAVY
from streams.web.site import SECURITY_HEADERS, now, render
from streams.web.worklist_page import alerted

log = logging.getLogger("caretally.serve")

FORMATS = {"csv": "text/csv", "json": "application/json", "837p": "application/json"}
"""The claim files a page offers (``/months/<month>/claims.<fmt>``): those of ``caretally
close --claims-format``, the 837P-shaped JSON included (docs/claims.md)."""
# the close service's refusals, in the page's words (its own name the command's options)
REFUSED = {
    "already_closed": "The month was closed meanwhile (from another page or the command "
    "line). Look at the claim lines below; to export what is known now, reissue the close.",
    "no_records": "The event log holds nothing of your organisation yet: there is nothing "
    "to close.",
    "not_ended": "The month has not ended yet in the practice's time zone. To close it now, "
    "tick “Close before the month has ended”.",
}
T = TypeVar("T")


def _month(request: web.Request) -> str:
    month = request.match_info["month"]
    if not MONTH_RE.fullmatch(month):
        raise web.HTTPBadRequest(text="month must be YYYY-MM")
    return month


def _claims_dir(request: web.Request) -> Path:
    """The folder for claim files, created if missing (as ``caretally close`` does)."""
    folder = request.app[WEB].claims_dir
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        log.error("cannot create the claims folder: %s", exc.strerror or type(exc).__name__)
        raise web.HTTPServiceUnavailable(
            text="The claims folder of this server cannot be written; tell its operator."
        ) from None
    return folder


async def _off_loop(request: web.Request, work: Callable[[], T]) -> T:
    """The close service runs its own event loops and blocking Kafka calls: in the pages'
    pool for log work (:mod:`streams.web.heavy`), counted against the session's org."""
    return await request.app[HEAVY].run(request[SESSION].org_id, work)


async def _page(
    request: web.Request, month: str, status: int = 200, **extra: object
) -> web.Response:
    org = request[SESSION].org_id
    config = request.app[WEB]
    preview = await _off_loop(
        request,
        lambda: preview_month(
            config.kafka, config.log_topic, org, month, now(request), config.catalog
        ),
    )
    late = sorted(alerted(request.app[CACHE], org, month, "late_activity"))
    return render(
        request, "close.html", status=status, preview=preview, month=month, late=late, **extra
    )


async def preview(request: web.Request) -> web.StreamResponse:
    return await _page(request, _month(request))


async def close(request: web.Request) -> web.StreamResponse:
    month = _month(request)
    org = request[SESSION].org_id
    form = await request.post()
    if form.get("confirm") != "yes":
        return await _page(
            request, month, 400, error="Tick the box to confirm the close, then press Close."
        )
    config = request.app[WEB]
    close_req = CloseRequest(
        org,
        month,
        _claims_dir(request),
        reissue=form.get("reissue") == "yes",
        force=form.get("force") == "yes",
    )
    try:
        result = await _off_loop(
            request,
            lambda: close_month(
                config.kafka, config.log_topic, close_req, now(request), None, config.catalog
            ),
        )
    except CloseRefused as exc:
        return await _page(request, month, 409, error=REFUSED.get(exc.reason, str(exc)))
    except CloseError as exc:  # its text names the broker: for the log, not the page
        log.warning("a close from a page failed: %s", exc)
        return await _page(
            request,
            month,
            503,
            error="The close did not complete: the event log did not answer, or took the "
            "close on only some of its partitions. Close again to finish it.",
        )
    log.info("a month was closed from a page (%d claim lines)", len(result.lines))
    return await _page(request, month, closed=result)


async def download(request: web.Request) -> web.StreamResponse:
    month, fmt = _month(request), request.match_info["fmt"]
    if fmt not in FORMATS:
        raise web.HTTPNotFound(text="claims come as .csv, .json or .837p")
    org = request[SESSION].org_id
    config = request.app[WEB]

    def export() -> tuple[str, bytes]:
        """The file as ``close --export-only`` writes it, in a folder of its own (a
        download never touches the claim files a close or a reissue wrote)."""
        with tempfile.TemporaryDirectory(prefix="caretally-claims-") as folder:
            close_req = CloseRequest(org, month, Path(folder), formats=(fmt,), export_only=True)
            result = close_month(
                config.kafka, config.log_topic, close_req, now(request), None, config.catalog
            )
            return result.paths[0].name, result.paths[0].read_bytes()

    try:
        name, body = await _off_loop(request, export)
    except CloseRefused:
        raise web.HTTPNotFound(text=f"{month} has not been closed: close it first.") from None
    return web.Response(
        body=body,
        content_type=FORMATS[fmt],
        headers={
            **SECURITY_HEADERS,
            "Content-Disposition": f'attachment; filename="{name}"',
        },
    )

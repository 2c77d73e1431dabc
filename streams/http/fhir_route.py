"""``POST /fhir/r4``: a FHIR R4 Bundle in, wire-contract events to ingress (docs/fhir.md).

The Bundle is mapped by :mod:`streams.fhir` with the org of the presented key (FHIR
resources do not name caretally's org). The answer is FHIR too:

* ``transaction``: all or nothing. One entry that cannot be mapped refuses the Bundle
  (400, an ``OperationOutcome`` with one issue per such entry) and nothing is written.
* ``batch`` and ``collection`` (read as a batch): the entries that map are written, each
  other entry is answered with its own ``OperationOutcome`` and dead-lettered after the
  events are written (``care.deadletter.v1``, the entry's JSON with the reason, keyed
  ``org_id:``, ``source_topic`` ``http:fhir``, ``source_offset`` the entry's index), so
  nothing is silently dropped.

A written entry is answered ``202 Accepted``: its events are in the ingress topic, and the
gate then logs them, drops exact re-sends (a resource re-sent with the same
``meta.versionId`` maps to the same events) or dead-letters a conflict. An entry read only
to resolve references (a ``Patient``) is answered ``200 OK``. Errors before the Bundle is
read without a key (401) keep the API's JSON error shape; every other refusal (content
type, size, rate limits, the body itself) and a mapping failure (500) is an
``OperationOutcome``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
from aiohttp import web

from streams.fhir.convert import (
    BUNDLE_TYPES,
    SOURCE,
    Conversion,
    EntryProblem,
    FhirInputError,
    convert_document,
    operation_outcome,
)
from streams.http.rate_limit import Refusal
from streams.http.routes import (
    MAX_BODY,
    METRICS,
    OFFLOAD_BYTES,
    ORG,
    RATE,
    IngressUnavailable,
    _read_limited,
    write_deadletters,
    write_ingress,
)
from streams.kafka.records import event_key
from streams.worker.gate import Source

log = logging.getLogger("caretally.serve")

FHIR_JSON = "application/fhir+json"
FHIR_TYPES = frozenset({FHIR_JSON, "application/json"})
DEADLETTER_ORIGIN = "http:fhir"


def outcome(
    status: int, problems: list[EntryProblem] | str, headers: dict[str, str] | None = None
) -> web.Response:
    """An ``OperationOutcome`` answer: one issue per problem (or one for a message)."""
    if isinstance(problems, str):
        problems = [EntryProblem(entry=-1, where="Bundle", resource=None, reason=problems)]
    return _fhir(operation_outcome(problems), status, headers)


def _refused(refused: Refusal) -> web.Response:
    """A rate limit's refusal, in FHIR (429, or 413 for a Bundle larger than a burst)."""
    retry = {} if refused.retry_after is None else {"Retry-After": str(refused.retry_after)}
    return outcome(refused.status, refused.message, retry)


def _fhir(body: dict[str, Any], status: int, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(body), status=status, content_type=FHIR_JSON, headers=headers
    )


def _records(conversion: Conversion, org_id: str) -> list[tuple[bytes, bytes]]:
    """(key, value) of each converted event: keyed ``org_id:patient_id`` as every event
    on ingress (the mapper validated each against the wire contract, with this org)."""
    return [
        (event_key(org_id, patient), raw)
        for raw, patient in zip(conversion.events, conversion.patients, strict=True)
    ]


def response_bundle(conversion: Conversion) -> dict[str, Any]:
    """The ``batch-response`` / ``transaction-response`` Bundle: one entry per entry sent,
    in order."""
    kind = "transaction-response" if conversion.bundle_type == "transaction" else "batch-response"
    problems = {p.entry: p for p in conversion.problems}
    entries = []
    for i in range(conversion.entries):
        if (problem := problems.get(i)) is not None:
            entries.append(
                {
                    "response": {
                        "status": "400 Bad Request",
                        "outcome": operation_outcome([problem]),
                    }
                }
            )
        elif i < len(conversion.entry_events) and conversion.entry_events[i]:
            entries.append({"response": {"status": "202 Accepted"}})
        else:
            entries.append({"response": {"status": "200 OK"}})
    return {"resourceType": "Bundle", "type": kind, "entry": entries}


def _convert(body: bytes, org_id: str) -> Conversion:
    return convert_document(body, org_id, source=SOURCE)


async def post_fhir_bundle(request: web.Request) -> web.Response:
    """Map a FHIR R4 Bundle to events and write them to ingress (the module's docstring)."""
    if request.content_type not in FHIR_TYPES:
        return outcome(415, f"send a FHIR R4 Bundle as {FHIR_JSON}")
    org_id = request[ORG]
    rate = request.app[RATE]
    if (refused := rate.exhausted(org_id)) is not None:
        return _refused(refused)
    limit = request.app[MAX_BODY]
    body = await _read_limited(request, limit)
    if body is None:
        return outcome(413, f"body larger than {limit} bytes; split the Bundle")
    try:
        if len(body) > OFFLOAD_BYTES:
            loop = asyncio.get_running_loop()
            conversion = await loop.run_in_executor(None, _convert, body, org_id)
        else:
            conversion = _convert(body, org_id)
    except FhirInputError as exc:
        return outcome(400, str(exc))
    except Exception as exc:  # a bug of the mapping: answered in FHIR, logged without values
        log.error("mapping a FHIR Bundle failed: %s", type(exc).__name__)
        return outcome(
            500, "the Bundle could not be mapped (an internal error); nothing was written"
        )
    if conversion.bundle_type not in BUNDLE_TYPES:
        return outcome(400, "send a Bundle of type transaction, batch or collection")
    records = _records(conversion, org_id)
    entries = max(len(records) + len(conversion.problems), 1)
    if (refused := rate.check(org_id, entries)) is not None:
        return _refused(refused)
    practice_key = event_key(org_id, None)
    practice_wide = sum(1 for key, _ in records if key == practice_key)
    if practice_wide and (refused := rate.check(org_id, 0, practice_wide)) is not None:
        return _refused(refused)
    if conversion.problems:
        request.app[METRICS].events_rejected.inc(len(conversion.problems))
        if conversion.bundle_type == "transaction":
            return outcome(400, list(conversion.problems))
    try:
        await write_ingress(request, records, "Bundle")
    except IngressUnavailable as exc:
        return outcome(503, exc.message, {"Retry-After": exc.retry_after})
    # after the events: a Bundle resent after a 503 does not dead-letter its entries twice
    letters = [
        (f"{p.where}: {p.reason}", p.value or b"", Source(DEADLETTER_ORIGIN, -1, p.entry))
        for p in conversion.problems
    ]
    await write_deadletters(request, org_id, letters, "unmapped FHIR entries")
    request.app[METRICS].events_accepted.inc(len(records))
    log.debug("accepted %d FHIR event(s) for org %s", len(records), org_id)
    return _fhir(response_bundle(conversion), 200)

"""One partition of the log folded by the core: records in, output records out (as data).

No I/O here: the worker feeds records and sends what comes back. A partition holds
the :class:`~projections.engine.Projector` of the patients keyed to it, plus what the
daily sweep has done, and is saved whole as a snapshot beside the log offset it
reflects (``streams.worker.snapshots``, as data through ``streams.worker.state_codec``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import date, datetime
from zoneinfo import ZoneInfo

from pydantic import ValidationError

from projections.alerts import approaching
from projections.billing import MonthBilling
from projections.calendar import month_of_date
from projections.engine import Projector
from projections.ledger import Activity, Status
from schemas.events import (
    ActivityLogged,
    ActivityVoided,
    Event,
    EventRejected,
    parse_event,
)
from schemas.trusted import decode_trusted
from schemas.views import Alert, billing_line, contract_fields
from streams.kafka.records import (
    alert_value,
    billing_key,
    billing_value,
    context_header,
    event_key,
    progress_header,
    staff_key,
    staff_value,
)

BILLING, ALERTS, STAFF, DEADLETTER = "billing", "alerts", "staff", "deadletter"
CONTRACT_BROKEN = "billing_view_contract"
"""The dead-letter reason of a billing line that fails :class:`~schemas.views.PatientMonthView`
(a bug of the fold, never of its input): it goes to the dead-letter topic, never to
``care.billing.v1``, and the worker goes on (one patient-month must not stop every tenant);
the reason names the failing fields, never their values."""
log = logging.getLogger("caretally.worker")
_REFUSED = (Status.CONFLICT, Status.OVER_LIMIT)  # dead-lettered with the ledger's reason


@dataclass(frozen=True, slots=True)
class Output:
    """A record to send: ``topic`` is one of BILLING, ALERTS, STAFF, DEADLETTER."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()
    kind: str = ""  # an alert's kind (for the metrics)


def alert_output(alert: Alert) -> Output:
    key = event_key(alert.org_id, alert.patient_id)
    return Output(ALERTS, key, alert_value(alert), (), str(alert.kind))


def _staff_out(event: Event, activity: Activity, tz: str, voided: bool) -> Output:
    value = staff_value(event.org_id, event.patient_id, event.event_id, activity, tz, voided)
    return Output(STAFF, staff_key(event.org_id, activity.staff_id), value)


@dataclass
class FoldPartition:
    projector: Projector = field(default_factory=Projector)
    swept: dict[str, date] = field(default_factory=dict)  # org -> last local day swept
    latest: datetime | None = None  # the newest ``recorded_at`` folded (the log's clock)

    def apply(self, raw: bytes, digests: tuple[int, int] | None = None) -> list[Output]:
        """Fold one log record (its raw bytes). ``digests``: the (idempotency, body)
        digests of its ``idem``/``body`` headers, present when a log writer wrote it; such
        a record is decoded without the repeated-key scan its writer already did
        (:mod:`schemas.trusted`) and its digests are not computed again. A record without
        them is validated in full."""
        try:
            event = parse_event(raw) if digests is None else decode_trusted(raw)
        except EventRejected as exc:  # the gate validated it: someone wrote to the log
            return [Output(DEADLETTER, None, raw, (("reason", exc.reason.encode()),))]
        return self.apply_event(event, raw, digests)

    def apply_event(
        self, event: Event, raw: bytes | None = None, digests: tuple[int, int] | None = None
    ) -> list[Output]:
        result = self.projector.step(event, raw, digests)
        if result.outcome.status in _REFUSED:
            return [Output(DEADLETTER, None, raw, (("reason", result.outcome.reason.encode()),))]
        if result.outcome.status is not Status.APPLIED:
            return []
        if self.latest is None or event.recorded_at > self.latest:
            self.latest = event.recorded_at
        out = [self._billing_out(b) for b in result.changed]
        out.extend(alert_output(a) for a in result.alerts)
        out.extend(self._staff(event, result.outcome.previous))
        return out

    def _billing_out(self, b: MonthBilling) -> Output:
        key = billing_key(b.org_id, b.patient_id, b.month)
        if (b.org_id, b.patient_id, b.month) not in self.projector.views:
            return Output(BILLING, key, None)  # the month has nothing left in it
        tz = self.projector.ledger.practice(b.org_id).timezone
        headers = (("progress", progress_header(b)), ("context", context_header(b, tz)))
        value = billing_value(b)
        if value is not None:  # always, for a billing: held to the published contract
            try:
                billing_line(value)
            except ValidationError as exc:  # a bug of ours: the line is not published
                fields = contract_fields(exc)
                reason = f"{CONTRACT_BROKEN}: {fields or 'the view'}"
                log.error("a billing line broke the published contract (%s): dead-lettered", fields)
                return Output(DEADLETTER, key, value, (("reason", reason.encode()),))
        return Output(BILLING, key, value, headers)

    def _staff(self, event: Event, previous: Activity | None) -> list[Output]:
        if not isinstance(event, ActivityLogged | ActivityVoided):
            return []
        tz = self.projector.ledger.practice(event.org_id).timezone
        out = []
        current = None
        if isinstance(event, ActivityLogged):
            patient = self.projector.ledger.patients[(event.org_id, event.patient_id)]
            current = patient.activities[event.data.activity_id]
        if previous is not None and (current is None or previous.staff_id != current.staff_id):
            out.append(_staff_out(event, previous, tz, voided=True))
        if current is not None:
            out.append(_staff_out(event, current, tz, voided=False))
        return out

    def sweep(self, now: datetime) -> list[Output]:
        """``threshold_approaching`` once per practice-local day (``now`` is passed in)."""
        out: list[Output] = []
        ledger, catalog = self.projector.ledger, self.projector.catalog
        orgs = {org for org, _pid in ledger.patients}
        for org in sorted(orgs):
            today = now.astimezone(ZoneInfo(ledger.practice(org).timezone)).date()
            if self.swept.get(org) == today:
                continue
            self.swept[org] = today
            month = month_of_date(today)
            for (o, _pid, m), b in sorted(self.projector.views.items()):
                if o == org and m == month:
                    out.extend(alert_output(a) for a in approaching(b, today, catalog))
        return out


def sweep_clock(partitions: list[FoldPartition], mode: str, wall: datetime) -> datetime | None:
    """The sweep's "now": the wall clock, or (``log``) the newest event time folded.

    ``log`` suits replays and demos of past months; it moves only as events arrive.
    """
    if mode == "wall":
        return wall
    latest = [p.latest for p in partitions if p.latest is not None]
    return max(latest) if latest else None

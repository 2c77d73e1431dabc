"""The alerts the worker puts on ``care.alerts.v1`` for a log, computed offline (no broker).

``caretally replay --alerts`` answers "which alerts fired, when and why" from a file or
the archive. Nothing is derived here: each record goes through the worker's own
:class:`~streams.worker.partition.FoldPartition` (the core's ``Projector``), its
``care.staff.v1`` outputs through :class:`~projections.staff.StaffProjector` as the
worker's staff agent folds them, and the optional sweep is ``projections.alerts.approaching``
over the fold's views, as ``FoldPartition.sweep`` runs it. So every alert is the value the
worker sends, byte for byte (``streams.kafka.records.alert_value``), with the same id.

The log is folded as one partition, in the order given (a file's line order, the
archive's canonical order): practice-wide events, which a partitioned log holds once per
partition, count once. Alerts come in log order: a record's own alerts first, then the
``staff_overlap`` alerts of the intervals it sent to ``care.staff.v1``. The worker's
staff agent keys its state by staff member (``org_id:staff_id``); here each staff key
has its own :class:`StaffProjector`, so the alerts are those of a worker whose staff
members each land on their own ``care.staff.v1`` partition.

One limit: a ``staff_overlap`` alert's id names the interval that reached the staff
projection second. With a log of several partitions, the folds feed ``care.staff.v1`` in
their own interleaving, so for a pair of intervals from two log partitions the worker's
id may name the other one (the same overlap: org, patient, month and detail agree;
``tests/integration/test_scaleout.py`` compares them so). Every other kind has the
worker's id exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import date, datetime

from projections.alerts import approaching
from projections.calendar import month_of_date
from projections.engine import Projector
from projections.rules import SHIPPED_CATALOG, RuleCatalog
from projections.staff import StaffProjector
from schemas.events import EventRejected, parse_event
from streams.files.logfile import BadLine, Line
from streams.kafka.records import alert_value, header, staff_item
from streams.worker.partition import ALERTS, DEADLETTER, STAFF, FoldPartition


@dataclass(slots=True)
class AlertStats:
    """What a replay read: records (lines, archived events), how each ended, alerts out."""

    records: int = 0
    applied: int = 0
    duplicates: int = 0
    skipped_as_of: int = 0
    bad: int = 0
    alerts: int = 0


class AlertReplay:
    """One log folded as the worker folds it; :meth:`lines` yields the ``care.alerts.v1``
    values it raises, :meth:`sweep` those of the daily ``threshold_approaching`` sweep.

    ``as_of``: records with a later ``recorded_at`` are skipped, as ``projections.engine.fold``
    skips them (and the replay goes on: a log is not in ``recorded_at`` order).
    ``catalog``: the rule books the months are evaluated with.
    """

    def __init__(
        self, as_of: datetime | None = None, catalog: RuleCatalog = SHIPPED_CATALOG
    ) -> None:
        self.as_of = as_of
        self.fold = FoldPartition(Projector(catalog=catalog))
        self.staff: dict[bytes, StaffProjector] = {}  # care.staff.v1 key -> its staff fold
        self.stats = AlertStats()

    def lines(
        self, lines: Iterable[Line], on_bad: Callable[[BadLine], None] | None = None
    ) -> Iterator[bytes]:
        """The alert values of ``lines`` (numbered records, or why one could not be read),
        in log order; a rejected record goes to ``on_bad`` and is skipped, as
        ``streams.files.logfile.fold_lines`` does for ``caretally replay``."""
        stats = self.stats
        for number, line in lines:
            stats.records += 1
            if isinstance(line, str):
                reason = line
            else:
                try:
                    event = parse_event(line)
                except EventRejected as exc:
                    reason = exc.reason
                else:
                    if self.as_of is not None and event.recorded_at > self.as_of:
                        stats.skipped_as_of += 1
                        continue
                    seq = self.fold.projector.ledger.seq  # moves only when an event applies
                    outs = self.fold.apply_event(event, line)
                    refused = next((o for o in outs if o.topic == DEADLETTER), None)
                    if refused is None:
                        if self.fold.projector.ledger.seq != seq:
                            stats.applied += 1
                        else:
                            stats.duplicates += 1
                        for out in outs:
                            if out.topic == ALERTS:
                                assert out.value is not None
                                stats.alerts += 1
                                yield out.value
                        for out in outs:
                            if out.topic == STAFF:
                                yield from self._staff(out.key, out.value)
                        continue
                    reason = (header(refused.headers, "reason") or b"").decode()
            stats.bad += 1
            if on_bad is not None:
                on_bad(BadLine(number, reason))

    def _staff(self, key: bytes | None, value: bytes | None) -> Iterator[bytes]:
        """The ``staff_overlap`` alerts of one ``care.staff.v1`` record (the worker's
        staff agent: ``staff_item``, then the staff fold of its key)."""
        assert key is not None and value is not None
        projector = self.staff.get(key)
        if projector is None:
            projector = self.staff[key] = StaffProjector()
        for alert in projector.apply(staff_item(value)):
            self.stats.alerts += 1
            yield alert_value(alert)

    def sweep(self, today: date) -> Iterator[bytes]:
        """``threshold_approaching`` of the billing views of the month containing ``today``
        (each practice's local day), in the order of ``FoldPartition.sweep``."""
        month = month_of_date(today)
        for (_org, _pid, m), billing in sorted(self.fold.projector.views.items()):
            if m == month:
                for alert in approaching(billing, today, self.fold.projector.catalog):
                    self.stats.alerts += 1
                    yield alert_value(alert)


def replay_alerts(
    lines: Iterable[Line],
    as_of: datetime | None = None,
    today: date | None = None,
    on_bad: Callable[[BadLine], None] | None = None,
    stats: AlertStats | None = None,
    catalog: RuleCatalog = SHIPPED_CATALOG,
) -> Iterator[bytes]:
    """The ``care.alerts.v1`` values of a log (see :class:`AlertReplay`), then, with
    ``today``, those of the daily sweep run after the replay; ``stats`` (if given) is
    filled in as the values are taken; the months are evaluated with ``catalog``."""
    run = AlertReplay(as_of, catalog)
    if stats is not None:
        run.stats = stats
    yield from run.lines(lines, on_bad)
    if today is not None:
        yield from run.sweep(today)

"""The read model of ``caretally serve``: billing views and alerts followed from Kafka.

:class:`StateCache` reads ``care.billing.v1`` and ``care.alerts.v1`` from their beginning,
without a consumer group (every server holds the whole state, so any number of them can run
side by side and none waits for a group rebalance, which Tansu makes slow), and hands new
alerts to Server-Sent-Event subscribers. It can be fed without a broker
(:meth:`StateCache.apply_billing` / :meth:`StateCache.apply_alert`).

Whether Kafka is reachable is asked, not assumed: aiokafka retries a lost broker inside
its fetcher and never tells the caller, and its connection objects only know about TCP
(an idle client closes its connections on purpose). So a probe asks the broker for the
metadata of the two topics every ``probe_interval`` seconds, on the consumer's own client
(``AIOKafkaClient.force_metadata_update``: no new connection, a few hundred bytes), and
:attr:`StateCache.kafka_up` is whether the last answer came within ``probe_timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
from pydantic import ValidationError

from projections.calendar import DEFAULT_TIMEZONE
from schemas.views import Alert
from streams.http.closing import stop_within
from streams.kafka.clients import (
    SERVE_CACHE_CONSUMER,
    AIOKafkaConsumer,
    AioTopicPartition,
    Connection,
    aio_consumer,
)
from streams.kafka.records import header, key_parts
from streams.kafka.topics import Topics

log = logging.getLogger("caretally.serve")

ALERTS_PER_ORG = 10_000
SUBSCRIBER_QUEUE = 1000
PROBE_INTERVAL_S = 1.0
PROBE_TIMEOUT_S = 2.0
CLOSE_TIMEOUT_S = 1.5


@dataclass(slots=True)
class BillingEntry:
    """One patient-month as last published: the stored bytes, parsed view and progress."""

    org_id: str
    patient_id: str
    month: str
    raw: bytes
    view: dict[str, Any]
    progress: list[dict[str, Any]]
    timezone: str = DEFAULT_TIMEZONE  # the practice's (the record's ``context`` header)
    practitioners: tuple[str, ...] = ()  # billing practitioners its lines and tracks name

    @property
    def ids(self) -> BillingIds:
        return (self.org_id, self.patient_id, self.month)


BillingIds = tuple[str, str, str]
"""(org_id, patient_id, month): what a ``care.billing.v1`` key stands for."""


def _billing_ids(key: bytes | None) -> BillingIds | None:
    parts = key_parts(key)
    if parts is None or len(parts) != 3:
        return None
    return parts[0], parts[1], parts[2]


@dataclass(frozen=True, slots=True)
class StoredAlert:
    alert_id: str
    kind: str
    data: bytes  # compact JSON on one line (SSE data must not hold a newline)
    patient_id: str = ""
    month: str = ""

    def sse(self) -> bytes:
        alert_id = self.alert_id.replace("\r", "").replace("\n", "")
        return b"id: %s\nevent: %s\ndata: %s\n\n" % (
            alert_id.encode(),
            self.kind.encode(),
            self.data,
        )


@dataclass(eq=False, slots=True)
class Subscriber:
    """One SSE client: a bounded queue; ``None`` in it means "stop" (``dropped`` says why)."""

    org_id: str
    queue: asyncio.Queue[StoredAlert | None]
    dropped: bool = False


@dataclass(eq=False, slots=True)
class BillingWatcher:
    """One live page of an org: the months whose billing changed since it last looked,
    and an event set when there are any (a watcher never blocks the cache)."""

    org_id: str
    months: set[str] = field(default_factory=set)
    event: asyncio.Event = field(default_factory=asyncio.Event)

    def changed(self, month: str) -> None:
        self.months.add(month)
        self.event.set()

    def take(self) -> set[str]:
        months, self.months = self.months, set()
        self.event.clear()
        return months


@dataclass(slots=True)
class _Lag:
    caught_up: bool = False
    healthy: bool = False
    error: str | None = None
    kafka_up: bool = False  # the last probe's answer


class StateCache:
    """Latest billing view per patient-month and recent alerts per org, from Kafka.

    The consumer has no group: it is assigned every partition of the billing and alerts
    topics and reads them from the beginning, so the cache is a pure function of the topics
    (a restart rebuilds it). Until it has read up to the high-water mark once, reads answer
    503 rather than a silently incomplete state.
    """

    def __init__(
        self,
        kafka: Connection,
        topics: Topics,
        *,
        alerts_per_org: int = ALERTS_PER_ORG,
        subscriber_queue: int = SUBSCRIBER_QUEUE,
        probe_interval: float = PROBE_INTERVAL_S,
        probe_timeout: float = PROBE_TIMEOUT_S,
    ) -> None:
        self.kafka = kafka
        self.topics = topics
        self.alerts_per_org = alerts_per_org
        self.subscriber_queue = subscriber_queue
        self.probe_interval = probe_interval
        self.probe_timeout = probe_timeout
        # keyed by the ids (org, patient, month) a record's key decodes to, never its bytes
        self.billing: dict[BillingIds, BillingEntry] = {}
        self._by_org_month: dict[str, dict[str, set[BillingIds]]] = {}
        self.alerts: dict[str, deque[StoredAlert]] = {}
        self._subscribers: dict[str, set[Subscriber]] = {}
        self._watchers: dict[str, set[BillingWatcher]] = {}
        self._lag = _Lag()
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._probe: asyncio.Task[None] | None = None

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        consumer = aio_consumer(self.kafka, SERVE_CACHE_CONSUMER)
        await consumer.start()
        try:
            await consumer.topics()  # loads cluster metadata
            parts: list[AioTopicPartition] = []
            for topic in (self.topics.billing, self.topics.alerts):
                ids = consumer.partitions_for_topic(topic)
                if not ids:
                    raise RuntimeError(f"topic {topic!r} does not exist (run ensure_topics first)")
                parts.extend(AioTopicPartition(topic, p) for p in sorted(ids))
            consumer.assign(parts)
            await consumer.seek_to_beginning(*parts)
        except BaseException:
            await consumer.stop()
            raise
        self._consumer = consumer
        self._lag.healthy = self._lag.kafka_up = True
        self._task = asyncio.create_task(self._follow(consumer, parts), name="caretally-cache")
        self._probe = asyncio.create_task(self._watch(consumer), name="caretally-kafka-probe")

    async def stop(self, timeout: float = CLOSE_TIMEOUT_S) -> None:
        """Stop following; the consumer gets ``timeout`` seconds to close (broker up or not)."""
        self.close_subscribers()
        self._lag.healthy = self._lag.kafka_up = False
        for task in (self._task, self._probe):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._probe = None
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await stop_within(consumer.stop, "the state cache's consumer", timeout)

    @property
    def caught_up(self) -> bool:
        return self._lag.caught_up

    @property
    def kafka_up(self) -> bool:
        """The broker answered the last probe (False before :meth:`start`, after :meth:`stop`)."""
        return self._consumer is not None and self._lag.kafka_up

    @property
    def status(self) -> str:
        """``live``, ``catching_up`` or ``down`` (Kafka unreachable, consumer stopped or
        failing)."""
        if not self.kafka_up or not self._lag.healthy or self._task is None or self._task.done():
            return "down"
        return "live" if self._lag.caught_up else "catching_up"

    @property
    def ready(self) -> bool:
        """Every request can be answered: Kafka reachable and the state caught up."""
        return self.status == "live"

    async def _watch(self, consumer: AIOKafkaConsumer) -> None:
        """Probe the broker every ``probe_interval``; log each change of the answer once."""
        while True:
            problem = await self._ask(consumer)
            if (problem is None) != self._lag.kafka_up:
                if problem is None:
                    log.info("Kafka answers again")
                else:
                    log.warning("Kafka does not answer (%s); /healthz and /readyz say so", problem)
            self._lag.kafka_up = problem is None
            await asyncio.sleep(self.probe_interval)

    async def _ask(self, consumer: AIOKafkaConsumer) -> str | None:
        """Why the broker did not answer a metadata request, or None when it did."""
        # aiokafka's client, which the consumer keeps private: its metadata update asks
        # for the assigned topics only, over the connections the fetcher already holds
        client = getattr(consumer, "_client", None)
        update = getattr(client, "force_metadata_update", None)
        try:
            if update is None:  # another aiokafka: the public call, over every topic
                await asyncio.wait_for(consumer.topics(), self.probe_timeout)
                return None
            answered = await asyncio.wait_for(update(), self.probe_timeout)
        except TimeoutError:
            return f"no answer within {self.probe_timeout:g} s"
        except Exception as exc:
            return type(exc).__name__
        return None if answered else "no broker answered a metadata request"

    async def _follow(self, consumer: AIOKafkaConsumer, parts: list[AioTopicPartition]) -> None:
        backoff = 0.5
        while True:
            try:
                batches = await consumer.getmany(timeout_ms=500, max_records=5000)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # aiokafka retries connection errors itself; what reaches here is unusual
                self._lag.healthy, self._lag.error = False, type(exc).__name__
                log.warning("reading the billing/alerts topics failed (%s); retrying", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            self._lag.healthy, self._lag.error, backoff = True, None, 0.5
            for tp, records in batches.items():
                for rec in records:
                    if tp.topic == self.topics.billing:
                        self.apply_billing(
                            rec.key,
                            rec.value,
                            header(rec.headers, "progress"),
                            header(rec.headers, "context"),
                        )
                    else:
                        self.apply_alert(rec.value)
            if not self._lag.caught_up and await self._at_end(consumer, parts):
                self.caught_up_now()

    @staticmethod
    async def _at_end(consumer: AIOKafkaConsumer, parts: list[AioTopicPartition]) -> bool:
        """Read up to the fetch high-water mark on every partition (not ``end_offsets``,
        which Tansu gets wrong for multi-record batches)."""
        for tp in parts:
            hw = consumer.highwater(tp)
            if hw is None or await consumer.position(tp) < hw:
                return False
        return True

    def caught_up_now(self) -> None:
        """Reads may be answered from here on: the state holds every record up to the
        topics' ends (what :meth:`_follow` finds; a cache fed another way, say so)."""
        self._lag.caught_up = True
        log.info(
            "state cache caught up: %d billing views, %d alerts",
            len(self.billing),
            sum(len(d) for d in self.alerts.values()),
        )

    # -- applying records (synchronous: no await between a change and its fan-out) ---------

    def apply_billing(
        self,
        key: bytes | None,
        value: bytes | None,
        progress: bytes | None,
        context: bytes | None = None,
    ) -> None:
        ids = _billing_ids(key)
        if ids is None:
            log.warning("skipped a billing record whose key is not org:patient:month")
            return
        old = self.billing.pop(ids, None)
        if old is not None:
            self._unindex(old)
        self._billing_changed(ids)
        if value is None:  # tombstone: the month no longer has anything in it
            return
        try:
            view = orjson.loads(value)
            org_id, patient_id, month = view["org_id"], view["patient_id"], view["month"]
            if not all(isinstance(x, str) for x in (org_id, patient_id, month)):
                raise TypeError("ids are not strings")
            if (org_id, patient_id, month) != ids:
                raise ValueError("key does not match the view")
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            log.warning("skipped a billing record that is not a view: %s", exc)
            return
        tz, practitioners = _context(context)
        entry = BillingEntry(
            org_id, patient_id, month, bytes(value), view, _progress(progress), tz, practitioners
        )
        self.billing[entry.ids] = entry
        self._by_org_month.setdefault(org_id, {}).setdefault(month, set()).add(entry.ids)

    def _unindex(self, entry: BillingEntry) -> None:
        months = self._by_org_month.get(entry.org_id, {})
        keys = months.get(entry.month)
        if keys is not None:
            keys.discard(entry.ids)
            if not keys:
                del months[entry.month]
        if not months:
            self._by_org_month.pop(entry.org_id, None)

    def apply_alert(self, value: bytes | None) -> None:
        if value is None:
            return
        try:
            alert = Alert.model_validate_json(value)
        except ValidationError as exc:
            log.warning(
                "skipped an alert record that is not an Alert (%d errors)", exc.error_count()
            )
            return
        stored = StoredAlert(
            alert.alert_id,
            alert.kind,
            alert.model_dump_json().encode(),
            alert.patient_id,
            alert.month,
        )
        recent = self.alerts.get(alert.org_id)
        if recent is None:
            recent = self.alerts[alert.org_id] = deque(maxlen=self.alerts_per_org)
        recent.append(stored)
        for sub in list(self._subscribers.get(alert.org_id, ())):
            try:
                sub.queue.put_nowait(stored)
            except asyncio.QueueFull:
                self._drop(sub, dropped=True)

    def _billing_changed(self, ids: BillingIds) -> None:
        """Tell the org's billing watchers which month changed (once caught up: the
        backlog read at start is not a change anyone watches for)."""
        if not self._lag.caught_up:
            return
        for watcher in list(self._watchers.get(ids[0], ())):
            watcher.changed(ids[2])

    def watch_billing(self, org_id: str) -> BillingWatcher:
        """A watcher of the org's billing changes (the live pages); :meth:`unwatch` it."""
        watcher = BillingWatcher(org_id)
        self._watchers.setdefault(org_id, set()).add(watcher)
        return watcher

    def unwatch(self, watcher: BillingWatcher) -> None:
        watchers = self._watchers.get(watcher.org_id)
        if watchers is not None:
            watchers.discard(watcher)
            if not watchers:
                del self._watchers[watcher.org_id]

    def org_months(self, org_id: str, month: str) -> list[BillingEntry]:
        """The org's patient-months of ``month``, by patient id."""
        ids = sorted(self._by_org_month.get(org_id, {}).get(month, ()))
        return [self.billing[i] for i in ids]

    def knows_patient(self, org_id: str, patient_id: str) -> bool:
        """Whether any month of the org's billing names the patient."""
        months = self._by_org_month.get(org_id, {})
        return any((org_id, patient_id, m) in self.billing for m in months)

    def org_timezone(self, org_id: str) -> str | None:
        """The practice's time zone as its latest billing record says, if any."""
        months = self._by_org_month.get(org_id)
        if not months:
            return None
        ids = next(iter(months[max(months)]))
        return self.billing[ids].timezone

    def org_alerts(self, org_id: str) -> list[StoredAlert]:
        """The org's stored alerts, oldest first."""
        return list(self.alerts.get(org_id, ()))

    # -- queries ------------------------------------------------------------------------------

    def month_view(self, org_id: str, patient_id: str, month: str) -> BillingEntry | None:
        return self.billing.get((org_id, patient_id, month))

    def worklist(self, org_id: str, month: str) -> dict[str, list[dict[str, Any]]]:
        """The org's patient-months of ``month`` by status, nearest threshold first."""
        groups: dict[str, list[tuple[tuple[bool, int, str], dict[str, Any]]]] = {
            "billable": [],
            "blocked": [],
            "in_progress": [],
        }
        for ids in self._by_org_month.get(org_id, {}).get(month, ()):
            entry = self.billing[ids]
            view = entry.view
            billable, blocked = view.get("billable") or [], view.get("blocked") or []
            status = "billable" if billable else "blocked" if blocked else "in_progress"
            nxt = _nearest(entry.progress)
            item = {
                "patient_id": entry.patient_id,
                "month": entry.month,
                "billable": billable,
                "blocked": blocked,
                "minutes": view.get("minutes") or {},
                "next": None
                if nxt is None
                else {"code": nxt[1], "minutes_short": round(nxt[0] / 60, 2)},
            }
            short = nxt[0] if nxt is not None else 0
            groups[status].append(((nxt is None, short, entry.patient_id), item))
        return {
            name: [item for _, item in sorted(items, key=lambda p: p[0])]
            for name, items in groups.items()
        }

    # -- alert subscriptions ----------------------------------------------------------------

    def subscriber_count(self, org_id: str) -> int:
        return len(self._subscribers.get(org_id, ()))

    @property
    def subscribers(self) -> int:
        """Open alert streams, all orgs together."""
        return sum(len(subs) for subs in self._subscribers.values())

    def subscribe(
        self, org_id: str, replay: int, last_event_id: str | None = None
    ) -> tuple[Subscriber, list[StoredAlert]]:
        """A new subscriber and the stored alerts to send first.

        Synchronous on purpose: nothing can arrive between the snapshot and the
        subscription, so the client sees no gap and no duplicate. After ``last_event_id``
        (if it is still stored) wins over ``replay``.
        """
        recent = list(self.alerts.get(org_id, ()))
        backlog: list[StoredAlert] = recent[-replay:] if replay > 0 else []
        if last_event_id:
            for i in range(len(recent) - 1, -1, -1):
                if recent[i].alert_id == last_event_id:
                    backlog = recent[i + 1 :]
                    break
        sub = Subscriber(org_id, asyncio.Queue(maxsize=self.subscriber_queue))
        self._subscribers.setdefault(org_id, set()).add(sub)
        return sub, backlog

    def unsubscribe(self, sub: Subscriber) -> None:
        subs = self._subscribers.get(sub.org_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subscribers[sub.org_id]

    def _drop(self, sub: Subscriber, *, dropped: bool) -> None:
        """Stop a subscriber without waiting for it: empty its queue, leave a ``None``."""
        self.unsubscribe(sub)
        sub.dropped = dropped
        while not sub.queue.empty():
            sub.queue.get_nowait()
        sub.queue.put_nowait(None)

    def close_subscribers(self) -> None:
        for subs in list(self._subscribers.values()):
            for sub in list(subs):
                self._drop(sub, dropped=False)


def _progress(raw: bytes | None) -> list[dict[str, Any]]:
    if not raw:
        return []
    try:
        items = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return []
    if not isinstance(items, list):
        return []
    return [
        p
        for p in items
        if isinstance(p, dict)
        and isinstance(p.get("code"), str)
        and isinstance(p.get("have_s"), int)
        and isinstance(p.get("need_s"), int)
    ]


def _context(raw: bytes | None) -> tuple[str, tuple[str, ...]]:
    """(time zone, billing practitioners) of a ``context`` header; a record written
    before the header existed reads as the default zone and nobody."""
    if not raw:
        return DEFAULT_TIMEZONE, ()
    try:
        d = orjson.loads(raw)
        tz, named = d["timezone"], d["practitioners"]
        if not isinstance(tz, str) or not all(isinstance(p, str) for p in named):
            raise TypeError("not strings")
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return DEFAULT_TIMEZONE, ()
    return tz, tuple(named)


def _nearest(progress: Iterable[dict[str, Any]]) -> tuple[int, str] | None:
    """(seconds short, code) of the track closest to its next threshold, if any is short."""
    best: tuple[int, str] | None = None
    for p in progress:
        short = p["need_s"] - p["have_s"]
        if short > 0 and (best is None or (short, p["code"]) < best):
            best = (short, p["code"])
    return best

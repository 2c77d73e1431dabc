"""A consumer-group member that reads its topics in batches (aiokafka ``getmany``).

The worker's hot path: Faust's per-message stream measured about 2,400 events/s here
with no work at all (docs/performance.md), so the gate and the fold read their topics
through this instead, inside the Faust app. What it adds to aiokafka:

* **Batches in log order**, per partition, and offsets committed only when the caller
  says its outputs are delivered (``enable_auto_commit`` off).
* **Rebalances that wait for the batch in hand.** The rebalance callbacks run only between
  batches (they take the same lock as the caller's batch): what was done is committed
  first, and ``on_assigned(now, gained, lost)`` runs before the first batch of a new
  assignment (the gate rebuilds its index there; the fold drops what it lost).
* **A record batch that cannot be decoded never stops a partition.** aiokafka raises
  from ``getmany`` and would raise again at the same offset for ever; here the batch is
  found by a raw fetch, handed to the owner (``on_undecodable``: the dead-letter topic,
  with its raw bytes and the reason), and the partition is moved past it. Partitions
  drained in the failed call are moved back to what was last delivered, so nothing is
  skipped by the error either.
* **Lag** per partition from the fetch highwater (never ListOffsets: Tansu answers it
  wrongly, docs/kafka-notes.md §0.2).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import cramjam
from aiokafka import ConsumerRebalanceListener
from aiokafka.errors import (
    CommitFailedError,
    CorruptRecordException,
    IllegalStateError,
    KafkaConnectionError,
    KafkaError,
    RebalanceInProgressError,
    UnsupportedCodecError,
)
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.record.default_records import DefaultRecordBatch

from streams.kafka.clients import WORKER_CONSUMER, AioTopicPartition, Connection, aio_consumer

log = logging.getLogger("caretally.kafka")

Partitions = set[AioTopicPartition]
READ_COMMITTED = 1
RAW_FETCH_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class UndecodableBatch:
    """A record batch no record of which could be read: its raw bytes (as stored,
    compressed or not), the offsets it spans and why."""

    topic: str
    partition: int
    base_offset: int
    next_offset: int
    raw: bytes
    reason: str


DECODE_ERRORS: tuple[type[BaseException], ...] = (
    CorruptRecordException,
    UnsupportedCodecError,
    cramjam.DecompressionError,  # snappy, lz4 or zstd flag over bytes that are not
)


def decode_error(exc: BaseException) -> bool:
    """Whether ``getmany`` failed on the bytes of a record batch (rather than on the
    connection or the group): a codec, a checksum, or a malformed batch."""
    if isinstance(exc, DECODE_ERRORS):
        return True
    if isinstance(exc, KafkaError | asyncio.CancelledError | ConnectionError):
        return False
    # cramjam, gzip and the record parsers raise plain errors on malformed bytes
    return isinstance(exc, ValueError | TypeError | EOFError | OSError | IndexError | KeyError)


async def first_undecodable(
    consumer: Any, tp: AioTopicPartition, offset: int
) -> UndecodableBatch | None:
    """Fetch ``tp`` at ``offset`` raw and return its first batch that cannot be read
    (None when every batch fetched there decodes)."""
    client = consumer._client
    node = client.cluster.leader_for_partition(tp)
    if node is None or node < 0:
        return None
    request = FetchRequest(
        100,
        1,
        RAW_FETCH_BYTES,
        READ_COMMITTED,
        [(tp.topic, [(tp.partition, offset, RAW_FETCH_BYTES)])],
    )
    response = await client.send(node, request)
    for _topic, partitions in response.topics:
        for _partition, _error, _high, *data in partitions:
            for raw in _batches(bytes(data[-1] or b"")):
                batch = DefaultRecordBatch(raw)
                try:
                    if not batch.validate_crc():
                        raise CorruptRecordException("invalid CRC")
                    for _record in batch:
                        pass
                except Exception as exc:  # any failure to read it is the reason
                    return UndecodableBatch(
                        tp.topic,
                        tp.partition,
                        batch.base_offset,
                        max(batch.next_offset, offset + 1),
                        raw,
                        f"undecodable record batch: {type(exc).__name__}: {exc}"[:500],
                    )
    return None


def _batches(data: bytes) -> list[bytes]:
    """The whole record batches of a fetched message set (a batch is its 12-byte offset
    and length header plus ``length`` bytes; a partial one at the end is left out)."""
    out, pos = [], 0
    while pos + 12 <= len(data):
        (length,) = struct.unpack_from(">i", data, pos + 8)
        end = pos + 12 + length
        if length <= 0 or end > len(data):
            break
        out.append(data[pos:end])
        pos = end
    return out


class GroupConsumer:
    """One member of ``group_id`` reading ``topics`` in batches.

    The owner loops ``batch = await c.next_batch()``, handles it and calls
    ``await c.done(batch)`` once its outputs are acknowledged, all inside
    ``async with c.turn``: a rebalance happens only outside it.
    """

    def __init__(
        self,
        kafka: Connection,
        group_id: str,
        topics: Iterable[str],
        *,
        max_records: int,
        on_assigned: Callable[[Partitions, Partitions, Partitions], Awaitable[None]],
        on_undecodable: Callable[[UndecodableBatch], Awaitable[None]],
        client_id: str = "caretally-worker",
        commit_interval: float = 1.0,
        topic_ids: Callable[[list[str]], Awaitable[dict[str, str] | None]] | None = None,
    ) -> None:
        self.topics = list(topics)
        self.group_id = group_id
        self.max_records = max_records
        self.turn = asyncio.Lock()
        self.assigned: Partitions = set()
        self.assignments = 0
        self._on_assigned = on_assigned
        self._on_undecodable = on_undecodable
        self._delivered: dict[AioTopicPartition, int] = {}  # next offset not yet handed out
        self._done: dict[AioTopicPartition, int] = {}  # next offset whose outputs are acked
        self._committed: dict[AioTopicPartition, int] = {}
        self.commit_interval = commit_interval
        self._topic_ids = topic_ids
        self._carry: list[Any] = []  # records read ahead of an undecodable batch
        # per partition, the offsets of the last dead-lettered batch (done once the
        # records before it are)
        self._skipped: dict[AioTopicPartition, tuple[int, int]] = {}
        self._ids: dict[str, str] = {}  # the topics' ids at the last assignment
        self._last_commit = 0.0
        self.consumer = aio_consumer(kafka, WORKER_CONSUMER, group_id=group_id, client_id=client_id)

    # -- life -----------------------------------------------------------------------------

    async def start(self) -> None:
        self.consumer.subscribe(self.topics, listener=_Listener(self))
        await self.consumer.start()

    async def stop(self, timeout: float = 1.5) -> None:
        """Commit what is done and leave the group, within ``timeout`` seconds (a broker
        that is away cannot hold the worker's exit)."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.commit(), timeout)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.consumer.stop(), timeout)

    # -- batches --------------------------------------------------------------------------

    async def next_batch(self, timeout: float = 0.1) -> list[Any]:
        """The next records (each partition's in offset order), at most ``max_records``
        (plus any read ahead of a bad batch); empty when none came within ``timeout``."""
        if self._carry:  # their partition's position is already past the bad batch
            carried, self._carry = self._carry, []
            return carried
        generation = self.assignments
        try:
            got = await self.consumer.getmany(
                timeout_ms=int(timeout * 1000), max_records=self.max_records
            )
        except Exception as exc:
            if not decode_error(exc):
                raise
            await self._quarantine(exc)
            return []
        out: list[Any] = []
        for tp, records in got.items():
            if records:
                self._delivered[tp] = records[-1].offset + 1
                out.extend(records)
        if self.assignments != generation:  # a rebalance while fetching: read them again
            self.rewind(out)
            return []
        return out

    async def batches(self) -> AsyncIterator[list[Any]]:
        """Batches, each handed over under ``turn`` (no rebalance while the owner holds
        one); the owner marks what it finished with :meth:`done`, which is committed when
        due after it returns. A batch that a rebalance overtook before ``turn`` was taken
        is read again, not handed over."""
        while True:
            generation = self.assignments
            batch = await self.next_batch()
            if not batch:
                await self.commit_due()
                continue
            async with self.turn:
                if self.assignments != generation:
                    self.rewind(batch)
                    continue
                yield batch
                await self.commit_due()

    def rewind(self, records: Iterable[Any]) -> None:
        """Put each partition still assigned back to the first of ``records``: records
        handed out but dropped (a rebalance came between) must be read again, since the
        consumer's position is already past them."""
        firsts: dict[AioTopicPartition, int] = {}
        for r in records:
            firsts.setdefault(AioTopicPartition(r.topic, r.partition), r.offset)
        for tp, offset in firsts.items():
            if tp in self.assigned:
                with contextlib.suppress(IllegalStateError):
                    self.consumer.seek(tp, offset)
                    self._delivered[tp] = offset

    def done(self, records: Iterable[Any]) -> None:
        """Mark ``records`` handled (their outputs acknowledged): committable."""
        for r in records:
            tp = AioTopicPartition(r.topic, r.partition)
            after = r.offset + 1
            skipped = self._skipped.get(tp)
            if skipped is not None and after == skipped[0]:  # a dead-lettered batch next
                after = skipped[1]
            if after > self._done.get(tp, -1):
                self._done[tp] = after

    async def commit_due(self) -> None:
        """Commit when ``commit_interval`` has passed since the last commit (offsets are
        also committed on every rebalance and at stop): a commit per batch would cost a
        round trip per batch, and a late commit only means records read again, which the
        fold skips by offset and the gate drops as duplicates."""
        if time.monotonic() - self._last_commit >= self.commit_interval:
            await self.commit()

    async def commit(self) -> None:
        """Commit the offsets marked done (only those of partitions still assigned)."""
        offsets = {
            tp: off
            for tp, off in self._done.items()
            if tp in self.assigned and self._committed.get(tp) != off
        }
        self._last_commit = time.monotonic()
        if not offsets:
            return
        try:
            await self.consumer.commit(offsets)
        except (CommitFailedError, RebalanceInProgressError, IllegalStateError) as exc:
            # the group moved on: the next owner starts from the last commit, and the
            # fold skips by offset, the gate by digest; nothing is lost or counted twice
            log.warning(
                "offsets not committed (%s); the next owner re-reads them", type(exc).__name__
            )
            return
        self._committed.update(offsets)

    def lag(self) -> dict[AioTopicPartition, int]:
        """Records behind the fetch highwater, per assigned partition (when known)."""
        out = {}
        for tp in self.assigned:
            high = self.consumer.highwater(tp)
            if high is None:
                continue
            pos = self._delivered.get(tp)
            if pos is None:
                with contextlib.suppress(IllegalStateError, KafkaError):
                    pos = self.consumer._subscription.subscription.assignment.state_value(
                        tp
                    ).position
            if pos is not None:
                out[tp] = max(0, high - pos)
        return out

    # -- topic identity -------------------------------------------------------------------

    async def recreated_topics(self) -> list[str]:
        """The topics whose broker id changed since the last call (remembering the new)."""
        if self._topic_ids is None:
            return []
        ids = await self._topic_ids(self.topics)
        if not ids:
            return []
        changed = [t for t in self.topics if self._ids.get(t) and ids.get(t) != self._ids[t]]
        self._ids.update({t: i for t, i in ids.items() if i})
        return changed

    async def topics_recreated(self) -> bool:
        """Whether a topic's id differs from the last known (not remembering it)."""
        if self._topic_ids is None or not self._ids:
            return False
        ids = await self._topic_ids(self.topics) or {}
        return any(ids.get(t) and ids[t] != self._ids.get(t) for t in self._ids)

    # -- errors ---------------------------------------------------------------------------

    async def _quarantine(self, exc: BaseException) -> None:
        """``getmany`` failed on a batch's bytes: put every partition back where it was,
        find the bad batch, hand over the records before it (``_carry``), hand the batch
        to the owner and move its partition past it. Not under ``turn``: a ``getmany``
        while holding it would wait for a rebalance that waits for ``turn``; a rebalance
        in between makes this fail, and the next ``getmany`` brings the error back."""
        try:
            found = None
            for tp in sorted(self.assigned):
                offset = await self._resume_offset(tp)
                self.consumer.seek(tp, offset)
                if found is None:
                    bad = await first_undecodable(self.consumer, tp, offset)
                    if bad is not None and bad.next_offset > offset:
                        found = bad
                        await self._carry_until(tp, offset, bad.base_offset)
                        self.consumer.seek(tp, bad.next_offset)
                        self._delivered[tp] = bad.next_offset
        except (IllegalStateError, KafkaError, AssertionError) as again:
            log.warning("record batch not isolated (%s); trying again", type(again).__name__)
            await asyncio.sleep(0.5)
            return
        if found is None:
            log.error("could not read a record batch (%s); retrying", type(exc).__name__)
            await asyncio.sleep(1.0)
            return
        log.error(
            "%s/%d: record batch at offsets %d..%d cannot be read (%s): dead-lettered",
            found.topic,
            found.partition,
            found.base_offset,
            found.next_offset - 1,
            type(exc).__name__,
        )
        async with self.turn:
            await self._on_undecodable(found)
            tp = AioTopicPartition(found.topic, found.partition)
            self._skipped[tp] = (found.base_offset, found.next_offset)
            if self._done.get(tp, -1) >= found.base_offset or not any(
                r.partition == found.partition and r.topic == found.topic for r in self._carry
            ):
                self._done[tp] = max(self._done.get(tp, -1), found.next_offset)

    async def _carry_until(self, tp: AioTopicPartition, start: int, stop: int) -> None:
        """Read ``tp``'s records in ``[start, stop)`` (those before a bad batch: aiokafka
        decodes lazily, so a fetch capped at them never reaches it) for the next batch."""
        position = start
        while position < stop:
            got = await self.consumer.getmany(tp, timeout_ms=1000, max_records=stop - position)
            records = [r for r in got.get(tp, ()) if r.offset < stop]
            if not records:
                break
            self._carry.extend(records)
            position = records[-1].offset + 1

    async def _resume_offset(self, tp: AioTopicPartition) -> int:
        delivered = self._delivered.get(tp)
        if delivered is not None:
            return delivered
        committed = await self.consumer.committed(tp)
        if committed is not None:
            return int(committed)
        first = await self.consumer.beginning_offsets([tp])
        return int(first.get(tp, 0))


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    """Rebalance callbacks: they run only between the owner's batches."""

    def __init__(self, owner: GroupConsumer) -> None:
        self.owner = owner

    async def on_partitions_revoked(self, revoked: Any) -> None:
        """Eager rebalancing revokes every partition each time: commit what is done; the
        owner hears of what it really lost once the new assignment is known. Offsets of a
        topic that was since recreated (a restarted memory broker) are not committed: they
        would point past the new topic's end and stall it."""
        owner = self.owner
        async with owner.turn:
            if await owner.topics_recreated():
                owner._done.clear()
            with contextlib.suppress(KafkaConnectionError, KafkaError):
                await owner.commit()
            for tp in set(revoked):
                owner._delivered.pop(tp, None)
                owner._done.pop(tp, None)
                owner._committed.pop(tp, None)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        """``on_assigned(now, gained, lost)`` against the previous assignment."""
        owner = self.owner
        async with owner.turn:
            now = set(assigned)
            before, owner.assigned = owner.assigned, now
            owner.assignments += 1
            for topic in await owner.recreated_topics():
                # offsets committed to the old incarnation mean nothing here: from the start
                tps = [tp for tp in now if tp.topic == topic]
                if tps:
                    log.warning("%s was recreated: reading it from the start", topic)
                    await owner.consumer.seek_to_beginning(*tps)
            await owner._on_assigned(now, now - before, before - now)

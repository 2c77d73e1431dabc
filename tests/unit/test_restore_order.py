"""``caretally restore``'s order (no broker): whatever the new partition count, each key's
events and the practice-wide events between them come back in the order the gate wrote
them, ties of timestamps included."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.archive.restore import ArchivedRow, LogOrder


def gate_log(items: list[int | None], parts: int) -> list[tuple[Any, int, int, int]]:
    """What the gate writes for ``items`` (a patient key, or None for a practice-wide
    event): (event, partition, offset, timestamp) records, timestamps that tie often."""
    offsets = [0] * parts
    out = []
    clock = 0
    for i, key in enumerate(items):
        targets = range(parts) if key is None else [key % parts]
        event = ("wide", i) if key is None else (f"k{key}", i)
        for p in targets:
            clock += i % 3 == 0  # many records share a millisecond
            out.append((event, p, offsets[p], clock))
            offsets[p] += 1
    return out


def canonical(records: list[tuple[Any, int, int, int]]) -> list[ArchivedRow]:
    """The archive's canonical order (archive_store.ORDER_SQL) of the records."""
    high: dict[int, int] = {}
    keyed = []
    for event, p, off, ts in sorted(records, key=lambda r: (r[1], r[2])):
        high[p] = max(high.get(p, ts), ts)
        keyed.append(((high[p], p, off), event, p, off))
    keyed.sort(key=lambda k: k[0])
    return [
        ArchivedRow(
            seq,
            p,
            off,
            orjson.dumps(event),
            ("org", str(event[1])) if event[0] == "wide" else None,
        )
        for seq, (_, event, p, off) in enumerate(keyed)
    ]


def order_of(rows: list[ArchivedRow]) -> list[Any]:
    copies: dict[Any, set[int]] = {}
    for r in rows:
        if r.wide is not None:
            copies.setdefault(r.wide, set()).add(r.partition)
    order = LogOrder({k: frozenset(v) for k, v in copies.items()})
    placed = [x for r in rows for x in order.push(r)]
    placed += order.finish()
    return [tuple(orjson.loads(x.raw)) for x in placed]


@settings(max_examples=300, deadline=None)
@given(
    items=st.lists(st.one_of(st.none(), st.integers(0, 6)), max_size=60),
    parts=st.integers(1, 4),
)
def test_restore_order_is_the_gate_order_per_key(items: list[int | None], parts: int) -> None:
    rows = canonical(gate_log(items, parts))
    restored = order_of(rows)
    gate_order = [("wide", i) if k is None else (f"k{k}", i) for i, k in enumerate(items)]
    assert sorted(restored) == sorted(gate_order)  # every event once
    # whatever the new partition count: each key's events and the practice-wide events
    # between them come in the order the gate wrote them
    for key in {f"k{k}" for k in items if k is not None}:
        mine = [e for e in gate_order if e[0] in (key, "wide")]
        assert [e for e in restored if e[0] in (key, "wide")] == mine


def test_a_broadcast_keeps_its_place_when_timestamps_tie() -> None:
    # the gate writes: patient a (partition 1), month.closed to partitions 0 and 1, then
    # patient b (partition 0), all in one millisecond; in the archive's canonical order
    # month.closed's copy in partition 0 comes first, so writing each broadcast at its
    # first copy would put a after month.closed (a late activity)
    records = [
        (("ka", 0), 1, 0, 5),
        (("wide", 1), 0, 0, 5),
        (("wide", 1), 1, 1, 5),
        (("kb", 2), 0, 1, 5),
    ]
    rows = canonical(records)
    assert [orjson.loads(r.raw)[0] for r in rows] == ["wide", "kb", "ka", "wide"]
    assert order_of(rows) == [("ka", 0), ("wide", 1), ("kb", 2)]

"""Half-open integer intervals [start, end) and the few operations the ledger needs."""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable

Interval = tuple[int, int]


def union(intervals: Iterable[Interval]) -> list[Interval]:
    """Sorted, disjoint, merged cover of ``intervals``."""
    out: list[Interval] = []
    for s, e in sorted(intervals):
        if e <= s:
            continue
        if out and s <= out[-1][1]:
            if e > out[-1][1]:
                out[-1] = (out[-1][0], e)
        else:
            out.append((s, e))
    return out


def measure(intervals: Iterable[Interval]) -> int:
    """Total length of the union of ``intervals``."""
    return sum(e - s for s, e in union(intervals))


def total(disjoint: Iterable[Interval]) -> int:
    """Total length of intervals already known to be disjoint."""
    n = 0
    for s, e in disjoint:
        n += e - s
    return n


def subtract(pieces: list[Interval], cut: Interval) -> tuple[list[Interval], int]:
    """``pieces`` minus ``cut``; also returns how many seconds were cut away."""
    cs, ce = cut
    out: list[Interval] = []
    removed = 0
    for s, e in pieces:
        if ce <= s or e <= cs:
            out.append((s, e))
            continue
        removed += min(e, ce) - max(s, cs)
        if s < cs:
            out.append((s, cs))
        if ce < e:
            out.append((ce, e))
    return out, removed


def intersect_all(pieces: list[Interval], allowed: list[Interval]) -> tuple[list[Interval], int]:
    """Parts of ``pieces`` inside ``allowed`` (disjoint), and the seconds outside it."""
    kept: list[Interval] = []
    for s, e in pieces:
        for a, b in allowed:
            lo, hi = max(s, a), min(e, b)
            if lo < hi:
                kept.append((lo, hi))
    return kept, total(pieces) - total(kept)


class Cover:
    """A growing union of intervals and its measure, kept as sorted disjoint intervals.

    ``add`` costs O(log n) plus the intervals it merges, so a month's pooled seconds
    grow with each activity instead of being re-unioned from all of them.
    """

    __slots__ = ("ends", "measure", "starts")

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []
        self.measure = 0

    def add(self, s: int, e: int) -> int:
        """Cover [s, e); returns the seconds newly covered."""
        if e <= s:
            return 0
        starts, ends = self.starts, self.ends
        i = bisect_left(ends, s)  # first interval that ends at or after s (may touch)
        j = bisect_right(starts, e)  # intervals before j start at or before e
        if i == j:  # touches nothing: insert
            starts.insert(i, s)
            ends.insert(i, e)
            self.measure += e - s
            return e - s
        lo, hi = min(s, starts[i]), max(e, ends[j - 1])
        before = 0
        for k in range(i, j):
            before += ends[k] - starts[k]
        starts[i:j] = [lo]
        ends[i:j] = [hi]
        gained = (hi - lo) - before
        self.measure += gained
        return gained

"""A compact map from 64-bit event-id digests to 64-bit body digests.

The idempotency index holds one entry per event ever applied, so it dominates memory
on long logs: a ``dict[int, int]`` costs about 100 bytes an entry (two int objects and
a slot), this about 20 (two machine words in ``array('Q')`` buckets plus bucket
overhead). Lookups scan one short bucket in C; buckets double when they fill up.
"""

from __future__ import annotations

from array import array

_MAX_LOAD = 16  # average entries per bucket before the bucket count doubles


class DigestIndex:
    __slots__ = ("_bodies", "_keys", "_mask", "_size")

    def __init__(self, buckets: int = 1024) -> None:
        if buckets & (buckets - 1):
            raise ValueError("buckets must be a power of two")
        self._mask = buckets - 1
        self._keys = [array("Q") for _ in range(buckets)]
        self._bodies = [array("Q") for _ in range(buckets)]
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def get(self, key: int) -> int | None:
        """The body digest stored for ``key``, or None."""
        keys = self._keys[key & self._mask]
        if key in keys:
            return self._bodies[key & self._mask][keys.index(key)]
        return None

    def add(self, key: int, body: int) -> None:
        """Store ``key`` -> ``body``; the caller checks :meth:`get` first (no overwrite)."""
        b = key & self._mask
        self._keys[b].append(key)
        self._bodies[b].append(body)
        self._size += 1
        if self._size > _MAX_LOAD * (self._mask + 1):
            self._grow()

    def discard(self, key: int) -> None:
        """Remove ``key`` if present (the ingress gate undoing a write that failed)."""
        b = key & self._mask
        keys = self._keys[b]
        if key in keys:
            i = keys.index(key)
            del keys[i]
            del self._bodies[b][i]
            self._size -= 1

    def items(self) -> list[tuple[int, int]]:
        return [
            (k, v)
            for ks, vs in zip(self._keys, self._bodies, strict=True)
            for k, v in zip(ks, vs, strict=True)
        ]

    def _grow(self) -> None:
        old = self.items()
        buckets = 2 * (self._mask + 1)
        self._mask = buckets - 1
        self._keys = [array("Q") for _ in range(buckets)]
        self._bodies = [array("Q") for _ in range(buckets)]
        for k, v in old:
            b = k & self._mask
            self._keys[b].append(k)
            self._bodies[b].append(v)

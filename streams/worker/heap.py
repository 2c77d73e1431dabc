"""Garbage-collector settings for a process that holds a large fold in memory.

A fold keeps millions of long-lived objects (the ledger, the kernels, the views) and
makes many short-lived ones per event. With CPython's default thresholds the collector
runs every 700 allocations and, every so often, walks the whole heap: measured on the
synthetic log (docs/performance.md "Where the kernel's time goes"), about a
quarter of ``Projector.step``'s time. Raising the youngest generation's threshold keeps the
collector for real cycles (the fold makes few) and ``gc.freeze`` moves what was built so
far (a loaded snapshot) out of every later collection.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 50_000


def tune_for_large_heap() -> None:
    """Collect rarely, and never scan again what exists now (the earlier, the less it keeps)."""
    _young, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, max(middle, 20), max(old, 100))
    gc.freeze()

"""Valid events of any size, for the limits on ingress records (issue #9, item 1)."""

from __future__ import annotations

import orjson

from support.builders import Log

LOG = Log(org="o-sec")
GOOD = orjson.dumps(LOG.conditions("P-1"))


def event(i: int) -> bytes:
    return orjson.dumps({**orjson.loads(GOOD), "event_id": f"e-{i}", "patient_id": f"P-{i}"})


def padded(raw: bytes, size: int) -> bytes:
    """A valid event of exactly ``size`` bytes: whitespace inside the JSON object."""
    return b"{" + b" " * (size - len(raw)) + raw[1:]

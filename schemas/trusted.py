"""The decoder for records of the log (``care.events.v1``) that a log writer wrote.

Every writer of the log parses an event with :func:`schemas.events.parse_event` before
writing its bytes (the ingress gate, ``caretally close``, ``caretally restore``: see
``streams.kafka.log_writer``), and marks the record with the event's digests in its
``idem``/``body`` headers. ``parse_event`` is pydantic's validation of the JSON plus a
scan for repeated keys, which it refuses (pydantic keeps the last value, DuckDB the
first). A record a writer wrote has no repeated key, so :func:`decode_trusted` skips that
scan, and only that: every other rule of the contract is still checked by pydantic-core,
and the event is the one ``parse_event`` returns. A record that fails validation goes to
``parse_event`` for its :class:`~schemas.events.EventRejected`.

Building the models by hand from ``orjson.loads`` was measured and is not faster: with
the contract re-checked it costs about 1.45x ``parse_event`` (interpreted setattrs and
conversions); the repeated-key scan (about a quarter of ``parse_event``) is the only work
a writer's record makes redundant.

Use it only for records read back from the log that carry the writers' headers (the
worker's fold). A record without them was not written by a log writer and gets
:func:`parse_event`; input from outside (HTTP, the ingress topic, files,
``caretally replay --input``) always does.
"""

from __future__ import annotations

from schemas.events import EVENT_ADAPTER, Event, parse_event

__all__ = ["decode_trusted"]

_validate_json = EVENT_ADAPTER.validate_json


def decode_trusted(raw: bytes) -> Event:
    """The event of a writer's record of the log, as :func:`parse_event` returns it
    (repeated keys are not looked for); raises :class:`~schemas.events.EventRejected` with
    ``parse_event``'s reason for a record that is not a valid event."""
    try:
        return _validate_json(raw)
    except Exception:  # parse_event words the rejection
        return parse_event(raw)

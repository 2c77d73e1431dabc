"""Size limits shared by every entry point, so HTTP, ``caretally ingest`` and the gate agree.

One event (its JSON, surrounding whitespace stripped) is at most ``EVENT_MAX_BYTES``.
Every producer of ours may send records up to ``PRODUCER_MAX_REQUEST_BYTES``: an event at
the limit plus its key, our headers and the record-batch framing always fits, so a
record the gate accepted can always be forwarded. Anything larger is refused where it
enters (HTTP 413/400, an ingest line rejected) and, when it reached the ingress topic
anyway, dead-lettered by the gate as ``too_large`` with only an excerpt of its bytes
(``DEADLETTER_EXCERPT_BYTES``) and the SHA-256 digest of all of them.
"""

from __future__ import annotations

EVENT_MAX_BYTES = 1_000_000
"""The largest event accepted anywhere (bytes of its JSON)."""

RECORD_OVERHEAD_BYTES = 64 * 1024
"""Room for the key (ids are at most 128 characters), headers and batch framing."""

PRODUCER_MAX_REQUEST_BYTES = EVENT_MAX_BYTES + RECORD_OVERHEAD_BYTES
"""``max_request_size`` of every producer we build (kafka-python and aiokafka)."""

DEADLETTER_EXCERPT_BYTES = 16 * 1024
"""How much of a too-large record the dead-letter topic keeps (with the full digest)."""

KEY_MAX_BYTES = 4 * 1024
"""The largest record key the gate forwards or dead-letters whole (ids are at most 128
characters, so a real ``org_id:patient_id`` key is far below it); inside the overhead."""

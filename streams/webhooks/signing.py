"""The signature of a webhook request (docs/webhooks.md "Verifying a delivery").

``Caretally-Signature: v1=<hex>``, the HMAC-SHA256 of ``<timestamp>.<body>`` keyed with
the webhook's secret (its UTF-8 bytes, ``whsec_`` included), where ``<timestamp>`` is the
``Caretally-Timestamp`` header (Unix seconds) and ``<body>`` the exact bytes sent. The
timestamp lets a receiver refuse replays of an old request; each attempt is signed anew.
"""

from __future__ import annotations

import hashlib
import hmac

SCHEME = "v1"
TIMESTAMP_HEADER = "Caretally-Timestamp"
SIGNATURE_HEADER = "Caretally-Signature"
WEBHOOK_HEADER = "Caretally-Webhook-Id"
ATTEMPT_HEADER = "Caretally-Attempt"
IDEMPOTENCY_HEADER = "Idempotency-Key"


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The header value ``v1=<hex>`` for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"{SCHEME}={mac.hexdigest()}"


def verify(
    secret: str, timestamp: str, body: bytes, header: str, now: float, tolerance_s: int = 300
) -> bool:
    """Whether ``header`` signs ``body`` at ``timestamp`` and the timestamp is within
    ``tolerance_s`` of ``now`` (what a receiver does; caretally's tests use it)."""
    if not (timestamp.isascii() and timestamp.isdigit()):  # int() takes "+1", " 1", "١"
        return False
    ts = int(timestamp)
    if abs(now - ts) > tolerance_s:
        return False
    expected = signature(secret, ts, body)
    return any(hmac.compare_digest(expected, part.strip()) for part in header.split(","))


def request_headers(
    secret: str, webhook_id: str, alert_id: str, attempt: int, timestamp: int, body: bytes
) -> dict[str, str]:
    """Every header of one attempt."""
    return {
        "Content-Type": "application/json",
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: signature(secret, timestamp, body),
        IDEMPOTENCY_HEADER: alert_id,
        WEBHOOK_HEADER: webhook_id,
        ATTEMPT_HEADER: str(attempt),
        "User-Agent": "caretally-webhooks/1",
    }

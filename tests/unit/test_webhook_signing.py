"""The signature scheme as docs/webhooks.md states it: the receiver's snippet in the doc,
run as written, accepts what caretally sends and refuses any change to it."""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from streams.webhooks.sender import RetryPolicy
from streams.webhooks.signing import request_headers, signature, verify

DOC = Path(__file__).resolve().parents[2] / "docs" / "webhooks.md"
SECRET = "whsec_test-secret"
BODY = b'{"alert_id":"a1","kind":"cap_reached","org_id":"org-a","patient_id":"P-1"}'


@pytest.fixture(scope="module")
def doc_verify() -> Callable[..., bool]:
    """The ``verify`` function of the Python block of docs/webhooks.md."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    assert len(blocks) == 1
    scope: dict[str, Any] = {}
    exec(compile(blocks[0], str(DOC), "exec"), scope)  # our own doc
    return scope["verify"]  # type: ignore[no-any-return]


def test_the_documented_receiver_accepts_what_is_sent(doc_verify: Callable[..., bool]) -> None:
    headers = request_headers(SECRET, "wh_1", "a1", 2, int(time.time()), BODY)
    assert doc_verify(SECRET, headers, BODY)
    assert headers["Idempotency-Key"] == "a1" and headers["Caretally-Webhook-Id"] == "wh_1"
    assert headers["Content-Type"] == "application/json" and headers["Caretally-Attempt"] == "2"
    assert not doc_verify(SECRET, headers, BODY.replace(b"P-1", b"P-2"))
    assert not doc_verify("whsec_other", headers, BODY)
    stale = request_headers(SECRET, "wh_1", "a1", 1, int(time.time()) - 3600, BODY)
    assert not doc_verify(SECRET, stale, BODY)
    moved = {**headers, "Caretally-Timestamp": str(int(headers["Caretally-Timestamp"]) + 1)}
    assert not doc_verify(SECRET, moved, BODY)
    for odd in ("²", "١٧٠٠٠٠٠٠٠٠", "+1700000000", ""):  # digits int() refuses or reads
        assert not doc_verify(SECRET, {**headers, "Caretally-Timestamp": odd}, BODY)
        assert not verify(SECRET, odd, BODY, headers["Caretally-Signature"], time.time())


def test_the_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    expected = hmac.new(b"whsec_k", b"1700000000." + BODY, hashlib.sha256).hexdigest()
    assert signature("whsec_k", 1700000000, BODY) == f"v1={expected}"


def test_backoff_is_exponential_with_jitter_and_capped() -> None:
    policy = RetryPolicy(attempts=9, base_delay_s=0.5, max_delay_s=3.0)
    for failed, full in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 3.0), (8, 3.0)]:
        waits = {policy.delay(failed) for _ in range(50)}
        assert all(full / 2 <= w <= full for w in waits)
        assert len(waits) > 1  # jittered

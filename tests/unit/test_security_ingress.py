"""Issue #9 item 1 (and part of 13): an ingress record the gate cannot forward must not
crash it and lose its batch; a failed send must never let the batch be committed.

For every ingress record, exactly one of: in the log, dead-lettered, counted duplicate.
Through a real worker on a real broker: tests/integration/test_security_ingress_pipeline.py.
"""

from __future__ import annotations

import hashlib

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.kafka.records import header
from streams.worker.gate import IngressGate, Verdict
from support.sized_events import GOOD, LOG, event, padded

try:  # so these tests also run (and fail) on the code before the fix
    from streams.kafka.limits import (
        DEADLETTER_EXCERPT_BYTES,
        EVENT_MAX_BYTES,
        PRODUCER_MAX_REQUEST_BYTES,
    )
except ImportError:  # pragma: no cover - the pristine base
    EVENT_MAX_BYTES, PRODUCER_MAX_REQUEST_BYTES = 1_000_000, 1_064_960
    DEADLETTER_EXCERPT_BYTES = 16 * 1024

PARTS = 3


# --- the decision, over raw bytes ------------------------------------------------------------

JUST_OVER = padded(GOOD, EVENT_MAX_BYTES + 1)


def test_an_event_over_the_limit_is_refused_as_too_large() -> None:
    gate = IngressGate()
    d = gate.decide(JUST_OVER)
    assert (d.verdict, d.reason) == (Verdict.REJECTED, "too_large")
    assert gate.decide(padded(GOOD, EVENT_MAX_BYTES)).verdict is Verdict.NEW  # at the limit


records = st.one_of(
    st.integers(0, 20).map(event),  # valid events, re-sent when drawn twice
    st.integers(0, 20).map(lambda i: event(i).replace(b"I10", b"J44.9")),  # conflicting
    st.binary(max_size=64),  # anything, non-UTF-8 included
    st.sampled_from([b"", b"  \n", b"\xff\xfe{", JUST_OVER, b"[1]", b"{}"]),
    st.integers(0, 20).map(lambda i: event(i)[:-1] + b',"event_id":"dup"}'),  # duplicate key
    st.integers(0, 5).map(lambda i: padded(event(i), EVENT_MAX_BYTES + 1 + i)),
    st.just(orjson.dumps(LOG.practice())),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(records, st.one_of(st.none(), st.binary(max_size=16))), max_size=12))
def test_every_record_gets_exactly_one_outcome_and_writes_that_fit(
    batch: list[tuple[bytes, bytes | None]],
) -> None:
    from streams.worker.gate import Source, Target

    gate = IngressGate()
    logged: dict[int, int] = {}
    for offset, (value, key) in enumerate(batch):
        routed = gate.route(value, key, Source("in", 0, offset), PARTS)
        kinds = [w.target for w in routed.writes]
        if routed.outcome == "log":
            assert kinds in ([Target.LOG], [Target.LOG] * PARTS)
            assert routed.decision.idem not in logged
            logged[routed.decision.idem] = routed.decision.body
        elif routed.outcome == "deadletter":
            assert kinds == [Target.DEADLETTER]
            assert header(routed.writes[0].headers, "reason")
        else:
            assert routed.outcome == "duplicate" and kinds == []
            assert logged[routed.decision.idem] == routed.decision.body
        for w in routed.writes:
            size = len(w.key or b"") + len(w.value) + sum(len(k) + len(v) for k, v in w.headers)
            assert size + 1024 <= PRODUCER_MAX_REQUEST_BYTES
        if len(value.strip()) > EVENT_MAX_BYTES:
            (dead,) = routed.writes
            assert header(dead.headers, "reason") == b"too_large"
            assert len(dead.value) <= DEADLETTER_EXCERPT_BYTES
            digest = hashlib.sha256(value).hexdigest().encode()
            assert header(dead.headers, "digest") == b"sha256:" + digest

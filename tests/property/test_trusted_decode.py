"""The worker's fold decodes a log writer's records with :func:`schemas.trusted.decode_trusted`
and takes their digests from the ``idem``/``body`` headers: the events, and so everything
folded from them, are exactly what full validation gives. Records without those headers
(not written by a log writer) are still validated in full."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given

from schemas.events import EventRejected, parse_event
from schemas.trusted import decode_trusted
from streams.kafka.log_writer import log_digests, log_records
from streams.worker.partition import DEADLETTER, FoldPartition
from support.strategies import SETTINGS, GenLog, gen_logs


def _same(a: object, b: object) -> bool:
    """Equal, and equal to the byte (datetime equality alone ignores the zone)."""
    assert type(a) is type(b)
    return a == b and repr(a) == repr(b) and a.model_dump_json() == b.model_dump_json()  # type: ignore[attr-defined]


@SETTINGS
@given(log=gen_logs())
def test_a_writers_record_decodes_to_what_full_validation_gives(log: GenLog) -> None:
    for raw in (orjson.dumps(r) for r in log.merged()):
        assert _same(decode_trusted(raw), parse_event(raw))


@SETTINGS
@given(log=gen_logs())
def test_folding_with_header_digests_equals_folding_in_full(log: GenLog) -> None:
    trusted, full = FoldPartition(), FoldPartition()
    for raw in (orjson.dumps(r) for r in log.merged()):
        event = parse_event(raw)
        (record, *_) = log_records(event, raw, partitions=1)
        digests = log_digests(record.headers)
        assert digests is not None
        assert trusted.apply(record.value, digests) == full.apply(raw)


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b'{"type": "activity.logged"}',
        b'{"event_id": "e1", "type": "nope", "schema_version": 1}',
    ],
)
def test_a_bad_record_is_rejected_with_the_reason_full_validation_gives(raw: bytes) -> None:
    with pytest.raises(EventRejected) as full:
        parse_event(raw)
    with pytest.raises(EventRejected) as trusted:
        decode_trusted(raw)
    assert trusted.value.reason == full.value.reason
    out = FoldPartition().apply(raw, (1, 2))
    assert [o.topic for o in out] == [DEADLETTER]
    assert dict(out[0].headers)["reason"] == full.value.reason.encode()

"""Laws of the integration edges, for any input hypothesis draws:

* FHIR in (docs/fhir.md §3): converting is a function of the input (the same bytes give
  the same events, so a re-sent Bundle is a re-sent log), and folding a Bundle's events
  twice is folding them once: every second event is a duplicate, none a conflict, and the
  billing is the same; this for any sub-Bundle of the fixture (its entries kept in order).
* Webhooks out (docs/webhooks.md): a signature verifies for its secret, timestamp and
  body, and for nothing else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from projections.engine import billing
from streams.fhir.convert import convert_document
from streams.files.logfile import fold_lines
from streams.webhooks.signing import signature, verify

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "fhir" / "bundle.json"
ENTRIES: list[Any] = orjson.loads(FIXTURE.read_bytes())["entry"]


def sub_bundle(keep: list[bool]) -> bytes:
    entries = [e for e, k in zip(ENTRIES, keep, strict=True) if k]
    return orjson.dumps({"resourceType": "Bundle", "type": "batch", "entry": entries})


def views(raws: list[bytes]) -> list[dict[str, Any]]:
    ledger, _ = fold_lines(enumerate(raws, 1))
    return [b.view() for b in billing(ledger)]


@settings(max_examples=40, deadline=None)
@given(keep=st.lists(st.booleans(), min_size=len(ENTRIES), max_size=len(ENTRIES)))
def test_a_resent_bundle_is_a_no_op(keep: list[bool]) -> None:
    raw = sub_bundle(keep)
    first = convert_document(raw, "practice-17")
    again = convert_document(raw, "practice-17")
    assert again.events == first.events and again.problems == first.problems
    once = views(first.events)
    ledger, stats = fold_lines(enumerate(first.events + again.events, 1))
    assert stats.duplicates == len(first.events) and stats.bad == 0
    assert [b.view() for b in billing(ledger)] == once


@settings(max_examples=60, deadline=None)
@given(
    secret=st.text(min_size=1, max_size=40),
    timestamp=st.integers(min_value=1_600_000_000, max_value=2_000_000_000),
    body=st.binary(max_size=200),
    other=st.binary(max_size=200),
)
def test_a_signature_verifies_its_body_only(
    secret: str, timestamp: int, body: bytes, other: bytes
) -> None:
    header = signature(secret, timestamp, body)
    assert verify(secret, str(timestamp), body, header, now=timestamp)
    if other != body:
        assert not verify(secret, str(timestamp), other, header, now=timestamp)
    assert not verify(secret + "x", str(timestamp), body, header, now=timestamp)
    assert not verify(secret, str(timestamp + 1), body, header, now=timestamp)
    assert not verify(secret, str(timestamp), body, header, now=timestamp + 3600)  # too old

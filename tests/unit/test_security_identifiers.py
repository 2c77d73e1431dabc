"""Security #9, items 2 and 9: ids that join into another tenant's keys, and JSON objects
with duplicate keys.

Item 2: ``care.billing.v1`` keys were ``org:patient:month`` with ``:`` legal inside ids, so
org ``acme`` + patient ``east:P-1`` wrote the key of org ``acme:east`` + patient ``P-1``,
and the ``\\x1f`` join of the idempotency digest let org ``a`` + event ``b\\x1fc`` pass for
org ``a\\x1fb`` + event ``c``. Ids are now printable text without ``:``, ``/`` or control
characters, keys escape their parts anyway, and readers compare decoded id tuples.

Item 9: pydantic keeps the last of two equal keys and DuckDB's JSON the first, so the
typed ``org_id`` and the stored bytes could name different orgs. ``parse_event`` refuses
them, so HTTP, ``caretally ingest``, the gate, the fold and ``caretally replay`` all do.

Through ``caretally ingest``, ``caretally serve`` and ``caretally close`` on a real broker:
tests/integration/test_security_identifiers_pipeline.py.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from projections.ledger import idempotency_digest
from schemas.events import EventRejected, parse_event
from streams.cli.main import cli
from streams.demo.synthetic import generate_events
from streams.http.state_cache import StateCache
from streams.kafka.records import billing_key, event_key
from streams.kafka.topics import Topics
from streams.worker.gate import IngressGate, Verdict
from streams.worker.partition import BILLING, DEADLETTER, FoldPartition
from support.http import activity, view
from support.identifiers import DOUBLES, EVENT_ID_RULE, ID_RULE, ORG_A, raw_activity

MONTH = "2025-03"


def reason_of(raw: bytes | str) -> str:
    with pytest.raises(EventRejected) as caught:
        parse_event(raw)
    return caught.value.reason


# --- item 2: identifiers -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("patient_id", "east:P-1"),
        ("org_id", "acme:east"),
        ("org_id", "acme/../east"),
        ("org_id", "a\x1fb"),
        ("event_id", "b\x1fc"),  # event_id may hold ":" and "/" (in no key), not controls
        ("patient_id", "P-1\u200b"),  # a format character (Cf): invisible
        ("patient_id", "P-1\n"),
        ("patient_id", " P-1"),
        ("patient_id", "P\u00a01"),  # a no-break space looks like a space
    ],
)
def test_an_id_that_could_join_into_another_is_refused_naming_its_field(
    field: str, value: str
) -> None:
    event = {**activity("acme", "P-1"), field: value}
    rule = EVENT_ID_RULE if field == "event_id" else ID_RULE
    assert reason_of(orjson.dumps(event)) == f"{field}: {rule}"
    data = {**event["data"], "staff_id": value}  # every id field, not only the envelope's
    if field == "patient_id":
        assert reason_of(orjson.dumps({**activity("acme", "P-1"), "data": data})) == (
            f"data.staff_id: {ID_RULE}"
        )


@pytest.mark.parametrize("value", ["P-1", "患者-0001", "Dr Smith", "a%3Ab", "x.y_z-1", "é"])
def test_printable_ids_stay_valid(value: str) -> None:
    assert parse_event(orjson.dumps(activity(value, value))).patient_id == value


@pytest.mark.parametrize("value", ["urn:uuid:0f8f5b2e", "ehr-main:000001", "a/b", " x "])
def test_an_event_id_may_hold_colons_and_slashes(value: str) -> None:
    """``event_id`` goes into no key or path, only the idempotency digest."""
    event = {**activity("acme", "P-1"), "event_id": value}
    assert parse_event(orjson.dumps(event)).event_id == value


def test_the_cross_tenant_pair_no_longer_folds_onto_one_key() -> None:
    """The review's scenario through the worker's fold: on the old code both folded to
    billing key ``acme:east:P-1:2025-03``; now both are dead-lettered with the reason."""
    fold = FoldPartition()
    outs = {
        "patient_id": fold.apply(raw_activity("acme", "east:P-1", "e1")),
        "org_id": fold.apply(raw_activity("acme:east", "P-1", "e2")),
    }
    for field, out in outs.items():
        assert [o.topic for o in out] == [DEADLETTER]
        assert dict(out[0].headers)["reason"].decode() == f"{field}: {ID_RULE}"
    assert not fold.projector.views
    ok = fold.apply(raw_activity("acme", "P-1", "e3"))
    assert [o.key for o in ok if o.topic == BILLING] == [b"acme:P-1:2025-03"]


def test_the_state_cache_keeps_colliding_tenants_apart() -> None:
    """Views that an older log may still hold: each keeps its own entry, and a tombstone of
    one (a void) leaves the other tenant's billing alone."""
    cache = StateCache("127.0.0.1:1", Topics(prefix="unused."))
    mine, theirs = ("acme", "east:P-1", MONTH), ("acme:east", "P-1", MONTH)
    for org, patient, month in (theirs, mine):
        value = orjson.dumps(view(org, patient, month))
        cache.apply_billing(billing_key(org, patient, month), value, b"[]")
    for org, patient, month in (mine, theirs):
        entry = cache.month_view(org, patient, month)
        assert entry is not None and (entry.org_id, entry.patient_id) == (org, patient)
    assert [i["patient_id"] for i in cache.worklist("acme:east", MONTH)["in_progress"]] == ["P-1"]
    cache.apply_billing(billing_key(*mine), None, None)  # the void's tombstone
    assert cache.month_view(*mine) is None
    assert cache.month_view(*theirs) is not None
    assert cache.worklist("acme:east", MONTH)["in_progress"]


ANY_ID = st.text(st.sampled_from("a:%/2F3A\x1f-é"), max_size=8)


def regroupings(ids: tuple[str, ...]) -> list[tuple[str, ...]]:
    """Every other tuple of as many strings that ``":".join`` makes the same text: the
    tuples an ambiguous key format would confuse with ``ids``."""
    pieces = ":".join(ids).split(":")
    cuts = itertools.combinations(range(1, len(pieces)), len(ids) - 1)
    out = []
    for cut in cuts:
        bounds = (0, *cut, len(pieces))
        other = tuple(":".join(pieces[i:j]) for i, j in itertools.pairwise(bounds))
        if other != ids:
            out.append(other)
    return out


@settings(max_examples=300, deadline=None)
@given(a=st.tuples(ANY_ID, ANY_ID, ANY_ID), b=st.tuples(ANY_ID, ANY_ID, ANY_ID))
def test_keys_are_injective(a: tuple[str, str, str], b: tuple[str, str, str]) -> None:
    for other in [b, *regroupings(a)]:
        assert (billing_key(*a) == billing_key(*other)) == (a == other)
    for other2 in [b[:2], *regroupings(a[:2])]:
        if "" not in (a[1], other2[1]):  # "" stands for no patient (the practice-wide key)
            assert (event_key(*a[:2]) == event_key(*other2)) == (a[:2] == other2)


@settings(max_examples=300, deadline=None)
@given(ids=st.tuples(ANY_ID, ANY_ID, ANY_ID))
def test_keys_decode_to_their_ids(ids: tuple[str, str, str]) -> None:
    from streams.kafka.records import key_parts  # new with the fix

    assert key_parts(billing_key(*ids)) == ids
    assert key_parts(event_key(ids[0], ids[1] or None)) == ids[:2]


def test_keys_of_valid_ids_are_unchanged() -> None:
    """No valid id is escaped: existing logs keep their keys, so their partitions."""
    assert billing_key("practice-17", "P-000123", MONTH) == b"practice-17:P-000123:2025-03"
    assert event_key("患者", "P%1") == "患者:P%1".encode()
    assert event_key("acme", None) == b"acme:"
    assert billing_key("a:b", "c/d", MONTH) == b"a/3Ab:c/2Fd:2025-03"


def test_a_key_we_did_not_write_decodes_to_nothing() -> None:
    from streams.kafka.records import key_parts  # new with the fix

    for key in (b"a/b:c", b"a/3a:c", b"\xff:c", None):
        assert key_parts(key) is None


def test_the_idempotency_join_cannot_collide() -> None:
    """Org ``a`` + event ``b\\x1fc`` and org ``a\\x1fb`` + event ``c`` share a digest (the
    digest is kept: the log's ``idem`` headers hold it); the gate refuses both now."""
    assert idempotency_digest("a", "b\x1fc") == idempotency_digest("a\x1fb", "c")
    gate = IngressGate()
    first = gate.decide(raw_activity("a", "P-1", "b\x1fc"))
    second = gate.decide(raw_activity("a\x1fb", "P-1", "c"))
    assert (first.verdict, first.reason) == (Verdict.REJECTED, f"event_id: {EVENT_ID_RULE}")
    assert (second.verdict, second.reason) == (Verdict.REJECTED, f"org_id: {ID_RULE}")


# --- item 9: duplicate keys ----------------------------------------------------------------


@pytest.mark.parametrize("key", sorted(DOUBLES))
def test_parse_event_refuses_a_duplicate_key(key: str) -> None:
    expected = f"{key}: duplicate key in a JSON object; send each key once"
    assert reason_of(DOUBLES[key]) == expected
    assert reason_of(DOUBLES[key].decode()) == expected


def test_duplicates_hidden_by_whitespace_or_escapes_are_refused() -> None:
    pretty = json.dumps(activity("org-a", "P-1"), indent=2).replace('"org_id":', '"org_id" :')
    assert parse_event(pretty).org_id == "org-a"
    doubled = pretty.replace('"org_id" :', '"org_id"\t:\n"org-b",\r\n "org_id" :', 1)
    assert reason_of(doubled).startswith("org_id: duplicate key")
    escaped = ORG_A.replace(b'"org_id":', b'"org\\u005fid":"org-b","org_id":', 1)
    assert reason_of(escaped).startswith("org_id: duplicate key")


def test_colons_and_quotes_inside_values_are_not_members() -> None:
    """The cheap member bound counts ``":``; values that start with ``:`` or hold quotes and
    colons must not turn a clean event into a refused one."""
    event = activity("org-a", "P-1")
    event["source"] = ': "x": y'
    event["data"] = {**event["data"], "activity": '":', "note_digest": " : "}
    for raw in (orjson.dumps(event), json.dumps(event, indent=1).encode()):
        assert parse_event(raw).source == ': "x": y'


def render(event: dict[str, Any], sep: str, twice: tuple[str, str] | None = None) -> str:
    """``event`` as JSON with ``sep`` after each key; ``twice`` = (``top`` or ``data``, key)
    writes that member twice."""

    def obj(items: dict[str, Any], where: str) -> str:
        parts = [f"{json.dumps(k)}{sep}{value(k, v, where)}" for k, v in items.items()]
        if twice is not None and twice[0] == where:
            parts.insert(0, f"{json.dumps(twice[1])}{sep}{value(twice[1], items[twice[1]], where)}")
        return "{" + ", ".join(parts) + "}"

    def value(k: str, v: Any, where: str) -> str:
        return obj(v, "data") if where == "top" and k == "data" else json.dumps(v)

    return obj(event, "top")


@pytest.fixture(scope="module")
def synthetic() -> list[dict[str, Any]]:
    return list(generate_events(200, seed=11))


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    n=st.integers(0, 199), sep=st.sampled_from([":", " : ", ":\n", "\t:"]), pick=st.integers(0, 99)
)
def test_synthetic_events_pass_and_any_doubled_key_is_refused(
    synthetic: list[dict[str, Any]], n: int, sep: str, pick: int
) -> None:
    event = synthetic[n % len(synthetic)]
    assert parse_event(render(event, sep)).event_id == event["event_id"]
    where = "data" if pick % 2 and event["data"] else "top"
    keys = sorted(event["data"] if where == "data" else event)
    key = keys[pick % len(keys)]
    assert reason_of(render(event, sep, (where, key))).startswith(f"{key}: duplicate key")


def test_the_gate_refuses_a_duplicate_key() -> None:
    decision = IngressGate().decide(DOUBLES["org_id"])
    assert decision.verdict is Verdict.REJECTED
    assert decision.reason == "org_id: duplicate key in a JSON object; send each key once"


def test_the_fold_dead_letters_a_duplicate_key_already_in_the_log() -> None:
    out = FoldPartition().apply(DOUBLES["patient_id"])
    assert [o.topic for o in out] == [DEADLETTER]
    assert dict(out[0].headers)["reason"].startswith(b"patient_id: duplicate key")


def test_replay_reports_duplicate_keys_and_bad_ids(tmp_path: Path) -> None:
    path = tmp_path / "log.ndjson"
    path.write_bytes(b"\n".join([ORG_A, DOUBLES["org_id"], raw_activity("acme", "e:P", "e9")]))
    result = CliRunner().invoke(cli, ["replay", "--input", str(path)])
    assert result.exit_code == 3, result.output
    assert "org_id: duplicate key" in result.stderr
    assert f"patient_id: {ID_RULE}" in result.stderr
    assert result.stdout.count("\n") == 1  # the one valid event's patient-month

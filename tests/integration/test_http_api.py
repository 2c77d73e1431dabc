"""`caretally serve` end to end: a real broker, real HTTP on loopback, real key files.

The server runs in a background thread with its own event loop. Billing views and alerts
are produced straight to their topics in the streams.kafka.records formats (the worker is not
needed), and POSTed events are read back from the ingress topic.
"""

from __future__ import annotations

import http.client
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from kafka import KafkaConsumer, TopicPartition

from streams.http.api_keys import create_key, list_keys, revoke_key
from streams.kafka.broker import EmbeddedBroker
from streams.kafka.records import event_key
from support.http import (
    MAX_BODY,
    MONTH,
    Api,
    activity,
    alert,
    eventually,
    practice,
    progress,
    served_pipeline,
    view,
)


def ingress(api: Api, wanted: set[bytes], until: Callable[[list[Any]], bool]) -> list[Any]:
    """Records of ``wanted`` keys on ingress, read until ``until`` holds (then one more poll)."""
    consumer = KafkaConsumer(
        bootstrap_servers=api.bootstrap, enable_auto_commit=False, group_id=None
    )
    try:
        parts = [TopicPartition(api.topics.ingress, p) for p in range(2)]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        seen: list[Any] = []
        deadline = time.monotonic() + 15
        done = False
        while True:
            for recs in consumer.poll(timeout_ms=300).values():
                seen.extend(r for r in recs if r.key in wanted)
            if done:
                return sorted(seen, key=lambda r: (r.partition, r.offset))
            done = until(seen)
            assert done or time.monotonic() < deadline, f"only {len(seen)} record(s) arrived"
    finally:
        consumer.close()


# --- health and auth -----------------------------------------------------------------------


def test_healthz_needs_no_key_and_names_nobody(api: Api) -> None:
    api.publish_view(view("org-a", "P-health"))
    eventually(lambda: api.get("/healthz")[1]["billing_views"] >= 1)
    status, headers, raw = api.request("GET", "/healthz")
    body = orjson.loads(raw)
    assert status == 200 and headers["content-type"].startswith("application/json")
    assert body["status"] == "ok" and body["kafka"] == "live" and body["caught_up"] is True
    assert b"org-a" not in raw and b"P-health" not in raw


def test_missing_invalid_or_revoked_key_is_401(api: Api) -> None:
    paths = [
        f"/v1/orgs/org-a/patients/P-1/months/{MONTH}",
        f"/v1/orgs/org-a/worklist?month={MONTH}",
        "/v1/orgs/org-a/alerts",
        "/nope",
    ]
    for path in paths:
        assert api.get(path)[0] == 401
        status, body = api.get(path, key="ct_org-a_" + "x" * 32)
        assert status == 401 and "error" in body
    status, headers, raw = api.request(
        "POST", "/v1/events", b"{}", {"Content-Type": "application/json"}
    )
    assert status == 401 and headers["www-authenticate"].startswith("Bearer")
    assert orjson.loads(raw) == {
        "error": "missing or invalid API key (send Authorization: Bearer <key>)"
    }

    # X-API-Key works as well as Bearer; a revoked key stops working without a restart
    record, key_c = create_key(api.keys_path, "org-a")
    status, _, _ = api.request(
        "GET", "/v1/orgs/org-a/patients/P-none/months/2025-03", headers={"X-API-Key": key_c}
    )
    assert status == 404
    revoke_key(api.keys_path, record.key_id)
    assert not next(r for r in list_keys(api.keys_path) if r.key_id == record.key_id).active
    assert api.get("/v1/orgs/org-a/patients/P-none/months/2025-03", key=key_c)[0] == 401
    assert api.get("/nope", key=api.key_a) == (404, {"error": "not found"})


# --- POST /v1/events -----------------------------------------------------------------------


def test_post_single_event_and_ndjson_batch_reach_ingress_as_sent(api: Api) -> None:
    single = orjson.dumps(activity("org-a", "P-post-1"), option=orjson.OPT_INDENT_2)
    status, body = api.post(b"  " + single + b"\n", "application/json; charset=utf-8", api.key_a)
    assert (status, body) == (202, {"accepted": 1, "rejected": 0})

    lines = [
        orjson.dumps(activity("org-a", "P-post-2", 1)),
        orjson.dumps(practice("org-a")),
        json.dumps(activity("org-a", "P-post-3", 2), indent=None).encode(),  # other spacing
    ]
    batch = lines[0] + b"\r\n\n" + lines[1] + b"\n" + lines[2]
    status, body = api.post(batch, "application/x-ndjson", api.key_a)
    assert (status, body) == (202, {"accepted": 3, "rejected": 0})

    wanted = {event_key("org-a", p) for p in ("P-post-1", "P-post-2", "P-post-3")}
    wanted.add(event_key("org-a", None))
    got = ingress(api, wanted, lambda seen: len(seen) >= 4)
    by_value = {r.value: r.key for r in got}
    assert by_value == {
        single: b"org-a:P-post-1",
        lines[0]: b"org-a:P-post-2",
        lines[1]: b"org-a:",
        lines[2]: b"org-a:P-post-3",
    }


def test_a_bad_line_rejects_the_whole_batch(api: Api) -> None:
    good = orjson.dumps(activity("org-a", "P-bad-1"))
    missing = activity("org-a", "P-bad-2")
    del missing["data"]["staff_id"]
    other_org = orjson.dumps(activity("org-b", "P-bad-3"))
    batch = b"\n".join([good, orjson.dumps(missing), b"", other_org, b"{not json", good])
    status, body = api.post(batch, "application/x-ndjson", api.key_a)
    assert status == 400
    assert body["accepted"] == 0 and body["rejected"] == 3
    assert [e["line"] for e in body["errors"]] == [2, 4, 5]
    assert "data.staff_id" in body["errors"][0]["reason"]
    assert body["errors"][1]["reason"] == "org_id: not the organisation of this API key"
    assert b"org-b" not in orjson.dumps(body) and b"P-bad-3" not in orjson.dumps(body)

    status, body = api.post(b"\n \n", "application/x-ndjson", api.key_a)
    assert (status, body) == (400, {"error": "no events in the body"})

    # nothing of the bad batch was written: a later good event is the only record
    marker = orjson.dumps(activity("org-a", "P-bad-1", 9))
    assert api.post(marker, "application/json", api.key_a)[0] == 202
    wanted = {event_key("org-a", p) for p in ("P-bad-1", "P-bad-2")} | {
        event_key("org-b", "P-bad-3")
    }
    got = ingress(api, wanted, lambda seen: any(r.value == marker for r in seen))
    assert [r.value for r in got] == [marker]


def test_a_large_batch_is_validated_off_loop_and_produced_in_order(api: Api) -> None:
    events = [orjson.dumps(activity("org-a", "P-large", n)) for n in range(1200)]
    body = b"\n".join(events)
    assert 256 * 1024 < len(body) < MAX_BODY
    assert api.post(body, "application/x-ndjson", api.key_a) == (
        202,
        {"accepted": 1200, "rejected": 0},
    )
    got = ingress(api, {event_key("org-a", "P-large")}, lambda seen: len(seen) >= 1200)
    assert [r.value for r in got] == events  # one key, one partition: the batch's order


def test_size_and_content_type_limits(api: Api) -> None:
    big = b" " * (MAX_BODY + 1)
    status, body = api.post(big, "application/x-ndjson", api.key_a)
    assert status == 413 and "error" in body

    # a chunked body (no Content-Length) is cut off at the limit too
    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=15)
    try:
        chunks = iter([b" " * (256 * 1024)] * 5)
        conn.request(
            "POST",
            "/v1/events",
            body=chunks,
            encode_chunked=True,
            headers={
                "Content-Type": "application/x-ndjson",
                "Authorization": f"Bearer {api.key_a}",
            },
        )
        resp = conn.getresponse()
        assert resp.status == 413
    finally:
        conn.close()

    one = orjson.dumps(activity("org-a", "P-ctype"))
    for ctype in ("text/plain", "application/xml", "application/octet-stream"):
        status, body = api.post(one, ctype, api.key_a)
        assert status == 415 and "application/x-ndjson" in body["error"]
    assert api.request("POST", "/v1/events", one, key=api.key_a)[0] == 415


# --- reads ---------------------------------------------------------------------------------


def test_month_view_200_404_and_tombstone(api: Api) -> None:
    v = view("org-a", "P-month", billable=["99490"])
    api.publish_view(v, progress(("99439", 1500, 2400)))
    path = f"/v1/orgs/org-a/patients/P-month/months/{MONTH}"
    eventually(lambda: api.get(path, key=api.key_a)[0] == 200)
    _, headers, raw = api.request("GET", path, key=api.key_a)
    assert headers["content-type"].startswith("application/json")
    assert raw == orjson.dumps(v)  # exactly the stored value

    assert api.get("/v1/orgs/org-a/patients/P-month/months/2025-04", key=api.key_a)[0] == 404
    assert api.get("/v1/orgs/org-a/patients/P-other/months/2025-03", key=api.key_a)[0] == 404
    assert api.get("/v1/orgs/org-a/patients/P-month/months/2025-13", key=api.key_a) == (
        400,
        {"error": "month must be YYYY-MM"},
    )
    api.tombstone("org-a", "P-month", MONTH)
    eventually(lambda: api.get(path, key=api.key_a)[0] == 404)


def test_worklist_groups_by_status_nearest_threshold_first(api: Api) -> None:
    org = "org-a"
    feeds = [
        # billable: one still short of an add-on (10 s), one with nothing short (goes last)
        (view(org, "W-bill-done", billable=["99490"]), progress()),
        (view(org, "W-bill-near", billable=["99490"]), progress(("99439", 2390, 2400))),
        (view(org, "W-bill-far", billable=["99490"]), progress(("99439", 1300, 2400))),
        # blocked: time met, documentation missing
        (view(org, "W-blocked", blocked=["99490"]), progress(("99439", 1200, 2400))),
        # in progress: the minimum over tracks decides (120 s short beats 600 s)
        (view(org, "W-prog-a"), progress(("99490", 600, 1200), ("99491", 1680, 1800))),
        (view(org, "W-prog-b"), progress(("99490", 1140, 1200))),
        (view(org, "W-prog-c"), progress(("99490", 0, 1200))),
        # other month and other org: not in this worklist
        (view(org, "W-april", month="2025-04"), progress(("99490", 1190, 1200))),
        (view("org-b", "W-org-b"), progress(("99490", 1199, 1200))),
    ]
    for v, p in feeds:
        api.publish_view(v, p)

    def ready() -> bool:
        status, body = api.get(f"/v1/orgs/{org}/worklist?month={MONTH}", key=api.key_a)
        names = {i["patient_id"] for g in ("billable", "blocked", "in_progress") for i in body[g]}
        return status == 200 and {"W-prog-c", "W-blocked", "W-bill-done"} <= names

    eventually(ready)
    _, body = api.get(f"/v1/orgs/{org}/worklist?month={MONTH}", key=api.key_a)
    mine = {
        g: [i["patient_id"] for i in body[g] if i["patient_id"].startswith("W-")]
        for g in ("billable", "blocked", "in_progress")
    }
    assert mine == {
        "billable": ["W-bill-near", "W-bill-far", "W-bill-done"],
        "blocked": ["W-blocked"],
        "in_progress": ["W-prog-b", "W-prog-a", "W-prog-c"],
    }
    item = next(i for i in body["in_progress"] if i["patient_id"] == "W-prog-a")
    assert item == {
        "patient_id": "W-prog-a",
        "month": MONTH,
        "billable": [],
        "blocked": [],
        "minutes": {"ccm": 12.0},
        "next": {"code": "99491", "minutes_short": 2.0},
    }
    done = next(i for i in body["billable"] if i["patient_id"] == "W-bill-done")
    assert done["next"] is None and done["billable"] == [{"code": "99490", "units": 1}]
    assert body["month"] == MONTH
    assert b"W-org-b" not in orjson.dumps(body) and b"W-april" not in orjson.dumps(body)

    assert api.get(f"/v1/orgs/{org}/worklist", key=api.key_a)[0] == 400
    assert api.get(f"/v1/orgs/{org}/worklist?month=March", key=api.key_a)[0] == 400


def test_org_isolation(api: Api) -> None:
    api.publish_view(view("org-b", "P-secret-b"))
    own = "/v1/orgs/org-b/patients/P-secret-b/months/2025-03"
    eventually(lambda: api.get(own, key=api.key_b)[0] == 200)
    for path in (
        own,
        "/v1/orgs/org-b/patients/P-none/months/2025-03",
        f"/v1/orgs/org-b/worklist?month={MONTH}",
        "/v1/orgs/org-b/alerts?replay=5",
    ):
        status, _, raw = api.request("GET", path, key=api.key_a)
        assert status == 403, path
        assert orjson.loads(raw) == {"error": "this API key has no access to that resource"}
    # the same view is not reachable under A's org either
    assert api.get("/v1/orgs/org-a/patients/P-secret-b/months/2025-03", key=api.key_a)[0] == 404
    status, body = api.get(f"/v1/orgs/org-a/worklist?month={MONTH}", key=api.key_a)
    assert b"P-secret-b" not in orjson.dumps(body)
    # and B cannot write as A
    status, body = api.post(orjson.dumps(activity("org-a", "P-x")), "application/json", api.key_b)
    assert status == 400 and body["errors"][0]["reason"].startswith("org_id:")


def test_access_log_names_routes_not_patients(api: Api, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="aiohttp.access"):
        api.get("/v1/orgs/org-a/patients/P-LOGGED-NOT/months/2025-03", key=api.key_a)
        eventually(lambda: "/months/{month}" in caplog.text, timeout=5)
    assert "GET /v1/orgs/{org}/patients/{patient}/months/{month} 404" in caplog.text
    assert "P-LOGGED-NOT" not in caplog.text


# --- alerts over SSE -----------------------------------------------------------------------


class Sse:
    """A blocking SSE client over http.client: events as dicts, comments kept apart."""

    def __init__(self, api: Api, path: str, key: str, headers: dict[str, str] | None = None):
        self.conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=10)
        self.conn.request(
            "GET", path, headers={"Authorization": f"Bearer {key}", **(headers or {})}
        )
        self.resp = self.conn.getresponse()
        self.comments: list[str] = []

    def next_event(self) -> dict[str, str]:
        fields: dict[str, str] = {}
        while True:
            line = self.resp.readline().decode().rstrip("\n")
            if line.startswith(":"):
                self.comments.append(line[1:].strip())
            elif line:
                name, _, value = line.partition(": ")
                fields[name] = value
            elif fields:
                return fields

    def close(self) -> None:
        self.conn.close()


def test_sse_live_alerts_replay_and_last_event_id(api: Api) -> None:
    live = Sse(api, "/v1/orgs/org-a/alerts", api.key_a)
    try:
        assert live.resp.status == 200
        assert live.resp.getheader("Content-Type") == "text/event-stream"
        first = alert("org-a", "P-al", 1)
        api.publish_alert(first)
        api.publish_alert(alert("org-b", "P-al-b", 1))  # B's: never on A's stream
        api.publish_alert(alert("org-a", "P-al", 2, kind="documentation_gap"))
        got = [live.next_event(), live.next_event()]
        assert got[0] == {
            "id": "org-a-P-al-al1",
            "event": "threshold_crossed",
            "data": orjson.dumps(first).decode(),
        }
        assert [(e["id"], e["event"]) for e in got] == [
            ("org-a-P-al-al1", "threshold_crossed"),
            ("org-a-P-al-al2", "documentation_gap"),
        ]
        # idle: a heartbeat comment arrives (1 s in this app)
        api.publish_alert(alert("org-a", "P-al", 3))
        assert live.next_event()["id"] == "org-a-P-al-al3"
        start = time.monotonic()
        while live.resp.readline() != b": heartbeat\n":
            assert time.monotonic() - start < 5
    finally:
        live.close()

    def replayed(path: str, n: int, headers: dict[str, str] | None = None) -> list[str]:
        sse = Sse(api, path, api.key_a, headers)
        try:
            return [sse.next_event()["id"] for _ in range(n)]
        finally:
            sse.close()

    mine = ["org-a-P-al-al1", "org-a-P-al-al2", "org-a-P-al-al3"]
    assert replayed("/v1/orgs/org-a/alerts?replay=2", 2)[-2:] == mine[1:]
    assert replayed("/v1/orgs/org-a/alerts?replay=1", 1) == mine[2:]
    # after Last-Event-ID: everything stored after it, then live
    assert replayed("/v1/orgs/org-a/alerts", 2, {"Last-Event-ID": mine[0]}) == mine[1:]
    sse_b = Sse(api, "/v1/orgs/org-b/alerts?replay=10", api.key_b)
    try:
        assert sse_b.next_event()["id"] == "org-b-P-al-b-al1"
    finally:
        sse_b.close()
    assert api.get("/v1/orgs/org-a/alerts?replay=x", key=api.key_a)[0] == 400
    assert api.get("/v1/orgs/org-a/alerts?replay=-1", key=api.key_a)[0] == 400


# --- the whole path: HTTP in, worker, HTTP and SSE out ---------------------------------------


def test_posted_events_come_back_as_billing_and_live_alerts_through_the_worker(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    """POST /v1/events -> ingress -> worker -> care.billing.v1 / care.alerts.v1 -> GET and
    SSE: what the HTTP API serves is what an offline replay gives for the same events."""
    from support.builders import Log

    log = Log(org="org-e2e", recorded_at="2025-03-20T12:00:00Z")
    log.documented("P-9")
    log.activity("P-9", "a1", "2025-03-03T10:00:00-05:00", 12)
    log.activity("P-9", "a2", "2025-03-10T10:00:00-05:00", 13)  # 25 min: 99490 crosses
    body = b"\n".join(orjson.dumps(e) for e in log.raw)
    expected = log.view("P-9", "2025-03")
    assert expected["billable"]

    with served_pipeline(broker, tmp_path, "org-e2e") as api:
        key = api.key_a
        sse = Sse(api, "/v1/orgs/org-e2e/alerts", key)
        try:
            status, counts = api.post(body, "application/x-ndjson", key)
            assert (status, counts["accepted"]) == (202, len(log.raw))
            crossed = sse.next_event()
            while crossed["event"] != "threshold_crossed":
                crossed = sse.next_event()
            alert_body = orjson.loads(crossed["data"])
            assert (alert_body["patient_id"], alert_body["code"]) == ("P-9", "99490")
        finally:
            sse.close()
        path = "/v1/orgs/org-e2e/patients/P-9/months/2025-03"
        eventually(lambda: api.get(path, key)[0] == 200, 30)
        eventually(lambda: api.get(path, key)[1] == expected, 30)

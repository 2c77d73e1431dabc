"""``caretally serve`` tells the truth about its health, exposes Prometheus metrics, stops
fast on SIGTERM and does not flood its log (issue 12).

Broker up: the module's server on the session broker (``api``). Broker down: a broker of
the test's own, stopped mid-test (never the session's), under the app in process and
under the real command as a subprocess.
"""

from __future__ import annotations

import http.client
import json
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from streams.http.api_keys import ApiKeyStore, create_key
from streams.http.app import build_app
from streams.kafka.broker import EmbeddedBroker
from streams.kafka.topics import Topics, ensure_topics
from support.http import MONTH, Api, ServerThread, activity, eventually

READY = "caretally serve: http://127.0.0.1:"
SUMMARY = re.compile(r"\((\d+) similar lines suppressed in the last 10 s\)$")

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def request(port: int, path: str, key: str | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {key}"} if key else {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def probe(port: int, path: str) -> tuple[int, Any]:
    """(status, JSON body) of /healthz or /readyz; (0, None) when nothing answers."""
    try:
        status, _, body = request(port, path)
    except OSError:
        return 0, None
    return status, orjson.loads(body)


def scrape(port: int) -> tuple[Samples, str]:
    status, headers, body = request(port, "/metrics")  # no key
    assert status == 200 and headers["content-type"].startswith("text/plain")
    text = body.decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples, text


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    """A broker for this test alone, free to stop mid-test."""
    broker = EmbeddedBroker(log_path=tmp_path / "tansu.log").start()
    try:
        yield broker
    finally:
        broker.stop()


# --- broker up -----------------------------------------------------------------------------


def test_health_readiness_and_metrics_with_the_broker_up(api: Api) -> None:
    status, health = probe(api.port, "/healthz")
    assert (status, health["status"], health["kafka"]) == (200, "ok", "live")
    status, ready = probe(api.port, "/readyz")  # no key either
    assert (status, ready) == (200, {"ready": True, "kafka": "live", "caught_up": True})

    before, _ = scrape(api.port)
    good = orjson.dumps(activity("org-a", "P-metrics-1"))
    assert api.post(good, "application/json", api.key_a)[0] == 202
    bad = good + b"\n" + b'{"type": "activity.logged"}'
    status, body = api.post(bad, "application/x-ndjson", api.key_a)
    assert (status, body["accepted"], body["rejected"]) == (400, 0, 1)
    path = f"/v1/orgs/org-b/patients/P-metrics-1/months/{MONTH}"
    assert api.get(path, api.key_a)[0] == 403

    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=10)
    try:  # an open alert stream counts while it is open
        conn.request(
            "GET", "/v1/orgs/org-a/alerts", headers={"Authorization": f"Bearer {api.key_a}"}
        )
        resp = conn.getresponse()
        assert resp.status == 200 and resp.readline().startswith(b": caretally alerts")
        during, _ = scrape(api.port)
    finally:
        conn.close()
    after, text = scrape(api.port)

    assert value(during, "caretally_sse_clients") == 1
    eventually(lambda: value(scrape(api.port)[0], "caretally_sse_clients") == 0)
    for gauge in ("caretally_kafka_up", "caretally_cache_caught_up", "caretally_ready"):
        assert value(after, gauge) == 1, gauge

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("caretally_events_accepted_total") == 1
    assert grew("caretally_events_rejected_total") == 1
    assert grew("caretally_produce_errors_total", topic="ingress") == 0
    assert grew("caretally_http_requests_total", route="/v1/events", method="POST", status="202")
    assert grew("caretally_http_requests_total", route="/v1/events", method="POST", status="400")
    month_route = "/v1/orgs/{org}/patients/{patient}/months/{month}"
    assert grew("caretally_http_requests_total", route=month_route, method="GET", status="403")
    assert grew("caretally_http_request_seconds_count", route="/v1/events", method="POST") >= 2
    # labels name routes, never an org or a patient
    assert "org-a" not in text and "org-b" not in text and "P-metrics" not in text


# --- broker down, in process ---------------------------------------------------------------


def test_health_follows_the_broker_away_and_back(
    own_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    topics = Topics(prefix=f"t{uuid.uuid4().hex[:10]}.")
    ensure_topics(own_broker.bootstrap, topics, partitions=1)
    keys_path = tmp_path / "api-keys.json"
    create_key(keys_path, "org-a")
    app = build_app(own_broker.bootstrap, topics, ApiKeyStore(keys_path))
    with ServerThread(app) as server:
        eventually(lambda: probe(server.port, "/readyz")[0] == 200, 30)
        own_broker.stop(timeout=1.0)
        eventually(lambda: probe(server.port, "/healthz")[1]["kafka"] == "down", 15)
        status, health = probe(server.port, "/healthz")
        assert (status, health["status"], health["caught_up"]) == (503, "degraded", True)
        status, ready = probe(server.port, "/readyz")
        assert (status, ready["ready"], ready["kafka"]) == (503, False, "down")
        samples, _ = scrape(server.port)
        assert value(samples, "caretally_kafka_up") == 0 and value(samples, "caretally_ready") == 0

        back = EmbeddedBroker(port=own_broker.port, log_path=tmp_path / "tansu-again.log")
        with back.start():
            ensure_topics(back.bootstrap, topics, partitions=1)
            eventually(lambda: probe(server.port, "/healthz")[1]["kafka"] == "live", 30)
            assert probe(server.port, "/readyz")[0] == 200
    # leaving ServerThread asserts the server stopped


# --- broker down, the real command ---------------------------------------------------------


class Serve:
    """``caretally serve --log-format json`` as a subprocess; stderr kept line by line."""

    def __init__(self, broker: EmbeddedBroker, keys: Path) -> None:
        command = [sys.executable, "-m", "streams.cli", "serve", "--port", "0"]
        command += ["--bootstrap", broker.bootstrap, "--keys", str(keys), "--partitions", "1"]
        command += ["--topic-prefix", f"t{uuid.uuid4().hex[:10]}.", "--log-format", "json"]
        self.proc = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            self.lines.append(raw.decode(errors="replace").rstrip("\n"))

    def records(self, start: int = 0) -> list[dict[str, Any]]:
        """The log from line ``start``: every line must be one JSON object."""
        return [json.loads(line) for line in self.lines[start:]]

    def port(self) -> int:
        for record in self.records():
            if record["message"].startswith(READY):
                return int(record["message"][len(READY) :].split(" ")[0])
        assert self.proc.poll() is None, "\n".join(self.lines)
        return 0

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._reader.join(5)


def test_serve_without_its_broker_logs_little_and_stops_on_sigterm(
    own_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    keys = tmp_path / "api-keys.json"
    create_key(keys, "org-a")
    serve = Serve(own_broker, keys)
    try:
        eventually(lambda: serve.port() > 0, 60)
        port = serve.port()
        eventually(lambda: probe(port, "/readyz")[0] == 200, 30)

        own_broker.stop(timeout=1.0)
        eventually(lambda: probe(port, "/healthz")[0] == 503, 15)
        assert probe(port, "/healthz")[1]["kafka"] == "down"
        mark = len(serve.lines)
        time.sleep(5.0)  # a window to count lines in, not a timing assertion
        problems = [r for r in serve.records(mark) if r["level"] in ("WARNING", "ERROR")]
        assert len(problems) < 20, [r["message"] for r in problems]

        def summaries() -> list[int]:
            found = (SUMMARY.search(r["message"]) for r in serve.records())
            return [int(m.group(1)) for m in found if m]

        # a Kafka client retries every 100 ms: what the filter held back is the proof
        eventually(lambda: bool(summaries()), 30)
        assert sum(summaries()) >= 20

        started = time.monotonic()
        serve.proc.send_signal(signal.SIGTERM)
        assert serve.proc.wait(15) == 0
        print(f"SIGTERM to exit, broker down: {time.monotonic() - started:.2f} s")
        serve._reader.join(5)
        assert not any("Traceback" in line for line in serve.lines), "\n".join(serve.lines)
        assert any(r["message"] == "caretally serve: stopped" for r in serve.records())
    finally:
        serve.close()

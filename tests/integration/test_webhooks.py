"""`caretally webhooks deliver` and `replay` against a real broker and a real receiver.

One `webhooks deliver` process (the real CLI, stopped by SIGTERM at the end of the module)
reads the alerts topic of a unique prefix; each test registers its own webhooks (the
process re-reads the registry) for its own orgs and produces alerts as the worker does
(key ``org_id:patient_id``, value ``alert_value``). The receiver is an aiohttp server on
127.0.0.1 that verifies every signature with the webhook's secret and answers each path
by a script: ``ok`` (200), ``fail`` (500), ``slow`` (answers after the delivery timeout)
or ``hang`` (answers after any test has ended).

A new group starts at the end of the alerts topic, so a ``deliver`` process is waited for
until it has its partitions before alerts are produced.

"No other delivery" is proven without waiting for time to pass: a batch's deliveries all
end before the next batch is read, so once an alert produced *after* a first delivery was
seen has arrived, every delivery of the earlier alerts has ended.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from click.testing import CliRunner
from kafka import KafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from schemas.views import Alert
from streams.cli.main import cli
from streams.kafka.broker import EmbeddedBroker
from streams.kafka.log_reader import read_to_end
from streams.kafka.records import alert_value, event_key
from streams.kafka.topics import Topics, ensure_topics, partition_counts
from streams.webhooks import parked
from streams.webhooks.registry import add_webhook, remove_webhook
from streams.webhooks.replay import read_parked
from streams.webhooks.signing import verify
from support.http import eventually

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 2.0  # an attempt's timeout: reached only by the ``slow`` answer
SLOW_S = 3.0  # longer than the delivery timeout
HANG_S = 60.0  # longer than any test
RETRY = ["--attempts", "3", "--backoff", "0.02", "--timeout", str(TIMEOUT_S)]


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    signed: bool
    answer: str

    @property
    def alert(self) -> dict[str, Any]:
        return orjson.loads(self.body)  # type: ignore[no-any-return]


@dataclass
class Receiver:
    """The receiving end: per path, a script of answers (then ``default``) and a secret."""

    port: int = 0
    secrets: dict[str, str] = field(default_factory=dict)
    scripts: dict[str, list[str]] = field(default_factory=dict)
    defaults: dict[str, str] = field(default_factory=dict)
    got: dict[str, list[Received]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/hook/{name}"

    def set(self, name: str, default: str, script: list[str] | None = None) -> None:
        with self.lock:
            self.defaults[name] = default
            self.scripts[name] = list(script or [])

    def received(self, name: str) -> list[Received]:
        with self.lock:
            return list(self.got.get(name, []))

    def keys(self, name: str, answer: str = "ok") -> list[str]:
        """Idempotency keys of the requests of ``name`` answered ``answer``."""
        return [r.headers["Idempotency-Key"] for r in self.received(name) if r.answer == answer]

    async def handle(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        body = await request.read()
        headers = dict(request.headers)
        with self.lock:
            script = self.scripts.setdefault(name, [])
            answer = script.pop(0) if script else self.defaults.get(name, "ok")
            secret = self.secrets.get(name, "")
            signed = verify(
                secret,
                headers.get("Caretally-Timestamp", ""),
                body,
                headers.get("Caretally-Signature", ""),
                time.time(),
            )
            self.got.setdefault(name, []).append(Received(headers, body, signed, answer))
        if answer == "fail":
            return web.Response(status=500, text="down")
        if answer == "slow":
            await asyncio.sleep(SLOW_S)
        if answer == "hang":
            await asyncio.sleep(HANG_S)
        return web.Response(status=200 if signed else 401, text="ok")


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    rec = Receiver()
    ready = threading.Event()
    stop: dict[str, Any] = {}

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/hook/{name}", rec.handle)
        runner = web.AppRunner(app, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        rec.port = runner.addresses[0][1]
        stop["loop"], stop["event"] = asyncio.get_running_loop(), asyncio.Event()
        ready.set()
        try:
            await stop["event"].wait()
        finally:
            await runner.cleanup()

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        yield rec
    finally:
        stop["loop"].call_soon_threadsafe(stop["event"].set)
        thread.join(10)
        assert not thread.is_alive(), "receiver did not stop"


@dataclass
class Pipeline:
    bootstrap: str
    topics: Topics
    registry: Path
    producer: KafkaProducer
    receiver: Receiver
    patients: set[str] = field(default_factory=set)
    names: set[str] = field(default_factory=set)  # the receiver's paths of its webhooks
    web_port: int = 0  # its `deliver`'s /healthz, /readyz, /metrics

    def hook(self, name: str, org: str, kinds: tuple[str, ...] | None = None) -> str:
        """Register the receiver's path ``name`` for ``org``; its webhook id."""
        h = add_webhook(self.registry, org, self.receiver.url(name), kinds)
        self.names.add(name)
        with self.receiver.lock:
            self.receiver.secrets[name] = h.secret
        return h.webhook_id

    def alert(self, org: str, kind: str, patient: str = "P-1") -> Alert:
        """Produce an alert as the worker does; the patient id is made unique (PHI to look
        for in the logs)."""
        patient_id = f"{patient}-{org}-SECRETPHI"
        self.patients.add(patient_id)
        alert = Alert(
            alert_id=uuid.uuid4().hex,
            kind=kind,  # type: ignore[arg-type]
            org_id=org,
            patient_id=patient_id,
            month="2025-03",
            code="99490",
            detail="a test alert",
        )
        key = event_key(org, patient_id)
        self.producer.send(self.topics.alerts, key=key, value=alert_value(alert))
        self.producer.flush()
        return alert

    def raw(self, org: str, value: bytes, patient: str = "P-1") -> None:
        """Produce ``value`` as is, under the key of ``org``'s alerts of ``patient``."""
        key = event_key(org, f"{patient}-{org}-SECRETPHI")
        self.producer.send(self.topics.alerts, key=key, value=value)
        self.producer.flush()

    def parked(self) -> tuple[list[parked.Parked], set[str]]:
        return asyncio.run(read_parked(self.bootstrap, self.topics.webhooks_parked))

    def records(self, topic: str) -> list[Any]:
        """Every record of ``topic`` so far."""

        async def read() -> list[Any]:
            count = partition_counts(self.bootstrap, [topic])[topic]
            return [r async for r in read_to_end(self.bootstrap, topic, range(count))]

        return asyncio.run(read())

    def replay(self, *args: str) -> tuple[int, str, str]:
        base = ["webhooks", "replay", "--bootstrap", self.bootstrap]
        base += ["--topic-prefix", self.topics.prefix, "--webhooks", str(self.registry)]
        result = CliRunner().invoke(cli, [*base, *RETRY, *args])
        return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def pipeline(
    broker: EmbeddedBroker, receiver: Receiver, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Pipeline]:
    topics = Topics(prefix=f"t{uuid.uuid4().hex[:10]}.")
    ensure_topics(broker.bootstrap, topics, partitions=2)
    folder = tmp_path_factory.mktemp("webhooks")
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", linger_ms=0)
    p = Pipeline(broker.bootstrap, topics, folder / "webhooks.json", producer, receiver)
    p.hook("seed", "org-seed")  # deliver needs a registry file
    p.web_port = free_port()
    proc, log = start_deliver(p, folder / "deliver.log", "--web-port", str(p.web_port))
    try:
        yield p
    finally:
        producer.close()
        text = stop_deliver(proc, log)
        assert "delivered alert" in text  # the log names what it did ...
        assert not [pid for pid in p.patients if pid in text]  # ... never a patient


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def scrape(port: int) -> dict[tuple[str, str], float]:
    """The ``caretally_webhook_*`` samples of ``/metrics``: (name, its one label's value)."""
    status, body = get(port, "/metrics")
    assert status == 200
    return {
        (s.name, next(iter(s.labels.values()), "")): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
        if s.name.startswith("caretally_webhook_")
    }


def start_deliver(p: Pipeline, log: Path, *args: str) -> tuple[subprocess.Popen[bytes], Path]:
    """``caretally webhooks deliver`` (the real CLI) on ``p``'s topics and registry, once
    it has its partitions (a new group starts at the end: what is produced then is read)."""
    with open(log, "ab") as err:
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "streams.cli", "webhooks", "deliver"),
                *("--bootstrap", p.bootstrap, "--topic-prefix", p.topics.prefix),
                *("--webhooks", str(p.registry), "--loglevel", "info", *RETRY, *args),
            ],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    starts = log.read_text(errors="replace").count("partition(s) of")
    try:
        eventually(
            lambda: (
                proc.poll() is not None
                or log.read_text(errors="replace").count("partition(s) of") > starts
            ),
            timeout=60,
        )
        assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
    except BaseException:
        proc.kill()
        proc.wait(10)
        raise
    return proc, log


def stop_deliver(proc: subprocess.Popen[bytes], log: Path) -> str:
    """SIGTERM, the exit status 0 and the log."""
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    text = log.read_text(errors="replace")
    assert code == 0, text[-3000:]
    assert text.count("caretally webhooks deliver: stopped") == text.count("Ctrl-C to stop")
    return text


def test_signed_alerts_go_only_to_their_orgs_webhooks_of_matching_kinds(
    pipeline: Pipeline, receiver: Receiver
) -> None:
    hook_a = pipeline.hook("a-all", "org-a")
    pipeline.hook("a-cap", "org-a", ("cap_reached",))
    pipeline.hook("b", "org-b")
    a1 = pipeline.alert("org-a", "threshold_crossed")
    a2 = pipeline.alert("org-a", "cap_reached")
    b1 = pipeline.alert("org-b", "threshold_crossed")
    # a kind and a field a later worker may write: sent as is, byte for byte
    future = orjson.loads(alert_value(a1)) | {"alert_id": uuid.uuid4().hex, "kind": "future"}
    future_value = json.dumps({**future, "severity": "high"}, indent=1).encode()
    pipeline.raw("org-a", future_value)
    not_an_alert = b'{"org_id": "org-a", "kind": "cap_reached"}'  # no alert_id
    pipeline.raw("org-a", not_an_alert)
    eventually(lambda: len(receiver.keys("a-all")) >= 3 and len(receiver.keys("b")) >= 1)
    # later alerts: once they arrive, every delivery of the first ones has ended
    a3 = pipeline.alert("org-a", "cap_reached")
    b2 = pipeline.alert("org-b", "overlap")
    eventually(
        lambda: (
            len(receiver.keys("a-all")) >= 4
            and len(receiver.keys("a-cap")) >= 2
            and len(receiver.keys("b")) >= 2
        )
    )

    assert receiver.keys("a-all") == [a1.alert_id, a2.alert_id, future["alert_id"], a3.alert_id]
    assert receiver.received("a-all")[2].body == future_value
    assert receiver.keys("a-cap") == [a2.alert_id, a3.alert_id]
    assert receiver.keys("b") == [b1.alert_id, b2.alert_id]
    for name in ("a-all", "a-cap", "b"):
        for r in receiver.received(name):
            assert r.signed, (name, r.headers)
            assert r.headers["Content-Type"] == "application/json"
            assert r.headers["Caretally-Attempt"] == "1"
            assert r.alert["org_id"] == ("org-b" if name == "b" else "org-a")
            assert r.alert["alert_id"] == r.headers["Idempotency-Key"]
    first = receiver.received("a-all")[0]
    assert first.body == alert_value(a1)  # the alert exactly as on the topic
    assert first.headers["Caretally-Webhook-Id"] == hook_a
    assert receiver.received("seed") == []
    (dead,) = [r for r in pipeline.records(pipeline.topics.deadletter) if r.value == not_an_alert]
    reason = dict(dead.headers)["reason"].decode()
    assert reason == "webhooks: not a care.alerts.v1 alert (alert_id: missing)"


def test_failed_and_timed_out_attempts_are_retried_until_one_succeeds(
    pipeline: Pipeline, receiver: Receiver
) -> None:
    receiver.set("flaky", "ok", ["fail", "slow"])  # 500, then no answer in time, then 200
    hook = pipeline.hook("flaky", "org-f")
    alert = pipeline.alert("org-f", "documentation_gap")
    eventually(lambda: receiver.keys("flaky") == [alert.alert_id])

    tries = receiver.received("flaky")
    assert [r.answer for r in tries] == ["fail", "slow", "ok"]
    assert [r.headers["Caretally-Attempt"] for r in tries] == ["1", "2", "3"]
    assert all(r.signed and r.headers["Idempotency-Key"] == alert.alert_id for r in tries)
    assert len({r.body for r in tries}) == 1
    items, _ = pipeline.parked()
    assert [p for p in items if p.webhook_id == hook] == []


def test_a_dead_receiver_is_parked_and_replayed_once_it_recovers(
    pipeline: Pipeline, receiver: Receiver
) -> None:
    receiver.set("dead", "fail")
    receiver.set("gone", "fail")
    dead = pipeline.hook("dead", "org-d")
    gone = pipeline.hook("gone", "org-d")
    pipeline.hook("live", "org-d")
    d1 = pipeline.alert("org-d", "threshold_crossed")
    d2 = pipeline.alert("org-d", "late_activity")
    eventually(lambda: receiver.keys("live") == [d1.alert_id, d2.alert_id])

    def parked_for(hook: str) -> list[parked.Parked]:
        return [p for p in pipeline.parked()[0] if p.webhook_id == hook]

    eventually(lambda: len(parked_for(dead)) == 2 and len(parked_for(gone)) == 2)
    first, second = parked_for(dead)
    assert [first.alert_id, second.alert_id] == [d1.alert_id, d2.alert_id]
    assert first.alert == orjson.loads(alert_value(d1)) and first.org_id == "org-d"
    assert (first.attempts, first.last_status, first.last_error) == (3, 500, "HTTP 500")
    assert first.first_attempt_at and first.last_attempt_at
    assert first.first_attempt_at < first.last_attempt_at
    assert first.source is not None and first.source["topic"] == pipeline.topics.alerts
    # its circuit is open: the next alerts are parked without an attempt
    assert second.attempts == 0 and second.first_attempt_at is None
    assert second.last_error.startswith("not attempted: the circuit is open")
    assert receiver.keys("dead", "fail") == [d1.alert_id] * 3

    # removing a webhook takes effect without a restart
    remove_webhook(pipeline.registry, gone)
    d3 = pipeline.alert("org-d", "overlap")
    eventually(lambda: receiver.keys("live")[-1:] == [d3.alert_id])
    d4 = pipeline.alert("org-d", "overlap")
    eventually(lambda: receiver.keys("live")[-1:] == [d4.alert_id])
    assert d3.alert_id not in receiver.keys("gone", "fail")
    eventually(lambda: len(parked_for(dead)) == 4)  # parked beside the live deliveries
    assert len(parked_for(gone)) == 2
    # the circuit outlives a batch: no attempt for d3, d4 (the cool-down is 60 s)
    assert [p.attempts for p in parked_for(dead)] == [3, 0, 0, 0]
    assert receiver.keys("dead", "fail") == [d1.alert_id] * 3

    # the running `deliver` counts what the receiver saw and what it parked (the counters
    # follow the receiver's answers by a moment: wait until they agree, then compare)
    def expected() -> dict[tuple[str, str], float]:
        got = [r for name in pipeline.names for r in receiver.received(name)]
        items, _ = pipeline.parked()
        answered = {a: float(sum(r.answer == a for r in got)) for a in ("ok", "fail", "slow")}
        return {
            ("caretally_webhook_deliveries_total", "delivered"): answered["ok"],
            ("caretally_webhook_deliveries_total", "parked"): float(len(items)),
            ("caretally_webhook_deliveries_total", "dead_lettered"): float(
                len(pipeline.records(pipeline.topics.deadletter))
            ),
            ("caretally_webhook_attempts_total", "ok"): answered["ok"],
            ("caretally_webhook_attempts_total", "http_error"): answered["fail"],
            ("caretally_webhook_attempts_total", "timeout"): answered["slow"],
            ("caretally_webhook_attempts_total", "connection_error"): 0.0,
            ("caretally_webhook_attempts_total", "refused_by_circuit"): float(
                sum(p.attempts == 0 for p in items)
            ),
            ("caretally_webhook_delivery_seconds_count", ""): answered["ok"],
            ("caretally_webhook_open_circuits", ""): 1.0,  # dead's; gone is no longer registered
        }

    def observed() -> dict[tuple[str, str], float]:
        samples = scrape(pipeline.web_port)
        return {k: samples.get(k, -1.0) for k in expected()}

    eventually(lambda: observed() == expected(), timeout=10)
    assert observed() == expected()
    assert observed()["caretally_webhook_deliveries_total", "parked"] >= 6
    assert scrape(pipeline.web_port)["caretally_webhook_batches_committed_total", ""] >= 1
    status, body = get(pipeline.web_port, "/readyz")
    assert (status, orjson.loads(body)["ready"]) == (200, True)
    assert get(pipeline.web_port, "/healthz")[0] == 200

    # replay while the receiver is still down: parked again, exit 1
    code, out, err = pipeline.replay("--org", "org-d")
    assert code == 1, err
    assert out.strip() == "delivered 0, still failing 4 (parked again), skipped 2, already done 0"
    assert f"skipped 2 parked deliveries of webhook {gone}: it is no longer registered" in err

    # parked records that name this webhook: the alert's own org and id decide, never
    # the record's (another org's alert is skipped; an alert of org-d goes with its id)
    template = parked_for(dead)[0]
    other = orjson.loads(alert_value(pipeline.alert("org-x", "overlap")))
    own = orjson.loads(alert_value(d1)) | {"alert_id": "alert-own-id"}
    forged = replace(template, parked_id="forged-1", alert=other, alert_id="x")
    renamed = replace(template, parked_id="forged-2", alert=own, alert_id="record-id")
    for item in (forged, renamed):
        key, value, headers = parked.record(item)
        pipeline.producer.send(
            pipeline.topics.webhooks_parked, key=key, value=value, headers=headers
        )
    pipeline.producer.flush()

    receiver.set("dead", "ok")
    code, out, err = pipeline.replay("--webhook", dead, "--format", "json")
    assert code == 0, err
    assert orjson.loads(out) == {
        "delivered": 5,
        "still_failing": 0,
        "skipped": 1,
        "already_done": 4,
    }
    assert f"skipped parked delivery forged-1: its alert is not of the org of webhook {dead}" in err
    replayed = [r for r in receiver.received("dead") if r.answer == "ok"]
    assert [r.headers["Idempotency-Key"] for r in replayed] == [
        d1.alert_id,
        d2.alert_id,
        d3.alert_id,
        d4.alert_id,
        "alert-own-id",
    ]
    assert all(r.signed for r in replayed)
    assert all(r.alert["org_id"] == "org-d" for r in replayed)

    # nothing is sent twice: every parked delivery of the webhook is now resolved
    code, out, err = pipeline.replay("--webhook", dead)
    assert code == 0, err
    assert out.strip() == "delivered 0, still failing 0 (parked again), skipped 1, already done 9"
    assert len(receiver.keys("dead")) == 5
    items, resolved = pipeline.parked()
    assert {p.parked_id for p in items if p.webhook_id == dead} - resolved == {"forged-1"}
    assert all(p.org_id == "org-d" for p in items if p.webhook_id in (dead, gone))


def test_a_new_group_starts_at_the_end_and_a_stop_mid_batch_sends_again_what_was_not_done(
    broker: EmbeddedBroker, receiver: Receiver, tmp_path: Path
) -> None:
    topics = Topics(prefix=f"t{uuid.uuid4().hex[:10]}.")
    ensure_topics(broker.bootstrap, topics, partitions=1)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", linger_ms=0)
    p = Pipeline(broker.bootstrap, topics, tmp_path / "webhooks.json", producer, receiver)
    try:
        p.hook("s-fast", "org-s")
        p.hook("s-hold", "org-s")
        old = p.alert("org-s", "cap_reached")  # before the group's first start: never sent
        receiver.set("s-hold", "ok", ["hang"])
        log = tmp_path / "deliver.log"
        proc, _ = start_deliver(p, log, "--timeout", "30", "--web-port", "0")
        alert = p.alert("org-s", "overlap")
        # one webhook has it, the other is still answering: stop then, mid-batch
        eventually(lambda: len(receiver.received("s-hold")) == 1 and bool(receiver.keys("s-fast")))
        text = stop_deliver(proc, log)
        assert "deliveries in flight abandoned" in text

        proc, _ = start_deliver(p, log, "--web-port", "0")  # the same group: its last commit
        eventually(lambda: receiver.keys("s-hold") == [alert.alert_id])
        stop_deliver(proc, log)
    finally:
        producer.close()
    hung = receiver.received("s-hold")[0]
    assert (hung.answer, hung.headers["Idempotency-Key"]) == ("hang", alert.alert_id)
    # at least once: the unfinished alert is read again, so its other webhook gets it twice
    assert receiver.keys("s-fast") == [alert.alert_id, alert.alert_id]
    assert old.alert_id not in [r.headers["Idempotency-Key"] for r in receiver.received("s-fast")]

"""The HTTP API as tests drive it: the app served on loopback from a thread, a small
client bound to two orgs' keys, and builders of the events, views and alerts it carries."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from kafka import KafkaProducer

from streams.http.api_keys import ApiKeyStore, create_key
from streams.http.app import Server, build_app, start
from streams.kafka.broker import EmbeddedBroker
from streams.kafka.records import billing_key, event_key
from streams.kafka.topics import Topics, ensure_topics

MONTH = "2025-03"
MAX_BODY = 1024 * 1024


# --- the server under test ---------------------------------------------------------------


class ServerThread:
    """Runs the app on a free loopback port in a thread with its own event loop."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.port = 0
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="caretally-serve", daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
            server: Server = await start(self.app, "127.0.0.1", 0, shutdown_timeout=2.0)
            self.port = server.port
            self._ready.set()
            try:
                await self._stop.wait()
            finally:
                await server.close()

        try:
            asyncio.run(main())
        except BaseException as exc:
            self._error = exc
            self._ready.set()

    def __enter__(self) -> ServerThread:
        self._thread.start()
        assert self._ready.wait(30), "server did not start"
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *_: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(15)
        assert not self._thread.is_alive(), "server did not stop"


@dataclass
class Api:
    bootstrap: str
    topics: Topics
    port: int
    key_a: str
    key_b: str
    keys_path: Path
    producer: KafkaProducer

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        key: str | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
        try:
            hdrs = dict(headers or {})
            if key is not None:
                hdrs["Authorization"] = f"Bearer {key}"
            conn.request(method, path, body=body, headers=hdrs)
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def get(self, path: str, key: str | None = None) -> tuple[int, Any]:
        status, _, body = self.request("GET", path, key=key)
        return status, orjson.loads(body) if body else None

    def post(self, body: bytes, ctype: str, key: str) -> tuple[int, Any]:
        status, _, raw = self.request("POST", "/v1/events", body, {"Content-Type": ctype}, key=key)
        return status, orjson.loads(raw)

    def publish_view(
        self, view: dict[str, Any], progress: list[dict[str, Any]] | None = None
    ) -> None:
        key = billing_key(view["org_id"], view["patient_id"], view["month"])
        headers = [("progress", orjson.dumps(progress or []))]
        self.producer.send(self.topics.billing, key=key, value=orjson.dumps(view), headers=headers)
        self.producer.flush()

    def tombstone(self, org: str, patient: str, month: str) -> None:
        self.producer.send(self.topics.billing, key=billing_key(org, patient, month), value=None)
        self.producer.flush()

    def publish_alert(self, alert: dict[str, Any]) -> None:
        key = event_key(alert["org_id"], alert["patient_id"])
        self.producer.send(self.topics.alerts, key=key, value=orjson.dumps(alert))
        self.producer.flush()


@contextlib.contextmanager
def served_pipeline(broker: EmbeddedBroker, tmp_path: Path, org: str) -> Iterator[Api]:
    """The whole path behind the API: fresh topics, a ``caretally worker`` process and
    ``serve`` with one key of ``org`` (as both ``key_a`` and ``key_b``), caught up; all
    stopped on exit."""
    from streams.demo.client import WorkerProcess

    topics = Topics(prefix=f"t{uuid.uuid4().hex[:10]}.")
    ensure_topics(broker.bootstrap, topics, partitions=2)
    keys_path = tmp_path / "api-keys.json"
    _, key = create_key(keys_path, org)
    worker = WorkerProcess(
        broker.bootstrap,
        topics,
        2,
        tmp_path / "state",
        "--app-id",
        f"app-{topics.prefix}",
        log_path=tmp_path / "worker.log",
    ).start()
    app = build_app(
        broker.bootstrap, topics, ApiKeyStore(keys_path), max_body_bytes=MAX_BODY, heartbeat_s=1.0
    )
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
    try:
        with ServerThread(app) as server:
            api = Api(broker.bootstrap, topics, server.port, key, key, keys_path, producer)
            eventually(lambda: api.get("/healthz")[1]["caught_up"] is True, 30)
            yield api
    finally:
        producer.close()
        worker.stop()


def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


# --- builders ------------------------------------------------------------------------------


def activity(org: str, patient: str, n: int = 1) -> dict[str, Any]:
    return {
        "event_id": f"{org}-{patient}-e{n}",
        "type": "activity.logged",
        "schema_version": 1,
        "org_id": org,
        "patient_id": patient,
        "recorded_at": "2025-03-14T20:02:11Z",
        "source": "ehr-main",
        "data": {
            "activity_id": f"a{n}",
            "staff_id": "rn-1",
            "staff_role": "clinical_staff",
            "practitioner_id": "dr-1",
            "program": "ccm",
            "activity": "medication_review",
            "started_at": "2025-03-14T15:00:00-04:00",
            "minutes": 12,
        },
    }


def practice(org: str) -> dict[str, Any]:
    return {
        "event_id": f"{org}-practice",
        "type": "practice.configured",
        "schema_version": 1,
        "org_id": org,
        "recorded_at": "2025-03-01T00:00:00Z",
        "source": "ehr-main",
        "data": {"timezone": "America/Chicago"},
    }


def view(
    org: str,
    patient: str,
    month: str = MONTH,
    billable: list[str] | None = None,
    blocked: list[str] | None = None,
    ccm: float = 12.0,
) -> dict[str, Any]:
    return {
        "org_id": org,
        "patient_id": patient,
        "month": month,
        "minutes": {"ccm": ccm},
        "billable": [{"code": c, "units": 1} for c in billable or []],
        "blocked": [{"code": c, "units": 1, "reasons": ["consent_missing"]} for c in blocked or []],
        "flags": [],
        "estimated_payment": 60.49 if billable else 0.0,
    }


def progress(*tracks: tuple[str, int, int]) -> list[dict[str, Any]]:
    return [
        {"family": "ccm", "practitioner_id": "dr-1", "code": c, "have_s": have, "need_s": need}
        for c, have, need in tracks
    ]


def alert(org: str, patient: str, n: int, kind: str = "threshold_crossed") -> dict[str, Any]:
    return {
        "alert_id": f"{org}-{patient}-al{n}",
        "kind": kind,
        "org_id": org,
        "patient_id": patient,
        "month": MONTH,
        "code": "99490",
        "detail": "20 minutes of clinical staff time reached",
        "cause_event_id": f"ev{n}",
    }

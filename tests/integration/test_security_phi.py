"""PHI canary: distinctive patient ids sent through every entry point and every error
path, and none of them in a log line at info level or above, a dead-letter reason, an
HTTP error body, an alert's text, or what the commands print about rejected input.

Every canary contains ``CANARY``; the test also checks that each path was really taken
(the valid patients raised alerts, every bad record reached the dead-letter topic, every
bad request got its error), so it cannot pass by sending nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import http.client
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from kafka import KafkaProducer

from streams.demo.client import WorkerProcess
from streams.http.api_keys import create_key
from streams.kafka.broker import EmbeddedBroker, free_port
from streams.kafka.limits import EVENT_MAX_BYTES, PRODUCER_MAX_REQUEST_BYTES
from streams.kafka.records import header
from streams.kafka.topics import Topics, ensure_topics
from support.builders import Log
from support.pipeline import read_all

pytestmark = pytest.mark.slow

CANARY = "CANARY"
ORG, OTHER = "org-phi", "org-other"
PARTS = 2


def pid(tag: str) -> str:
    return f"QX{CANARY}{tag}"


def eventually(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


class Serve:
    """``caretally serve`` as a child process, logging at info to a file."""

    def __init__(self, bootstrap: str, topics: Topics, keys: Path, log_path: Path) -> None:
        self.port = free_port()
        self.log_path = log_path
        args = [sys.executable, "-m", "streams.cli", "serve", "--bootstrap", bootstrap]
        args += ["--topic-prefix", topics.prefix, "--port", str(self.port), "--keys", str(keys)]
        args += ["--partitions", str(PARTS), "--loglevel", "info"]
        self.proc = subprocess.Popen(
            args,
            stdout=open(log_path, "ab"),  # noqa: SIM115 (closed with the process)
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    def request(
        self, method: str, path: str, body: bytes | None = None, **headers: str
    ) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def raw(self, data: bytes) -> bytes:
        """Send bytes as they are; return what came back (the connection is closed)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=30) as s:
            s.sendall(data)
            chunks = []
            with contextlib.suppress(OSError):
                while chunk := s.recv(65536):
                    chunks.append(chunk)
            return b"".join(chunks)

    def healthy(self) -> bool:
        try:
            status, body = self.request("GET", "/healthz")
        except OSError:
            return False
        return status == 200 and orjson.loads(body).get("caught_up") is True

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture
def pipeline(broker: EmbeddedBroker, topics: Topics, tmp_path: Path) -> Iterator[dict[str, Any]]:
    ensure_topics(broker.bootstrap, topics, PARTS)
    keys = tmp_path / "keys.json"
    _, key = create_key(keys, ORG)
    worker = WorkerProcess(
        broker.bootstrap,
        topics,
        PARTS,
        tmp_path / "state",
        "--app-id",
        f"app-{topics.prefix}",
        "--loglevel",
        "info",
        log_path=tmp_path / "worker.log",
    ).start()
    serve = Serve(broker.bootstrap, topics, keys, tmp_path / "serve.log")
    try:
        eventually(serve.healthy, 60, "serve to catch up")
        yield {"serve": serve, "worker": worker, "key": key}
    finally:
        serve.stop()
        worker.stop()


def valid_log() -> Log:
    """Patients whose activities raise alerts of several kinds (crossed, overlap, revoked)."""
    log = Log(org=ORG, recorded_at="2025-03-20T12:00:00Z")
    for tag in ("ok1", "ok2"):
        log.documented(pid(tag))
    log.activity(pid("ok1"), "a1", "2025-03-03T10:00:00-05:00", 12)
    log.activity(pid("ok1"), "a2", "2025-03-10T10:00:00-05:00", 13)  # 99490 crosses
    log.activity(pid("ok1"), "a3", "2025-03-10T10:00:00-05:00", 13)  # the same minutes again
    log.activity(pid("ok2"), "b1", "2025-03-10T10:05:00-05:00", 25)  # RN-1 on two patients
    log.void(pid("ok2"), "b1")  # 99490 revoked
    return log


def event(patient: str, event_id: str, **data: Any) -> dict[str, Any]:
    body = {
        "activity_id": "x1",
        "staff_id": "RN-1",
        "staff_role": "clinical_staff",
        "practitioner_id": "DR-1",
        "program": "ccm",
        "activity": "care_coordination",
        "started_at": "2025-03-04T10:00:00-05:00",
        "minutes": 5,
    }
    return {
        "event_id": event_id,
        "type": "activity.logged",
        "schema_version": 1,
        "org_id": ORG,
        "patient_id": patient,
        "recorded_at": "2025-03-20T12:00:00Z",
        "source": "test",
        "data": body | data,
    }


def bad_records() -> list[bytes]:
    """Records no entry point may accept, each carrying a canary patient id."""
    good = orjson.dumps(event(pid("dup"), "phi-dup"))
    return [
        orjson.dumps(event(pid("schema"), "phi-s1", staff_role=pid("role"))),
        orjson.dumps(event(pid("minutes"), "phi-s2", minutes=pid("min"))),
        orjson.dumps(event(f"{pid('colon')}:x", "phi-s3")),
        orjson.dumps(event(f"{pid('ctl')}\x1f", "phi-s4")),
        orjson.dumps(event(pid("org"), "phi-s5") | {"org_id": f"{ORG}/{pid('org2')}"}),
        b'{"patient_id": "' + pid("json").encode() + b'", "event_id": ',
        b"not json " + pid("text").encode(),
        pid("latin").encode() + b"\xff\xfe",
        good.replace(b'"patient_id":"', b'"patient_id":"x","patient_id":"', 1),
        good[:-1] + b" " * (EVENT_MAX_BYTES + 10) + b"}",
    ]


def fhir_bundle() -> dict[str, Any]:
    """A FHIR batch whose entries cannot be mapped, each carrying a canary patient id where a
    careless reason would repeat it (references, identifiers, unknown element names)."""
    patient_urn = "urn:uuid:0b7d5c1e-2f4a-4c39-9e8d-6a5b4c3d2e1f"

    def encounter(rid: str, subject: str, **more: Any) -> dict[str, Any]:
        resource = {
            "resourceType": "Encounter",
            "id": rid,
            "meta": {"versionId": "1", "lastUpdated": "2025-03-20T12:00:00Z"},
            "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "VR"},
            "subject": {"reference": subject},
        }
        return {"resource": resource | more}

    return {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {
                "fullUrl": patient_urn,
                "resource": {
                    "resourceType": "Patient",
                    "identifier": [{"system": "urn:oid:1.2.3", "value": pid("fhirpat")}],
                },
            },
            encounter("e1", patient_urn),  # no period, no program: a problem
            encounter("e2", f"Patient/{pid('fhirref')}"),
            encounter("e3", f"{pid('fhirseg')}/John"),
            encounter("e4", f"Patient/{pid('fhirkey')}", **{f"x{pid('key')}": 1}),
            {
                "resource": {
                    "resourceType": "Condition",
                    "id": "c1",
                    "subject": {"reference": f"Patient/{pid('fhircond')}"},
                    "code": {"coding": [{"system": "http://snomed.info/sct", "code": "44054006"}]},
                }
            },
        ],
    }


def test_no_patient_id_leaks_from_any_entry_point(
    pipeline: dict[str, Any], broker: EmbeddedBroker, topics: Topics, tmp_path: Path
) -> None:
    serve: Serve = pipeline["serve"]
    auth = {"Authorization": f"Bearer {pipeline['key']}"}
    shown: list[tuple[str, bytes]] = []  # (where, what a person or program was told)
    accepted: list[str] = []  # bad input some entry point took

    # 1. valid events over HTTP: billing and alerts for the canary patients
    log = valid_log()
    body = b"\n".join(orjson.dumps(e) for e in log.raw)
    status, reply = serve.request(
        "POST", "/v1/events", body, **auth, **{"Content-Type": "application/x-ndjson"}
    )
    assert status == 202, reply

    # 2. every kind of bad input over HTTP, one request each
    bad = bad_records()
    for raw in bad:
        status, reply = serve.request(
            "POST", "/v1/events", raw, **auth, **{"Content-Type": "application/json"}
        )
        if status < 400:
            accepted.append(f"POST {raw[:60]!r}: {status}")
        shown.append((f"POST {raw[:40]!r}", reply))
    other = orjson.dumps(event(pid("tenant"), "phi-t1") | {"org_id": OTHER})
    status, reply = serve.request(
        "POST", "/v1/events", other, **auth, **{"Content-Type": "application/json"}
    )
    assert status >= 400
    shown.append(("POST another org", reply))
    for path in (
        f"/v1/orgs/{ORG}/patients/{pid('unknown')}/months/2025-03",
        f"/v1/orgs/{ORG}/patients/{pid('badmonth')}/months/2025-13",
        f"/v1/orgs/{OTHER}/patients/{pid('other')}/months/2025-03",
        f"/v1/orgs/{ORG}/worklist?month={pid('wl')}",
    ):
        status, reply = serve.request("GET", path, **auth)
        assert status >= 400, (path, status)
        shown.append((f"GET {path}", reply))
    status, reply = serve.request("GET", f"/v1/orgs/{ORG}/patients/{pid('nokey')}/months/2025-03")
    assert status == 401
    shown.append(("GET without a key", reply))
    long_line = f"GET /v1/orgs/{ORG}/patients/{pid('long')}{'x' * 20000}/months/2025-03 HTTP/1.1"
    shown.append(("long request line", serve.raw(long_line.encode() + b"\r\nHost: x\r\n\r\n")))
    long_header = f"X-Patient: {pid('header')}{'y' * 20000}"
    request = f"GET /healthz HTTP/1.1\r\nHost: x\r\n{long_header}\r\n\r\n"
    shown.append(("long header", serve.raw(request.encode())))

    # FHIR: a batch of entries that cannot be mapped (answered per entry, dead-lettered)
    bundle = orjson.dumps(fhir_bundle())
    fhir_type = {"Content-Type": "application/fhir+json"}
    status, reply = serve.request("POST", "/fhir/r4", bundle, **auth, **fhir_type)
    assert status == 200 and b"400 Bad Request" in reply, reply
    shown.append(("POST /fhir/r4", reply))

    # 3. the same bad records straight onto the ingress topic, past every client check
    producer = KafkaProducer(
        bootstrap_servers=broker.bootstrap, max_request_size=PRODUCER_MAX_REQUEST_BYTES
    )
    valid = orjson.dumps(event(pid("conflict"), "phi-c1"))
    conflicting = orjson.dumps(event(pid("conflict"), "phi-c1", minutes=6))
    direct = [*bad, valid, conflicting]
    for raw in direct:
        producer.send(topics.ingress, value=raw, key=b"k").get(30)
    producer.close()

    # 4. the command line: ingest (NDJSON, gzip, CSV), replay and audit
    ndjson = tmp_path / "bad.ndjson"
    ndjson.write_bytes(b"\n".join(r for r in bad if len(r) < 10_000) + b"\n")
    gz = tmp_path / "bad.ndjson.gz"
    gz.write_bytes(gzip.compress(ndjson.read_bytes()))
    csv = tmp_path / "bad.csv"
    csv.write_text(
        "event_id,type,org_id,patient_id,recorded_at,source,data.activity_id,data.staff_id,"
        "data.staff_role,data.practitioner_id,data.program,data.activity,data.started_at,"
        "data.minutes\n"
        f"c1,activity.logged,{ORG},{pid('csv1')},2025-03-20T12:00:00Z,t,a,RN-1,{pid('csv2')},"
        f"DR-1,ccm,call,2025-03-04T10:00:00-05:00,{pid('csv3')}\n"
        f"c2,activity.logged,{ORG},{pid('csv4')},not-a-time,t,a,RN-1,clinical_staff,"
        f"DR-1,{pid('csv5')},call,{pid('csv6')},5\n"
        f"c3,activity.logged,{ORG},{pid('csv7')}\n"
    )
    fhir_file = tmp_path / "bad-fhir.json"
    fhir_file.write_bytes(bundle)
    audited = ["--patient", pid("audit")]
    where = ["--bootstrap", broker.bootstrap, "--topic-prefix", topics.prefix]
    commands = [
        ["ingest", "--input", str(ndjson), *where, "--partitions", str(PARTS)],
        ["ingest", "--input", str(gz), *where, "--partitions", str(PARTS)],
        ["ingest", "--input", str(csv), *where, "--partitions", str(PARTS)],
        ["ingest", "--input", str(fhir_file), "--org", ORG, *where, "--partitions", str(PARTS)],
        ["convert", "--from", "fhir", str(fhir_file), "--org", ORG],
        ["replay", "--input", str(ndjson)],
        ["audit", "--input", str(ndjson), "--org", ORG, "--month", "2025-03", *audited],
    ]
    for args in commands:
        done = subprocess.run(
            [sys.executable, "-m", "streams.cli", *args],
            capture_output=True,
            timeout=120,
            env={**os.environ, "NO_COLOR": "1"},
        )
        assert done.returncode != 0, (args, done.stdout, done.stderr)  # each saw bad input
        shown.append((" ".join(args[:2]), done.stdout + done.stderr))

    # what reached Kafka: every bad direct record dead-lettered, alerts for the valid ones
    def alerts() -> list[dict[str, Any]]:
        return [
            orjson.loads(r.value)
            for r in asyncio.run(read_all(broker.bootstrap, topics.alerts, PARTS))
        ]

    def dead() -> list[Any]:
        return asyncio.run(read_all(broker.bootstrap, topics.deadletter, 1))

    eventually(
        lambda: {"threshold_crossed", "threshold_revoked"} <= {a["kind"] for a in alerts()},
        90,
        "the valid patients' alerts",
    )
    deadline = time.monotonic() + 90  # waited for, but checked last: leaks are reported first
    while len(dead_letters := dead()) < len(direct) - 1 and time.monotonic() < deadline:
        time.sleep(0.5)
    origins = {header(r.headers, "source_topic") for r in dead_letters}
    fhir_origins = {b"http:fhir", b"ingest:bad-fhir.json"}
    deadline = time.monotonic() + 30
    while not fhir_origins <= origins and time.monotonic() < deadline:
        time.sleep(0.5)
        dead_letters = dead()
        origins = {header(r.headers, "source_topic") for r in dead_letters}
    assert fhir_origins <= origins, origins  # the unmapped FHIR entries were dead-lettered
    for record in dead_letters:
        reason = header(record.headers, "reason") or b""
        assert reason, record.headers
        shown.append(("dead-letter reason", reason))
    for alert in alerts():
        if alert["patient_id"].startswith(f"QX{CANARY}"):
            assert alert["detail"], alert
        shown.append((f"alert {alert['kind']}", alert["detail"].encode()))

    serve.stop()
    pipeline["worker"].stop()
    for name in ("serve.log", "worker.log"):
        for line in (tmp_path / name).read_bytes().splitlines():
            if b" DEBUG " not in line:
                shown.append((name, line))

    leaks = [(where, what[:300]) for where, what in shown if CANARY.encode() in what]
    assert not leaks, leaks
    assert not accepted, accepted
    assert len(dead_letters) >= len(direct) - 1, "a bad record reached no dead letter"

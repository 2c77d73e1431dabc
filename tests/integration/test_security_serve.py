"""Security regressions of ``caretally serve`` (issue #9, items 7, 8 and part of 13).

Every test runs the real command as a subprocess on 127.0.0.1 against the session's
broker, and talks to it over real sockets: slow clients cannot starve it (head and body
timeouts, a connection cap that fits the open-file limit), a revoked key's alert stream
ends, and no request line, header or path reaches its log or its error bodies.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import resource
import selectors
import signal
import socket
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
from click.testing import CliRunner
from kafka import KafkaProducer

from streams.cli.main import cli
from streams.http.api_keys import create_key
from streams.kafka.broker import EmbeddedBroker
from streams.kafka.records import event_key
from streams.kafka.topics import Topics

PATIENT = "P-PHI-7731"  # must never show up in the log or an error body
READY = "caretally serve: http://127.0.0.1:"


class ServeProcess:
    """``caretally serve`` on a free loopback port; stderr (its log) kept line by line."""

    def __init__(
        self,
        broker: EmbeddedBroker,
        keys: Path,
        prefix: str,
        env: dict[str, str] | None = None,
        max_files: int | None = None,
    ) -> None:
        self.lines: list[str] = []
        self.port = 0

        def limit_files() -> None:  # runs in the child, before exec
            if max_files is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (max_files, max_files))

        command = [sys.executable, "-m", "streams.cli", "serve", "--port", "0"]
        command += ["--bootstrap", broker.bootstrap, "--keys", str(keys)]
        command += ["--topic-prefix", prefix, "--partitions", "2"]
        self.proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env={**os.environ, **(env or {})},
            preexec_fn=limit_files,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            self.lines.append(raw.decode(errors="replace"))

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def wait_ready(self, timeout: float = 60.0) -> ServeProcess:
        deadline = time.monotonic() + timeout
        while not self.port:
            for line in list(self.lines):
                if line.startswith(READY):
                    self.port = int(line[len(READY) :].split(" ")[0].rstrip(";"))
            assert self.proc.poll() is None, f"serve exited:\n{self.log}"
            assert time.monotonic() < deadline, f"serve did not start:\n{self.log}"
            time.sleep(0.05)
        while (
            self.get("/healthz")[0] != 200 or not orjson.loads(self.get("/healthz")[1])["caught_up"]
        ):
            assert time.monotonic() < deadline, "serve did not catch up"
            time.sleep(0.1)
        return self

    def get(self, path: str, key: str | None = None, timeout: float = 10.0) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            conn.request("GET", path, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._reader.join(5)


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, str, str]:
    """A key file with one key of org-a: (path, key id, key)."""
    path = tmp_path / "api-keys.json"
    record, key = create_key(path, "org-a")
    return path, record.key_id, key


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}."


@contextlib.contextmanager
def serving(
    broker: EmbeddedBroker,
    keys: tuple[Path, str, str],
    prefix: str,
    env: dict[str, str] | None = None,
    max_files: int | None = None,
) -> Iterator[ServeProcess]:
    server = ServeProcess(broker, keys[0], prefix, env, max_files)
    try:
        yield server.wait_ready()
    finally:
        server.stop()


def raw_exchange(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Send ``data`` and read until the server closes (or ``timeout``)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks: list[bytes] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


# --- item 7: slow clients cannot starve the server -----------------------------------------


class SlowClients:
    """``n`` connections that send a partial request head, then one byte every 0.3 s."""

    def __init__(self, port: int, n: int) -> None:
        self.open: dict[socket.socket, float] = {}  # socket -> when it connected
        self.cut: dict[socket.socket, float] = {}  # socket -> when the server closed it
        self.answers: list[bytes] = []
        sel = selectors.DefaultSelector()
        for _ in range(n):
            sock = socket.socket()
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", port))
            sel.register(sock, selectors.EVENT_WRITE)
        deadline = time.monotonic() + 5
        while sel.get_map() and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=0.2):
                sock = key.fileobj  # type: ignore[assignment]
                sel.unregister(sock)
                if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                    self.open[sock] = time.monotonic()
                    self._send(sock, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                else:
                    sock.close()
        for key in list(sel.get_map().values()):  # never connected: the backlog was full
            sel.unregister(key.fileobj)
            key.fileobj.close()  # type: ignore[union-attr]
        sel.close()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._dribble, daemon=True)
        self._thread.start()

    def _send(self, sock: socket.socket, data: bytes) -> None:
        try:
            sock.send(data)
        except BlockingIOError:
            pass
        except OSError:
            self._mark_cut(sock)

    def _mark_cut(self, sock: socket.socket) -> None:
        if sock in self.open and sock not in self.cut:
            self.cut[sock] = time.monotonic()

    def _poll(self, sock: socket.socket) -> None:
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            self._mark_cut(sock)
            return
        if data:
            self.answers.append(data)
        else:
            self._mark_cut(sock)

    def _dribble(self) -> None:
        deadline = time.monotonic() + 60  # bounded, whatever happens
        while not self._stop.wait(0.3) and time.monotonic() < deadline:
            for sock in list(self.open):
                if sock not in self.cut:
                    self._poll(sock)
                if sock not in self.cut:
                    self._send(sock, b"a")

    def all_cut_within(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if len(self.cut) == len(self.open):
                return True
            time.sleep(0.2)
        return False

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for sock in self.open:
            sock.close()


def test_slow_heads_cannot_starve_legitimate_requests(
    broker: EmbeddedBroker, keys: tuple[Path, str, str], prefix: str
) -> None:
    """300 slowloris connections against a server allowed 256 open files (a common default
    limit): 5 ordinary requests still succeed at once, and every slow one is cut."""
    env = {"CARETALLY_SERVE_HEADER_TIMEOUT": "2"}
    with serving(broker, keys, prefix, env, max_files=256) as server:
        slow = SlowClients(server.port, 300)
        try:
            assert len(slow.open) >= 250, "the slow clients could not even connect"
            time.sleep(1.0)  # they are dribbling now
            started, ok = time.monotonic(), 0
            for _ in range(5):
                try:
                    status, _ = server.get("/healthz", timeout=5.0)
                    ok += status == 200
                except OSError:
                    pass
            assert ok == 5, f"only {ok} of 5 legitimate requests succeeded"
            assert time.monotonic() - started < 25  # generous: each takes milliseconds
            assert slow.all_cut_within(20), (
                f"{len(slow.open) - len(slow.cut)} slow connections still open"
            )
            assert any(b" 408 " in a for a in slow.answers)  # cut by the header timeout
        finally:
            slow.close()


def test_a_slow_body_is_cut_with_408(
    broker: EmbeddedBroker, keys: tuple[Path, str, str], prefix: str
) -> None:
    env = {"CARETALLY_SERVE_BODY_TIMEOUT": "2"}
    with serving(broker, keys, prefix, env) as server:
        head = (
            "POST /v1/events HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {keys[2]}\r\n"
            "Content-Type: application/x-ndjson\r\nContent-Length: 10000\r\n\r\n"
        ).encode()
        with socket.create_connection(("127.0.0.1", server.port), timeout=0.3) as sock:
            sock.sendall(head + b'{"event_id": ')
            started, answer = time.monotonic(), b""
            while time.monotonic() - started < 15:  # bounded
                try:
                    sock.send(b" ")
                    chunk = sock.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    break
                if not chunk:
                    break
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
            assert b'{"error":"request timeout"}' in answer


def test_at_the_cap_streams_stay_new_connections_get_503_and_idle_ones_close(
    broker: EmbeddedBroker, keys: tuple[Path, str, str], prefix: str
) -> None:
    env = {"CARETALLY_SERVE_MAX_CONNECTIONS": "16", "CARETALLY_SERVE_IDLE_TIMEOUT": "1.5"}
    with serving(broker, keys, prefix, env) as server, Producer(broker, prefix) as producer:
        streams = []
        try:
            for _ in range(16):  # alert streams are requests in progress: never evicted
                conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
                conn.request("GET", "/v1/orgs/org-a/alerts", headers={"X-API-Key": keys[2]})
                streams.append((conn, conn.getresponse()))
                assert streams[-1][1].status == 200
            answer = raw_exchange(server.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 503 "), answer[:200]
            streams.pop()[0].close()
            deadline = time.monotonic() + 10
            while True:  # once the server saw that stream end, an idle connection fits
                with socket.create_connection(("127.0.0.1", server.port), timeout=10) as idle:
                    first = idle.recv(1)  # b"": closed for idling; b"H": the 503 answer
                if first == b"" or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            assert first == b"" and time.monotonic() < deadline
            producer.publish(1)
            for _, resp in streams:  # still open, still live
                while not resp.readline().startswith(b"id: org-a-"):
                    pass
        finally:
            for conn, _ in streams:
                conn.close()


# --- item 8: a revoked key's alert stream ends ---------------------------------------------


def alert(n: int) -> dict[str, Any]:
    return {
        "alert_id": f"org-a-{PATIENT}-rev{n}",
        "kind": "threshold_crossed",
        "org_id": "org-a",
        "patient_id": PATIENT,
        "month": "2025-03",
        "code": "99490",
        "detail": "20 minutes of clinical staff time reached",
        "cause_event_id": f"ev{n}",
    }


class Producer:
    """Publishes org-a alerts to the alerts topic, as the worker would."""

    def __init__(self, broker: EmbeddedBroker, prefix: str) -> None:
        self.topic = Topics(prefix=prefix).alerts
        self.producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", linger_ms=0)

    def publish(self, n: int) -> None:
        value = orjson.dumps(alert(n))
        self.producer.send(self.topic, key=event_key("org-a", PATIENT), value=value)
        self.producer.flush()

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, *_: object) -> None:
        self.producer.close()


def test_a_revoked_keys_alert_stream_ends_and_gets_nothing_more(
    broker: EmbeddedBroker, keys: tuple[Path, str, str], prefix: str
) -> None:
    with Producer(broker, prefix) as producer:
        publish = producer.publish
        with serving(broker, keys, prefix) as server:
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
            conn.request("GET", "/v1/orgs/org-a/alerts", headers={"X-API-Key": keys[2]})
            resp = conn.getresponse()
            assert resp.status == 200
            try:
                publish(1)
                while not resp.readline().startswith(b"id: org-a-"):
                    pass  # the stream is live: the first alert arrived
                result = CliRunner().invoke(
                    cli, ["keys", "revoke", keys[1], "--keys", str(keys[0])]
                )
                assert result.exit_code == 0, result.output
                for n in range(2, 6):
                    publish(n)
                after: list[bytes] = []
                ended, deadline = False, time.monotonic() + 15
                while time.monotonic() < deadline:
                    try:
                        line = resp.readline()
                    except TimeoutError:
                        break
                    if not line:
                        ended = True
                        break
                    after.append(line)
                assert not [x for x in after if x.startswith(b"id:")], after
                assert ended, "the stream of a revoked key stayed open"
                assert b": api key revoked; stream closed\n" in after
                assert server.get("/v1/orgs/org-a/worklist?month=2025-03", keys[2])[0] == 401
            finally:
                conn.close()


# --- part of item 13: no request line, header or path in the log --------------------------


def test_malformed_requests_leave_no_patient_id_in_log_or_answer(
    broker: EmbeddedBroker, keys: tuple[Path, str, str], prefix: str
) -> None:
    with serving(broker, keys, prefix) as server:
        long_line = (
            f"GET /v1/orgs/org-a/patients/{PATIENT}/months/2025-03?pad={'a' * 9000} HTTP/1.1"
            "\r\nHost: x\r\n\r\n"
        )
        long_header = f"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Note: {PATIENT}{'b' * 9000}\r\n\r\n"
        bad_target = f"GET /v1/orgs/org-a/patients/{PATIENT}\x01/months HTTP/1.1\r\n\r\n"
        bad_header = f"GET /healthz HTTP/1.1\r\nHost: x\r\nX-{PATIENT} bad: 1\r\n\r\n"
        answers = [
            raw_exchange(server.port, req.encode())
            for req in (long_line, long_header, bad_target, bad_header)
        ]
        status, body = server.get(f"/v1/orgs/org-a/patients/{PATIENT}/months/2025-03", keys[2])
        server.stop()  # flushes and ends the log
        log = server.log
        leaked = [line[:300] for line in server.lines if PATIENT in line]
        assert not leaked, leaked
        assert "GET /v1/orgs/{org}/patients/{patient}/months/{month} 404" in log
        assert status == 404 and PATIENT.encode() not in body
        for answer in answers:  # nor in the error answers
            assert re.match(rb"HTTP/1\.[01] 4\d\d ", answer), answer[:200]
            assert PATIENT.encode() not in answer, answer[:300]

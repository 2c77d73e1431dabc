"""``caretally serve`` (the HTTP API) and ``caretally keys`` (its org API keys)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from streams.cli.exits import EXIT_INTERRUPTED, fail
from streams.cli.kafka_options import KafkaOptions, connect, kafka_options
from streams.cli.options import (
    RuleBooks,
    claims_dir_option,
    format_option,
    log_format_option,
    loglevel_option,
    org_option,
    partitions_option,
    rules_option,
)
from streams.cli.output import echo_columns
from streams.http.rate_limit import DEFAULT_EVENTS_PER_MINUTE, DEFAULT_PRACTICE_EVENTS_PER_MINUTE
from streams.kafka.topics import DEFAULT_PARTITIONS
from streams.web.config import SESSION_IDLE_S, SESSION_MAX_S

MIB = 1024 * 1024
SHUTDOWN_S = 1.0
"""On SIGTERM, in-flight requests get this long to finish and as long again once cancelled
(aiohttp's two waits), then the Kafka clients up to 2 s: under 5 s, broker up or down."""

_keys_option = click.option(
    "--keys",
    "keys_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    metavar="FILE",
    help="API key file [default: $CARETALLY_API_KEYS, else .caretally/api-keys.json].",
)


@click.command(short_help="Run the HTTP API: ingest events, billing queries, live alerts.")
@kafka_options
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    metavar="ADDRESS",
    help="Address to listen on.",
)
@click.option(
    "--port",
    default=8080,
    show_default=True,
    type=click.IntRange(0, 65535),
    metavar="PORT",
    help="TCP port.",
)
@_keys_option
@click.option(
    "--max-body-bytes",
    default=5 * MIB,
    show_default=True,
    type=click.IntRange(min=1024),
    metavar="BYTES",
    help="Largest POST /v1/events body; bigger ones get 413.",
)
@click.option(
    "--header-timeout",
    envvar="CARETALLY_SERVE_HEADER_TIMEOUT",
    show_envvar=True,
    default=10.0,
    show_default=True,
    type=click.FloatRange(min=0.1),
    metavar="SECONDS",
    help="A request head must be complete this long after its first byte, else 408 and close.",
)
@click.option(
    "--body-timeout",
    envvar="CARETALLY_SERVE_BODY_TIMEOUT",
    show_envvar=True,
    default=60.0,
    show_default=True,
    type=click.FloatRange(min=0.1),
    metavar="SECONDS",
    help="A request body must be complete this long after its head, else 408 and close.",
)
@click.option(
    "--idle-timeout",
    envvar="CARETALLY_SERVE_IDLE_TIMEOUT",
    show_envvar=True,
    default=75.0,
    show_default=True,
    type=click.FloatRange(min=0.1),
    metavar="SECONDS",
    help="Close a connection with no request in progress after this long (keep-alive); "
    "keep it above a proxy's upstream keep-alive.",
)
@click.option(
    "--max-connections",
    envvar="CARETALLY_SERVE_MAX_CONNECTIONS",
    show_envvar=True,
    default=1000,
    show_default=True,
    type=click.IntRange(min=16),
    metavar="N",
    help="Open connections at most; at the cap a new one evicts the oldest idle or "
    "still-sending-its-head connection, else gets 503. Lowered to fit the open-file limit.",
)
@click.option(
    "--rate-limit",
    envvar="CARETALLY_SERVE_RATE_LIMIT",
    show_envvar=True,
    default=DEFAULT_EVENTS_PER_MINUTE,
    show_default=True,
    type=click.IntRange(min=1),
    metavar="EVENTS_PER_MINUTE",
    help="Events one org may POST a minute (a token bucket holding a minute's worth); "
    "beyond it 429 with Retry-After.",
)
@click.option(
    "--practice-rate-limit",
    envvar="CARETALLY_SERVE_PRACTICE_RATE_LIMIT",
    show_envvar=True,
    default=DEFAULT_PRACTICE_EVENTS_PER_MINUTE,
    show_default=True,
    type=click.IntRange(min=1),
    metavar="EVENTS_PER_MINUTE",
    help="Practice-wide events (practice.configured, month.closed) one org may POST a "
    "minute; each touches every patient of the org.",
)
@claims_dir_option(Path(".caretally/claims"))
@rules_option
@click.option(
    "--session-idle",
    envvar="CARETALLY_SERVE_SESSION_IDLE",
    show_envvar=True,
    default=SESSION_IDLE_S,
    show_default=True,
    type=click.FloatRange(min=10),
    metavar="SECONDS",
    help="A page session signs out after this long without a request (and always "
    f"{SESSION_MAX_S // 3600} hours after sign-in).",
)
@click.option(
    "--secure-cookies",
    is_flag=True,
    envvar="CARETALLY_SERVE_SECURE_COOKIES",
    show_envvar=True,
    help="Mark session cookies Secure even over plain HTTP: when TLS ends at a reverse "
    "proxy in front (over TLS they are Secure anyway).",
)
@partitions_option(DEFAULT_PARTITIONS)
@loglevel_option("info")
@log_format_option()
def serve(
    kafka: KafkaOptions,
    host: str,
    port: int,
    keys_file: Path | None,
    max_body_bytes: int,
    header_timeout: float,
    body_timeout: float,
    idle_timeout: float,
    max_connections: int,
    rate_limit: int,
    practice_rate_limit: int,
    claims_dir: Path,
    rules: RuleBooks,
    session_idle: float,
    secure_cookies: bool,
    partitions: int,
    loglevel: str,
    log_format: str,
) -> None:
    """Run the HTTP API and the pages for billing staff until Ctrl-C or SIGTERM (it stops
    within a few seconds, broker reachable or not).

    Open http://127.0.0.1:8080/ in a browser and sign in with an org's API key: the
    worklist of the month (ready to bill, near a threshold, blocked, conflicts; live),
    each patient-month's audit with "as of", month close with claim downloads (written
    to --claims-dir, priced with --rules), and the live alerts.

    \b
    POST /v1/events                                  one JSON event, or an NDJSON batch
    GET  /v1/orgs/ORG/patients/PATIENT/months/YYYY-MM  billing view of a patient-month
    GET  /v1/orgs/ORG/worklist?month=YYYY-MM         billable / blocked / in progress
    GET  /v1/orgs/ORG/alerts[?replay=N]              live alerts (Server-Sent Events)
    GET  /healthz   no key; 503 while Kafka does not answer, else 200 (warming up too)
    GET  /readyz    no key; 200 only when Kafka answers and the state has caught up
    GET  /metrics   no key; Prometheus text (no org or patient ids in labels)
    GET  /          the pages (a session cookie from signing in; never an API key)

    Every /v1/ request needs an org API key (`caretally keys create --org ORG`),
    sent as `Authorization: Bearer KEY` or `X-API-Key: KEY`; a key only reaches its
    own org. A batch is all or nothing: one invalid line (reported with its line
    number) and no event of it is written. Accepted events go to the ingress topic;
    `caretally worker` turns them into billing and alerts, which this server reads.

    Slow or idle connections are cut (--header-timeout, --body-timeout, --idle-timeout)
    and their number is capped (--max-connections); alert streams are exempt. Listen on
    loopback and put a reverse proxy (TLS, rate limits) in front before --host 0.0.0.0.

    Point a load balancer and a container healthcheck at /readyz (out of rotation while
    Kafka is away or the state is still loading); /healthz is for monitoring, with the
    detail. Keep /metrics off the public side of the proxy. Repeated warnings and errors
    (say, a Kafka client retrying a lost broker) print 3 times per 10 s, then a count.

    \b
    Examples:
      caretally keys create --org practice-17       # prints the key once
      caretally serve --port 8080
      curl -H "Authorization: Bearer $KEY" -H 'Content-Type: application/x-ndjson' \\
           --data-binary @events.ndjson http://127.0.0.1:8080/v1/events
      curl -N -H "Authorization: Bearer $KEY" \\
           'http://127.0.0.1:8080/v1/orgs/practice-17/alerts?replay=20'
    """
    import asyncio
    import logging
    import signal

    from streams.http.api_keys import ApiKeyError, ApiKeyStore, resolve_path
    from streams.http.app import Server, build_app
    from streams.http.app import serve as run_server
    from streams.http.guard import ConnectionLimits, fit_connection_cap
    from streams.http.rate_limit import OrgRateLimits
    from streams.kafka.clients import AioKafkaError
    from streams.observe.logs import configure_logging
    from streams.web.config import WebConfig

    configure_logging(loglevel, log_format)
    for noisy in ("aiokafka", "kafka"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    log = logging.getLogger("caretally.serve")

    def notice(message: str, warning: bool = False) -> None:
        """A line for the operator: as is in text, a log record in JSON (every line of
        stderr is then an object)."""
        if log_format == "json":
            log.log(logging.WARNING if warning else logging.INFO, message)
        else:
            click.echo(f"warning: {message}" if warning else message, err=True)

    kafka.settings()  # a usage error first
    path = resolve_path(keys_file)
    try:
        keys = ApiKeyStore(path)
    except ApiKeyError as exc:
        fail(str(exc))
    if len(keys) == 0:
        notice(
            f"no active API keys in {path}; every request but /healthz, /readyz and "
            "/metrics gets 401 (create one with `caretally keys create --org ORG`)",
            warning=True,
        )
    ctx = connect(kafka, partitions=partitions)
    address = ctx.settings.describe()
    pages = WebConfig(
        ctx.settings,
        ctx.topics.events,
        claims_dir,
        rules.catalog,
        session_idle_s=session_idle,
        secure_cookies=secure_cookies,
    )
    app = build_app(
        ctx.settings,
        ctx.topics,
        keys,
        max_body_bytes=max_body_bytes,
        rate_limits=OrgRateLimits(rate_limit, practice_rate_limit),
        pages=pages,
    )
    cap = fit_connection_cap(max_connections)
    if cap < max_connections:
        notice(
            f"the open-file limit leaves room for {cap} connections, "
            f"not {max_connections}; raise `ulimit -n`",
            warning=True,
        )
    limits = ConnectionLimits(header_timeout, body_timeout, idle_timeout, cap)

    def ready(server: Server) -> None:
        notice(
            f"caretally serve: http://{server.host}:{server.port} (Kafka {address}, "
            f"keys {path}, claims to {claims_dir}); pages at /; Ctrl-C to stop"
        )

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run_server(
            app, host, port, stop, on_ready=ready, limits=limits, shutdown_timeout=SHUTDOWN_S
        )

    try:
        asyncio.run(main())
    except KeyboardInterrupt:  # Ctrl-C before the signal handlers were in place
        sys.exit(EXIT_INTERRUPTED)
    except AioKafkaError as exc:
        fail(f"Kafka at {address}: {exc}")
    except OSError as exc:
        fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}")
    except RuntimeError as exc:  # e.g. a topic vanished between creation and start
        fail(str(exc))
    notice("caretally serve: stopped")


@click.group(short_help="Create, list and revoke the org API keys of `caretally serve`.")
def keys() -> None:
    """Org API keys for `caretally serve`.

    Keys are stored hashed (SHA-256) in a JSON file, mode 0600; the key itself is
    printed once, when it is created. A running server picks up changes within a
    second, so `keys revoke` needs no restart.

    \b
    Examples:
      caretally keys create --org practice-17
      caretally keys list
      caretally keys revoke 3f9a0c21
      caretally keys create --org practice-17 --keys /etc/caretally/api-keys.json
    """


@keys.command("create", short_help="Create a key for an org and print it (once).")
@org_option
@_keys_option
def keys_create(org_id: str, keys_file: Path | None) -> None:
    """Create a key that acts as the org --org; the key goes to stdout (alone, for
    scripts), notes to stderr. The org id follows the wire contract's rule for ids.

    \b
    Example:
      KEY=$(caretally keys create --org practice-17)
    """
    from streams.http.api_keys import ApiKeyError, create_key, resolve_path

    path = resolve_path(keys_file)
    try:
        record, key = create_key(path, org_id)
    except ApiKeyError as exc:
        fail(str(exc))
    click.echo(key)
    click.echo(
        f"created key {record.key_id} for org {org_id!r} in {path}; "
        "store it now: it cannot be shown again",
        err=True,
    )


@keys.command("list", short_help="List keys (id, org, prefix, created, status).")
@_keys_option
@format_option(("table", "json"), "table", "table: for the terminal; json: one object per key.")
@click.option("--json", "as_json", is_flag=True, hidden=True)  # the spelling before --format
def keys_list(keys_file: Path | None, fmt: str, as_json: bool) -> None:
    """List the keys: never the keys themselves, only their id and first characters.

    \b
    Examples:
      caretally keys list
      caretally keys list --format json
    """
    if as_json:
        click.echo("--json is deprecated: use --format json", err=True)
        fmt = "json"
    import orjson

    from streams.http.api_keys import ApiKeyError, list_keys, resolve_path

    path = resolve_path(keys_file)
    try:
        records = list_keys(path)
    except ApiKeyError as exc:
        fail(str(exc))
    if fmt == "json":
        for r in records:
            shown = {k: getattr(r, k) for k in ("key_id", "org_id", "prefix", "created_at")}
            click.echo(orjson.dumps({**shown, "revoked_at": r.revoked_at}).decode())
        return
    if not records:
        click.echo(f"no keys in {path}", err=True)
        return
    rows = [("KEY_ID", "ORG", "PREFIX", "CREATED", "STATUS")] + [
        (
            r.key_id,
            r.org_id,
            r.prefix + "…",
            r.created_at,
            "active" if r.active else f"revoked {r.revoked_at}",
        )
        for r in records
    ]
    echo_columns(rows)


@keys.command("revoke", short_help="Revoke a key by its id (see `keys list`).")
@click.argument("key_id")
@_keys_option
def keys_revoke(key_id: str, keys_file: Path | None) -> None:
    """Revoke the key KEY_ID; a running server rejects it within about a second.

    \b
    Example:
      caretally keys revoke 3f9a0c21
    """
    from streams.http.api_keys import ApiKeyError, resolve_path, revoke_key

    path = resolve_path(keys_file)
    try:
        record = revoke_key(path, key_id)
    except ApiKeyError as exc:
        fail(str(exc))
    click.echo(f"revoked key {record.key_id} of org {record.org_id!r} ({record.revoked_at})")

"""One webhook's deliveries against a real HTTP receiver on 127.0.0.1 (no broker): a URL
the client cannot use fails an attempt, never the process; the circuit parks a dead
receiver's alerts across batches until a probe succeeds; the batch deadline ends a set of
deliveries to a slow receiver with its pending ones parked."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

from streams.kafka.topics import Topics
from streams.webhooks.circuit import Circuit, State
from streams.webhooks.fanout import Job, deliver_all
from streams.webhooks.registry import Webhook
from streams.webhooks.sender import Deadline, Outcome, RetryPolicy, client_session, deliver

POLICY = RetryPolicy(attempts=3, base_delay_s=0.01, timeout_s=5.0)


@dataclass
class Server:
    """Answers ``/<name>`` with ``answers[name]``: an HTTP status, or ``slow`` (no answer
    for a minute); counts the requests per name."""

    answers: dict[str, int | str] = field(default_factory=dict)
    hits: dict[str, int] = field(default_factory=dict)
    port: int = 0

    async def handle(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        self.hits[name] = self.hits.get(name, 0) + 1
        answer = self.answers.get(name, 200)
        if answer == "slow":
            await asyncio.sleep(60)
            answer = 200
        assert isinstance(answer, int)
        return web.Response(status=answer)

    def hook(self, name: str) -> Webhook:
        url = f"http://127.0.0.1:{self.port}/{name}"
        return Webhook(f"wh_{name}", "org-a", url, None, "whsec_k", "2025-01-01T00:00:00Z")


def serve(test: Callable[[Server], Awaitable[None]]) -> None:
    """Run ``test`` with a server listening on 127.0.0.1, stopped afterwards."""

    async def main() -> None:
        server = Server()
        app = web.Application()
        app.router.add_post("/{name}", server.handle)
        runner = web.AppRunner(app, shutdown_timeout=0.1)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        server.port = runner.addresses[0][1]
        try:
            await test(server)
        finally:
            await runner.cleanup()

    asyncio.run(main())


async def run_jobs(
    hooks: list[tuple[Webhook, int]], circuit: Circuit, deadline: Deadline | None = None
) -> list[Outcome]:
    """Deliver ``count`` alerts to each webhook; the outcomes in the order they ended."""
    jobs = [
        Job((h.webhook_id, n), h, f"a{n}", h.org_id, b'{"alert_id":"a%d"}' % n)
        for h, count in hooks
        for n in range(count)
    ]
    outcomes: list[Outcome] = []

    async def on_done(job: Job, outcome: Outcome) -> None:
        outcomes.append(outcome)

    async with client_session() as session:
        await deliver_all(session, jobs, POLICY, on_done, circuit, deadline)
    return outcomes


def test_a_url_the_client_cannot_encode_is_a_failed_attempt() -> None:
    label = "a" * 70  # over the 63 characters of a DNS label: the client cannot send it
    hook = Webhook("wh_x", "org-a", f"https://{label}.example.com/", None, "whsec_k", "")

    async def main() -> Outcome:
        async with client_session() as session:
            policy = RetryPolicy(attempts=2, base_delay_s=0.0)
            return await deliver(session, hook, "a1", "org-a", b"{}", policy)

    outcome = asyncio.run(main())
    assert not outcome.delivered and outcome.attempts == 2 and outcome.status is None
    assert outcome.error.startswith("UnicodeError"), outcome.error


def test_a_dead_webhooks_circuit_stays_open_across_batches_until_a_probe_succeeds() -> None:
    now = [0.0]
    circuit = Circuit(60.0, clock=lambda: now[0])

    async def test(server: Server) -> None:
        dead, live = server.hook("dead"), server.hook("live")
        server.answers["dead"] = 500
        first = await run_jobs([(dead, 2), (live, 2)], circuit)
        by_hook = {(o.webhook_id, o.alert_id): o for o in first}
        assert by_hook["wh_dead", "a0"].attempts == 3
        assert by_hook["wh_dead", "a0"].error == "HTTP 500"
        assert by_hook["wh_dead", "a1"].attempts == 0
        assert "circuit is open" in by_hook["wh_dead", "a1"].error
        assert all(by_hook["wh_live", a].delivered for a in ("a0", "a1"))
        assert server.hits["dead"] == 3

        # the next batch, within the cool-down: parked without a request
        now[0] = 59.0
        second = await run_jobs([(dead, 2)], circuit)
        assert [o.attempts for o in second] == [0, 0] and server.hits["dead"] == 3
        assert circuit.state("wh_dead") is State.OPEN

        # after it, one alert probes (one attempt); failed, the circuit stays open
        now[0] = 61.0
        third = await run_jobs([(dead, 2)], circuit)
        assert [o.attempts for o in third] == [1, 0] and server.hits["dead"] == 4
        assert circuit.state("wh_dead") is State.OPEN

        # the receiver is back: the probe is delivered and the circuit closes
        server.answers["dead"] = 200
        now[0] = 122.0
        fourth = await run_jobs([(dead, 3)], circuit)
        assert all(o.delivered for o in fourth) and [o.attempts for o in fourth] == [1, 1, 1]
        assert circuit.state("wh_dead") is State.CLOSED

    serve(test)


def test_the_batch_deadline_parks_what_a_slow_receiver_has_not_taken() -> None:
    async def test(server: Server) -> None:
        slow, live = server.hook("slow"), server.hook("live")
        server.answers["slow"] = "slow"
        circuit = Circuit(60.0)
        outcomes = await run_jobs([(slow, 3), (live, 2)], circuit, Deadline.after(0.5))
        by_hook = {(o.webhook_id, o.alert_id): o for o in outcomes}
        assert len(outcomes) == 5
        cut = by_hook["wh_slow", "a0"]
        assert not cut.delivered and cut.attempts == 1
        assert "the batch deadline (0.5 s) was reached after 1 attempt(s)" in cut.error
        for later in ("a1", "a2"):
            o = by_hook["wh_slow", later]
            assert o.attempts == 0 and "not attempted: the batch deadline" in o.error
        assert by_hook["wh_live", "a0"].delivered and by_hook["wh_live", "a1"].delivered
        assert server.hits["slow"] == 1
        assert circuit.state("wh_slow") is State.OPEN  # it did not keep up

    serve(test)


def test_parked_deliveries_are_kept_as_long_as_the_alerts() -> None:
    settings = Topics().settings()
    parked, alerts = settings["care.webhooks.parked.v1"], settings["care.alerts.v1"]
    assert parked["retention.ms"] == alerts["retention.ms"] != "-1"

"""Scale-out on the embedded broker: several ``caretally worker`` processes of one app id
share the partitions of their group (``--role fold`` or ``--role gate``); one is killed
(SIGKILL) and the others take its partitions over. What they write together is held to
the offline fold (``caretally replay``), as in test_pipeline.

The measured times (kill to takeover, kill to the full result) are printed (``-s``);
nothing here asserts on them."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest

from schemas.events import parse_event
from streams.demo.client import Follower, WorkerProcess, produce
from streams.demo.live import expected_views
from streams.demo.synthetic import generate_events
from streams.kafka.broker import EmbeddedBroker
from streams.kafka.log_writer import practice_wide
from streams.kafka.partitioning import ingress_partition
from streams.kafka.topics import Topics
from support.pipeline import lines_of, offline_alert_ids, read_all
from support.scaleout import (
    WAIT,
    assert_each_event_once,
    assigned,
    cli_alerts,
    core_ids,
    differences,
    logs,
    member,
    overlaps,
    owned,
    probe,
    samples,
    wait_for,
)

pytestmark = pytest.mark.slow


def ready(workers: list[WorkerProcess]) -> bool:
    return all(probe(w.web_port, "/readyz")[0] == 200 for w in workers)


def stop_all(
    workers: dict[str, WorkerProcess], killed: WorkerProcess | None
) -> dict[str, int | None]:
    """SIGTERM to every worker; the exit status of each one not killed."""
    codes = {name: w.stop() for name, w in workers.items()}
    return {name: code for name, code in codes.items() if workers[name] is not killed}


def test_three_folds_one_killed_give_the_offline_billing_and_alerts(
    broker: EmbeddedBroker, topics: Topics, tmp_path: Path
) -> None:
    parts = 3  # one partition of the log per fold
    lines = lines_of(generate_events(2500, seed=13, orgs=3))
    third = len(lines) // 3
    expected, first = expected_views(lines), expected_views(lines[:third])
    offline = offline_alert_ids(lines)
    replayed = cli_alerts(lines, tmp_path / "lines.ndjson")
    gate = member(broker, topics, parts, tmp_path, "gate", "--role", "gate")
    folds = [
        member(
            broker,
            topics,
            parts,
            tmp_path,
            f"fold{i}",
            "--role",
            "fold",
            "--snapshot-interval",
            "0.5",
        )
        for i in range(3)
    ]
    workers = {"gate": gate, **{f"fold{i}": f for i, f in enumerate(folds)}}
    victim, survivors = folds[0], folds[1:]
    times: dict[str, float] = {}

    async def run() -> Follower:
        await wait_for(lambda: ready(list(workers.values())), "every worker ready")
        # each fold reads a partition of the log (the group spreads 3 over 3 members)
        await wait_for(
            lambda: all(owned(f, topics.events) for f in folds), "a log partition per fold"
        )
        async with Follower(broker.bootstrap, topics, parts) as f:
            await produce(broker.bootstrap, topics.ingress, lines[:third])
            assert await f.until(lambda got: got.views() == first, WAIT), "first third not folded"
            lost = owned(victim, topics.events)
            assert lost, "the fold to kill reads no partition of the log"
            killed = time.monotonic()
            victim.kill()
            await produce(broker.bootstrap, topics.ingress, lines[third:])
            times["takeover"] = await wait_for(
                lambda: (
                    set().union(*(owned(s, topics.events) for s in survivors)) == set(range(parts))
                ),
                "the survivors read every partition of the log",
            )
            assert await f.until(
                lambda got: (
                    got.views() == expected
                    and set(core_ids(got.alerts)) >= set(offline)
                    and overlaps(got.alerts) >= overlaps(replayed)
                ),
                WAIT,
                quiet=2.0,
            ), (
                f"billing and alerts not complete: {differences(f.got.views(), expected)}; "
                f"alerts missing: {len(set(offline) - set(core_ids(f.got.alerts)))}, "
                f"overlaps missing: {overlaps(replayed) - overlaps(f.got.alerts)}"
            )
            times["result"] = time.monotonic() - killed
            return f

    try:
        for w in workers.values():
            w.start()
        follower = asyncio.run(run())
        log = asyncio.run(read_all(broker.bootstrap, topics.events, parts))
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{logs(tmp_path, workers)}") from None
    finally:
        codes = stop_all(workers, victim)
    print(
        f"\nfolds: kill to takeover {times.get('takeover', -1):.1f} s, "
        f"kill to full result {times.get('result', -1):.1f} s"
    )
    assert set(codes.values()) == {0}, (codes, logs(tmp_path, workers))
    got = follower.got
    assert len(expected) > 100
    assert got.views() == expected
    # the alerts the core derives event by event are the offline fold's, with its ids (a
    # redelivery after the kill may repeat one: sets); `caretally replay --alerts` gives
    # the same ids, and the same staff overlaps (those compared by what they say)
    core = core_ids(got.alerts)
    extra = Counter(core[i] for i in set(core) - set(offline))
    missing = Counter(offline[i].kind for i in set(offline) - set(core))
    assert (extra, missing) == (Counter(), Counter())
    assert set(core_ids(replayed)) == set(offline)
    assert overlaps(replayed) and overlaps(got.alerts) == overlaps(replayed)
    assert not got.deadletter
    assert_each_event_once(log, lines, parts)


def test_two_gates_one_killed_decide_every_event_once(
    broker: EmbeddedBroker, topics: Topics, tmp_path: Path
) -> None:
    parts = 4  # ingress too: each of the two gates decides two partitions
    events = list(generate_events(2500, seed=17, orgs=4))
    lines = lines_of(events)
    third = len(lines) // 3
    expected, first = expected_views(lines), expected_views(lines[:third])
    homes = {e["org_id"]: ingress_partition(e["org_id"], parts) for e in events}
    gates = [member(broker, topics, parts, tmp_path, f"gate{i}", "--role", "gate") for i in (0, 1)]
    fold = member(broker, topics, parts, tmp_path, "fold", "--role", "fold")
    workers = {"gate0": gates[0], "gate1": gates[1], "fold": fold}
    victim, survivor = gates
    sent: dict[str, list[bytes]] = {}
    times: dict[str, float] = {}
    survivor_duplicates = [0.0]

    def decided(gate: WorkerProcess, verdict: str) -> float:
        return sum(
            v
            for labels, v in samples(gate, "caretally_gate_records_total")
            if labels.get("verdict") == verdict
        )

    async def run() -> Follower:
        await wait_for(lambda: ready(list(workers.values())), "every worker ready")
        # each gate got ingress partitions, and the orgs of each are decided by one gate
        await wait_for(
            lambda: (
                owned(victim, topics.ingress) | owned(survivor, topics.ingress) == set(range(parts))
            ),
            "the two gates read every ingress partition",
        )
        theirs = owned(victim, topics.ingress)
        assert not theirs & owned(survivor, topics.ingress)
        victim_orgs = sorted(o for o, p in homes.items() if p in theirs)
        survivor_orgs = sorted(o for o, p in homes.items() if p not in theirs)
        assert victim_orgs and survivor_orgs, (homes, theirs)
        for g in gates:  # ready, each with its share of ingress
            status, body = probe(g.web_port, "/readyz")
            assert status == 200, body
            assert orjson.loads(body)["assigned_partitions"] == {"gate": parts // 2}
        async with Follower(broker.bootstrap, topics, parts) as f:
            await produce(broker.bootstrap, topics.ingress, lines[:third])
            assert await f.until(lambda got: got.views() == first, WAIT), "first third not folded"
            for g in gates:
                status, body = probe(g.web_port, "/metrics")
                assert status == 200 and b"caretally_records_in" in body
                read = [
                    v
                    for labels, v in samples(g, "caretally_records_in_total")
                    if labels.get("topic") == topics.ingress
                ]
                assert read and read[0] > 0, "a gate read none of its ingress partitions"
            # an exact re-send of events of every org, and a conflicting one (same id,
            # other bytes) for an org of each gate: after the kill the survivor decides
            # all of them with the index it rebuilt
            dups = lines[:third][::40]
            conflicts = []
            for org in (victim_orgs[0], survivor_orgs[0]):
                e = next(
                    e
                    for e in events[:third]
                    if e["org_id"] == org and not practice_wide(parse_event(orjson.dumps(e)))
                )
                conflicts.append(orjson.dumps({**e, "source": "other-ehr"}))
            sent.update(dups=dups, conflicts=conflicts)
            killed = [0.0]
            middle = lines[third : 2 * third]

            def kill_halfway(n: int, _raw: bytes) -> None:
                if n == len(middle) // 2:  # the victim is deciding as the records come
                    killed[0] = time.monotonic()
                    victim.kill()

            await produce(broker.bootstrap, topics.ingress, middle, rate=1000, on_sent=kill_halfway)
            await produce(broker.bootstrap, topics.ingress, [*dups, *conflicts])
            await produce(broker.bootstrap, topics.ingress, lines[2 * third :])
            assert killed[0], "the gate was not killed"
            await wait_for(
                lambda: assigned(survivor, "gate") == parts,
                "the survivor holds every ingress partition",
            )
            times["takeover"] = time.monotonic() - killed[0]
            assert await f.until(
                lambda got: got.views() == expected and len(got.deadletter) >= len(conflicts),
                WAIT,
                quiet=2.0,
            ), (
                f"billing and dead letters not complete: {differences(f.got.views(), expected)}; "
                f"{len(f.got.deadletter)} dead letter(s)"
            )
            times["result"] = time.monotonic() - killed[0]
            survivor_duplicates[0] = decided(survivor, "duplicate")
            return f

    try:
        for w in workers.values():
            w.start()
        follower = asyncio.run(run())
        log = asyncio.run(read_all(broker.bootstrap, topics.events, parts))
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{logs(tmp_path, workers)}") from None
    finally:
        codes = stop_all(workers, victim)
    print(
        f"\ngates: kill to takeover {times.get('takeover', -1):.1f} s, "
        f"kill to full result {times.get('result', -1):.1f} s"
    )
    assert set(codes.values()) == {0}, (codes, logs(tmp_path, workers))
    got = follower.got
    assert len(expected) > 100
    assert got.views() == expected
    # the conflicting re-sends, and nothing else, are dead-lettered as such
    dead = {r.value: dict(r.headers)["reason"] for r in got.deadletter}
    assert set(dead) == set(sent["conflicts"]), dead
    assert all(reason.startswith(b"conflicting_duplicate") for reason in dead.values())
    assert len(got.deadletter) == len(sent["conflicts"])
    # the exact re-sends were dropped by the survivor (which then held every partition)
    assert survivor_duplicates[0] >= len(sent["dups"])
    assert_each_event_once(log, lines, parts)

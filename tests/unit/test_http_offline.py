"""The parts of ``caretally serve`` that need no broker: the state cache's subscribers,
the ``keys`` commands, and a clear error when no broker answers."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson

from streams.http.api_keys import ApiKeyStore
from streams.http.state_cache import StateCache
from streams.kafka.topics import Topics
from support.http import alert


def test_a_slow_subscriber_is_dropped_without_blocking_others() -> None:
    """The cache alone (no broker needed): a full queue ends that subscriber only."""

    async def scenario() -> None:
        cache = StateCache("127.0.0.1:1", Topics("x."), subscriber_queue=2)
        slow, _ = cache.subscribe("org-a", replay=0)
        fast, _ = cache.subscribe("org-a", replay=0)
        other, _ = cache.subscribe("org-b", replay=0)
        for n in range(3):
            cache.apply_alert(orjson.dumps(alert("org-a", "P-s", n)))
            assert (await fast.queue.get()) is not None  # keeps up
        assert slow.dropped and slow.queue.qsize() == 1 and slow.queue.get_nowait() is None
        assert not fast.dropped and cache.subscriber_count("org-a") == 1
        assert other.queue.empty()
        assert [a.alert_id for a in cache.alerts["org-a"]] == [f"org-a-P-s-al{n}" for n in range(3)]
        cache.close_subscribers()
        assert fast.queue.get_nowait() is None and not fast.dropped

    asyncio.run(scenario())


def test_keys_commands_store_only_a_digest(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from streams.cli.main import cli

    path = tmp_path / "sub" / "keys.json"
    runner = CliRunner()
    created = runner.invoke(cli, ["keys", "create", "--org", "Practice 17", "--keys", str(path)])
    assert created.exit_code == 0, created.output
    key = created.stdout.strip()
    assert key.startswith("ct_practice-17_") and len(key) == len("ct_practice-17_") + 32
    assert path.stat().st_mode & 0o777 == 0o600
    assert key not in path.read_text() and key[-20:] not in path.read_text()
    assert ApiKeyStore(path).resolve(key) == "Practice 17"

    listed = runner.invoke(cli, ["keys", "list", "--keys", str(path), "--format", "json"])
    (row,) = [orjson.loads(line) for line in listed.stdout.splitlines()]
    old = runner.invoke(cli, ["keys", "list", "--keys", str(path), "--json"])
    assert old.stdout == listed.stdout
    assert old.stderr.strip() == "--json is deprecated: use --format json"
    assert row["org_id"] == "Practice 17" and row["revoked_at"] is None
    revoked = runner.invoke(cli, ["keys", "revoke", row["key_id"], "--keys", str(path)])
    assert revoked.exit_code == 0 and ApiKeyStore(path).resolve(key) is None
    missing = runner.invoke(cli, ["keys", "revoke", "nope", "--keys", str(path)])
    assert missing.exit_code == 1 and "no key with id" in missing.output


def test_serve_without_a_broker_fails_clearly(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from streams.cli.main import cli
    from streams.kafka.broker import free_port

    address = f"127.0.0.1:{free_port()}"
    args = ["serve", "--bootstrap", address, "--keys", str(tmp_path / "k.json")]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1
    assert f"no Kafka broker answers at {address}" in result.output
    assert "Traceback" not in result.output

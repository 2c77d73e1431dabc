"""`caretally webhooks add / list / remove` on a registry file in tmp_path (no broker)."""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from streams.cli.main import cli
from streams.webhooks.registry import ALERT_KINDS, Registry, WebhookError, load, load_all


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["webhooks", *args])
    return result.exit_code, result.stdout, result.stderr


def test_add_prints_the_secret_once_and_list_never_shows_it(tmp_path: Path) -> None:
    registry = tmp_path / "hooks" / "webhooks.json"
    url = "https://hooks.example.com/in"
    code, out, err = run("add", "--org", "org-a", "--url", url, "--webhooks", str(registry))
    assert code == 0, err
    secret = out.strip()
    assert out == secret + "\n" and secret.startswith("whsec_") and len(secret) > 40
    (hook,) = load(registry)
    assert hook.secret == secret and hook.org_id == "org-a" and hook.kinds is None
    assert hook.webhook_id in err and secret not in err
    assert stat.S_IMODE(registry.stat().st_mode) == 0o600

    code, out, err = run(
        "add",
        "--org",
        "org-b",
        "--url",
        "http://127.0.0.1:9/x",
        "--kinds",
        "threshold_crossed, cap_reached",
        "--webhooks",
        str(registry),
    )
    assert code == 0, err
    second = out.strip()

    code, table, _ = run("list", "--webhooks", str(registry))
    assert code == 0
    assert secret not in table and second not in table and "whsec_" not in table
    assert hook.webhook_id in table and "org-b" in table
    assert "cap_reached,threshold_crossed" in table

    code, out, _ = run("list", "--webhooks", str(registry), "--format", "json")
    rows = [orjson.loads(line) for line in out.splitlines()]
    assert [r["org_id"] for r in rows] == ["org-a", "org-b"]
    assert rows[0]["kinds"] is None and rows[1]["kinds"] == ["cap_reached", "threshold_crossed"]
    assert all("secret" not in r for r in rows) and "whsec_" not in out

    code, out, err = run("remove", hook.webhook_id, "--webhooks", str(registry))
    assert code == 0, err
    assert [h.org_id for h in load(registry)] == ["org-b"]
    assert stat.S_IMODE(registry.stat().st_mode) == 0o600
    code, _, err = run("remove", hook.webhook_id, "--webhooks", str(registry))
    assert code == 1 and f"no webhook with id '{hook.webhook_id}'" in err


def test_the_registry_path_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = tmp_path / "env-hooks.json"
    monkeypatch.setenv("CARETALLY_WEBHOOKS", str(registry))
    code, _, err = run("add", "--org", "org-a", "--url", "https://h.example.com/")
    assert code == 0, err
    assert len(Registry(registry).targets("org-a", "cap_reached")) == 1


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://hooks.example.com/in", "must use https"),
        ("http://8.8.8.8/in", "must use https"),
        ("ftp://hooks.example.com/in", "must start with https://"),
        ("hooks.example.com/in", "must start with https://"),
        ("https:///in", "needs a host"),
        ("https://user:pw@hooks.example.com/in", "cannot hold credentials"),
        ("https://token@hooks.example.com/in", "cannot hold credentials"),
        ("https://hooks.example.com/in#x", "#fragment"),
        ("https://hooks.example.com:99999/in", "not a URL"),
        ("https://hooks.example.com/a b", "spaces or control characters"),
        (f"https://{'a' * 70}.example.com/", "not a valid host name"),  # a label > 63
        ("https://hooks..example.com/", "not a valid host name"),
        ("https://10.0.0.5/in", "non-public address (10.0.0.5: private)"),
        ("https://192.168.1.1/in", "private"),
        ("https://169.254.169.254/latest/meta-data", "link-local"),
        ("https://[fe80::1]/in", "link-local"),
        ("https://[::ffff:10.0.0.1]/in", "private"),
        ("https://224.0.0.1/in", "multicast"),
        ("https://0.0.0.0/in", "unspecified"),
        ("https://[::]/in", "unspecified"),
        ("https://100.64.0.1/in", "not global"),
        ("https://0x7f000001/in", "dotted-quad"),
        ("https://2130706433/in", "dotted-quad"),
        ("https://127.1/in", "dotted-quad"),
        ("https://0177.0.0.1/in", "dotted-quad"),
        ("http://127.1/in", "dotted-quad"),
    ],
)
def test_bad_urls_are_refused_with_the_reason(tmp_path: Path, url: str, why: str) -> None:
    registry = tmp_path / "webhooks.json"
    code, out, err = run("add", "--org", "org-a", "--url", url, "--webhooks", str(registry))
    assert code == 1 and out == ""
    assert err.startswith("error: ") and why in err
    assert not registry.exists() or load(registry) == []


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/in",
        "http://[::1]:9/in",
        "http://localhost/in",
        "https://127.0.0.2/in",
        "https://x.io",
        "https://203.0.113.7.nip.example/in",
        "https://8.8.8.8/in",
        "https://bücher.example/in",
        f"https://{'a' * 63}.example.com/",
    ],
)
def test_loopback_http_and_any_https_are_accepted(tmp_path: Path, url: str) -> None:
    code, _, err = run("add", "--org", "org-a", "--url", url, "--webhooks", str(tmp_path / "w"))
    assert code == 0, err


def test_kinds_are_checked_against_the_alert_kinds(tmp_path: Path) -> None:
    registry = tmp_path / "webhooks.json"
    code, _, err = run(
        "add",
        "--org",
        "org-a",
        "--url",
        "https://h.example.com/",
        "--kinds",
        "cap_reached,threshold_crosed",
        "--webhooks",
        str(registry),
    )
    assert code == 1 and "unknown alert kind(s) threshold_crosed" in err
    assert all(kind in err for kind in ALERT_KINDS)
    code, _, err = run("add", "--org", "a:b", "--url", "https://h.example.com/")
    assert code == 2 and "is not an org id" in err


def test_a_webhook_gets_only_its_orgs_alerts_of_its_kinds(tmp_path: Path) -> None:
    registry = tmp_path / "webhooks.json"
    run("add", "--org", "org-a", "--url", "https://a.example.com/", "--webhooks", str(registry))
    run(
        "add",
        "--org",
        "org-a",
        "--url",
        "https://pager.example.com/",
        "--kinds",
        "cap_reached",
        "--webhooks",
        str(registry),
    )
    reg = Registry(registry)
    assert [h.url for h in reg.targets("org-a", "cap_reached")] == [
        "https://a.example.com/",
        "https://pager.example.com/",
    ]
    assert [h.url for h in reg.targets("org-a", "overlap")] == ["https://a.example.com/"]
    assert reg.targets("org-b", "cap_reached") == []
    assert reg.targets("org-", "cap_reached") == []  # never a prefix match


def test_deliver_refuses_to_start_without_a_registry(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    code, _, err = run("deliver", "--webhooks", str(missing), "--bootstrap", "127.0.0.1:1")
    assert code == 1 and f"no webhook registry at {missing}" in err
    with pytest.raises(WebhookError, match="no webhook registry at"):
        Registry(missing)  # what the delivery process reads, whoever starts it


def test_a_hand_edited_entry_that_the_rules_refuse_is_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    registry = tmp_path / "webhooks.json"
    run("add", "--org", "org-a", "--url", "https://a.example.com/", "--webhooks", str(registry))
    run("add", "--org", "org-a", "--url", "https://b.example.com/", "--webhooks", str(registry))
    doc = orjson.loads(registry.read_bytes())
    bad = doc["webhooks"][0]
    bad["url"] = f"https://{'x' * 70}.example.com/"
    doc["webhooks"].append({**doc["webhooks"][1], "webhook_id": "wh_meta"})
    doc["webhooks"][-1]["url"] = "https://169.254.169.254/"
    registry.write_bytes(orjson.dumps(doc))
    with caplog.at_level(logging.WARNING, logger="caretally.webhooks"):
        reg = Registry(registry)
    assert [h.url for h in reg.targets("org-a", "cap_reached")] == ["https://b.example.com/"]
    assert f"webhook {bad['webhook_id']} of {registry} is skipped" in caplog.text
    assert "webhook wh_meta of" in caplog.text and "link-local" in caplog.text
    assert len(load_all(registry)) == 3  # still there, for `webhooks remove`
    code, _, err = run("remove", "wh_meta", "--webhooks", str(registry))
    assert code == 0, err
    assert [h.webhook_id for h in load_all(registry)] == [
        bad["webhook_id"],
        doc["webhooks"][1]["webhook_id"],
    ]


def test_a_registry_of_a_newer_format_is_refused(tmp_path: Path) -> None:
    registry = tmp_path / "webhooks.json"
    registry.write_bytes(orjson.dumps({"version": 2, "webhooks": []}))
    with pytest.raises(WebhookError, match="has format version 2; this caretally reads"):
        load(registry)


def test_a_running_registry_keeps_the_last_good_webhooks(tmp_path: Path) -> None:
    registry = tmp_path / "webhooks.json"
    run("add", "--org", "org-a", "--url", "https://a.example.com/", "--webhooks", str(registry))
    reg = Registry(registry)
    assert not reg.refresh()  # unchanged
    run("add", "--org", "org-b", "--url", "https://b.example.com/", "--webhooks", str(registry))
    assert reg.refresh() and len(reg.hooks) == 2
    registry.write_text("{half a file")
    with pytest.raises(WebhookError, match="is not a caretally webhook registry"):
        reg.refresh()
    assert len(reg.hooks) == 2
    registry.unlink()
    with pytest.raises(WebhookError, match="is gone"):
        reg.refresh()
    assert len(reg.hooks) == 2

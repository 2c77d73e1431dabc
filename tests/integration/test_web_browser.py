"""The pages of ``caretally serve`` in a real headless Chromium, against a real broker,
worker and server: sign-in, the worklist against ``caretally replay``, a live move from
*near* to *ready*, the patient-month page against ``caretally audit``, month close and
claim downloads against ``caretally close``, another org's key, and CSRF.

The pages' details (groups, filters, sessions, headers) are tested in process in
tests/unit/test_web_pages.py; here the whole path runs as a person would use it.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from streams.cli.main import cli
from streams.close.claim_files import claims_stem
from streams.http.api_keys import ApiKeyStore, create_key
from streams.http.app import build_app
from streams.kafka.broker import EmbeddedBroker
from streams.kafka.partitioning import log_partition
from streams.kafka.topics import Topics
from streams.web.config import WebConfig
from support.browser import chromium, fill_and_submit, text_of, wait_until
from support.builders import Log
from support.http import ServerThread, eventually
from support.pipeline import PARTS, read_all, worker_for

MARCH = "2025-03"
NEAR, READY, BLOCKED = "P-NEAR-1", "P-READY-2", "P-BLOCK-3"
OTHER = "P-OTHER-9"  # org o2's
SCREENSHOTS = os.environ.get("CARETALLY_SCREENSHOTS")  # a folder: save the docs' pictures


def month_log() -> Log:
    """o1 in March: one patient near 99490 (12 min), one ready (25 min), one blocked (no
    consent); o2 with a patient of its own."""
    log = Log(recorded_at="2025-02-01T12:00:00Z")
    log.practice(timezone="America/Chicago")
    log.documented(NEAR)
    log.documented(READY)
    log.conditions(BLOCKED)
    log.care_plan(BLOCKED, "ccm", on="2025-01-01")
    log.enrollment(BLOCKED, "ccm")
    log.visit(BLOCKED)
    log.activity(NEAR, "n1", "2025-03-03T10:00:00-06:00", 12)
    log.activity(READY, "r1", "2025-03-04T09:00:00-06:00", 15)
    log.activity(
        READY,
        "r2",
        "2025-03-18T14:00:00-05:00",
        10,
        staff="RN-2",
        recorded_at="2025-03-19T12:00:00Z",
    )
    log.activity(BLOCKED, "b1", "2025-03-05T11:00:00-06:00", 25)
    other = Log(org="o2", recorded_at="2025-02-01T12:00:00Z")
    other.practice(timezone="America/Chicago")
    other.documented(OTHER)
    other.activity(OTHER, "z1", "2025-03-06T10:00:00-06:00", 30)
    log.raw.extend(other.raw)
    return log


@dataclass
class Stack:
    broker: EmbeddedBroker
    topics: Topics
    port: int
    keys: dict[str, str]
    claims: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            r = conn.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            conn.close()

    def post_events(self, org: str, events: list[dict[str, Any]]) -> None:
        body = b"\n".join(orjson.dumps(e) for e in events)
        status, _, reply = self.request(
            "POST",
            "/v1/events",
            body,
            {"Authorization": f"Bearer {self.keys[org]}", "Content-Type": "application/x-ndjson"},
        )
        assert status == 202, reply

    def api_worklist(self, org: str) -> dict[str, Any]:
        status, _, body = self.request(
            "GET",
            f"/v1/orgs/{org}/worklist?month={MARCH}",
            headers={"Authorization": f"Bearer {self.keys[org]}"},
        )
        return orjson.loads(body) if status == 200 else {}

    def cli(self, *args: str) -> str:
        kafka = ["--bootstrap", self.broker.bootstrap, "--topic-prefix", self.topics.prefix]
        result = CliRunner().invoke(cli, [args[0], *kafka, *args[1:]])
        assert result.exit_code == 0, result.output
        return result.output


@contextmanager
def web_stack(broker: EmbeddedBroker, tmp_path: Path, log: Log) -> Iterator[Stack]:
    """A worker and ``serve`` (pages on) on fresh topics; ``log`` posted to /v1/events and
    in billing before the stack is handed over."""
    topics = Topics(prefix=f"t{uuid.uuid4().hex[:10]}.")
    worker = worker_for(broker, topics, tmp_path).start()
    keys_path = tmp_path / "api-keys.json"
    keys = {org: create_key(keys_path, org)[1] for org in ("o1", "o2")}
    claims = tmp_path / "served-claims"
    pages = WebConfig(broker.bootstrap, topics.events, claims)
    app = build_app(
        broker.bootstrap,
        topics,
        ApiKeyStore(keys_path, recheck_s=0.0),
        heartbeat_s=1.0,
        pages=pages,
    )
    try:
        with ServerThread(app) as server:
            stack = Stack(broker, topics, server.port, keys, claims)
            eventually(lambda: stack.request("GET", "/readyz")[0] == 200, 30)
            by_org: dict[str, list[dict[str, Any]]] = {}
            for e in log.raw:
                by_org.setdefault(e["org_id"], []).append(e)
            for org, events in by_org.items():
                stack.post_events(org, events)
            want = {(b.org_id, b.patient_id) for b in log.billing() if b.month == MARCH}

            def published() -> set[tuple[str, str]]:
                return {
                    (org, item["patient_id"])
                    for org in by_org
                    for group in stack.api_worklist(org).values()
                    if isinstance(group, list)
                    for item in group
                }

            eventually(lambda: want <= published(), 60)
            yield stack
    finally:
        assert worker.stop() == 0, (tmp_path / "worker.log").read_text()[-3000:]


def sign_in(
    driver: WebDriver, stack: Stack, org: str, path: str = f"/worklist?month={MARCH}"
) -> None:
    driver.delete_all_cookies()
    driver.get(stack.base + path)
    wait_until(driver, lambda d: "/signin" in d.current_url, message="sent to sign in")
    assert driver.find_element(By.CSS_SELECTOR, "label[for=api_key]").text == "API key"
    fill_and_submit(driver, "form.signin", {"api_key": stack.keys[org]})
    wait_until(driver, lambda d: "/signin" not in d.current_url, message="signed in")


def rows(driver: WebDriver, group: str) -> list[str]:
    """The patients of a worklist group, read in one step (the live page may swap them)."""
    found: list[str] = driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0]), tr => tr.dataset.patient);",
        f"#group-{group} tbody tr",
    )
    return found


SHOWN = """
return Array.from(document.querySelectorAll("#worklist tbody tr"), tr => [
  tr.dataset.patient,
  Array.from(tr.querySelectorAll(".code:not(.blocked)"), c => c.textContent.trim()),
  Array.from(tr.querySelectorAll(".code.blocked"), c => c.textContent.trim()),
  tr.querySelector("td.num").textContent.trim(),
]);
"""


def replay_month(stack: Stack, log: Log, tmp_path: Path, org: str) -> dict[str, dict[str, Any]]:
    """``caretally replay`` of the same events: patient -> its line of March."""
    events = tmp_path / f"events-{uuid.uuid4().hex[:6]}.ndjson"
    events.write_bytes(b"\n".join(orjson.dumps(e) for e in log.raw) + b"\n")
    out = CliRunner().invoke(cli, ["replay", "--input", str(events), "--format", "json"])
    assert out.exit_code == 0, out.output
    lines = [json.loads(ln) for ln in out.output.splitlines() if ln.startswith("{")]
    return {v["patient_id"]: v for v in lines if v["org_id"] == org and v["month"] == MARCH}


A11Y = """
const problems = [];
if (document.documentElement.lang !== "en") problems.push("no lang");
if (document.querySelectorAll("h1").length !== 1) problems.push("not one h1");
if (!document.querySelector("main")) problems.push("no main landmark");
for (const el of document.querySelectorAll("input:not([type=hidden]), select, textarea")) {
  const named = el.labels.length || el.getAttribute("aria-label")
    || el.getAttribute("aria-labelledby");
  if (!named) problems.push("unlabelled " + el.tagName + " " + (el.name || el.id));
}
for (const a of document.querySelectorAll("a, button")) {
  if (!a.textContent.trim() && !a.getAttribute("aria-label")) problems.push("unnamed control");
}
for (const r of performance.getEntriesByType("resource")) {
  if (new URL(r.name).origin !== location.origin) problems.push("loaded " + r.name);
}
return problems;
"""


def check_page(driver: WebDriver) -> None:
    """Labels, one h1, a main landmark, named controls, nothing loaded from elsewhere; and
    the first Tab reaches the skip link."""
    assert driver.execute_script(A11Y) == [], driver.current_url
    driver.find_element(By.TAG_NAME, "body").send_keys(Keys.TAB)
    assert driver.switch_to.active_element.text == "Skip to content"


def shot(driver: WebDriver, name: str) -> None:
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(SCREENSHOTS) / name))


@pytest.mark.slow
def test_the_worklist_equals_replay_moves_live_and_the_patient_page_equals_audit(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    log = month_log()
    with web_stack(broker, tmp_path, log) as stack, chromium() as driver:
        sign_in(driver, stack, "o1")
        assert driver.find_element(By.TAG_NAME, "h1").text == f"Worklist for {MARCH}"
        wait_until(driver, lambda d: "Live:" in text_of(d, "#live-status"), message="live")
        assert (rows(driver, "ready"), rows(driver, "near"), rows(driver, "blocked")) == (
            [READY],
            [NEAR],
            [BLOCKED],
        )
        # the page equals `caretally replay` of the same events: patients, codes, payments
        replay = replay_month(stack, log, tmp_path, "o1")
        shown = {
            pid: (codes, blocked, paid)
            for pid, codes, blocked, paid in driver.execute_script(SHOWN)
        }
        assert shown == {
            pid: (
                [b["code"] + (f" ×{b['units']}" if b["units"] > 1 else "") for b in v["billable"]],
                [f"{b['code']} blocked" for b in v["blocked"]],
                f"${v['estimated_payment']:,.2f}",
            )
            for pid, v in replay.items()
        }
        assert "No consent from the patient" in text_of(driver, "#group-blocked")
        assert OTHER not in driver.page_source
        shot(driver, "worklist.png")
        check_page(driver)

        # an event posted to the API moves NEAR from near to ready on the open page
        driver.execute_script("window.__same_page = true;")
        extra = Log(recorded_at="2025-03-25T12:00:00Z")
        extra.activity(NEAR, "n2", "2025-03-24T10:00:00-05:00", 10, event_id="live-n2")
        stack.post_events("o1", extra.raw)
        wait_until(driver, lambda d: NEAR in rows(d, "ready"), 20, "NEAR moved to ready")
        assert driver.execute_script("return window.__same_page === true;")  # no reload
        assert rows(driver, "near") == []
        log.raw.extend(extra.raw)

        # the patient-month page shows what `caretally audit` shows
        driver.find_element(By.LINK_TEXT, READY).click()
        wait_until(driver, lambda d: READY in d.find_element(By.TAG_NAME, "h1").text)
        events = tmp_path / "all.ndjson"
        events.write_bytes(b"\n".join(orjson.dumps(e) for e in log.raw) + b"\n")
        args = ["audit", "--input", str(events), "--org", "o1", "--patient", READY]
        audit = CliRunner().invoke(cli, [*args, "--month", MARCH, "--format", "json"])
        assert audit.exit_code == 0, audit.output
        report = json.loads(audit.output)
        billing = report["billing"]
        assert text_of(driver, "#codes-billed") == " ".join(b["code"] for b in billing["billable"])
        assert text_of(driver, "#minutes") == " ".join(
            f"{fam.upper()} {m:g}" for fam, m in billing["minutes"].items()
        )
        assert text_of(driver, "#payment").startswith(f"${billing['estimated_payment']:,.2f}")
        counted = [
            a for a in report["activities"] if a["status"] == "current" and a["minutes_counted"]
        ]
        chart_bars = driver.find_elements(By.CSS_SELECTOR, "svg.chart rect")
        assert len(chart_bars) == len({a["start"][:10] for a in counted}) == 2
        assert counted and all(a["minutes_counted"] for a in counted)
        assert "Threshold reached" in text_of(driver, "#h-alerts + table")
        shot(driver, "patient-month.png")
        check_page(driver)

        # the page read the patient's partition, where the log writer put every record
        records = asyncio.run(read_all(broker.bootstrap, stack.topics.events))
        patient_keyed = [r for r in records if not r.key.endswith(b":")]
        assert patient_keyed and all(
            r.partition == log_partition(r.key, PARTS) for r in patient_keyed
        )

        # "as of" before the second activity was recorded: 15 minutes, nothing to bill yet
        as_of = driver.find_element(By.ID, "as_of")
        driver.execute_script("arguments[0].value = '2025-03-10T00:00:00';", as_of)
        driver.find_element(By.CSS_SELECTOR, "form.as-of button").click()
        wait_until(driver, lambda d: "as_of=" in d.current_url)
        assert (text_of(driver, "#codes-billed"), text_of(driver, "#minutes")) == ("none", "CCM 15")


@pytest.mark.slow
def test_close_downloads_equal_close_files_and_another_org_sees_nothing(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    log = month_log()
    with web_stack(broker, tmp_path, log) as stack, chromium() as driver:
        # a month not over yet is refused in the page's words unless the box is ticked
        sign_in(driver, stack, "o1", "/months/2099-01/close")
        driver.find_element(By.ID, "confirm").click()
        driver.find_element(By.CSS_SELECTOR, "form.close-form button").click()
        wait_until(driver, lambda d: d.find_elements(By.ID, "close-error"), 30, "refused")
        assert "tick “Close before the month has ended”" in text_of(driver, "#close-error")
        assert "--force" not in driver.page_source

        driver.get(f"{stack.base}/months/{MARCH}/close")
        assert "Not closed yet." in text_of(driver, "#month-state")
        assert "1 claim line for 1 patient" in text_of(driver, "#preview-summary")
        check_page(driver)
        # without the confirmation box, the browser itself refuses (required); the server
        # refuses too when the box is skipped (tested in process)
        driver.find_element(By.ID, "confirm").click()
        driver.find_element(By.CSS_SELECTOR, "form.close-form button").click()
        wait_until(driver, lambda d: d.find_elements(By.ID, "close-done"), 30, "closed")
        assert "1 claim line for 1 patient" in text_of(driver, "#close-done")
        assert "closed" in text_of(driver, "#month-state")

        # the downloads equal `caretally close --export-only`'s files of that close
        cookie = {c["name"]: c["value"] for c in driver.get_cookies()}["caretally_session"]
        export = tmp_path / "cli-claims"
        stack.cli(
            "close",
            "--org",
            "o1",
            "--month",
            MARCH,
            "--export-only",
            "--claims-dir",
            str(export),
            "--claims-format",
            "all",
        )
        stem = claims_stem("o1", MARCH)
        for fmt, suffix in (("csv", "csv"), ("json", "json"), ("837p", "837p.json")):
            href = driver.find_element(By.LINK_TEXT, fmt.upper()).get_attribute("href") or ""
            status, headers, body = stack.request(
                "GET",
                href.removeprefix(stack.base),
                headers={"Cookie": f"caretally_session={cookie}"},
            )
            assert status == 200 and "attachment" in headers["content-disposition"]
            assert body == (export / f"{stem}.{suffix}").read_bytes()

        # late activity on the closed month: live on the alerts page, then on the close page
        driver.get(f"{stack.base}/alerts?kind=late_activity")
        wait_until(driver, lambda d: "Live:" in text_of(d, "#live-status"), message="live")
        late = Log(recorded_at="2025-04-03T12:00:00Z")
        late.activity(READY, "r3", "2025-03-28T10:00:00-05:00", 20, event_id="late-r3")
        stack.post_events("o1", late.raw)
        wait_until(
            driver,
            lambda d: d.find_elements(By.CSS_SELECTOR, "#alert-rows tr[data-kind=late_activity]"),
            20,
            "the late_activity alert arrived live",
        )
        assert READY in text_of(driver, "#alert-rows")
        check_page(driver)
        driver.get(f"{stack.base}/months/{MARCH}/close")
        assert READY in text_of(driver, "#late-activity")

        # a form post without the CSRF token is refused, and changes nothing
        driver.execute_script(
            "document.querySelector('form.close-form input[name=csrf_token]').remove();"
        )
        driver.find_element(By.ID, "confirm").click()
        driver.find_element(By.CSS_SELECTOR, "form.close-form button").click()
        wait_until(driver, lambda d: "Forbidden" in d.find_element(By.TAG_NAME, "h1").text)
        status, _, _ = stack.request(
            "POST",
            f"/months/{MARCH}/close",
            b"confirm=yes&reissue=yes",
            {
                "Cookie": f"caretally_session={cookie}",
                "Content-Type": "application/x-www-form-urlencoded",
            },
        )
        assert status == 403

        # a second org's key sees none of the first org's patients, on any page
        sign_in(driver, stack, "o2")
        pages = [
            f"/worklist?month={MARCH}",
            "/alerts",
            f"/months/{MARCH}/close",
            f"/patients/{READY}/months/{MARCH}",
            f"/months/{MARCH}/claims.csv",
        ]
        for path in pages:
            driver.get(stack.base + path)
            source = driver.page_source
            for pid in (NEAR, READY, BLOCKED):
                assert pid not in source, path
        driver.get(stack.base + f"/patients/{READY}/months/{MARCH}")
        assert driver.find_element(By.TAG_NAME, "h1").text == "Not Found"
        driver.get(stack.base + f"/worklist?month={MARCH}")
        assert rows(driver, "ready") == [OTHER]

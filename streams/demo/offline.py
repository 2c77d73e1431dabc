"""``caretally demo`` (offline edition): a month of synthetic EHR traffic for a sample
practice, folded event by event with alerts printed as they are derived, then the
closing billing summary. The broker-backed demo builds on this (see docs/design.md)."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

from projections.engine import Projector
from projections.ledger import Status
from projections.rules import SHIPPED_CATALOG, RuleCatalog
from schemas.events import EventRejected, parse_event
from schemas.views import Alert
from streams.demo.synthetic import generate_practice_log, write_ndjson

_STYLE = {
    "threshold_crossed": "green",
    "threshold_revoked": "red",
    "documentation_gap": "yellow",
    "exclusive_conflict": "magenta",
    "cap_reached": "cyan",
    "overlap": "blue",
    "double_count": "blue",
    "late_activity": "red",
}


def run_demo(
    console: Console,
    *,
    patients: int = 40,
    month: str = "2025-03",
    seed: int = 7,
    pace: float = 0.0,
    log_path: Path | None = None,
    show_alerts: int = 40,
) -> dict[str, int | float]:
    """Run the offline demo; returns counts for tests and the closing line."""
    raw = list(generate_practice_log(seed=seed, patients=patients, months=(month,)))
    if log_path is not None:
        write_ndjson(raw, log_path)
    console.rule(f"[bold]caretally demo[/] - {patients} patients, {month}, {len(raw)} events")
    projector = Projector()
    kinds: Counter[str] = Counter()
    aliases: dict[str, str] = {}
    rejected = duplicates = shown = 0
    for obj in raw:
        line = orjson.dumps(obj)
        try:
            event = parse_event(line)
        except EventRejected as exc:
            rejected += 1
            console.print(f"[red]rejected[/] {obj.get('event_id')}: {exc.reason}")
            continue
        result = projector.step(event)
        if result.outcome.status is Status.DUPLICATE:
            duplicates += 1
        elif result.outcome.status in (Status.CONFLICT, Status.OVER_LIMIT):
            rejected += 1
        for alert in result.alerts:
            kinds[alert.kind] += 1
            if shown < show_alerts:
                _print_alert(console, alert, aliases)
                shown += 1
                if pace:
                    time.sleep(pace)
    if sum(kinds.values()) > shown:
        console.print(f"[dim]... and {sum(kinds.values()) - shown} more alerts[/]")
    billing = projector.billing()
    summary_table(console, [b.view() for b in billing])
    payment = round(sum(b.estimated_payment for b in billing), 2)
    console.print(
        f"alerts by kind: {dict(sorted(kinds.items()))}; {duplicates} duplicate and "
        f"{rejected} rejected event(s); estimated payment [bold]${payment:,.2f}[/]"
    )
    return {
        "events": len(raw),
        "alerts": sum(kinds.values()),
        "patient_months": len(billing),
        "rejected": rejected,
        "duplicates": duplicates,
        "estimated_payment": payment,
    }


def _print_alert(console: Console, alert: Alert, aliases: dict[str, str]) -> None:
    """One live alert line. Patient ids are PHI: the feed shows a demo alias and a
    short alert id instead."""
    style = _STYLE.get(alert.kind, "white")
    alias = aliases.setdefault(alert.patient_id, f"pt-{len(aliases) + 1:02d}")
    console.print(
        f"[dim]{alert.alert_id[:8]}[/] [{style}]{alert.kind:<18}[/] {alias} {alert.month} "
        f"{alert.code or '':<6} {alert.detail}",
        overflow="fold",
    )


def summary_table(
    console: Console, views: list[dict[str, Any]], catalog: RuleCatalog = SHIPPED_CATALOG
) -> None:
    """Codes, units and estimated $ over billing views (replay lines, priced with the
    month's book in ``catalog``); blocked units by reason. Both demos print it: the
    offline one from the core, the live one from care.billing.v1."""
    units: Counter[str] = Counter()
    dollars: dict[str, float] = {}
    blocked: Counter[str] = Counter()
    provisional = 0.0
    for v in views:
        book = catalog.for_month(v["month"])
        for line in v["billable"]:
            units[line["code"]] += line["units"]
            fee = (book.fee(line["code"]) or 0.0) * line["units"]
            dollars[line["code"]] = dollars.get(line["code"], 0.0) + fee
        if v["payment_provisional"]:
            provisional += v["estimated_payment"]
        for item in v["blocked"]:
            for reason in item["reasons"]:
                blocked[f"{item['code']}: {reason}"] += item["units"]
    table = Table(title=f"billing summary ({len(views)} patient-months)")
    table.add_column("code")
    table.add_column("units", justify="right")
    table.add_column("est. $", justify="right")
    for code in sorted(units):
        table.add_row(code, str(units[code]), f"{dollars[code]:,.2f}")
    table.add_row("total", str(sum(units.values())), f"{sum(dollars.values()):,.2f}", style="bold")
    console.print(table)
    if provisional:
        console.print(
            f"[yellow]${provisional:,.2f} of the estimated payment is provisional[/]: months "
            "priced with rules that are not final (flagged rules_provisional or "
            "rules_extrapolated; `caretally rules list`)"
        )
    if blocked:
        bt = Table(title="blocked (time met, billing held)")
        bt.add_column("code: reason")
        bt.add_column("units", justify="right")
        for key, n in blocked.most_common():
            bt.add_row(key, str(n))
        console.print(bt)

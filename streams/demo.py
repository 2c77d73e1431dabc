"""``caretally demo`` (offline edition): a month of synthetic EHR traffic for a sample
practice, folded event by event with alerts printed as they are derived, then the
closing billing summary. The broker-backed demo builds on this (see DESIGN.md)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import orjson
from rich.console import Console
from rich.table import Table

from projections.engine import Projector
from projections.ledger import Status
from schemas.events import EventRejected, parse_event
from schemas.views import Alert
from streams.synthetic import generate_practice_log, write_ndjson

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
        elif result.outcome.status is Status.CONFLICT:
            rejected += 1
        for alert in result.alerts:
            kinds[alert.kind] += 1
            if shown < show_alerts:
                _print_alert(console, alert)
                shown += 1
                if pace:
                    time.sleep(pace)
    if sum(kinds.values()) > shown:
        console.print(f"[dim]... and {sum(kinds.values()) - shown} more alerts[/]")
    billing = projector.billing()
    _summary(console, (b.view() for b in billing))
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


def _print_alert(console: Console, alert: Alert) -> None:
    style = _STYLE.get(alert.kind, "white")
    # patient ids are PHI: the live feed names the alert, not the patient
    console.print(
        f"[{style}]{alert.kind:<20}[/] {alert.month} {alert.code or '':<6} {alert.detail}"
    )


def _summary(console: Console, views: Iterable[dict]) -> None:
    codes: Counter[str] = Counter()
    blocked: Counter[str] = Counter()
    fees: dict[str, float] = {}
    months = 0
    for v in views:
        months += 1
        for item in v["billable"]:
            codes[item["code"]] += item["units"]
        for item in v["blocked"]:
            for reason in item["reasons"]:
                blocked[f"{item['code']}: {reason}"] += item["units"]
        fees[v["month"]] = fees.get(v["month"], 0.0) + v["estimated_payment"]
    table = Table(title=f"billing summary ({months} patient-months)")
    table.add_column("code")
    table.add_column("units", justify="right")
    for code, units in sorted(codes.items()):
        table.add_row(code, str(units))
    console.print(table)
    if blocked:
        bt = Table(title="blocked (time met, billing held)")
        bt.add_column("code: reason")
        bt.add_column("units", justify="right")
        for key, units in blocked.most_common():
            bt.add_row(key, str(units))
        console.print(bt)

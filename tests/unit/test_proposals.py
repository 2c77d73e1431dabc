"""Proposed-rule switches (a book's ``[proposals]``, docs/rules.md §7.2), enforced by the
documentation gate (§6.2 step 6) when a book switches them on.

Each row builds one event log and bills its month twice: under the shipped books (every
proposal off) and under a catalog whose 2026 book is the shipped text with the proposal's
table added (``enabled = true``, source S28, the CY 2027 proposed rule). Off, the month
bills; on, the row's lines are blocked with the proposal's reason, or bill when the
record satisfies it. Every row runs on the fold, the Projector stepped event by event
and the archive replay, each given the catalog.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from projections.billing import MonthBilling
from projections.engine import Projector, replay
from projections.rules import SHIPPED_CATALOG, RuleCatalog, parse_book
from schemas.events import parse_event
from streams.archive.replay import replay_archive
from streams.archive.store import write_events
from support.builders import Log

P = "P-1"
MARCH = "2026-03"
BOOK_2026 = Path(__file__).resolve().parents[2] / "projections" / "rules" / "2026.toml"


def catalog_with(proposal: str) -> RuleCatalog:
    """The shipped catalog, its 2026 book switching ``proposal`` on."""
    text = BOOK_2026.read_text(encoding="utf-8")
    source_ids = '"S27",\n]'
    assert text.count(source_ids) == 1  # the end of [book] source_ids
    text = text.replace(source_ids, '"S27", "S28",\n]')
    text += (
        f"\n[proposals.{proposal}]\n"
        "enabled = true\n"
        'summary = "switched on by tests/unit/test_proposals.py"\n'
        'sources = ["S28"]\n'
    )
    book = parse_book(text, "2026-with-proposal.toml")
    assert book.proposal_on(proposal)
    return SHIPPED_CATALOG.with_books(book)


def _fold(log: Log, catalog: RuleCatalog) -> list[MonthBilling]:
    return replay(log.events(), catalog=catalog)


def _projector(log: Log, catalog: RuleCatalog) -> list[MonthBilling]:
    projector = Projector(catalog=catalog)
    for raw in log.raw:
        data = orjson.dumps(raw)
        projector.step(parse_event(data), data)
    return projector.billing()


def _archive(log: Log, catalog: RuleCatalog) -> list[MonthBilling]:
    raws = [orjson.dumps(e) for e in log.raw]
    with tempfile.TemporaryDirectory(prefix="caretally-proposals-") as tmp:
        write_events(Path(tmp), zip([parse_event(r) for r in raws], raws, strict=True))
        return replay_archive(Path(tmp), threads=1, catalog=catalog)[0]


ENGINES: dict[str, Callable[[Log, RuleCatalog], list[MonthBilling]]] = {
    "fold": _fold,
    "projector": _projector,
    "archive": _archive,
}


def march(log: Log, catalog: RuleCatalog, engine: str) -> dict[str, Any]:
    (view,) = [b.view() for b in ENGINES[engine](log, catalog) if b.month == MARCH]
    return view


def rpm_rtm_log(program: str, visits: list[tuple[str, str]]) -> Log:
    """A patient enrolled in ``program`` by DR-1 on 2026-03-01 with DR-1's consent,
    20 days of readings from then (one period, Mar 1-30) and 25 interactive minutes of
    treatment management by DR-1 in March; ``visits``: (date, practitioner)."""
    log = Log()
    log.practice()
    for on, who in visits:
        log.visit(P, on=on, practitioner=who)
    log.consent(P, program, on="2026-02-01")
    log.enrollment(P, program, on="2026-03-01")
    for day in range(1, 21):
        log.reading(P, f"2026-03-{day:02d}T12:00:00Z", program=program)
    log.activity(P, "m1", "2026-03-10T10:00:00-04:00", 25, program=program, interactive=True)
    return log


CODES = {"rpm": ["99453", "99454", "99457"], "rtm": ["98975", "98977", "98980"]}


@pytest.mark.parametrize("run_with", list(ENGINES))
@pytest.mark.parametrize(
    ("cite", "proposal", "program", "visits", "reason"),
    [
        (
            "P2: RTM with no visit on record: not an established patient",
            "rtm_established_patient",
            "rtm",
            [],
            "rtm_not_established_patient",
        ),
        (
            "P2: RTM with the last visit more than 3 years before the month's end",
            "rtm_established_patient",
            "rtm",
            [("2023-03-30", "DR-1")],
            "rtm_not_established_patient",
        ),
        (
            "P2: RTM seen within 3 years: established, billed with the switch on too",
            "rtm_established_patient",
            "rtm",
            [("2023-04-01", "DR-2")],
            None,
        ),
        (
            "P1: RPM, the only visit by another practitioner (established, no initiating visit)",
            "rpm_rtm_initiating_visit",
            "rpm",
            [("2025-12-01", "DR-2")],
            "missing_initiating_visit",
        ),
        (
            "P1: RPM, DR-1's visit after the episode's start",
            "rpm_rtm_initiating_visit",
            "rpm",
            [("2025-12-01", "DR-2"), ("2026-03-02", "DR-1")],
            "missing_initiating_visit",
        ),
        (
            "P1: RPM, DR-1's visit more than 3 years before the episode's start",
            "rpm_rtm_initiating_visit",
            "rpm",
            [("2025-12-01", "DR-2"), ("2023-02-28", "DR-1")],
            "missing_initiating_visit",
        ),
        (
            "P1: RPM, DR-1's visit on the episode's first day: billed with the switch on too",
            "rpm_rtm_initiating_visit",
            "rpm",
            [("2026-03-01", "DR-1")],
            None,
        ),
        (
            "P1: RTM needs it as well",
            "rpm_rtm_initiating_visit",
            "rtm",
            [("2025-12-01", "DR-2")],
            "missing_initiating_visit",
        ),
        (
            "P1: RTM, DR-1 seen 3 years to the day before the episode: billed",
            "rpm_rtm_initiating_visit",
            "rtm",
            [("2023-03-01", "DR-1")],
            None,
        ),
    ],
)
def test_proposal_switch_blocks_only_when_on(
    run_with: str,
    cite: str,
    proposal: str,
    program: str,
    visits: list[tuple[str, str]],
    reason: str | None,
) -> None:
    """docs/rules.md §7.2 P1 and P2, §6.2 step 6, G11."""
    log = rpm_rtm_log(program, visits)
    codes = [{"code": c, "units": 1} for c in CODES[program]]
    off = march(log, SHIPPED_CATALOG, run_with)
    assert (off["billable"], off["blocked"], off["flags"]) == (codes, [], []), cite
    on = march(log, catalog_with(proposal), run_with)
    if reason is None:
        assert (on["billable"], on["blocked"], on["flags"]) == (codes, [], []), cite
    else:
        assert on["billable"] == [], cite
        assert on["blocked"] == [dict(c, reasons=[reason]) for c in codes]
        assert on["flags"] == [reason]
        assert on["estimated_payment"] == 0.0


def test_p2_leaves_rpm_alone() -> None:
    """§7.2 P2 is about RTM: RPM already needs an established patient (G11) and keeps its
    own reason, with or without the switch."""
    log = rpm_rtm_log("rpm", [])
    for catalog in (SHIPPED_CATALOG, catalog_with("rtm_established_patient")):
        view = march(log, catalog, "fold")
        assert {tuple(b["reasons"]) for b in view["blocked"]} == {("rpm_not_established_patient",)}
        assert view["flags"] == ["rpm_not_established_patient"]

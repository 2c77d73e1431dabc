"""The rule catalog is an argument of the core: a draft book changes billing when passed
in (no package file touched), the billing line names its rule year, a month billed with
the provisional 2027 book is flagged ``rules_provisional:2027``, and a month past the last
book is priced with it and flagged ``rules_extrapolated:<year>`` (docs/rules.md §6.3)."""

from __future__ import annotations

import pickle
from datetime import date
from pathlib import Path

import orjson

from projections.alerts import approaching
from projections.audit import audit_month
from projections.claims import month_claims
from projections.engine import Projector, fold, replay
from projections.rules import SHIPPED_CATALOG, RuleCatalog, parse_book
from schemas.events import Event
from schemas.views import PatientMonthView
from streams.archive.replay import replay_archive
from streams.archive.store import write_events
from support.builders import Log
from support.rule_books import draft_2027, edited, shipped_text

P = "P-1"
# 99490 needs 20 minutes in the shipped books; the draft 2027 book (the 2026 book moved to
# 2027: final, not provisional) asks for 15 and replaces the shipped provisional 2027 book
DRAFT_2027 = draft_2027(("threshold_minutes = 20 ", "threshold_minutes = 15 "))
WITH_DRAFT = SHIPPED_CATALOG.with_books(DRAFT_2027)


def ccm_log(minutes: int = 16) -> Log:
    """A documented CCM patient with ``minutes`` of staff time in March 2026, 2027 and 2028
    (after the last shipped book)."""
    log = Log()
    log.practice()
    log.consent(P, "ccm", on="2026-01-01")
    log.conditions(P)
    log.care_plan(P, "ccm", on="2026-01-01")
    log.activity(P, "a1", "2026-03-03T10:00:00-05:00", minutes)
    log.activity(P, "a2", "2027-03-03T10:00:00-05:00", minutes)
    log.activity(P, "a3", "2028-03-03T10:00:00-05:00", minutes)
    log.add("month.closed", {"month": "2027-03"}, event_id="close-2027-03")
    return log


def views(events: list[Event], catalog: RuleCatalog = SHIPPED_CATALOG) -> dict[str, dict]:
    return {b.month: b.view() for b in replay(events, catalog=catalog)}


def test_a_month_past_the_last_book_is_priced_with_it_and_flagged() -> None:
    got = views(ccm_log().events())
    years = [got[m]["rule_year"] for m in ("2026-03", "2027-03", "2028-03")]
    assert years == [2026, 2027, 2027]
    # 2028 is past the last (provisional) book: extrapolated, and still provisional
    assert got["2028-03"]["flags"] == [
        "below_threshold:99490",
        "rules_extrapolated:2027",
        "rules_provisional:2027",
    ]
    assert got["2028-03"]["payment_provisional"] is True
    for month in ("2026-03", "2027-03"):
        assert not any(f.startswith("rules_extrapolated") for f in got[month]["flags"])


def test_a_month_of_the_provisional_book_is_flagged_not_extrapolated() -> None:
    got = views(ccm_log().events())
    assert got["2027-03"]["flags"] == ["below_threshold:99490", "rules_provisional:2027"]
    assert got["2027-03"]["payment_provisional"] is True
    assert got["2026-03"]["flags"] == ["below_threshold:99490"]
    assert got["2026-03"]["payment_provisional"] is False


def test_a_draft_book_passed_in_changes_billing() -> None:
    events = ccm_log().events()
    shipped, drafted = views(events), views(events, WITH_DRAFT)
    assert shipped["2027-03"]["billable"] == []
    assert drafted["2027-03"]["billable"] == [{"code": "99490", "units": 1}]
    assert drafted["2027-03"]["rule_year"] == 2027
    assert drafted["2027-03"]["flags"] == []  # the draft is final: no longer provisional
    assert drafted["2027-03"]["payment_provisional"] is False
    assert drafted["2028-03"]["flags"] == ["rules_extrapolated:2027"]  # past the draft
    assert drafted["2026-03"] == shipped["2026-03"]  # 2026 still by the shipped book
    kept = SHIPPED_CATALOG.for_month("2027-03")  # nothing shipped changed
    assert (kept.year, kept.provisional) == (2027, True)
    assert kept.code("99490").threshold_minutes == 20


def test_a_draft_replacing_a_shipped_year_changes_that_year() -> None:
    draft = parse_book(
        edited(shipped_text(2026), ("threshold_minutes = 20 ", "threshold_minutes = 15 ")),
        "2026.toml",
    )
    got = views(ccm_log().events(), SHIPPED_CATALOG.with_books(draft))
    assert got["2026-03"]["billable"] == [{"code": "99490", "units": 1}]
    assert views(ccm_log().events())["2026-03"]["billable"] == []


def test_a_month_before_the_first_book_uses_the_first_book_unflagged() -> None:
    """Kept as it was: the earliest book, no flag (the first book begins 2025-01)."""
    log = Log()
    log.practice()
    log.activity(P, "a1", "2024-12-03T10:00:00-05:00", 25)
    [billing] = replay(log.events())
    assert (billing.month, billing.rule_year) == ("2024-12", 2025)
    assert not any(f.startswith("rules_extrapolated") for f in billing.flags)


def test_the_billing_line_is_the_published_view_with_its_rule_year() -> None:
    for view in views(ccm_log().events()).values():
        assert PatientMonthView.model_validate(view).rule_year == view["rule_year"]
        assert list(view)[:4] == ["org_id", "patient_id", "month", "rule_year"]


def test_the_projector_takes_the_catalog() -> None:
    events = ccm_log().events()
    projector = Projector(catalog=WITH_DRAFT)
    for event in events:
        projector.step(event)
    assert [b.view() for b in projector.billing()] == list(views(events, WITH_DRAFT).values())


def test_claims_take_the_catalog() -> None:
    ledger = fold(ccm_log().events())
    assert month_claims(ledger, "o1", "2027-03") == ([], 0.0)
    [line], total = month_claims(ledger, "o1", "2027-03", catalog=WITH_DRAFT)
    assert (line.code, line.date_of_service, line.basis) == ("99490", date(2027, 3, 3), "time_met")
    assert line.fee == DRAFT_2027.fee("99490") and total == line.estimated_payment


def test_the_audit_takes_the_catalog() -> None:
    events = ccm_log().events()
    shipped = audit_month(events, "o1", P, "2027-03")
    drafted = audit_month(events, "o1", P, "2027-03", catalog=WITH_DRAFT)
    assert (shipped.billing.rule_year, drafted.billing.rule_year) == (2027, 2027)
    assert "rules_provisional:2027" in shipped.billing.flags
    assert "rules_provisional:2027" not in drafted.billing.flags
    assert [ln.code for ln in shipped.billing.billable] == []
    assert [ln.code for ln in drafted.billing.billable] == ["99490"]


def test_alerts_take_the_catalog() -> None:
    [billing] = [b for b in replay(ccm_log(12).events()) if b.month == "2026-03"]
    today = date(2026, 3, 27)  # 8 minutes short of 99490 with 4 days left
    assert [a.code for a in approaching(billing, today)] == ["99490"]
    quieter = parse_book(
        edited(
            shipped_text(2026),
            ("approaching_within_minutes = 10", "approaching_within_minutes = 5"),
        ),
        "2026.toml",
    )
    assert approaching(billing, today, SHIPPED_CATALOG.with_books(quieter)) == []


def test_the_archive_replay_takes_the_catalog(tmp_path: Path) -> None:
    log = ccm_log()
    raws = [orjson.dumps(e) for e in log.raw]
    write_events(tmp_path, zip(log.events(), raws, strict=True), partitions=1)
    got = {b.month: b.view() for b in replay_archive(tmp_path, threads=1, catalog=WITH_DRAFT)[0]}
    assert got == views(log.events(), WITH_DRAFT)


def test_a_catalog_survives_pickling_for_worker_processes() -> None:
    again = pickle.loads(pickle.dumps(WITH_DRAFT))
    assert views(ccm_log().events(), again) == views(ccm_log().events(), WITH_DRAFT)

"""Rule years as CMS published them (issue 13), end to end through the engine: a month of
the provisional 2027 book, a month past it, and the G0511 transition window of an FQHC.

docs/rules.md §5 (fees), §6.3 (``rules_provisional`` / ``rules_extrapolated``), §7 D-11
(G0511 through 2025-09-30, S29), §7.2 (the provisional 2027 book).
"""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest

from projections.claims import month_claims
from projections.engine import fold
from support.builders import Log

pytestmark = pytest.mark.usefixtures("engine")

P = "P-1"


def ccm_log(facility_type: str = "office") -> Log:
    """A practice and a CCM patient whose every gate passes (consent since 2025-01-01)."""
    log = Log()
    log.practice(facility_type=facility_type)
    log.documented(P)
    return log


def billed(view: dict[str, Any]) -> list[tuple[str, int]]:
    return [(b["code"], b["units"]) for b in view["billable"]]


# --- 2027: the provisional book ----------------------------------------------------------


def test_a_january_2027_ccm_month_is_priced_provisionally() -> None:
    """Issue 13: 99490 at 1.98 x 32.8409 (the proposed CF, S28) = $65.02, rule year 2027,
    flagged ``rules_provisional:2027``, its payment provisional."""
    log = ccm_log()
    log.activity(P, "a1", "2027-01-12T10:00:00-05:00", 25)
    view = log.view(P, "2027-01")
    assert billed(view) == [("99490", 1)]
    assert view["rule_year"] == 2027
    assert view["estimated_payment"] == 65.02
    assert view["flags"] == ["rules_provisional:2027"]
    assert view["payment_provisional"] is True


def test_the_year_boundary_changes_book_fee_and_provisional() -> None:
    """The same 25 minutes in December 2026 (RVU26A, CF 33.4009: $66.13, final) and
    January 2027 (CF 32.8409: $65.02, provisional)."""
    log = ccm_log()
    log.activity(P, "a1", "2026-12-15T10:00:00-05:00", 25)
    log.activity(P, "a2", "2027-01-12T10:00:00-05:00", 25)
    december, january = log.view(P, "2026-12"), log.view(P, "2027-01")
    assert (december["rule_year"], december["estimated_payment"]) == (2026, 66.13)
    assert (december["flags"], december["payment_provisional"]) == ([], False)
    assert (january["rule_year"], january["estimated_payment"]) == (2027, 65.02)
    assert january["payment_provisional"] is True


def test_a_2027_month_with_an_addon_adds_both_provisional_fees() -> None:
    """45 minutes: 99490 $65.02 + 99439 (1.51 RVU) $49.59 (docs/rules.md §5, 2027)."""
    log = ccm_log()
    log.activity(P, "a1", "2027-03-03T10:00:00-05:00", 45)
    view = log.view(P, "2027-03")
    assert billed(view) == [("99439", 1), ("99490", 1)]
    assert view["estimated_payment"] == 114.61
    assert view["flags"] == ["rules_provisional:2027"]


def test_a_month_past_the_provisional_book_is_extrapolated_and_provisional() -> None:
    """§6.3: 2028 has no book; priced with the 2027 one, flagged both ways."""
    log = ccm_log()
    log.activity(P, "a1", "2028-01-12T10:00:00-05:00", 25)
    view = log.view(P, "2028-01")
    assert (view["rule_year"], view["estimated_payment"]) == (2027, 65.02)
    assert view["flags"] == ["rules_extrapolated:2027", "rules_provisional:2027"]
    assert view["payment_provisional"] is True


def test_a_2027_month_with_nothing_billable_is_still_flagged() -> None:
    """The flag is about the rules the month was judged by, billable lines or not."""
    log = ccm_log()
    log.activity(P, "a1", "2027-02-03T10:00:00-05:00", 10)
    view = log.view(P, "2027-02")
    assert billed(view) == [] and view["estimated_payment"] == 0.0
    assert view["flags"] == ["below_threshold:99490", "rules_provisional:2027"]
    assert view["payment_provisional"] is True


@pytest.mark.single_engine
def test_a_2027_claim_line_says_its_payment_is_provisional() -> None:
    log = ccm_log()
    log.activity(P, "a1", "2027-01-12T10:00:00-05:00", 25)
    log.activity(P, "a2", "2026-12-15T10:00:00-05:00", 25)
    for month in ("2026-12", "2027-01"):
        log.add("month.closed", {"month": month}, event_id=f"close-{month}")
    ledger = fold(log.events())
    [line], total = month_claims(ledger, "o1", "2027-01")
    assert (line.code, line.date_of_service, line.fee) == ("99490", date(2027, 1, 12), 65.02)
    assert line.payment_provisional is True and total == 65.02
    [earlier], _ = month_claims(ledger, "o1", "2026-12")
    assert (earlier.fee, earlier.payment_provisional) == (66.13, False)


# --- D-11: the G0511 transition through 2025-09-30 (S29) ---------------------------------


def test_an_fqhc_carries_the_g0511_option_in_august_2025_not_in_october() -> None:
    """§3.8, §6.2 step 13: an RHC/FQHC month with billable lines is flagged
    ``g0511_transition_option`` in the window 2025-01-01 to 2025-09-30, not after."""
    log = ccm_log(facility_type="fqhc")
    log.activity(P, "a1", "2025-08-12T10:00:00-04:00", 25)
    log.activity(P, "a2", "2025-10-14T10:00:00-04:00", 25)
    august, october = log.view(P, "2025-08"), log.view(P, "2025-10")
    assert billed(august) == billed(october) == [("99490", 1)]
    assert august["flags"] == ["g0511_transition_option"]
    assert october["flags"] == []


def test_the_g0511_window_ends_with_september_2025() -> None:
    """The last day of the window (local time) is in; the next day is not."""
    log = ccm_log(facility_type="rhc")
    log.activity(P, "a1", "2025-09-30T22:00:00-04:00", 25)
    log.activity(P, "a2", "2025-10-01T09:00:00-04:00", 25)
    assert log.view(P, "2025-09")["flags"] == ["g0511_transition_option"]
    assert log.view(P, "2025-10")["flags"] == []


def test_an_office_practice_never_carries_the_g0511_option() -> None:
    log = ccm_log()
    log.activity(P, "a1", "2025-08-12T10:00:00-04:00", 25)
    assert log.view(P, "2025-08")["flags"] == []

"""Invariants every patient-month must satisfy, checked over realistic synthetic logs.

They restate docs/rules.md's hard limits independently of how the engine reaches its
answer: a regression anywhere in accounting or billing that breaks one shows up here.
"""

from __future__ import annotations

import re

import orjson
import pytest

from projections.billing import MonthBilling
from projections.engine import replay
from projections.rules import SHIPPED_CATALOG
from schemas.events import parse_event
from streams.demo.synthetic import generate_events

FLAG = re.compile(
    r"^(missing_consent|consent_after_activity|missing_care_plan"
    r"|insufficient_chronic_conditions|complex_criteria_not_met|rpm_insufficient_days"
    r"|rpm_no_interactive_communication|rpm_not_established_patient|overlap|duplicate_event"
    r"|missing_initiating_visit|rtm_not_established_patient"
    r"|concurrent_staff_time|cross_month_split|face_to_face_excluded"
    r"|non_clinical_staff_excluded|inpatient_time_excluded|physician_time_pooled"
    r"|g0511_transition_option"
    r"|(below_threshold|cap_reached|units_exceed_common_payer_edit|addon_without_base):\w+"
    r"|exclusive_conflict:\w+\+\w+|double_count:[a-z]+\+[a-z]+"
    r"|multiple_practitioners:[a-z]+|disputed_rule:[a-z_]+|rules_extrapolated:\d{4}"
    r"|rules_provisional:\d{4})$"
)
CCM_BASES = {"99490", "99491", "99487"}


@pytest.fixture(scope="module", params=[7, 11])
def billings(request: pytest.FixtureRequest) -> list[MonthBilling]:
    events = [parse_event(orjson.dumps(obj)) for obj in generate_events(25_000, seed=request.param)]
    result = replay(events)
    assert len(result) > 500
    return result


def test_every_flag_and_reason_is_in_the_rules_vocabulary(billings: list[MonthBilling]) -> None:
    """docs/rules.md §6.3: flags use its names exactly."""
    for b in billings:
        for flag in b.flags:
            assert FLAG.match(flag), (b.month, flag)
        for blocked in b.blocked:
            assert blocked.reasons
            for reason in blocked.reasons:
                assert FLAG.match(reason), (b.month, reason)


def test_add_ons_never_billed_without_their_base(billings: list[MonthBilling]) -> None:
    """G15: an add-on is billable only with its base, same practitioner, same month."""
    for b in billings:
        book = SHIPPED_CATALOG.year(b.rule_year)
        billed = {(ln.code, ln.practitioner_id) for ln in b.billable}
        for ln in b.billable:
            rule = book.code(ln.code)
            if rule.role == "addon":
                assert (rule.base, ln.practitioner_id) in billed, (b.month, ln)


def test_caps_and_exclusive_combinations_hold(billings: list[MonthBilling]) -> None:
    """§3.1 caps and combinations, §4 matrix: 99439 at most 2; one CCM practitioner and
    one CCM base; never CCM and PCM by the same practitioner; never RPM and RTM."""
    for b in billings:
        units = b.units()
        assert units.get("99439", 0) <= 2
        ccm = [ln for ln in b.billable if ln.family == "ccm"]
        assert len({ln.practitioner_id for ln in ccm}) <= 1
        assert len(CCM_BASES & set(units)) <= 1
        pcm_by = {ln.practitioner_id for ln in b.billable if ln.family == "pcm"}
        assert not pcm_by & {ln.practitioner_id for ln in ccm}
        families = {ln.family for ln in b.billable}
        assert not {"rpm", "rtm"} <= families
        assert not ({"99457", "99458"} & set(units) and "99470" in units)


def test_billable_time_codes_meet_their_thresholds(billings: list[MonthBilling]) -> None:
    """G3: a time code is billed only when the counted minutes reach its full threshold."""
    for b in billings:
        book = SHIPPED_CATALOG.year(b.rule_year)
        for ln in b.billable:
            rule = book.code(ln.code)
            if rule.kind == "time" and rule.role == "base":
                assert b.minutes.get(ln.family, 0.0) >= rule.threshold_minutes, (b.month, ln)


def test_estimated_payment_is_the_sum_of_fees(billings: list[MonthBilling]) -> None:
    """§5: estimated payment = units x RVU x conversion factor of the rule year."""
    for b in billings:
        book = SHIPPED_CATALOG.year(b.rule_year)
        expected = sum((book.fee(ln.code) or 0.0) * ln.units for ln in b.billable)
        assert b.estimated_payment == pytest.approx(round(expected, 2), abs=0.005)


def test_payment_is_provisional_exactly_when_its_book_is(billings: list[MonthBilling]) -> None:
    """§6.3: a month billed with a provisional book carries ``rules_provisional:<year>``; it
    or a month past the last book (``rules_extrapolated:<year>``) has a provisional payment."""
    for b in billings:
        book = SHIPPED_CATALOG.year(b.rule_year)
        past_last = SHIPPED_CATALOG.extrapolated(b.month)
        assert (f"rules_provisional:{b.rule_year}" in b.flags) is book.provisional, b.month
        assert (f"rules_extrapolated:{b.rule_year}" in b.flags) is past_last, b.month
        assert b.view()["payment_provisional"] is (book.provisional or past_last), b.month


def test_a_line_is_either_billable_or_blocked(billings: list[MonthBilling]) -> None:
    """A code held back for a practitioner is never billed for them in the same month."""
    for b in billings:
        billable = {(ln.code, ln.practitioner_id) for ln in b.billable}
        for blocked in b.blocked:
            assert (blocked.line.code, blocked.line.practitioner_id) not in billable

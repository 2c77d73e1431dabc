"""Month close and claim export (docs/design.md "caretally close"; docs/rules.md G16, §6.3).

Pure: claim lines and their dates of service from the core's billing; ``late_activity``
alerts naming the claim line billed at close; ``caretally close`` without a broker. End to
end on a real broker: tests/integration/test_close_pipeline.py.
"""

from __future__ import annotations

import pickle
from pathlib import Path

from click.testing import CliRunner

from projections.claims import ClaimLine, claim_line_id, claim_refs, month_claims, reach
from projections.engine import Projector, fold
from schemas.views import Alert
from streams.cli.main import cli
from streams.kafka.broker import free_port
from support.builders import Log

P, Q = "P-000123", "P-000456"
MARCH = "2025-03"
CLOSE = "test-close"  # the month.closed event id keying claim line ids where a log has none


def claims(log: Log, org: str = "o1", month: str = MARCH) -> dict[tuple[str, str], ClaimLine]:
    """(patient, code) -> claim line, after checking the lines against the core's billing:
    same codes and units per patient-month, payments adding up to estimated_payment. The
    ids are keyed by the log's latest close of the month, else by :data:`CLOSE`."""
    ledger = fold(log.events())
    practice = ledger.practices.get(org)
    close_id = CLOSE if practice is None else practice.close_ids.get(month, CLOSE)
    lines, total = month_claims(ledger, org, month, close_id)
    billed = {b.patient_id: b for b in log.billing() if b.month == month and b.org_id == org}
    for pid, b in billed.items():
        units: dict[str, int] = {}
        for ln in lines:
            if ln.patient_id == pid:
                units[ln.code] = units.get(ln.code, 0) + ln.units
        assert units == b.units()
        mine = [ln.estimated_payment for ln in lines if ln.patient_id == pid]
        assert round(sum(mine), 2) == b.estimated_payment
    assert round(sum(ln.estimated_payment for ln in lines), 2) == total
    return {(ln.patient_id, ln.code): ln for ln in lines}


def ccm(facility: str = "office", plan_on: str = "2025-01-01") -> Log:
    log = Log()
    log.practice(facility_type=facility)
    log.documented(P, plan_on=plan_on)
    return log


# --- dates of service (docs/rules.md G16) ---------------------------------------------------------


def test_ccm_date_of_service_is_the_local_day_the_20_minutes_were_met() -> None:
    """G16 bullet 1: the date the minimum time was met. 10 + 8 minutes leave 99490 two
    minutes short; an evening call on March 12 (already March 13 in UTC) completes it."""
    log = ccm()
    log.activity(P, "a1", "2025-03-03T10:00:00-05:00", 10)
    log.activity(P, "a2", "2025-03-10T10:00:00-04:00", 8)
    log.activity(P, "a3", "2025-03-12T22:00:00-04:00", 5)  # 02:00Z on the 13th
    log.activity(P, "a4", "2025-03-20T10:00:00-04:00", 5)  # later time moves nothing
    line = claims(log)[(P, "99490")]
    assert (line.date_of_service.isoformat(), line.basis) == ("2025-03-12", "time_met")
    assert (line.units, line.practitioner_id, line.fee, line.estimated_payment) == (
        1,
        "DR-1",
        60.49,
        60.49,
    )
    assert line.claim_line_id == claim_line_id("o1", P, MARCH, "99490", "DR-1", close_id=CLOSE)


def test_time_met_counts_concurrent_staff_minutes_once() -> None:
    """G8 default: two nurses on the same 15 minutes count 15, so 20 minutes are met only
    by the next call (March 9), not on March 3 as a sum of 30 would say."""
    log = ccm()
    log.activity(P, "a1", "2025-03-03T10:00:00-05:00", 15, staff="RN-1")
    log.activity(P, "a2", "2025-03-03T10:00:00-05:00", 15, staff="RN-2")
    log.activity(P, "a3", "2025-03-09T10:00:00-04:00", 10, staff="RN-1")
    assert claims(log)[(P, "99490")].date_of_service.isoformat() == "2025-03-09"


def test_base_and_addon_share_the_day_the_last_addon_unit_was_met() -> None:
    """G3/G15: 99490 + 2 x 99439 need 60 minutes (met on March 25 by 25 + 20 + 15); more
    minutes past the cap move nothing; the add-on is reported with its base, so both
    lines carry that date (neither may be dated before its own time was met)."""
    log = ccm()
    log.activity(P, "a1", "2025-03-02T10:00:00-05:00", 25)
    log.activity(P, "a2", "2025-03-14T10:00:00-04:00", 20)
    log.activity(P, "a3", "2025-03-25T10:00:00-04:00", 20)
    log.activity(P, "a4", "2025-03-28T10:00:00-04:00", 20)  # capped: earns nothing
    got = claims(log)
    assert {c: (got[(P, c)].units, got[(P, c)].date_of_service.isoformat()) for _, c in got} == {
        "99490": (1, "2025-03-25"),
        "99439": (2, "2025-03-25"),
    }
    assert got[(P, "99439")].estimated_payment == round(2 * 45.93, 2)


def test_physician_track_dates_from_personal_time_only() -> None:
    """§6.2 step 7b: 99491 + 99437 count the practitioner's personal minutes (G4c): 60 of
    them are met on March 18, though pooled with the nurse's they were met on March 4."""
    log = ccm()
    log.activity(P, "n1", "2025-03-02T10:00:00-05:00", 30)
    doc = {"staff": "DR-1", "role": "physician"}
    log.activity(P, "d1", "2025-03-04T10:00:00-05:00", 35, **doc)
    log.activity(P, "d2", "2025-03-18T10:00:00-04:00", 30, **doc)
    got = claims(log)
    assert sorted(c for _, c in got) == ["99437", "99491"]
    assert {got[(P, c)].date_of_service.isoformat() for c in ("99437", "99491")} == {"2025-03-18"}


def test_care_plan_recorded_after_the_time_was_met_dates_the_line() -> None:
    """docs/rules.md is silent; conservatively a CCM line is not dated before the care plan its
    gate needs (G12) when that plan was first recorded inside the month."""
    log = ccm(plan_on="2025-03-20")
    log.activity(P, "a1", "2025-03-05T10:00:00-05:00", 25)
    line = claims(log)[(P, "99490")]
    assert (line.date_of_service.isoformat(), line.basis) == ("2025-03-20", "care_plan_on")


def test_rhc_fqhc_date_of_service_is_the_months_last_day() -> None:
    """G16 bullet 2 [S, S19]: RHC/FQHC may use a date after the minimum requirements are
    met, up to the month's last day: the last day is always in that window."""
    for facility in ("fqhc", "rhc"):
        log = ccm(facility=facility)
        log.activity(P, "a1", "2025-03-05T10:00:00-05:00", 25)
        line = claims(log)[(P, "99490")]
        assert (line.date_of_service.isoformat(), line.basis) == (
            "2025-03-31",
            "rhc_fqhc_month_end",
        )


def rpm_log(enrolled_on: str) -> Log:
    log = Log()
    log.practice()
    log.conditions(P)
    log.consent(P, "rpm")
    log.enrollment(P, "rpm", on=enrolled_on)
    log.visit(P)
    return log


def test_device_codes_are_dated_at_the_end_of_their_30_day_period() -> None:
    """§6.1/G1: a period's device codes are reported in the month it ends; docs/rules.md names no
    date of service [U], so the period's last day (March 30 for a period opened March 1,
    not the month's last day). 99453 comes with the first period, on the same date."""
    log = rpm_log("2025-03-01")
    for day in range(2, 20):
        log.reading(P, f"2025-03-{day:02d}T12:00:00-04:00")
    log.activity(P, "r1", "2025-03-21T10:00:00-04:00", 22, program="rpm", interactive=True)
    got = claims(log)
    assert {c: (ln.date_of_service.isoformat(), ln.basis) for (_, c), ln in got.items()} == {
        "99453": ("2025-03-30", "device_period_end"),
        "99454": ("2025-03-30", "device_period_end"),
        "99457": ("2025-03-21", "time_met"),
    }


def test_two_device_periods_ending_in_one_month_are_two_lines() -> None:
    """Periods of an episode opened January 31 end on March 1 and March 31: two 99454 lines
    in March, each dated at its period's end, with distinct stable ids."""
    log = rpm_log("2025-01-31")
    for day in list(range(12, 29)):
        log.reading(P, f"2025-02-{day:02d}T12:00:00-05:00")
    for day in range(3, 20):
        log.reading(P, f"2025-03-{day:02d}T12:00:00-04:00")
    lines, _ = month_claims(fold(log.events()), "o1", MARCH, CLOSE)
    [b] = [b for b in log.billing() if b.month == MARCH]
    assert b.units() == {"99453": 1, "99454": 2}  # 99453 with the episode's first period
    assert [(ln.code, ln.date_of_service.isoformat()) for ln in lines] == [
        ("99453", "2025-03-01"),
        ("99454", "2025-03-01"),
        ("99454", "2025-03-31"),
    ]
    assert lines[1].claim_line_id == claim_line_id("o1", P, MARCH, "99454", "DR-1", close_id=CLOSE)
    assert lines[2].claim_line_id == claim_line_id(
        "o1", P, MARCH, "99454", "DR-1", 2, close_id=CLOSE
    )
    assert len({ln.claim_line_id for ln in lines}) == 3
    assert [r[3] for r in claim_refs(b, CLOSE)] == [ln.claim_line_id for ln in lines]
    assert round(sum(ln.estimated_payment for ln in lines), 2) == b.estimated_payment


def test_month_claims_keep_to_the_org_and_month() -> None:
    log = ccm()
    log.activity(P, "a1", "2025-03-05T10:00:00-05:00", 25)
    log.activity(P, "a2", "2025-04-05T10:00:00-04:00", 25)
    other = Log(org="o2")
    other.documented(Q)
    other.activity(Q, "b1", "2025-03-05T10:00:00-05:00", 25)
    log.raw.extend(other.raw)
    got = claims(log)
    assert list(got) == [(P, "99490")]
    assert [(ln.org_id, ln.patient_id) for ln in claims(log, "o2").values()] == [("o2", Q)]


def test_reach_counts_time_in_order_once_or_summed() -> None:
    iv = [(0, 10), (5, 15), (100, 110)]
    assert reach(iv, 15) == 15 and reach(iv, 16) == 101 and reach(iv, 26) is None
    assert reach(iv, 15, once=False) == 10  # 0-5 at one, 5-10 at two: 15 by t=10
    assert reach(iv, 21, once=False) == 101


# --- late_activity names the claim line (docs/rules.md §6.3) ------------------------------------


def late_alerts(log: Log) -> list[Alert]:
    proj = Projector()
    return [a for ev in log.events() for a in proj.step(ev).alerts if a.kind == "late_activity"]


def test_late_activity_and_void_name_the_claim_line_billed_at_close() -> None:
    log = ccm()
    log.activity(P, "a1", "2025-03-03T10:00:00-05:00", 25)
    log.activity(P, "a2", "2025-03-10T10:00:00-04:00", 20)  # 45 min: 99490 + 99439
    close = log.close(MARCH)["event_id"]
    log.activity(P, "a3", "2025-03-30T10:00:00-04:00", 20)  # late: 65 min, 99439 x2
    log.void(P, "a2")  # late void: 45 min, 99439 x1
    log.activity(P, "a4", "2025-04-02T10:00:00-04:00", 30)  # April is open: no alert
    base, addon = (
        claim_line_id("o1", P, MARCH, c, "DR-1", close_id=close) for c in ("99490", "99439")
    )
    first, second = late_alerts(log)
    assert (first.code, first.month, first.patient_id) == ("99439", MARCH, P)
    assert first.detail == (
        "activity a3 lands in closed month 2025-03; affects "
        f"99439 by DR-1 (claim line {addon}): x1 at close, x2 now; "
        f"99490 by DR-1 (claim line {base}): x1 at close, x1 now"
    )
    assert second.detail.startswith("void a2 lands in closed month 2025-03; affects ")
    assert f"99439 by DR-1 (claim line {addon}): x1 at close, x1 now" in second.detail
    assert [a.cause_event_id for a in (first, second)] == [
        log.raw[-3]["event_id"],
        log.raw[-2]["event_id"],
    ]
    assert P not in first.detail + second.detail  # never the patient identifier
    # the ids are the claim lines of the log up to the close, as `caretally close` exports
    at_close = Log()
    at_close.raw = log.raw[:-3]
    exported = claims(at_close)
    assert {exported[(P, "99490")].claim_line_id, exported[(P, "99439")].claim_line_id} == {
        base,
        addon,
    }
    # replaying the same log yields the same alerts, ids included
    assert [a.model_dump() for a in late_alerts(log)] == [a.model_dump() for a in (first, second)]
    assert first.alert_id != second.alert_id


def test_nothing_billed_at_close_may_create_a_claim_line() -> None:
    log = ccm()
    log.activity(P, "a1", "2025-03-03T10:00:00-05:00", 15)  # below 20 minutes
    log.close(MARCH)
    log.activity(P, "a2", "2025-03-30T10:00:00-04:00", 2)  # still below
    log.activity(P, "a3", "2025-03-31T10:00:00-04:00", 5)  # 22 min: creates 99490
    first, second = late_alerts(log)
    assert first.code is None
    assert first.detail == (
        "activity a2 lands in closed month 2025-03; nothing was billed for this patient-month "
        "at close; it may create a claim line"
    )
    assert second.code == "99490"  # no id: it gets one when a close bills it
    assert second.detail.endswith("affects 99490 by DR-1: not billed at close, x1 now")


def test_a_reissued_close_and_a_snapshot_keep_the_claims_at_close() -> None:
    """A second ``month.closed`` replaces the claims remembered at the first; the state is
    plain data, so a pickled Projector (the worker's snapshot) names the same lines."""
    log = ccm()
    log.activity(P, "a1", "2025-03-03T10:00:00-05:00", 15)
    log.close(MARCH)
    log.activity(P, "a2", "2025-03-30T10:00:00-04:00", 10)  # late: 99490 now
    reissued = log.close(MARCH)["event_id"]  # 99490 x1 is billed at this close
    proj = Projector()
    for ev in log.events():
        proj.step(ev)
    line = claim_line_id("o1", P, MARCH, "99490", "DR-1", close_id=reissued)
    assert proj.closed_claims == {("o1", P, MARCH): (("99490", 1, "DR-1", line),)}
    restored = pickle.loads(pickle.dumps(proj))
    log.void(P, "a2")
    [ev] = log.events()[-1:]
    [alert] = [a for a in restored.step(ev).alerts if a.kind == "late_activity"]
    assert alert.detail.endswith(f"99490 by DR-1 (claim line {line}): x1 at close, x0 now")


def test_a_knock_on_change_names_the_line_of_another_family() -> None:
    """§6.2 step 9: with PCM the program of record, late PCM time by the same practitioner
    blocks the CCM line billed at close; the alert names it (x1 -> x0) and the PCM line
    the event creates (without an id: a claim line id is keyed by the close billing it)."""
    log = ccm()
    log.care_plan(P, "pcm")
    log.consent(P, "pcm")
    log.enrollment(P, "pcm", on="2025-02-01")  # later than the CCM enrollment: of record
    log.activity(P, "a1", "2025-03-03T10:00:00-05:00", 25)
    close = log.close(MARCH)["event_id"]
    log.activity(P, "p1", "2025-03-10T10:00:00-04:00", 35, program="pcm", staff="RN-9")
    [alert] = late_alerts(log)
    ccm_line = claim_line_id("o1", P, MARCH, "99490", "DR-1", close_id=close)
    assert alert.code == "99490"
    assert alert.detail.endswith(
        f"affects 99490 by DR-1 (claim line {ccm_line}): x1 at close, x0 now; "
        "99426 by DR-1: not billed at close, x1 now"
    )


def test_late_rpm_time_names_no_ccm_line() -> None:
    """A late activity of another family and no knock-on effect affects no line billed at
    close: the alert says it may create one, with no code."""
    log = ccm()
    log.consent(P, "rpm")
    log.activity(P, "a1", "2025-03-03T10:00:00-05:00", 25)
    log.close(MARCH)
    log.activity(P, "r1", "2025-03-30T10:00:00-04:00", 5, program="rpm", staff="RN-2")
    [alert] = late_alerts(log)
    assert alert.code is None
    assert alert.detail.endswith(
        "affects no claim line billed at close; it may create a claim line"
    )


def test_close_without_a_broker_fails_clearly(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    args = ["--org", "o1", "--month", MARCH, "--bootstrap", address, "--claims-dir", str(tmp_path)]
    result = CliRunner().invoke(cli, ["close", *args])
    assert result.exit_code == 1
    assert f"no Kafka broker answers at {address}" in result.output
    assert not list(tmp_path.iterdir())


def test_a_claims_dir_that_cannot_be_made_fails_before_any_close(tmp_path: Path) -> None:
    """--claims-dir is created when missing (README's `--claims-dir out/`); when it cannot
    be, the close stops before it reaches Kafka, so no month.closed lands without files."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    address = f"127.0.0.1:{free_port()}"  # nothing listens: reaching it would fail otherwise
    args = ["--org", "o1", "--month", MARCH, "--bootstrap", address]
    result = CliRunner().invoke(cli, ["close", *args, "--claims-dir", str(blocker / "out")])
    assert result.exit_code == 1
    assert "cannot create --claims-dir" in result.output
    assert "no Kafka broker" not in result.output
    made = tmp_path / "new" / "claims"
    result = CliRunner().invoke(cli, ["close", *args, "--claims-dir", str(made)])
    assert made.is_dir()  # made first; then the close fails on the missing broker
    assert f"no Kafka broker answers at {address}" in result.output

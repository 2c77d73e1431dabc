"""`caretally audit`: the auditor's view of one patient-month (projections/audit/, the
command in streams/cli/audit.py, formats in streams/render/audit.py).

Real files, a real Parquet archive read through DuckDB, no mocks.
"""

from __future__ import annotations

import csv
import io
from datetime import datetime
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner, Result

from projections.audit import ActivityRow, AuditNotFound, AuditReport, audit_month
from schemas.events import parse_event
from streams.archive import store as archive_store
from streams.cli.main import cli
from streams.render.audit import CSV_COLUMNS, report_dict
from support.builders import Log

ORG, PATIENT, MONTH = "practice-1", "P-1", "2025-03"
VOID_RECORDED = "2025-03-20T12:00:00Z"


def _ts(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def scenario() -> Log:
    """One March with every reason a minute is not counted (and another patient)."""
    log = Log(org=ORG, recorded_at="2025-03-01T00:00:00Z")
    log.practice()
    log.documented(PATIENT, "ccm")
    log.consent(PATIENT, "bhi")
    log.consent(PATIENT, "pcm", on="2025-03-10")  # a7 starts 10 minutes before it
    log.stay(PATIENT, "2025-03-12", "2025-03-13")
    act = log.activity
    act(PATIENT, "a1", "2025-03-03T10:00:00-05:00", 30, recorded_at="2025-03-03T16:00:00Z")
    # same staff, same program, 10 minutes inside a1: overlap
    act(PATIENT, "a2", "2025-03-03T10:20:00-05:00", 20, recorded_at="2025-03-03T16:05:00Z")
    # same staff, another program, inside a1: double count (a1 was logged first)
    act(
        PATIENT,
        "a3",
        "2025-03-03T10:00:00-05:00",
        10,
        program="bhi",
        recorded_at="2025-03-03T16:10:00Z",
    )
    act(
        PATIENT,
        "a4",
        "2025-03-05T09:00:00-05:00",
        20,
        staff="RN-2",
        recorded_at="2025-03-05T15:00:00Z",
    )
    # the EHR re-sent a4 under new ids (event and activity): duplicate event
    act(
        PATIENT,
        "a4-resent",
        "2025-03-05T09:00:00-05:00",
        20,
        staff="RN-2",
        recorded_at="2025-03-05T15:30:00Z",
    )
    act(
        PATIENT,
        "a5",
        "2025-03-06T09:00:00-05:00",
        15,
        staff="RN-2",
        face_to_face=True,
        recorded_at="2025-03-06T15:00:00Z",
    )
    act(
        PATIENT,
        "a6",
        "2025-03-06T11:00:00-05:00",
        12,
        staff="NC-1",
        role="non_clinical",
        recorded_at="2025-03-06T17:00:00Z",
    )
    act(
        PATIENT,
        "a7",
        "2025-03-09T23:50:00-04:00",
        20,
        staff="RN-3",
        program="pcm",
        recorded_at="2025-03-10T05:00:00Z",
    )
    act(PATIENT, "a8", "2025-03-13T10:00:00-04:00", 25, recorded_at="2025-03-13T15:00:00Z")
    act(PATIENT, "a9", "2025-03-14T10:00:00-04:00", 20, recorded_at="2025-03-14T15:00:00Z")
    act(PATIENT, "a10", "2025-03-17T10:00:00-04:00", 30, recorded_at="2025-03-17T15:00:00Z")
    act(PATIENT, "a10", "2025-03-17T10:05:00-04:00", 25, recorded_at="2025-03-18T15:00:00Z")
    log.void(PATIENT, "a9", reason="wrong patient", recorded_at=VOID_RECORDED)
    # another patient of the same practice, at the same hours
    log.documented("P-2", "ccm")
    act("P-2", "b1", "2025-03-03T10:00:00-05:00", 45, recorded_at="2025-03-03T16:00:00Z")
    return log


def _rows(report: AuditReport) -> dict[tuple[str, int], ActivityRow]:
    return {(r.activity_id, r.version): r for r in report.activities}


def _excluded(row: ActivityRow) -> dict[str, int]:
    return {e.reason: e.seconds for e in row.excluded}


def _ndjson(log: Log, path: Path) -> Path:
    path.write_bytes(b"\n".join(orjson.dumps(e) for e in log.raw) + b"\n")
    return path


def _archive(log: Log, root: Path) -> Path:
    lines = [orjson.dumps(e) for e in log.raw]
    archive_store.write_events(root, [(parse_event(raw), raw) for raw in lines], partitions=4)
    return root


# -- the pure report ----------------------------------------------------------------------


def test_every_exclusion_is_named_with_its_seconds() -> None:
    report = audit_month(scenario().events(), ORG, PATIENT, MONTH)
    rows = _rows(report)
    assert _excluded(rows[("a1", 1)]) == {}
    assert rows[("a1", 1)].counted == 30 * 60
    assert _excluded(rows[("a2", 1)]) == {"overlap": 600}
    assert "kept by a1" in rows[("a2", 1)].excluded[0].detail
    assert _excluded(rows[("a3", 1)]) == {"double_count:ccm+bhi": 600}
    assert _excluded(rows[("a4", 1)]) == {}
    assert _excluded(rows[("a4-resent", 1)]) == {"duplicate_event": 1200}
    assert "as a4" in rows[("a4-resent", 1)].excluded[0].detail
    assert _excluded(rows[("a5", 1)]) == {"face_to_face_excluded": 900}
    assert _excluded(rows[("a6", 1)]) == {"non_clinical_staff_excluded": 720}
    assert _excluded(rows[("a7", 1)]) == {"consent_after_activity": 600}
    assert rows[("a7", 1)].counted == 600
    assert _excluded(rows[("a8", 1)]) == {"inpatient_time_excluded": 1500}
    assert "2025-03-12..2025-03-13" in rows[("a8", 1)].excluded[0].detail

    voided = rows[("a9", 1)]
    assert voided.status == "voided"
    assert _excluded(voided) == {"voided": 1200}
    assert voided.void is not None and voided.void.reason == "wrong patient"
    assert "wrong patient" in voided.excluded[0].detail

    old, new = rows[("a10", 1)], rows[("a10", 2)]
    assert (old.status, old.superseded_by, new.status) == ("superseded", 2, "current")
    assert _excluded(old) == {"amended": 1800} and old.counted == 0
    assert new.counted == 25 * 60 and _excluded(new) == {}
    assert [p.version for p in new.amended_from] == [1]
    changes = {c.field: (c.before, c.after) for c in new.amended_from[0].changes}
    assert changes == {
        "start": ("2025-03-17T10:00:00-04:00", "2025-03-17T10:05:00-04:00"),
        "minutes": ("30", "25"),
    }
    assert "minutes 30 -> 25" in old.excluded[0].detail

    for row in report.activities:  # every second in the month is counted or explained
        assert row.in_month == row.counted + sum(e.seconds for e in row.excluded), row
    assert {r.activity_id for r in report.activities} == {f"a{i}" for i in range(1, 11)} | {
        "a4-resent"
    }  # the other patient's activity is not in this report


def test_counted_minutes_are_the_billing_views(tmp_path: Path) -> None:
    log = scenario()
    report = audit_month(log.events(), ORG, PATIENT, MONTH)
    view = log.view(PATIENT, MONTH)
    per_program: dict[str, int] = {}
    for r in report.activities:
        per_program[r.program] = per_program.get(r.program, 0) + r.counted
    assert {p: round(s / 60, 2) for p, s in per_program.items()} == view["minutes"]
    assert {p.program: round(p.total / 60, 2) for p in report.programs} == view["minutes"]
    assert all(p.concurrent == 0 for p in report.programs)
    b = report.billing
    assert b.minutes == view["minutes"] == {"bhi": 0.0, "ccm": 85.0, "pcm": 10.0}
    assert [{"code": ln.code, "units": ln.units} for ln in b.billable] == view["billable"]
    assert list(b.flags) == view["flags"]
    assert b.estimated_payment == view["estimated_payment"]
    assert sum(ln.amount or 0 for ln in b.billable) == pytest.approx(b.estimated_payment)

    # ... and the numbers `caretally replay` prints for the same file
    path = _ndjson(log, tmp_path / "events.ndjson")
    out = CliRunner().invoke(cli, ["replay", "--input", str(path)])
    assert out.exit_code == 0, out.output
    lines = [orjson.loads(x) for x in out.stdout.splitlines()]
    replayed = next(x for x in lines if x["patient_id"] == PATIENT and x["month"] == MONTH)
    assert replayed["minutes"] == b.minutes


def test_documentation_rules_and_sources() -> None:
    report = audit_month(scenario().events(), ORG, PATIENT, MONTH)
    d = report.documentation
    assert [(c.program, c.on.isoformat(), c.method, c.revoked) for c in d.consents] == [
        ("bhi", "2025-01-01", "verbal", False),
        ("ccm", "2025-01-01", "verbal", False),
        ("pcm", "2025-03-10", "verbal", False),
    ]
    assert [(c.program, c.complexity) for c in d.care_plans] == [("ccm", "low")]
    assert [c.count for c in d.conditions] == [2] and d.conditions_in_effect == 2
    assert [(e.program, e.practitioner_id) for e in d.enrollments] == [("ccm", "DR-1")]
    assert [v.kind for v in d.visits] == ["e_m"] and d.established_patient
    assert [(s.setting, s.admitted_on.isoformat()) for s in d.stays] == [
        ("inpatient", "2025-03-12")
    ]
    b = report.billing
    assert b.rule_year == 2025
    codes = {r.name: r.sources for r in b.rules if r.kind == "code"}
    assert set(codes) == {"99490", "99439"}
    assert "S10" in codes["99490"]
    assert any(r.kind == "gate" and r.name == "ccm" for r in b.rules)
    assert {"S1", "S10"} <= set(b.source_ids)
    assert list(b.source_ids) == sorted(b.source_ids, key=lambda s: int(s[1:]))


def test_device_days_and_periods_are_documented() -> None:
    log = Log(org=ORG)
    log.practice()
    log.documented(PATIENT, "rpm")
    for day in range(1, 17):
        log.reading(PATIENT, f"2025-01-{day:02d}T12:00:00-05:00")
    report = audit_month(log.events(), ORG, PATIENT, "2025-01")
    (dev,) = report.documentation.devices
    assert dev.program == "rpm" and len(dev.days) == 16
    (period,) = dev.periods
    assert (period.start.isoformat(), period.end.isoformat(), period.days) == (
        "2025-01-01",
        "2025-01-30",
        16,
    )
    assert [ln.code for ln in report.billing.billable] == ["99453", "99454"]


def test_as_of_before_and_after_the_void() -> None:
    events = scenario().events()
    before = _rows(audit_month(events, ORG, PATIENT, MONTH, as_of=_ts("2025-03-19T00:00:00Z")))
    a9 = before[("a9", 1)]
    assert (a9.status, a9.counted, a9.excluded, a9.void) == ("current", 1200, (), None)
    at_void = _rows(audit_month(events, ORG, PATIENT, MONTH, as_of=_ts(VOID_RECORDED)))
    a9 = at_void[("a9", 1)]
    assert a9.status == "voided" and a9.counted == 0
    assert a9.void is not None and a9.void.reason == "wrong patient"
    assert _excluded(a9) == {"voided": 1200}

    # before the amendment only version 1 of a10 existed, and it counted
    early = audit_month(events, ORG, PATIENT, MONTH, as_of=_ts("2025-03-17T23:00:00Z"))
    a10 = _rows(early)[("a10", 1)]
    assert (a10.status, a10.versions, a10.counted) == ("current", 1, 1800)
    assert early.as_of == _ts("2025-03-17T23:00:00Z")
    assert early.billing.minutes["ccm"] == 30 + 10 + 20 + 20 + 30  # a1 a2 a4 a9 a10v1


def test_month_that_had_not_begun_or_patient_unknown_is_not_found() -> None:
    events = scenario().events()
    with pytest.raises(AuditNotFound, match="had not begun"):
        audit_month(events, ORG, PATIENT, "2025-04", as_of=_ts("2025-03-25T00:00:00Z"))
    with pytest.raises(AuditNotFound, match="months on record: 2025-03") as exc:
        audit_month(events, ORG, PATIENT, "2025-06")
    assert PATIENT not in str(exc.value)  # messages name no patient identifier
    with pytest.raises(AuditNotFound, match="no events for this patient") as exc:
        audit_month(events, ORG, "P-404", MONTH)
    assert "P-404" not in str(exc.value)
    with pytest.raises(AuditNotFound):
        audit_month(events, "another-org", PATIENT, MONTH)


def test_an_amendment_moving_time_out_of_the_month_is_still_audited() -> None:
    """March's only activity was moved to April: March has no billing line any more, but
    its audit shows the superseded version and where it went."""
    log = Log(org=ORG)
    log.practice()
    log.documented(PATIENT)
    log.activity(PATIENT, "x", "2025-03-31T10:00:00-04:00", 20, recorded_at="2025-03-31T15:00:00Z")
    log.activity(PATIENT, "x", "2025-04-01T10:00:00-04:00", 20, recorded_at="2025-04-01T15:00:00Z")
    march = audit_month(log.events(), ORG, PATIENT, "2025-03")
    assert not march.billing.in_replay and march.billing.minutes == {}
    (row,) = march.activities
    assert (row.version, row.status, row.superseded_by) == (1, "superseded", 2)
    assert _excluded(row) == {"amended": 1200}
    assert "start 2025-03-31T10:00:00-04:00 -> 2025-04-01T10:00:00-04:00" in row.excluded[0].detail
    april = audit_month(log.events(), ORG, PATIENT, "2025-04")
    (row,) = april.activities
    assert (row.version, row.status, row.counted) == (2, "current", 1200)
    assert [c.field for c in row.amended_from[0].changes] == ["start"]
    assert april.billing.in_replay


def test_concurrent_staff_minutes_reconcile_with_the_billing_view() -> None:
    """Two nurses at once count once (docs/rules.md §6.2 step 5): the activities' counted
    minutes exceed the billing minutes by exactly the concurrent part."""
    log = Log(org=ORG)
    log.practice()
    log.documented(PATIENT)
    log.activity(PATIENT, "n1", "2025-03-03T10:00:00-05:00", 20, staff="RN-1")
    log.activity(PATIENT, "n2", "2025-03-03T10:10:00-05:00", 20, staff="RN-2")
    report = audit_month(log.events(), ORG, PATIENT, MONTH)
    assert sum(r.counted for r in report.activities) == 40 * 60
    (ccm,) = report.programs
    assert (ccm.counted, ccm.concurrent, ccm.total) == (2400, 600, 1800)
    assert report.billing.minutes == log.view(PATIENT, MONTH)["minutes"] == {"ccm": 30.0}
    assert "concurrent_staff_time" in report.billing.flags


def test_resends_and_conflicts_are_accounted_as_in_replay(tmp_path: Path) -> None:
    log = Log(org=ORG)
    log.practice()
    log.documented(PATIENT)
    first = log.activity(PATIENT, "a1", "2025-03-03T10:00:00-05:00", 25)
    log.raw.append(dict(first))  # the same event again: a no-op
    clash = dict(first, data=dict(first["data"], minutes=40))
    log.raw.append(clash)  # the same event_id with another body: rejected
    # another patient's event claims an event_id first; P-1's later use of it is rejected
    log.activity("P-2", "b1", "2025-03-04T10:00:00-05:00", 20, event_id="shared-id")
    log.activity(PATIENT, "a2", "2025-03-05T10:00:00-05:00", 20, event_id="shared-id")
    report = audit_month(log.events(), ORG, PATIENT, MONTH)
    assert (report.events.duplicates, report.events.rejected) == (1, 2)
    assert [x.event_id for x in report.rejected] == [first["event_id"], "shared-id"]
    assert {r.activity_id for r in report.activities} == {"a1"}
    assert report.billing.minutes == log.view(PATIENT, MONTH)["minutes"] == {"ccm": 25.0}
    # the archive holds only accepted events, so only the NDJSON path meets these


# -- the same report from a log file and from the archive -------------------------------


@pytest.mark.parametrize("as_of", [None, "2025-03-19T00:00:00Z", VOID_RECORDED])
def test_ndjson_and_archive_give_the_same_report(tmp_path: Path, as_of: str | None) -> None:
    log = scenario()
    path = _ndjson(log, tmp_path / "events.ndjson")
    root = _archive(log, tmp_path / "archive")
    docs = []
    for source in (path, root):
        args = ["audit", "--input", str(source), "--org", ORG, "--patient", PATIENT]
        args += ["--month", MONTH, "--format", "json"]
        if as_of:
            args += ["--as-of", as_of]
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, result.output
        doc = orjson.loads(result.stdout)
        assert doc.pop("input") == str(source)
        docs.append(doc)
    assert docs[0] == docs[1]
    expected = report_dict(
        audit_month(log.events(), ORG, PATIENT, MONTH, as_of=_ts(as_of) if as_of else None)
    )
    expected.pop("input")
    assert docs[0] == orjson.loads(orjson.dumps(expected))


# -- the command line ------------------------------------------------------------------


def _invoke(source: Path | None, *extra: str, env: dict[str, str] | None = None) -> Result:
    args = ["audit", "--input", str(source)] if source else ["audit"]
    return CliRunner(env=env).invoke(
        cli, [*args, "--org", ORG, "--patient", PATIENT, "--month", MONTH, *extra]
    )


def test_table_format(tmp_path: Path) -> None:
    result = _invoke(_ndjson(scenario(), tmp_path / "e.ndjson"), env={"COLUMNS": "1000"})
    assert result.exit_code == 0, result.output
    out = result.stdout  # wide enough for no cell to wrap
    for text in (
        "Activities",
        "as of: everything in the input",
        "overlap 10 min",
        "double count (ccm+bhi) 10 min",
        "duplicate event 20 min",
        "face-to-face 15 min",
        "non-clinical staff 12 min",
        "before consent 10 min",
        "inpatient stay 25 min",
        "voided 20 min: wrong patient",
        "amended 30 min",
        "Codes billed",
        "99490",
        "estimated payment $152.35",
        "Rules applied (rule year 2025)",
    ):
        assert text in out, text


def test_json_format_has_stable_top_level_keys(tmp_path: Path) -> None:
    result = _invoke(_ndjson(scenario(), tmp_path / "e.ndjson"), "--format", "json")
    assert result.exit_code == 0, result.output
    doc = orjson.loads(result.stdout)
    assert list(doc) == [
        "report",
        "input",
        "org_id",
        "patient_id",
        "month",
        "timezone",
        "facility_type",
        "qualifying_apm_participant",
        "fee_schedule",
        "as_of",
        "latest_recorded_at",
        "month_start",
        "month_end",
        "month_closed",
        "events",
        "activities",
        "programs",
        "documentation",
        "billing",
        "rejected",
        "unmatched_voids",
    ]
    assert doc["report"] == "caretally.audit/1" and doc["as_of"] is None
    a9 = next(a for a in doc["activities"] if a["activity_id"] == "a9")
    assert a9["void"]["reason"] == "wrong patient"
    assert a9["excluded"][0] | {"detail": ""} == {
        "reason": "voided",
        "seconds": 1200,
        "minutes": 20.0,
        "detail": "",
    }


def test_csv_format_has_one_row_per_activity_version(tmp_path: Path) -> None:
    result = _invoke(_ndjson(scenario(), tmp_path / "e.ndjson"), "--format", "csv")
    assert result.exit_code == 0, result.output
    reader = csv.DictReader(io.StringIO(result.stdout))
    assert reader.fieldnames == CSV_COLUMNS
    rows = {(r["activity_id"], r["version"]): r for r in reader}
    assert len(rows) == 12
    assert rows[("a2", "1")]["excluded_overlap"] == "10"
    assert rows[("a3", "1")]["excluded_double_count"] == "10"
    assert rows[("a4-resent", "1")]["excluded_duplicate_event"] == "20"
    assert rows[("a5", "1")]["excluded_face_to_face"] == "15"
    assert rows[("a6", "1")]["excluded_non_clinical_staff"] == "12"
    assert rows[("a7", "1")]["excluded_before_consent"] == "10"
    assert rows[("a8", "1")]["excluded_inpatient"] == "25"
    assert rows[("a9", "1")]["excluded_voided"] == "20"
    assert rows[("a9", "1")]["void_reason"] == "wrong patient"
    assert rows[("a10", "1")]["excluded_amended"] == "30"
    assert rows[("a10", "2")]["amended_from"].startswith("v1 ")
    assert rows[("a10", "2")]["minutes_counted"] == "25"
    counted = sum(float(r["minutes_counted"]) for r in rows.values() if r["program"] == "ccm")
    assert counted == 85.0


def test_html_is_one_self_contained_printable_page(tmp_path: Path) -> None:
    out = tmp_path / "audit.html"
    result = _invoke(
        _archive(scenario(), tmp_path / "archive"), "--format", "html", "--output", str(out)
    )
    assert result.exit_code == 0, result.output
    page = out.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert page.count("<html") == 1 and "<style>" in page and "@media print" in page
    for external in ("http://", "https://", "<script", "<link", "<img", "src=", "@import", "url("):
        assert external not in page, external
    assert "wrong patient" in page and "voided" in page and "99490" in page
    assert "as of" in page


def test_as_of_is_printed_in_the_header(tmp_path: Path) -> None:
    result = _invoke(_ndjson(scenario(), tmp_path / "e.ndjson"), "--as-of", "2025-03-19T00:00Z")
    assert result.exit_code == 0, result.output
    assert "as of: 2025-03-19T00:00:00+00:00" in result.stdout


def test_default_input_is_the_archive_named_by_the_environment(tmp_path: Path) -> None:
    root = _archive(scenario(), tmp_path / "archive")
    result = _invoke(None, "--format", "json", env={"CARETALLY_ARCHIVE": str(root)})
    assert result.exit_code == 0, result.output
    assert orjson.loads(result.stdout)["input"] == str(root)


def test_unknown_patient_or_month_exits_1_with_a_clear_message(tmp_path: Path) -> None:
    path = _ndjson(scenario(), tmp_path / "e.ndjson")
    args = ["audit", "--input", str(path), "--org", ORG, "--month", MONTH]
    result = CliRunner().invoke(cli, [*args, "--patient", "P-404"])
    assert result.exit_code == 1
    assert "error: no events for this patient in org 'practice-1'" in result.stderr
    assert "P-404" not in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(cli, [*args[:-2], "--month", "2025-07", "--patient", PATIENT])
    assert result.exit_code == 1
    assert "nothing on record for this patient in 2025-07" in result.stderr
    result = CliRunner().invoke(
        cli, [*args, "--patient", PATIENT, "--input", str(tmp_path / "missing")]
    )
    assert result.exit_code == 1 and "no archive or log at" in result.stderr


def test_bad_lines_are_reported_and_the_report_still_written(tmp_path: Path) -> None:
    path = _ndjson(scenario(), tmp_path / "e.ndjson")
    path.write_bytes(path.read_bytes() + b"{not json\n")
    result = _invoke(path, "--format", "json")
    assert result.exit_code == 3
    assert f"{path}:" in result.stderr and "rejected" in result.stderr
    assert orjson.loads(result.stdout)["month"] == MONTH


def test_every_patient_month_of_a_synthetic_practice_reconciles_with_replay() -> None:
    """Over generated traffic (two months, voids, amendments, re-sends, overlaps): each
    audit's minutes, codes, flags and payment are replay's, and every second is
    counted or explained."""
    from projections.engine import replay
    from streams.demo.synthetic import generate_practice_log

    lines = [
        orjson.dumps(e)
        for e in generate_practice_log(
            seed=5,
            patients=25,
            months=(
                "2025-03",
                "2025-04",
            ),
        )
    ]
    events = [parse_event(raw) for raw in lines]
    reasons: set[str] = set()
    views = replay(events)
    assert len(views) > 30
    for b in views:
        report = audit_month(zip(events, lines, strict=True), b.org_id, b.patient_id, b.month)
        view = b.view()
        assert report.billing.minutes == view["minutes"]
        assert [{"code": x.code, "units": x.units} for x in report.billing.billable] == [
            {"code": x.code, "units": x.units} for x in b.billable
        ]
        assert list(report.billing.flags) == view["flags"]
        assert report.billing.estimated_payment == view["estimated_payment"]
        for row in report.activities:
            assert row.in_month == row.counted + sum(e.seconds for e in row.excluded)
            reasons |= {e.reason.split(":")[0] for e in row.excluded}
        for p in report.programs:
            assert p.total == p.counted - p.concurrent
    assert {"voided", "amended", "overlap", "duplicate_event"} <= reasons

"""What issue 13 says must show, through ``caretally replay`` as a biller runs it: the 2026
fees of CMS's RVU26A file (docs/rules.md §5), the payment settings of ``practice.configured``
(QP conversion factor, facility amount) and the provisional 2027 book (§7.2)."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import orjson
from click.testing import CliRunner

from streams.cli.main import cli
from support.builders import Log


def _ccm_org(org: str, month: str, **settings: Any) -> Log:
    """One practice with one documented CCM patient and 25 staff minutes in ``month``."""
    log = Log(org=org)
    log.add("practice.configured", {"timezone": "America/New_York", **settings})
    log.documented("P-1")
    log.activity("P-1", "a1", f"{month}-10T15:00:00Z", 25, recorded_at=f"{month}-10T16:00:00Z")
    return log


def _rpm_patient(log: Log, patient: str, start: str, days: int, minutes: int) -> None:
    """An RPM patient enrolled on ``start`` with a reading on each of ``days`` days and
    ``minutes`` of interactive treatment-management time in that month."""
    log.conditions(patient)
    log.consent(patient, "rpm")
    log.enrollment(patient, "rpm", on=start)
    log.visit(patient, on="2025-06-01")
    for day in range(days):
        log.reading(patient, f"{start[:8]}{day + 2:02d}T14:00:00Z")
    if minutes:
        log.activity(
            patient,
            f"{patient}-t",
            f"{start[:8]}20T15:00:00Z",
            minutes,
            program="rpm",
            interactive=True,
        )


def _replay(tmp_path: Path, logs: list[Log], *args: str) -> str:
    path = tmp_path / "events.ndjson"
    path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for log in logs for e in log.raw))
    result = CliRunner().invoke(cli, ["replay", "--input", str(path), *args])
    assert result.exit_code == 0, result.output
    return result.stdout


def _views(text: str) -> dict[tuple[str, str, str], dict[str, Any]]:
    rows = [orjson.loads(line) for line in text.splitlines() if line.strip()]
    return {(v["org_id"], v["patient_id"], v["month"]): v for v in rows}


def test_2026_fees_are_rvu26a_and_follow_the_practice_settings(tmp_path: Path) -> None:
    rpm = Log(org="rpm")
    rpm.add("practice.configured", {"timezone": "America/New_York"})
    # 99457 + 99458: 40 interactive minutes; no readings, so no device code
    _rpm_patient(rpm, "P-T", "2026-03-01", days=0, minutes=40)
    # 99445 (2-15 days) and the 99453 set-up (2 days in 2026)
    _rpm_patient(rpm, "P-D", "2026-03-01", days=10, minutes=0)
    views = _views(
        _replay(
            tmp_path,
            [
                _ccm_org("plain", "2026-03"),
                _ccm_org("qp", "2026-03", qualifying_apm_participant=True),
                _ccm_org("facility", "2026-03", fee_schedule="facility"),
                rpm,
            ],
        )
    )
    plain = views[("plain", "P-1", "2026-03")]
    assert plain["billable"] == [{"code": "99490", "units": 1}]
    assert plain["rule_year"] == 2026
    assert plain["estimated_payment"] == 66.13  # 1.98 x 33.4009
    assert plain["payment_provisional"] is False
    assert views[("qp", "P-1", "2026-03")]["estimated_payment"] == 66.46  # 1.98 x 33.5675
    assert views[("facility", "P-1", "2026-03")]["estimated_payment"] == 43.76  # 1.31 x 33.4009
    time = views[("rpm", "P-T", "2026-03")]
    assert time["billable"] == [{"code": "99457", "units": 1}, {"code": "99458", "units": 1}]
    assert time["estimated_payment"] == round(51.77 + 41.42, 2)  # 99458: $41.42
    device = views[("rpm", "P-D", "2026-03")]
    assert device["billable"] == [{"code": "99445", "units": 1}, {"code": "99453", "units": 1}]
    assert device["estimated_payment"] == round(52.11 + 21.71, 2)  # 99445: $52.11


def test_a_2027_month_is_priced_with_the_provisional_book_and_says_so(tmp_path: Path) -> None:
    logs = [
        _ccm_org("plain", "2027-01"),
        _ccm_org("qp", "2027-01", qualifying_apm_participant=True),
    ]
    views = _views(_replay(tmp_path, logs))
    view = views[("plain", "P-1", "2027-01")]
    assert view["billable"] == [{"code": "99490", "units": 1}]
    assert view["rule_year"] == 2027
    assert "rules_provisional:2027" in view["flags"]
    assert view["estimated_payment"] == 65.02  # 1.98 x 32.8409, the proposed factor
    assert view["payment_provisional"] is True
    assert views[("qp", "P-1", "2027-01")]["estimated_payment"] == 65.68  # 1.98 x 33.1693

    rows = list(csv.DictReader(io.StringIO(_replay(tmp_path, logs, "--format", "csv"))))
    assert {r["payment_provisional"] for r in rows} == {"true"}
    table = _replay(tmp_path, logs, "--format", "table")
    assert "65.02 (provisional)" in table
    assert "provisional" in table.split("65.02 (provisional)")[-1]  # the caption says why


def test_a_2026_month_is_not_provisional_in_any_format(tmp_path: Path) -> None:
    logs = [_ccm_org("plain", "2026-03")]
    rows = list(csv.DictReader(io.StringIO(_replay(tmp_path, logs, "--format", "csv"))))
    assert [r["payment_provisional"] for r in rows] == ["false"]
    assert "provisional" not in _replay(tmp_path, logs, "--format", "table")

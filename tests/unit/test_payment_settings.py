"""A practice's payment settings (``practice.configured``: ``qualifying_apm_participant``,
``fee_schedule``; docs/rules.md §5, docs/design.md wire contract) price its months: the QP
conversion factor, the facility amounts, or both, on every engine, in claim lines and in
the audit; a change re-prices the practice's months; snapshots and archives written
before the settings existed still restore and replay, with the defaults."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq
import pytest

from projections.audit import audit_month
from projections.claims import month_claims
from projections.engine import Projector, fold, replay
from projections.ledger import Ledger, Practice
from projections.rules import SHIPPED_CATALOG
from schemas.events import parse_event
from streams.archive.replay import replay_archive
from streams.archive.store import archive_files, write_events
from streams.ingest.csv_events import read_csv_events
from streams.render.audit import header, report_dict
from streams.worker import state_codec
from support.builders import Log

pytestmark = pytest.mark.usefixtures("engine")  # every engine: tests/unit/conftest.py

P = "P-1"
MONTH = "2026-03"
BOOK = SHIPPED_CATALOG.for_month(MONTH)
QP = {"qualifying_apm_participant": True}
FACILITY = {"fee_schedule": "facility"}
# (settings sent, qp, facility, 99490's 2026 amount: RVU26A 1.98 / 1.31 x 33.4009 / 33.5675)
CASES = [
    pytest.param({}, False, False, 66.13, id="default"),
    pytest.param(QP, True, False, 66.46, id="qp"),
    pytest.param(FACILITY, False, True, 43.76, id="facility"),
    pytest.param({**QP, **FACILITY}, True, True, 43.97, id="qp+facility"),
]


def _configure(log: Log, settings: dict[str, Any], **kw: Any) -> None:
    log.add("practice.configured", {"timezone": "America/New_York", **settings}, **kw)


def _ccm_month(settings: dict[str, Any]) -> Log:
    """A 2026 CCM month of 25 minutes: 99490 x1."""
    log = Log()
    _configure(log, settings)
    log.documented(P)
    log.activity(P, "a1", "2026-03-10T10:00:00-04:00", 25)
    return log


@pytest.mark.parametrize(("settings", "qp", "facility", "amount"), CASES)
def test_a_month_is_priced_by_its_practice_settings(
    settings: dict[str, Any], qp: bool, facility: bool, amount: float
) -> None:
    view = _ccm_month(settings).view(P, MONTH)
    assert view["billable"] == [{"code": "99490", "units": 1}]
    assert view["estimated_payment"] == BOOK.fee("99490", qp=qp, facility=facility)
    assert view["estimated_payment"] == amount


@pytest.mark.single_engine
@pytest.mark.parametrize(("settings", "qp", "facility", "amount"), CASES)
def test_claim_lines_and_audit_use_the_same_pricing(
    settings: dict[str, Any], qp: bool, facility: bool, amount: float
) -> None:
    log = _ccm_month(settings)
    events = log.events()
    lines, total = month_claims(fold(events), "o1", MONTH, close_id="close-1")
    assert [(ln.code, ln.fee, ln.estimated_payment) for ln in lines] == [("99490", amount, amount)]
    assert total == amount

    report = audit_month(events, "o1", P, MONTH)
    factor = BOOK.conversion_factor_qp if qp else BOOK.conversion_factor
    assert report.billing.conversion_factor == factor
    assert [(ln.code, ln.fee, ln.amount) for ln in report.billing.billable] == [
        ("99490", amount, amount)
    ]
    assert report.billing.estimated_payment == amount
    doc = report_dict(report)
    fees = "facility" if facility else "non_facility"
    assert (doc["qualifying_apm_participant"], doc["fee_schedule"]) == (qp, fees)
    (rule,) = [r for r in report.billing.rules if r.kind == "conversion_factor"]
    who = "qualifying APM participant" if qp else "non-qualifying APM participant"
    assert rule.name == f"{factor} ({who}; {'facility' if facility else 'non-facility'} amounts)"
    shown = dict(header(report))["fees"]
    assert shown.startswith("facility amounts" if facility else "non-facility amounts")
    assert f"conversion factor {factor} ({'qualifying' if qp else 'non-qualifying'} APM" in shown


def test_the_qp_factor_and_facility_amounts_differ_in_2026() -> None:
    """The four settings give four amounts, so a setting left unread cannot pass above."""
    assert BOOK.conversion_factor == 33.4009 and BOOK.conversion_factor_qp == 33.5675
    amounts = {BOOK.fee("99490", qp=qp, facility=f) for qp in (False, True) for f in (False, True)}
    assert len(amounts) == 4


def test_a_settings_change_after_billing_reprices_the_month() -> None:
    """A later practice.configured with other payment settings re-prices every month of
    the practice, already billed (and closed) or not: the last settings apply to all."""
    log = _ccm_month({})
    log.activity(P, "a2", "2026-04-08T10:00:00-04:00", 22)
    log.add("month.closed", {"month": MONTH})
    _configure(log, {**QP, **FACILITY})
    views = log.replay()
    for month in (MONTH, "2026-04"):
        assert views[(P, month)]["estimated_payment"] == 43.97


@pytest.mark.single_engine
def test_the_projector_reprices_on_a_change_and_equals_a_replay() -> None:
    """The incremental engine: a payment setting change re-evaluates the practice's months
    (the same settings again change nothing), and its views equal a replay's from scratch
    after every step (docs/design.md "One semantics, several engines")."""
    log = _ccm_month({})
    log.activity(P, "a2", "2026-04-08T10:00:00-04:00", 22)
    _configure(log, QP)
    _configure(log, QP)  # the same settings again
    _configure(log, {**QP, **FACILITY})
    _configure(log, {})  # back to the defaults
    events = log.events()
    projector = Projector()
    payments: list[dict[str, float]] = []
    for n, event in enumerate(events, 1):
        result = projector.step(event)
        assert [b.view() for b in projector.billing()] == [b.view() for b in replay(events[:n])]
        if event.type == "practice.configured" and n > 1:
            payments.append({b.month: b.estimated_payment for b in result.changed})
            assert result.alerts == []  # no alert depends on the payment
    assert payments == [
        {MONTH: 66.46, "2026-04": 66.46},
        {},
        {MONTH: 43.97, "2026-04": 43.97},
        {MONTH: 66.13, "2026-04": 66.13},
    ]


# -- state written before the payment settings ----------------------------------------


def _strip(data: Any, kind: str, fields: tuple[str, ...]) -> Any:
    """The codec's JSON ``data`` with ``fields`` removed from every object of ``kind``."""
    if isinstance(data, list):
        return [_strip(x, kind, fields) for x in data]
    if isinstance(data, dict):
        out = {k: _strip(v, kind, fields) for k, v in data.items()}
        if out.get("$") == kind and isinstance(out.get("v"), dict):
            out["v"] = {k: v for k, v in out["v"].items() if k not in fields}
        return out
    return data


SETTING_FIELDS = ("qualifying_apm_participant", "fee_schedule")


@pytest.mark.single_engine
def test_snapshots_keep_the_settings_and_older_ones_restore_with_defaults() -> None:
    ledger = Ledger()
    for event in _ccm_month({**QP, **FACILITY}).events():
        ledger.apply(event)
    back = state_codec.decode(state_codec.encode(ledger))
    assert back.practices["o1"].pricing() == (True, True)

    # a snapshot of the version before the settings: the Practice has neither field
    old = _strip(orjson.loads(state_codec.encode(ledger)), "Practice", SETTING_FIELDS)
    restored = state_codec.from_json(old).practices["o1"]
    assert restored.pricing() == (False, False)
    assert (restored.timezone, restored.facility_type) == ("America/New_York", "office")

    # only one of them missing is no version's shape: refused (the worker refolds)
    half = _strip(orjson.loads(state_codec.encode(ledger)), "Practice", ("fee_schedule",))
    with pytest.raises(state_codec.CodecError, match="Practice: fields differ"):
        state_codec.from_json(half)


def _drop_setting_columns(path: Path) -> None:
    table = pq.read_table(path)
    pq.write_table(table.drop_columns(list(SETTING_FIELDS)), path)


@pytest.mark.single_engine
def test_an_archive_written_before_the_settings_replays_with_defaults(tmp_path: Path) -> None:
    log = _ccm_month({})
    events = log.events()
    raws = [orjson.dumps(e) for e in log.raw]
    write_events(tmp_path, zip(events, raws, strict=True))
    for path in archive_files(tmp_path):
        _drop_setting_columns(path)
        assert "fee_schedule" not in pq.read_schema(path).names
    billings, _ = replay_archive(tmp_path, threads=1)
    assert [b.view() for b in billings] == [b.view() for b in replay(events)]
    assert billings[0].estimated_payment == 66.13


@pytest.mark.single_engine
def test_an_archive_with_files_from_before_and_after_the_settings(tmp_path: Path) -> None:
    """The archiver keeps adding to an archive: files without the columns (read as the
    defaults) and newer ones with them replay together, the latest settings winning."""
    log = _ccm_month({})
    _configure(log, {**QP, **FACILITY})
    events = log.events()
    raws = [orjson.dumps(e) for e in log.raw]
    # one partition: the last event (the new settings) is a flush, and a file, of its own
    write_events(tmp_path, zip(events, raws, strict=True), flush_rows=len(events) - 1)
    files = sorted(archive_files(tmp_path), key=lambda f: int(f.name.split("-")[1]))
    assert [f.name for f in files] == [
        f"p0-0-{len(events) - 2}.parquet",
        f"p0-{len(events) - 1}-{len(events) - 1}.parquet",
    ]
    _drop_setting_columns(files[0])  # the older file: written before the settings
    billings, _ = replay_archive(tmp_path, threads=1)
    assert [b.view() for b in billings] == [b.view() for b in replay(events)]
    assert billings[0].estimated_payment == 43.97


@pytest.mark.single_engine
def test_csv_rows_carry_the_settings() -> None:
    """``caretally ingest --format csv``: ``data.qualifying_apm_participant`` is a boolean
    cell, ``data.fee_schedule`` text; an empty cell leaves the default."""
    text = (
        "event_id,type,org_id,recorded_at,source,data.qualifying_apm_participant,"
        "data.fee_schedule\n"
        "e1,practice.configured,o1,2026-01-01T00:00:00Z,ehr,TRUE,facility\n"
        "e2,practice.configured,o1,2026-01-02T00:00:00Z,ehr,,\n"
    )
    records = list(read_csv_events(io.StringIO(text, newline="")))
    assert [r.error for r in records] == [None, None]
    parsed = [parse_event(r.value).data for r in records]
    assert [(d.qualifying_apm_participant, d.fee_schedule) for d in parsed] == [
        (True, "facility"),
        (False, "non_facility"),
    ]


@pytest.mark.single_engine
def test_practice_defaults_are_today_s_pricing() -> None:
    assert Practice().pricing() == (False, False)

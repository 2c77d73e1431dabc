"""What a biller needs on a claim line (docs/claims.md): place of service, the diagnosis codes
on record for the month, what needs review; the claim files' columns and the 837P-shaped
export. Dates of service and ids: tests/unit/test_close.py."""

from __future__ import annotations

import csv
import io
from dataclasses import replace
from pathlib import Path

import orjson
import pytest

from projections.claims import FIELDS, ClaimLine, month_claims
from projections.engine import fold
from projections.ledger import Ledger
from streams.close.claim_files import claims_837p, claims_stem, csv_text, json_bytes, write_claims
from streams.close.service import CloseRequest
from streams.worker import state_codec
from support.builders import Log

P, Q = "P-000123", "P-000456"
MARCH = "2025-03"
CLOSE = "close-1"
# the first release's columns, in order: CSV readers go by position
FIRST_COLUMNS = (
    "claim_line_id",
    "org_id",
    "patient_id",
    "month",
    "billing_practitioner_id",
    "family",
    "code",
    "units",
    "date_of_service",
    "date_of_service_basis",
    "fee",
    "estimated_payment",
    "payment_provisional",
)


def lines_of(log: Log, month: str = MARCH) -> list[ClaimLine]:
    lines, _ = month_claims(fold(log.events()), "o1", month, CLOSE)
    return lines


def ccm(facility: str = "office", codes: list[str] | None = None) -> Log:
    """P billed 99490 in March (25 minutes), with the conditions list ``codes``."""
    log = Log()
    log.practice(facility_type=facility)
    log.documented(P)
    if codes is not None:
        log.conditions(P, codes, recorded_at="2025-02-01T00:00:00Z")
    log.activity(P, "a1", "2025-03-05T10:00:00-05:00", 25)
    return log


def rpm(conditions: bool, log: Log | None = None, patient: str = P) -> Log:
    """``patient`` billed RPM device codes in March by DR-2 (its gate asks for no
    condition)."""
    if log is None:
        log = Log()
        log.practice()
    if conditions:
        log.conditions(patient, ["I10"])
    log.consent(patient, "rpm", practitioner="DR-2")
    log.enrollment(patient, "rpm", on="2025-03-01", practitioner="DR-2")
    log.visit(patient, practitioner="DR-2")
    for day in range(2, 20):
        log.reading(patient, f"2025-03-{day:02d}T12:00:00-04:00")
    return log


def test_place_of_service_is_the_cms_code_of_the_facility_type() -> None:
    for facility, pos in (("office", "11"), ("fqhc", "50"), ("rhc", "72")):
        [line] = lines_of(ccm(facility))
        assert line.place_of_service == pos, facility


def test_diagnoses_are_the_list_on_record_at_the_months_end_in_its_order() -> None:
    """The latest list recorded before the month's end in the practice's time zone
    (New York: March ends at 04:00 UTC on April 1), in its order (the first is the
    primary); a list recorded after that is April's, not March's."""
    log = ccm(codes=["J44.9", "E11.9", "I10"])
    log.conditions(P, ["I50.9", "E11.9"], recorded_at="2025-04-01T03:59:59Z")  # Mar 31, NY
    log.conditions(P, ["N18.3", "I10"], recorded_at="2025-04-01T04:00:00Z")  # Apr 1, NY
    log.activity(P, "a2", "2025-04-05T10:00:00-04:00", 25)
    [march] = lines_of(log)
    [april] = lines_of(log, "2025-04")
    assert (march.diagnosis_codes, march.diagnosis_codes_omitted) == (("I50.9", "E11.9"), 0)
    assert march.needs_review == ()
    assert april.diagnosis_codes == ("N18.3", "I10")


def test_a_list_longer_than_a_claim_holds_is_cut_at_12_and_says_so() -> None:
    """Twelve distinct codes fit an 837P claim; the rest are counted, never dropped
    silently. ``E11.9`` and ``E119`` are one code (its first spelling is kept)."""
    codes = ["E11.9", "E119", *(f"I{n}" for n in range(10, 23))]  # 14 distinct codes
    [line] = lines_of(ccm(codes=codes))
    assert line.diagnosis_codes == ("E11.9", *(f"I{n}" for n in range(10, 21)))
    assert (line.diagnosis_codes_omitted, line.needs_review) == (2, ("diagnosis_codes_cut",))


def test_two_spellings_of_one_code_leave_a_ccm_line_short_of_two_diagnoses() -> None:
    """The gate counts distinct strings (2); the claim has one code: the biller must look."""
    [line] = lines_of(ccm(codes=["E11.9", "E119"]))
    assert line.diagnosis_codes == ("E11.9",)
    assert line.needs_review == ("fewer_diagnoses_than_required",)


def apcm(codes: list[str], qmb: bool = False) -> Log:
    """P in APCM from March 1 by DR-1 with the conditions list ``codes`` (no time needed)."""
    log = Log()
    log.practice()
    log.conditions(P, codes)
    log.consent(P, "apcm")
    log.enrollment(P, "apcm", on="2025-03-01", qmb=qmb)
    log.visit(P)
    return log


def test_an_apcm_level_needs_as_many_distinct_diagnoses_as_it_counts_conditions() -> None:
    """G0557/G0558 need 2 or more conditions (the level's, G13), though the APCM gate asks
    for none: two spellings of one code bill G0557 (the gate counts the spellings) and the
    claim, with one diagnosis, is marked. Two real codes or level 1 are not."""
    for codes, qmb, code, review in (
        (["E11.9", "E119"], False, "G0557", ("fewer_diagnoses_than_required",)),
        (["E11.9", "E119"], True, "G0558", ("fewer_diagnoses_than_required",)),
        (["E11.9", "I10"], False, "G0557", ()),
        (["E11.9"], False, "G0556", ()),
    ):
        [line] = lines_of(apcm(codes, qmb))
        assert (line.code, line.needs_review) == (code, review), codes


def test_a_line_without_a_diagnosis_on_record_is_written_and_marked() -> None:
    """RPM bills without a conditions list; its lines still go out, marked for review. A
    list recorded after the month's end does not count for it, an empty list neither."""
    log = rpm(conditions=False)
    log.conditions(P, ["I10"], recorded_at="2025-04-02T00:00:00Z")
    got = lines_of(log)
    assert [ln.code for ln in got] == ["99453", "99454"]
    assert {(ln.diagnosis_codes, ln.needs_review) for ln in got} == {
        ((), ("no_diagnosis_on_record",))
    }
    empty = rpm(conditions=False)
    empty.add("conditions.recorded", {"chronic": []}, P)
    assert {ln.needs_review for ln in lines_of(empty)} == {("no_diagnosis_on_record",)}
    assert {ln.needs_review for ln in lines_of(rpm(conditions=True))} == {()}


def test_csv_appends_the_new_columns_and_json_has_lists() -> None:
    [line] = lines_of(ccm(facility="rhc", codes=["J44.9", "E11.9"]))
    assert FIELDS[: len(FIRST_COLUMNS)] == FIRST_COLUMNS
    assert FIELDS[len(FIRST_COLUMNS) :] == (
        "place_of_service",
        "diagnosis_codes",
        "diagnosis_codes_omitted",
        "needs_review",
    )
    header, row = list(csv.reader(io.StringIO(csv_text([line]))))
    assert tuple(header) == FIELDS
    got = dict(zip(header, row, strict=True))
    assert (got["place_of_service"], got["diagnosis_codes"]) == ("72", "J44.9;E11.9")
    assert (got["diagnosis_codes_omitted"], got["needs_review"]) == ("0", "")
    assert (got["code"], got["date_of_service"]) == ("99490", "2025-03-31")
    [record] = orjson.loads(json_bytes([line], {}))["lines"]
    assert list(record) == list(FIELDS)
    assert record["diagnosis_codes"] == ["J44.9", "E11.9"]
    assert (record["place_of_service"], record["needs_review"]) == ("72", [])


def test_the_837p_export_is_one_claim_per_patient_and_practitioner_with_nulls(
    tmp_path: Path,
) -> None:
    """P: CCM by DR-1 (99490 + 99439) and RPM by DR-2 are two claims with P's diagnoses;
    Q's RPM claim has none. What caretally does not know is null and named, never made up."""
    log = rpm(conditions=False, patient=Q)
    log.documented(P)  # CCM by DR-1; P's list (E11.9, I10) is on record from January
    log.activity(P, "a1", "2025-03-05T10:00:00-05:00", 45)
    rpm(conditions=False, log=log, patient=P)
    lines = lines_of(log)
    meta = {"org_id": "o1", "month": MARCH, "month_closed_event_id": CLOSE}
    [path] = write_claims(lines, tmp_path, "o1", MARCH, ("837p",), meta)
    assert path.name == f"{claims_stem('o1', MARCH)}.837p.json"
    doc = orjson.loads(path.read_bytes())
    assert doc == orjson.loads(orjson.dumps(claims_837p(lines, meta)))
    assert doc["note"].startswith("Not an X12 837P transaction")
    assert (doc["claim_count"], doc["line_count"], doc["month_closed_event_id"]) == (3, 6, CLOSE)
    claims = {
        (
            c["caretally"]["patient_id"],
            c["loop_2310B_rendering_provider"]["caretally_practitioner_id"],
        ): c
        for c in doc["claims"]
    }
    ccm_claim, p_rpm, rpm_claim = claims[(P, "DR-1")], claims[(P, "DR-2")], claims[(Q, "DR-2")]
    assert (
        p_rpm["loop_2300_claim"]["HI_diagnosis_codes"]
        == ccm_claim["loop_2300_claim"]["HI_diagnosis_codes"]
    )
    assert [
        s["SV1_professional_service"]["procedure_code"] for s in p_rpm["loop_2400_service_lines"]
    ] == ["99453", "99454"]
    assert ccm_claim["loop_2300_claim"]["HI_diagnosis_codes"] == [
        {"qualifier": "ABK", "code": "E119"},
        {"qualifier": "ABF", "code": "I10"},
    ]
    assert ccm_claim["loop_2300_claim"]["CLM_place_of_service"] == "11"
    services = ccm_claim["loop_2400_service_lines"]
    assert [
        (s["LX_line_number"], s["SV1_professional_service"]["procedure_code"]) for s in services
    ] == [(1, "99439"), (2, "99490")]  # the claim files' order (by code)
    sv1 = services[1]["SV1_professional_service"]
    assert (sv1["procedure_code_qualifier"], sv1["units"], sv1["line_charge_amount"]) == (
        "HC",
        1,
        None,
    )
    assert services[1]["DTP_472_service_date"] == {
        "qualifier": "472",
        "format": "D8",
        "date": "20250305",
    }
    [base] = [ln for ln in lines if ln.code == "99490"]
    assert services[1]["caretally"]["claim_line_id"] == base.claim_line_id
    # the 837P requires a principal diagnosis: none on record is unknown, not an empty list
    assert rpm_claim["loop_2300_claim"]["HI_diagnosis_codes"] is None
    assert "loop_2300_claim.HI_diagnosis_codes" in rpm_claim["unknown_to_caretally"]
    assert "loop_2300_claim.HI_diagnosis_codes" not in ccm_claim["unknown_to_caretally"]
    assert rpm_claim["caretally"]["needs_review"] == ["no_diagnosis_on_record"]
    # not an X12 field: caretally's own record, not inside the claim loop
    assert "diagnosis_codes_omitted" not in ccm_claim["loop_2300_claim"]
    assert ccm_claim["caretally"]["diagnosis_codes_omitted"] == 0
    subscriber = ccm_claim["loop_2000B_subscriber"]["loop_2010BA_subscriber_name"]
    assert subscriber["member_id"] is None and ccm_claim["caretally"]["patient_id"] == P
    unknown = ccm_claim["unknown_to_caretally"]
    for path_ in (
        "loop_2000B_subscriber.loop_2010BA_subscriber_name.member_id",
        "loop_2000B_subscriber.loop_2010BB_payer_name.payer_id",
        "loop_2010AA_billing_provider.npi",
        "loop_2010AA_billing_provider.taxonomy_code",
        "loop_2310B_rendering_provider.npi",
        "loop_2300_claim.CLM_total_charge_amount",
        "loop_2400_service_lines[].SV1_professional_service.line_charge_amount",
        "loop_2400_service_lines[].SV1_professional_service.diagnosis_code_pointers",
    ):
        assert path_ in unknown
    assert len(unknown) == len(set(unknown)) == _count_nulls(ccm_claim)


def test_an_837p_claim_without_a_practitioner_of_record_lists_the_rendering_provider() -> None:
    """A device line with no practitioner of record: the rendering provider's
    ``caretally_practitioner_id`` is null, and listed as unknown like its NPI."""
    [line] = lines_of(ccm(codes=["J44.9", "I10"]))
    doc = claims_837p([replace(line, practitioner_id=None)], {})
    [claim] = doc["claims"]
    assert claim["loop_2310B_rendering_provider"]["caretally_practitioner_id"] is None
    unknown = claim["unknown_to_caretally"]
    assert "loop_2310B_rendering_provider.caretally_practitioner_id" in unknown
    assert len(unknown) == _count_nulls(claim)
    [named] = claims_837p([line], {})["claims"]
    assert (
        "loop_2310B_rendering_provider.caretally_practitioner_id"
        not in named["unknown_to_caretally"]
    )


def _count_nulls(node: object, path: str = "") -> int:
    """Distinct paths of nulls outside caretally's own records (the ``caretally`` objects;
    ``[]`` for list items)."""
    found: set[str] = set()

    def walk(n: object, p: str) -> None:
        if n is None:
            found.add(p)
        elif isinstance(n, dict):
            for k, v in n.items():
                if k not in ("caretally", "unknown_to_caretally"):
                    walk(v, f"{p}.{k}" if p else k)
        elif isinstance(n, list):
            for item in n:
                walk(item, f"{p}[]")

    walk(node, path)
    return len(found)


def test_an_rhc_837p_export_warns_that_medicare_takes_an_institutional_claim() -> None:
    office = claims_837p(lines_of(ccm()), {})
    rhc = claims_837p(lines_of(ccm("rhc")), {})
    assert "837I" not in office["note"] and "837I" in rhc["note"]


def test_an_unknown_claim_format_is_refused_before_any_close(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="formats"):
        CloseRequest("o1", MARCH, tmp_path, formats=("x12",))
    assert CloseRequest("o1", MARCH, tmp_path, formats=("837p",)).formats == ("837p",)


@pytest.mark.single_engine
def test_snapshots_keep_the_codes_and_older_ones_restore_without_them() -> None:
    """A snapshot keeps the lists' codes; one written before the ledger kept them restores
    (the worker then refolds nothing) and a claim made from it says the codes are not kept
    instead of claiming there is no diagnosis."""
    ledger = Ledger()
    for event in ccm(codes=["J44.9", "E11.9"]).events():
        ledger.apply(event)
    back = state_codec.decode(state_codec.encode(ledger))
    [line], _ = month_claims(back, "o1", MARCH, CLOSE)
    assert line.diagnosis_codes == ("J44.9", "E11.9")

    old = orjson.loads(state_codec.encode(ledger))
    _strip(old, "PatientState", "condition_codes")
    restored = state_codec.from_json(old)
    [line], _ = month_claims(restored, "o1", MARCH, CLOSE)
    assert (line.diagnosis_codes, line.needs_review) == ((), ("diagnosis_codes_not_kept",))


def _strip(data: object, kind: str, name: str) -> None:
    if isinstance(data, list):
        for x in data:
            _strip(x, kind, name)
    elif isinstance(data, dict):
        if data.get("$") == kind and isinstance(data.get("v"), dict):
            data["v"].pop(name, None)
        for v in data.values():
            _strip(v, kind, name)

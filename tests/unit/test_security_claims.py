"""Security of claim exports (issue #9, item 13): claim line ids and claim file names.

* A claim line id must not let someone who sees it (in a claim file excerpt, an alert,
  a log line) but not the org's event log test patient-id guesses: it is keyed by the
  ``event_id`` of the ``month.closed`` that produced the line, which ``caretally close``
  makes random. Replays of the same log, the worker's ``late_activity`` alerts and
  ``caretally close --export-only`` still agree on every id.
* Claim files of two orgs never share a name, however alike the org ids render.

Through ``caretally close`` and the worker on a real broker:
tests/integration/test_security_claims_pipeline.py.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from projections.claims import month_claims
from projections.engine import fold
from streams.close.claim_files import claims_stem
from support.builders import Log
from support.claims import TARGET, guesses

MARCH = "2025-03"


def ccm_month(org: str = "o1", close_id: str | None = None) -> Log:
    log = Log(org=org)
    log.practice()
    log.documented(TARGET)
    log.activity(TARGET, "a1", "2025-03-03T10:00:00-05:00", 25)
    log.close(MARCH, event_id=close_id)
    return log


def test_a_claim_line_id_does_not_give_the_patient_away() -> None:
    """The attacker knows org, month, code and practitioner (all on a claim) and five
    candidate patient ids; the id must not single out the patient."""
    log = ccm_month(close_id="month-closed-2025-03-5b0f2c1e9a8d4f7b8c3e6a1d2f4b9c07")
    [line] = month_claims(fold(log.events()), "o1", MARCH)[0]
    assert (line.patient_id, line.code) == (TARGET, "99490")
    assert guesses(line.claim_line_id, "o1", MARCH, "99490", "DR-1") == []


def test_a_claim_line_id_is_not_a_function_of_the_claim_alone() -> None:
    """Same org, patient, month, practitioner and code, closed by two different
    ``month.closed`` events: two ids (the key is the close, not anything on the claim).
    The same log folded twice gives the same id."""
    ids = []
    for close_id in ("close-one-1f0e3d2c", "close-two-9a8b7c6d", "close-one-1f0e3d2c"):
        [line] = month_claims(fold(ccm_month(close_id=close_id).events()), "o1", MARCH)[0]
        ids.append(line.claim_line_id)
    assert ids[0] != ids[1]
    assert ids[0] == ids[2]


# -- claim file names -----------------------------------------------------------------------

ALIKE = ["a_b", "a b", "a?b", "A_b", "A_B", "診療所", "診療室", "ab" * 64, "ab" * 63 + "ac"]


def test_claim_file_names_of_orgs_that_render_alike_differ() -> None:
    """Different orgs never share a claim file name, even on a case-insensitive file
    system; the name stays readable and within file-name limits."""
    stems = [claims_stem(org, MARCH) for org in ALIKE]
    assert len({s.casefold() for s in stems}) == len(ALIKE)
    assert claims_stem("practice-17", MARCH).startswith("claims-practice-17-")
    assert all(s.endswith(MARCH) and len(s.encode()) < 200 and "/" not in s for s in stems)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=20), min_size=2, max_size=6, unique=True))
def test_distinct_orgs_get_distinct_claim_file_names(orgs: list[str]) -> None:
    stems = {claims_stem(org, MARCH).casefold() for org in orgs}
    assert len(stems) == len(orgs)

"""The code systems and extensions the FHIR mapping reads (docs/fhir.md "Codes").

FHIR carries no caretally program, staff role or billing practitioner, so an EHR names
them with the caretally code systems and extensions below; standard codes (CPT in
``Procedure.code``, the v3 ``ActCode`` of ``Encounter.class``, the observation category
``vital-signs``) are read where they say the same thing. The URIs are URNs on purpose: no
web address that someone else could come to own.
"""

from __future__ import annotations

from typing import Final, get_args

from schemas.events import CarePlanRecordedData, EnrollmentProgram, Program, StaffRole

ICD10CM: Final = "http://hl7.org/fhir/sid/icd-10-cm"
CPT: Final = "http://www.ama-assn.org/go/cpt"
ACT_CODE: Final = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
CONDITION_CLINICAL: Final = "http://terminology.hl7.org/CodeSystem/condition-clinical"
CONDITION_VERIFICATION: Final = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
CONDITION_CATEGORY: Final = "http://terminology.hl7.org/CodeSystem/condition-category"
OBSERVATION_CATEGORY: Final = "http://terminology.hl7.org/CodeSystem/observation-category"
V2_0203: Final = "http://terminology.hl7.org/CodeSystem/v2-0203"
"""Identifier types; ``MR`` is a medical record number."""
US_SSN: Final = "http://hl7.org/fhir/sid/us-ssn"
US_MBI: Final = "http://hl7.org/fhir/sid/us-mbi"
REFUSED_IDENTIFIERS: Final = frozenset({US_SSN, US_MBI})
"""Never a caretally id (nor digested into one): a Social Security number or a Medicare
Beneficiary Identifier names a person outside the practice."""

PROGRAM: Final = "urn:caretally:program"
"""Codes ``ccm pcm bhi rpm rtm tcm apcm``: the program a resource is for."""
STAFF_ROLE: Final = "urn:caretally:staff-role"
"""Codes ``clinical_staff physician qhp non_clinical``: who did the time (required on
time: only clinical staff and billing practitioners' time counts, and FHIR cannot say
which a Practitioner is)."""
CONTACT: Final = "urn:caretally:contact"
"""Code ``interactive``: a real-time exchange with the patient (telephone, video, in
person); without it time is not interactive (an ``Encounter.class`` VR includes email)."""
COMPLEXITY: Final = "urn:caretally:complexity"
"""Codes ``low moderate high``: the medical decision making of a care plan."""
CONSENT_METHOD: Final = "urn:caretally:consent-method"
"""Codes ``verbal written``: how a consent was obtained."""
BILLING_PRACTITIONER: Final = "urn:caretally:extension:billing-practitioner"
"""Extension (``valueReference`` to a Practitioner): the practitioner who bills."""
QMB: Final = "urn:caretally:extension:qmb"
"""Extension (``valueBoolean``) on an EpisodeOfCare: a Qualified Medicare Beneficiary."""

# the wire contract's own values (schemas/events.py), read from its types
PROGRAMS: Final = frozenset(get_args(Program)) | frozenset(get_args(EnrollmentProgram))
STAFF_ROLES: Final = frozenset(get_args(StaffRole))
COMPLEXITIES: Final = frozenset(
    get_args(CarePlanRecordedData.model_fields["complexity"].annotation)
)

CPT_PROGRAMS: Final[dict[str, str]] = {
    # chronic care management (docs/rules.md)
    **dict.fromkeys(("99490", "99439", "99491", "99437", "99487", "99489"), "ccm"),
    # principal care management
    **dict.fromkeys(("99424", "99425", "99426", "99427"), "pcm"),
    # behavioral health integration (general BHI and the collaborative care model)
    **dict.fromkeys(("99484", "99492", "99493", "99494"), "bhi"),
    # remote physiologic monitoring: treatment management and interpretation
    **dict.fromkeys(("99457", "99458", "99470", "99091"), "rpm"),
    # remote therapeutic monitoring: treatment management
    **dict.fromkeys(("98980", "98981"), "rtm"),
}
"""Time codes whose presence in ``Procedure.code`` (or ``Encounter.type``, ``Task.code``)
names the program of the time."""

VIRTUAL: Final = frozenset({"VR"})
"""``Encounter.class`` of a virtual contact (telephone, video, email, portal): not face to
face; interactive only with a :data:`CONTACT` coding."""
IN_PERSON: Final = frozenset({"AMB", "HH", "FLD"})
"""Ambulatory, home health and field contacts: face to face."""
INPATIENT: Final = frozenset({"IMP", "ACUTE", "NONAC"})
"""Inpatient encounters: a stay (CCM time on those days does not count, docs/rules.md G17)."""

REFERENCE_ONLY: Final = frozenset(
    {"Patient", "Practitioner", "PractitionerRole", "Device", "Organization"}
)
"""Resources read only to resolve references: no event, and not a problem."""

"""Flags, blocked reasons and alert kinds in the words of billing staff, with what would
unblock a blocked code (names from docs/rules.md §6.3)."""

from __future__ import annotations

from dataclasses import dataclass

PROGRAMS: dict[str, str] = {
    "ccm": "Chronic care management",
    "pcm": "Principal care management",
    "rpm": "Remote physiologic monitoring",
    "rtm": "Remote therapeutic monitoring",
    "bhi": "Behavioral health integration",
    "apcm": "Advanced primary care management",
    "tcm": "Transitional care management",
}


@dataclass(frozen=True, slots=True)
class Explained:
    text: str
    fix: str = ""  # the document or event that would unblock it


# blocked reasons: what is wrong, and what the practice sends to fix it
REASONS: dict[str, Explained] = {
    "missing_consent": Explained(
        "No consent from the patient for this program.",
        "Record the patient's consent (consent.recorded) for this program and practitioner.",
    ),
    "consent_after_activity": Explained(
        "Time was logged before the patient consented; it does not count.",
        "Nothing to send: only time after the consent counts.",
    ),
    "missing_care_plan": Explained(
        "No care plan on file for this program.",
        "Record the care plan (care_plan.documented).",
    ),
    "insufficient_chronic_conditions": Explained(
        "Fewer chronic conditions on file than the code requires.",
        "Document the patient's chronic conditions (condition.documented).",
    ),
    "complex_criteria_not_met": Explained(
        "The month does not meet the criteria of complex care management.",
        "Document moderate or high complexity medical decision making, or bill non-complex.",
    ),
    "rpm_insufficient_days": Explained(
        "Too few days with device readings in the 30-day period.",
        "Readings on more days (device.reading) before the period ends.",
    ),
    "rpm_no_interactive_communication": Explained(
        "No interactive communication with the patient this month.",
        "Log a live call or video with the patient (activity.logged, interactive).",
    ),
    "rpm_not_established_patient": Explained(
        "The patient is not an established patient of the practice.",
        "Record an initiating visit (visit.recorded).",
    ),
    "rtm_not_established_patient": Explained(
        "The patient is not an established patient (proposed 2027 rule).",
        "Record an initiating visit (visit.recorded).",
    ),
    "missing_initiating_visit": Explained(
        "No initiating visit before monitoring began (proposed 2027 rule).",
        "Record the initiating visit (visit.recorded).",
    ),
}

FLAG_PREFIXES: dict[str, str] = {
    "below_threshold": "Below the time threshold of {0}",
    "cap_reached": "Unit cap of {0} reached",
    "units_exceed_common_payer_edit": "More units of {0} than many payers accept",
    "addon_without_base": "Add-on {0} without its base code",
    "exclusive_conflict": "Codes that cannot be billed together: {0}",
    "multiple_practitioners": "Several billing practitioners in {0}",
    "double_count": "The same minutes counted for two programs: {0}",
    "disputed_rule": "Billed under a disputed rule ({0})",
    "rules_extrapolated": "Priced with the {0} rules (no book for this year yet)",
    "rules_provisional": "Priced with the provisional {0} rules: payment may change",
}
FLAGS: dict[str, str] = {
    "overlap": "Overlapping activities; the overlap counts once",
    "duplicate_event": "A duplicate event was ignored",
    "concurrent_staff_time": "Two staff members at once; counted once",
    "cross_month_split": "An activity crosses months; split between them",
    "face_to_face_excluded": "Face-to-face time does not count",
    "non_clinical_staff_excluded": "Time of non-clinical staff does not count",
    "inpatient_time_excluded": "Time during an inpatient stay does not count",
    "physician_time_pooled": "Physician time pooled with staff time",
    "g0511_transition_option": "The practice may still bill G0511 (transition)",
}
CONFLICT_PREFIXES = ("exclusive_conflict:", "multiple_practitioners:", "double_count:")

ALERT_KINDS: dict[str, str] = {  # every AlertKind of schemas/views.py
    "threshold_crossed": "Threshold reached",
    "threshold_revoked": "Threshold lost",
    "threshold_approaching": "Threshold nearly missed",
    "cap_reached": "Unit cap reached",
    "documentation_gap": "Documentation missing",
    "exclusive_conflict": "Codes that exclude each other",
    "overlap": "Overlap",
    "double_count": "Counted twice",
    "staff_overlap": "Staff overlap",
    "late_activity": "Late activity on a closed month",
}


def reason(code: str) -> Explained:
    return REASONS.get(code) or Explained(code.replace("_", " ").capitalize() + ".")


def flag(name: str) -> str:
    head, _, arg = name.partition(":")
    if arg and head in FLAG_PREFIXES:
        return FLAG_PREFIXES[head].format(arg.replace("+", " and "))
    return FLAGS.get(name, name.replace("_", " ").capitalize())


def alert_kind(kind: str) -> str:
    return ALERT_KINDS.get(kind, kind.replace("_", " ").capitalize())


def program(name: str) -> str:
    return PROGRAMS.get(name, name.upper())

"""The auditor's view of one patient-month (pure: events in, a report out; no I/O, no clock).

:func:`audit_month` folds the log exactly as ``caretally replay`` does (the same
:class:`~projections.ledger.Ledger`, the same ``as_of`` semantics as
:func:`projections.engine.fold` and :func:`projections.engine.billing`) and keeps what
the ledger forgets on purpose: every version of every activity (amended and voided
ones, with the void's reason) and the documentation as it was sent. Minutes come from
the core's accounting (``ActivityTime.counted`` and ``.excluded``), codes from
``PatientContext.month``; nothing here re-decides a rule, it only names the evidence.

Exclusion reasons of a version's minutes are the accounting's docs/rules.md §6.3 names
(``duplicate_event``, ``face_to_face_excluded``, ``non_clinical_staff_excluded``,
``consent_after_activity``, ``inpatient_time_excluded``, ``overlap``,
``double_count:<a>+<b>``) plus two for versions the ledger no longer holds:
``voided`` and ``amended`` (superseded by a later version of the same activity).

Three modules: :mod:`~projections.audit.report` (the report, frozen dataclasses),
:mod:`~projections.audit.fold` (:class:`AuditFold`, the history the ledger drops, and
:func:`audit_month`) and :mod:`~projections.audit.explain` (the evidence in words and
the rules cited).
"""

from projections.audit.fold import AuditFold, AuditNotFound, audit_month
from projections.audit.report import (
    AMENDED,
    VOIDED,
    ActivityRow,
    AuditReport,
    Billing,
    CarePlanDoc,
    Change,
    CodeLine,
    ConditionsDoc,
    ConsentDoc,
    DeviceDays,
    DevicePeriod,
    Documentation,
    EnrollmentDoc,
    EventCounts,
    Exclusion,
    PriorVersion,
    ProgramTime,
    RejectedEvent,
    RuleRef,
    StayDoc,
    UnmatchedVoid,
    VisitDoc,
    VoidInfo,
    to_minutes,
)

__all__ = [
    "AMENDED",
    "VOIDED",
    "ActivityRow",
    "AuditFold",
    "AuditNotFound",
    "AuditReport",
    "Billing",
    "CarePlanDoc",
    "Change",
    "CodeLine",
    "ConditionsDoc",
    "ConsentDoc",
    "DeviceDays",
    "DevicePeriod",
    "Documentation",
    "EnrollmentDoc",
    "EventCounts",
    "Exclusion",
    "PriorVersion",
    "ProgramTime",
    "RejectedEvent",
    "RuleRef",
    "StayDoc",
    "UnmatchedVoid",
    "VisitDoc",
    "VoidInfo",
    "audit_month",
    "to_minutes",
]

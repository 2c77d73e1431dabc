"""Public views: the patient-month billing line, alerts, and the worklist of the API.

These models are the published output contract (``caretally schema --type billing.view``,
``GET /openapi.json``, ``docs/asyncapi.yaml``); :func:`billing_line` holds every billing
line that leaves a process to :class:`PatientMonthView`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from schemas.events import MONTH_PATTERN


class _View(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CodeUnits(_View):
    code: str
    units: int = Field(ge=1)


class BlockedCode(_View):
    code: str
    units: int = Field(ge=1)
    reasons: list[str] = Field(
        description="docs/rules.md §6.3 flags explaining why it is not billable"
    )


class PatientMonthView(_View):
    """One line of ``caretally replay`` and one value of ``care.billing.v1``."""

    org_id: str
    patient_id: str
    month: str = Field(pattern=MONTH_PATTERN, description="YYYY-MM")
    rule_year: int = Field(
        description="the rule book the month was priced with; a month after the last book "
        "is priced with it and flagged rules_extrapolated:<year>; a month of a provisional "
        "book (one whose final rule was not read) is flagged rules_provisional:<year>"
    )
    minutes: dict[str, float] = Field(description="counted minutes per program, after exclusions")
    billable: list[CodeUnits]
    blocked: list[BlockedCode]
    flags: list[str]
    estimated_payment: float = Field(
        description="national amount, USD: non-facility unless the practice is configured "
        "with fee_schedule facility, at the qualifying-APM conversion factor when it is "
        "configured so (docs/rules.md §5)"
    )
    payment_provisional: bool = Field(
        description="the payment is an estimate under rules that are not final: flagged "
        "rules_provisional:<year> or rules_extrapolated:<year>"
    )


AlertKind = Literal[
    "threshold_crossed",
    "threshold_revoked",
    "threshold_approaching",
    "cap_reached",
    "documentation_gap",
    "exclusive_conflict",
    "overlap",
    "double_count",
    "staff_overlap",
    "late_activity",
]


class Alert(_View):
    """One value of ``care.alerts.v1``; ``alert_id`` is a stable hash of its cause."""

    alert_id: str
    kind: AlertKind
    org_id: str
    patient_id: str
    month: str = Field(pattern=MONTH_PATTERN, description="YYYY-MM")
    code: str | None = None
    detail: str = Field(description="what happened, in words; never contains patient identifiers")
    cause_event_id: str | None = None


def contract_fields(exc: ValidationError) -> str:
    """The fields a :func:`billing_line` failure names (``a, b.c``), never their values."""
    return ", ".join(sorted({".".join(map(str, e["loc"])) for e in exc.errors()}))


def billing_line(view: Mapping[str, Any] | bytes) -> None:
    """Raise :class:`pydantic.ValidationError` unless ``view`` (a
    :meth:`~projections.billing.MonthBilling.view` dict, or its JSON) is a
    :class:`PatientMonthView`. Strict: nothing is coerced, so what passes is exactly what
    is published (a failure is a bug of the producer, not of its input)."""
    if isinstance(view, bytes):
        PatientMonthView.model_validate_json(view, strict=True)
    else:
        PatientMonthView.model_validate(view, strict=True)


# --- the worklist of ``GET /v1/orgs/{org}/worklist`` -------------------------------------


class NextThreshold(_View):
    code: str = Field(description="the code of the nearest threshold not yet met")
    minutes_short: float = Field(description="minutes still to log to meet it")


class WorklistItem(_View):
    patient_id: str
    month: str = Field(pattern=MONTH_PATTERN)
    billable: list[CodeUnits]
    blocked: list[BlockedCode]
    minutes: dict[str, float]
    next: NextThreshold | None = Field(description="null when no threshold is ahead")


class Worklist(_View):
    """The org's patient-months of one month by billing status, nearest threshold first."""

    month: str = Field(pattern=MONTH_PATTERN)
    billable: list[WorklistItem]
    blocked: list[WorklistItem]
    in_progress: list[WorklistItem]

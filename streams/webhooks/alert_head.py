"""What delivery reads of an alert: its id, org and kind, nothing else.

An alert is POSTed as the exact bytes of its ``care.alerts.v1`` record, so fields and
kinds the worker adds later reach receivers without a change here; only a value without
these three strings (or not a JSON object) is refused (dead-lettered by ``deliver``).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class AlertHead(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    alert_id: str = Field(min_length=1)
    org_id: str = Field(min_length=1)
    kind: str = Field(min_length=1)


def read_head(value: bytes | dict[str, Any]) -> AlertHead:
    """The head of an alert (its JSON, or the object parked): :class:`ValidationError`
    if it has none."""
    if isinstance(value, dict):
        return AlertHead.model_validate(value)
    return AlertHead.model_validate_json(value)


def bad_alert_reason(exc: ValidationError) -> str:
    """Why a value is not an alert, naming fields and error types only (never a value)."""
    where = "; ".join(
        f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['type']}" for e in exc.errors()
    )
    return f"webhooks: not a care.alerts.v1 alert ({where})"[:500]

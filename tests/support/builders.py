"""Compact builders for wire-contract events in tests (dicts, then validated models).

log = Log(org="o1")
log.practice(timezone="America/New_York")
log.consent("P-1", "ccm", on="2025-03-01")
log.activity("P-1", "a1", "2025-03-03T10:00:00-05:00", 20)
views = log.replay()            # {(patient, month): view dict}

``replay``, ``billing`` and ``view`` compute with the current engine (support.engines: the
fold by default); the ``engine`` fixture of tests/unit/conftest.py switches it per test.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import orjson

from projections.billing import MonthBilling
from projections.engine import Projector
from schemas.events import Event, parse_event
from support.engines import FOLD, Engine

_engine: Engine = FOLD


def current_engine() -> Engine:
    return _engine


@contextmanager
def using(engine: Engine) -> Iterator[Engine]:
    """Make :meth:`Log.replay`, :meth:`Log.billing` and :meth:`Log.view` compute with
    ``engine`` inside the block (the fold again after it)."""
    global _engine
    previous, _engine = _engine, engine
    try:
        yield engine
    finally:
        _engine = previous


class Log:
    """An in-memory event log in log order; every event is validated on append."""

    def __init__(self, org: str = "o1", recorded_at: str = "2025-01-01T00:00:00Z") -> None:
        self.org = org
        self.recorded_at = recorded_at
        self.raw: list[dict[str, Any]] = []
        self._n = 0

    # -- generic -----------------------------------------------------------------

    def add(
        self,
        type_: str,
        data: dict[str, Any],
        patient: str | None = None,
        recorded_at: str | None = None,
        event_id: str | None = None,
    ) -> dict[str, Any]:
        self._n += 1
        ev: dict[str, Any] = {
            "event_id": event_id or f"{self.org}-e{self._n}",
            "type": type_,
            "schema_version": 1,
            "org_id": self.org,
            "recorded_at": recorded_at or self.recorded_at,
            "source": "test",
            "data": data,
        }
        if patient is not None:
            ev["patient_id"] = patient
        self.raw.append(ev)
        return ev

    def events(self) -> list[Event]:
        return [parse_event(orjson.dumps(e)) for e in self.raw]

    def replay(self, as_of: datetime | None = None) -> dict[tuple[str, str], dict[str, Any]]:
        """``{(patient, month): view}`` as the current engine computes it."""
        return {(b.patient_id, b.month): b.view() for b in self.billing(as_of)}

    def billing(self, as_of: datetime | None = None) -> list[MonthBilling]:
        """Every patient-month's billing as the current engine computes it."""
        raws = [orjson.dumps(e) for e in self.raw]
        return _engine.billing([parse_event(r) for r in raws], raws, as_of)

    def view(self, patient: str, month: str) -> dict[str, Any]:
        return self.replay()[(patient, month)]

    def projector(self) -> Projector:
        p = Projector()
        for e in self.events():
            p.step(e)
        return p

    # -- event shortcuts ------------------------------------------------------------

    def practice(
        self, timezone: str = "America/New_York", facility_type: str = "office", **kw: Any
    ) -> dict[str, Any]:
        return self.add(
            "practice.configured", {"timezone": timezone, "facility_type": facility_type}, **kw
        )

    def activity(
        self,
        patient: str,
        activity_id: str,
        started_at: str,
        minutes: float | None = None,
        *,
        ended_at: str | None = None,
        staff: str = "RN-1",
        role: str = "clinical_staff",
        practitioner: str = "DR-1",
        program: str = "ccm",
        face_to_face: bool = False,
        interactive: bool = False,
        **kw: Any,
    ) -> dict[str, Any]:
        data: dict[str, Any] = {
            "activity_id": activity_id,
            "staff_id": staff,
            "staff_role": role,
            "practitioner_id": practitioner,
            "program": program,
            "activity": "care_coordination",
            "started_at": started_at,
        }
        if minutes is not None:
            data["minutes"] = minutes
        if ended_at is not None:
            data["ended_at"] = ended_at
        if face_to_face:
            data["face_to_face"] = True
        if interactive:
            data["interactive"] = True
        return self.add("activity.logged", data, patient, **kw)

    def void(
        self, patient: str, activity_id: str, reason: str = "entered in error", **kw: Any
    ) -> dict[str, Any]:
        return self.add(
            "activity.voided", {"activity_id": activity_id, "reason": reason}, patient, **kw
        )

    def consent(
        self,
        patient: str,
        program: str = "ccm",
        on: str = "2025-01-01",
        practitioner: str = "DR-1",
        revoked: bool = False,
        **kw: Any,
    ) -> dict[str, Any]:
        return self.add(
            "consent.revoked" if revoked else "consent.recorded",
            {"program": program, "practitioner_id": practitioner, "method": "verbal", "on": on},
            patient,
            **kw,
        )

    def care_plan(
        self,
        patient: str,
        program: str = "ccm",
        on: str = "2025-01-01",
        complexity: str = "low",
        **kw: Any,
    ) -> dict[str, Any]:
        return self.add(
            "care_plan.recorded",
            {"program": program, "on": on, "complexity": complexity},
            patient,
            **kw,
        )

    def conditions(self, patient: str, codes: list[str] | None = None, **kw: Any) -> dict[str, Any]:
        return self.add(
            "conditions.recorded", {"chronic": codes or ["E11.9", "I10"]}, patient, **kw
        )

    def enrollment(
        self,
        patient: str,
        program: str = "ccm",
        on: str = "2025-01-01",
        practitioner: str = "DR-1",
        qmb: bool = False,
        **kw: Any,
    ) -> dict[str, Any]:
        return self.add(
            "enrollment.recorded",
            {"program": program, "practitioner_id": practitioner, "on": on, "qmb": qmb},
            patient,
            **kw,
        )

    def visit(
        self,
        patient: str,
        on: str = "2024-12-01",
        practitioner: str = "DR-1",
        kind: str = "e_m",
        **kw: Any,
    ) -> dict[str, Any]:
        return self.add(
            "visit.recorded",
            {"practitioner_id": practitioner, "on": on, "kind": kind},
            patient,
            **kw,
        )

    def stay(
        self,
        patient: str,
        admitted_on: str,
        discharged_on: str,
        setting: str = "inpatient",
        **kw: Any,
    ) -> dict[str, Any]:
        return self.add(
            "stay.recorded",
            {"setting": setting, "admitted_on": admitted_on, "discharged_on": discharged_on},
            patient,
            **kw,
        )

    def reading(
        self, patient: str, taken_at: str, program: str = "rpm", device: str = "D-1", **kw: Any
    ) -> dict[str, Any]:
        return self.add(
            "device.reading",
            {"device_id": device, "program": program, "taken_at": taken_at},
            patient,
            **kw,
        )

    def close(self, month: str, **kw: Any) -> dict[str, Any]:
        return self.add("month.closed", {"month": month}, **kw)

    # -- common setups ----------------------------------------------------------------

    def documented(
        self,
        patient: str,
        program: str = "ccm",
        practitioner: str = "DR-1",
        complexity: str = "low",
        plan_on: str = "2025-01-01",
    ) -> None:
        """Everything a family's gate needs: conditions, consent, care plan, enrollment, visit."""
        self.conditions(patient)
        self.consent(patient, program, practitioner=practitioner)
        self.care_plan(
            patient,
            program if program in ("ccm", "pcm", "bhi") else "ccm",
            on=plan_on,
            complexity=complexity,
        )
        self.enrollment(patient, program, practitioner=practitioner)
        self.visit(patient, practitioner=practitioner)


def one_minute_activities(log: Log, patient: str, n: int, month: str = "2025-03") -> None:
    """``n`` one-minute activities, each in its own 10-minute slot (UTC) of ``month`` from
    its 2nd (the same local month in any US zone)."""
    for i in range(n):
        day, slot = 2 + i // 144, i % 144
        at = f"{month}-{day:02d}T{slot // 6:02d}:{slot % 6 * 10:02d}:00Z"
        log.activity(patient, f"{patient}-a{i}", at, 1)

"""One patient-month with many activities: does an event cost what it changes?

    python benchmarks/one_month.py [--activities 5000] [--out FILE.json]

Steps one patient's CCM month of N one-minute activities (one staff member, back to back,
logged in time order) through :class:`projections.engine.Projector` and reports the time
per event for the first and the last tenth of the month. An event that costs what it
changes takes as long at the end of the month as at its start; one that re-accounts the
whole month grows with it (the total is then quadratic in N).

The ledger refuses more than ``MAX_ACTIVITY_VERSIONS`` (200) activity versions per
patient-month (docs/performance.md); this benchmark lifts that bound in its own process
to see the kernel's growth beyond it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402


def _events(n: int) -> list[bytes]:
    def ev(k: int, type_: str, data: dict[str, Any], patient: str | None = "P-1") -> bytes:
        body: dict[str, Any] = {
            "event_id": f"e{k}",
            "type": type_,
            "schema_version": 1,
            "org_id": "o1",
            "recorded_at": "2025-03-01T00:00:00Z",
            "source": "bench",
            "data": data,
        }
        if patient:
            body["patient_id"] = patient
        return orjson.dumps(body)

    out = [
        ev(0, "practice.configured", {"timezone": "UTC", "facility_type": "office"}, None),
        ev(
            1,
            "consent.recorded",
            {"program": "ccm", "practitioner_id": "DR-1", "method": "verbal", "on": "2025-01-01"},
        ),
    ]
    start = datetime(2025, 3, 1, tzinfo=UTC)
    for i in range(n):
        at = start + timedelta(minutes=i)  # back to back: 43,200 fit in 30 days
        data = {
            "activity_id": f"a{i}",
            "staff_id": "RN-1",
            "staff_role": "clinical_staff",
            "practitioner_id": "DR-1",
            "program": "ccm",
            "activity": "care_coordination",
            "started_at": at.isoformat().replace("+00:00", "Z"),
            "minutes": 1,
        }
        out.append(ev(i + 2, "activity.logged", data))
    return out


def run(n: int) -> dict[str, Any]:
    import projections.ledger as ledger
    from projections.engine import Projector
    from schemas.events import parse_event

    ledger.MAX_ACTIVITY_VERSIONS = max(ledger.MAX_ACTIVITY_VERSIONS, n)
    events = [(parse_event(raw), raw) for raw in _events(n)]
    projector = Projector()
    times: list[float] = []
    for event, raw in events:
        t = time.perf_counter()
        projector.step(event, raw)
        times.append(time.perf_counter() - t)
    acts = times[2:]
    tenth = max(1, len(acts) // 10)
    first, last = sum(acts[:tenth]) / tenth, sum(acts[-tenth:]) / tenth
    (view,) = [b.view() for b in projector.billing()]
    return {
        "activities": n,
        "total_s": round(sum(times), 3),
        "first_tenth_us_per_event": round(first * 1e6, 1),
        "last_tenth_us_per_event": round(last * 1e6, 1),
        "growth_last_over_first": round(last / first, 2),
        "minutes": view["minutes"],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--activities", type=int, default=5000)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    result = run(args.activities)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Golden digests of a synthetic log: every patient-month view and every alert, in log order.

    python benchmarks/golden.py [--events 1000000] [--seed 7] [--log PATH] [--out FILE.json]

Folds the log event by event through :class:`projections.engine.Projector` (as the worker
does) and prints SHA-256 digests of

* ``views``: every patient-month's final view (canonical JSON lines, sorted by key);
* ``alert_ids``: the ``alert_id`` of every alert, in the order the fold emitted them;
* ``alerts``: every alert whole (kind, patient-month, code, detail, cause), in that order;
* ``changed``: every billing view the fold emitted (what the worker sends to
  ``care.billing.v1``), in that order.

A change to the kernel must leave all four equal on the same log: the per-event alerts
and the billing views are the product, and the digests show they did not move.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402
from replay import DEFAULT_SEED, cached_log_matches, default_log  # noqa: E402


def digests(log: Path) -> dict[str, object]:
    """Fold ``log`` through the Projector and digest what it produced."""
    from projections.engine import Projector
    from schemas.events import parse_event

    projector = Projector()
    ids, alerts, changed = hashlib.sha256(), hashlib.sha256(), hashlib.sha256()
    n_alerts = n_changed = events = 0
    start = time.perf_counter()
    with open(log, "rb") as fh:
        for line in fh:
            raw = line.rstrip(b"\n")
            if not raw:
                continue
            events += 1
            result = projector.step(parse_event(raw), raw)
            for a in result.alerts:
                ids.update(a.alert_id.encode() + b"\n")
                alerts.update(a.model_dump_json().encode() + b"\n")
                n_alerts += 1
            for b in result.changed:
                changed.update(orjson.dumps(b.view(), option=orjson.OPT_SORT_KEYS) + b"\n")
                n_changed += 1
    wall = time.perf_counter() - start
    views = hashlib.sha256()
    billing = projector.billing()
    for b in billing:
        views.update(orjson.dumps(b.view(), option=orjson.OPT_SORT_KEYS) + b"\n")
    return {
        "events": events,
        "patient_months": len(billing),
        "alerts_emitted": n_alerts,
        "views_emitted": n_changed,
        "views_sha256": views.hexdigest(),
        "alert_ids_sha256": ids.hexdigest(),
        "alerts_sha256": alerts.hexdigest(),
        "changed_sha256": changed.hexdigest(),
        "fold_s": round(wall, 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED)
    ap.add_argument("--log", type=Path, help="an NDJSON log (default: the cached synthetic log)")
    ap.add_argument("--out", type=Path, help="also write the result as JSON here")
    args = ap.parse_args(argv)
    log = args.log or default_log(args.events, args.seed)
    if args.log is None and not cached_log_matches(log, args.events, args.seed):
        from streams.demo.synthetic import generate_events, write_ndjson

        log.parent.mkdir(parents=True, exist_ok=True)
        write_ndjson(generate_events(args.events, seed=args.seed), log)
    result = {"log": str(log), **digests(log)}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

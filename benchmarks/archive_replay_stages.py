"""Where one share of the archive replay spends its time: each SQL stage, then the rules.

    .venv/bin/python benchmarks/archive_replay_stages.py /tmp/caretally-bench/archive-10000000

Runs share 0 of ``--shares`` (default 2) with one DuckDB thread, as ``replay_views`` does,
and prints seconds per stage (``docs/performance.md`` quotes a run of it).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streams.archive.replay import ArchiveReplay, stages


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("archive", type=Path)
    ap.add_argument("--shares", type=int, default=2)
    args = ap.parse_args()
    run = ArchiveReplay(args.archive, threads=1, shard=(0, args.shares))
    try:
        for stage in stages():
            t0 = time.perf_counter()
            run.prepare(stage)
            print(f"{stage:16s} {time.perf_counter() - t0:7.2f} s", flush=True)
        t0 = time.perf_counter()
        months = sum(1 for _ in run.billing())
        print(f"{'rules (python)':16s} {time.perf_counter() - t0:7.2f} s  {months} patient-months")
        print(run.stats)
    finally:
        run.close()


if __name__ == "__main__":
    main()

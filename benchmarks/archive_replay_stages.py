"""Where one share of the archive replay spends its time: each SQL stage, then fetching
the patient streams into ledger states, then the core's accounting and rules.

    .venv/bin/python benchmarks/archive_replay_stages.py /tmp/caretally-bench/archive-10000000

Runs share 0 of ``--shares`` (default 2) with one DuckDB thread and the memory limit
``replay_views`` gives a share, and prints seconds per stage (``docs/performance.md``
quotes a run of it). ``--profile`` adds a cProfile of the Python part, by cumulative time.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streams.archive.replay import ArchiveReplay, share_memory_mb, stages


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("archive", type=Path)
    ap.add_argument("--shares", type=int, default=2)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    run = ArchiveReplay(
        args.archive,
        threads=1,
        shard=(0, args.shares),
        memory_mb=share_memory_mb(args.shares),  # as replay_views gives each share
    )
    try:
        for stage in stages():
            t0 = time.perf_counter()
            run.prepare(stage)
            print(f"{stage:24s} {time.perf_counter() - t0:7.2f} s", flush=True)
        practices = run.practices()
        fetch = evaluate = 0.0
        months = 0
        profile = cProfile.Profile() if args.profile else None
        if profile is not None:
            profile.enable()
        patients = run.patients()
        while True:
            t0 = time.perf_counter()
            patient = next(patients, None)
            t1 = time.perf_counter()
            fetch += t1 - t0
            if patient is None:
                break
            months += sum(1 for _ in run.bill(patient, practices[patient.org_id]))
            evaluate += time.perf_counter() - t1
        if profile is not None:
            profile.disable()
        print(f"{'fetch + ledger states':24s} {fetch:7.2f} s  {run.stats.patients} patients")
        print(f"{'core: account + rules':24s} {evaluate:7.2f} s  {months} patient-months")
        print(run.stats)
        if profile is not None:
            pstats.Stats(profile).sort_stats("cumulative").print_stats(30)
    finally:
        run.close()


if __name__ == "__main__":
    main()

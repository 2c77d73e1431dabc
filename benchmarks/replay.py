"""Replay benchmark: time ``caretally replay`` on a large synthetic log and record its peak RSS;
then time the worker's fold (``Projector.step``) over the same log.

    python benchmarks/replay.py [--events 1000000] [--seed 7] [--log PATH] [--out FILE.json]
                                [--no-step]

``step_events_per_s``: every line decoded as the worker decodes a record of the log
(:func:`schemas.trusted.decode_trusted`) and stepped through one
:class:`projections.engine.Projector`, alerts and changed views included (in this process,
after the replay, with the worker's garbage-collector settings; the lines are read into
memory first and not timed). ``decode_events_per_s`` is the decoding alone, measured just
before in the same process: ``step_time_over_decode_time`` is the kernel's cost in units
of the raw parse.

The log comes from :func:`streams.demo.synthetic.generate_events` and is cached under
``benchmarks/results/`` (git-ignored); a cached log is reused when its first lines match what
the generator produces for the same ``--events`` and ``--seed``. The replay runs in a child
process (``python -m streams.cli replay --input LOG --format json``) whose output goes to a
temporary file; its lines are counted as patient-months. Peak RSS is the larger of a 20 ms
psutil poll (child plus its descendants) and ``getrusage(RUSAGE_CHILDREN).ru_maxrss``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
TARGET_EVENTS_PER_S = 100_000
TARGET_PEAK_RSS_MB = 300
TARGET_STEP_EVENTS_PER_S = 50_000
DEFAULT_SEED = 7
PREFIX_CHECK = 1000  # lines compared with a fresh generation before reusing a cached log
POLL_S = 0.02


def _synthetic() -> Any:
    """Import ``streams.demo.synthetic`` from this checkout (the script may run from anywhere)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import streams.demo.synthetic as synthetic

    return synthetic


def default_log(events: int, seed: int) -> Path:
    name = f"replay-{events}.ndjson" if seed == DEFAULT_SEED else f"replay-{events}-s{seed}.ndjson"
    return RESULTS / name


def count_lines(source: Path | IO[bytes]) -> int:
    """Newline-terminated lines plus a final unterminated one, read in large blocks."""
    if isinstance(source, Path):
        with open(source, "rb") as fh:
            return count_lines(fh)
    count, last = 0, b"\n"
    while block := source.read(1 << 24):
        count += block.count(b"\n")
        last = block[-1:]
    return count + (last != b"\n")


def cached_log_matches(path: Path, events: int, seed: int) -> bool:
    """True if ``path`` looks like a complete log of ``generate_events(events, seed=seed)``."""
    if not path.is_file() or path.stat().st_size == 0:
        return False
    import orjson

    synthetic = _synthetic()
    expected = []
    for ev in synthetic.generate_events(events, seed=seed):
        expected.append(orjson.dumps(ev, option=orjson.OPT_APPEND_NEWLINE))
        if len(expected) == PREFIX_CHECK:
            break
    with open(path, "rb") as fh:
        head = [fh.readline() for _ in range(len(expected))]
    if head != expected:
        return False
    lines = count_lines(path)
    # generate_events lands within a few percent of the target and never above it
    return 0.9 * events <= lines <= events


def ensure_log(path: Path, events: int, seed: int, regenerate: bool) -> tuple[int, float, bool]:
    """Make sure ``path`` holds the log; return (events in it, generation seconds, reused)."""
    if not regenerate and cached_log_matches(path, events, seed):
        return count_lines(path), 0.0, True
    synthetic = _synthetic()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.stem}.partial.ndjson")
    started = time.perf_counter()
    written = synthetic.write_ndjson(synthetic.generate_events(events, seed=seed), partial)
    elapsed = time.perf_counter() - started
    os.replace(partial, path)  # a log on disk is always complete
    return written, elapsed, False


def _tree_rss(proc: psutil.Process) -> int:
    """RSS of ``proc`` and its descendants, in bytes (0 once it is gone)."""
    try:
        total = proc.memory_info().rss
        for child in proc.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                total += child.memory_info().rss
        return total
    except psutil.Error:
        return 0


def _maxrss_bytes(ru_maxrss: int) -> int:
    return ru_maxrss if sys.platform == "darwin" else ru_maxrss * 1024  # Linux reports KiB


def run_replay(log: Path) -> dict[str, Any]:
    """Run the replay CLI on ``log``; measure wall time, peak RSS and output lines."""
    command = [sys.executable, "-m", "streams.cli", "replay", "--input", str(log)]
    command += ["--format", "json"]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        child = subprocess.Popen(command, stdout=out, stderr=err, cwd=ROOT, env=env)
        try:
            watched = psutil.Process(child.pid)
        except psutil.Error:
            watched = None
        polled = 0
        while child.poll() is None:
            if watched is not None:
                polled = max(polled, _tree_rss(watched))
            time.sleep(POLL_S)
        wall = time.perf_counter() - started
        rusage = _maxrss_bytes(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
        out.seek(0)
        lines = count_lines(out)
        err.seek(0)
        stderr_tail = err.read()[-4000:].decode("utf-8", "replace")
    return {
        "command": command,
        "returncode": child.returncode,
        "wall_s": wall,
        "patient_months": lines,
        "peak_rss_polled_mb": polled / 2**20,
        "peak_rss_rusage_mb": rusage / 2**20,
        "peak_rss_mb": max(polled, rusage) / 2**20,
        "stderr_tail": stderr_tail,
    }


def run_step(log: Path) -> dict[str, Any]:
    """Decode and step every line of ``log`` as the worker's fold does."""
    _synthetic()  # puts this checkout on sys.path
    from projections.engine import Projector
    from schemas.trusted import decode_trusted

    with open(log, "rb") as fh:
        lines = [line.rstrip(b"\n") for line in fh if line.strip()]
    from streams.worker.heap import tune_for_large_heap

    tune_for_large_heap()  # as the worker does
    started = time.perf_counter()
    for raw in lines:
        decode_trusted(raw)
    decode_wall = time.perf_counter() - started
    projector = Projector()
    alerts = changed = 0
    started = time.perf_counter()
    for raw in lines:
        result = projector.step(decode_trusted(raw), raw)
        alerts += len(result.alerts)
        changed += len(result.changed)
    wall = time.perf_counter() - started
    return {
        "decode_events_per_s": round(len(lines) / decode_wall, 1) if decode_wall > 0 else None,
        "step_events_per_s": round(len(lines) / wall, 1) if wall > 0 else None,
        "step_time_over_decode_time": round(wall / decode_wall, 2) if decode_wall > 0 else None,
        "step_wall_s": round(wall, 3),
        "step_alerts": alerts,
        "step_views_emitted": changed,
        "step_verdict_memo_hits": projector.verdicts.hits,
        "step_verdict_memo_misses": projector.verdicts.misses,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="target log size")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--log", type=Path, help="log path (default benchmarks/results/...)")
    parser.add_argument("--out", type=Path, help="write the JSON result here")
    parser.add_argument("--regenerate", action="store_true", help="ignore a cached log")
    parser.add_argument("--no-step", action="store_true", help="skip the Projector.step figure")
    args = parser.parse_args(argv)
    if args.events <= 0:
        parser.error("--events must be positive")

    log: Path = args.log or default_log(args.events, args.seed)
    events, generation_s, reused = ensure_log(log, args.events, args.seed, args.regenerate)
    replay = run_replay(log)
    wall = replay["wall_s"]
    result: dict[str, Any] = {
        "events": events,
        "events_per_s": round(events / wall, 1) if wall > 0 else None,
        "peak_rss_mb": round(replay["peak_rss_mb"], 1),
        "wall_s": round(wall, 3),
        "patient_months": replay["patient_months"],
        "bad_lines_exit_code": replay["returncode"],
        "log_bytes": log.stat().st_size,
        "python": platform.python_version(),
        "machine": f"{platform.system()} {platform.release()} {platform.machine()}",
        "cpu_count": os.cpu_count(),
        "target_events_per_s": TARGET_EVENTS_PER_S,
        "target_peak_rss_mb": TARGET_PEAK_RSS_MB,
        "command": replay["command"],
        "seed": args.seed,
        "log": str(log),
        "log_reused": reused,
        "generation_s": round(generation_s, 3),
        "peak_rss_polled_mb": round(replay["peak_rss_polled_mb"], 1),
        "peak_rss_rusage_mb": round(replay["peak_rss_rusage_mb"], 1),
    }
    if not args.no_step:
        result.update(run_step(log))
        result["target_step_events_per_s"] = TARGET_STEP_EVENTS_PER_S
    ok = replay["returncode"] == 0
    result["meets_targets"] = bool(
        ok
        and result["events_per_s"] is not None
        and result["events_per_s"] >= TARGET_EVENTS_PER_S
        and result["peak_rss_mb"] <= TARGET_PEAK_RSS_MB
    )
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")

    source = "cached" if reused else f"generated in {generation_s:.1f} s"
    print(f"log      {log} ({events:,} events, {result['log_bytes'] / 2**20:.0f} MiB, {source})")
    print(f"replay   exit {replay['returncode']} in {wall:.2f} s -> {replay['patient_months']:,} "
          f"patient-months")  # fmt: skip
    rate = result["events_per_s"] or 0.0
    print(f"speed    {rate:,.0f} events/s (target {TARGET_EVENTS_PER_S:,})")
    print(f"memory   peak RSS {result['peak_rss_mb']:.1f} MB (target {TARGET_PEAK_RSS_MB} MB)")
    if "step_events_per_s" in result:
        step = result["step_events_per_s"] or 0.0
        print(f"step     {step:,.0f} events/s through Projector.step "
              f"(target {TARGET_STEP_EVENTS_PER_S:,})")  # fmt: skip
    print(f"verdict  {'meets targets' if result['meets_targets'] else 'MISSES targets'}")
    if not ok and replay["stderr_tail"]:
        print("--- replay stderr (tail) ---", file=sys.stderr)
        print(replay["stderr_tail"], file=sys.stderr)
    if not args.out:
        print(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

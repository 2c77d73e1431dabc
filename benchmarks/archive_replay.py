"""Benchmark: replay of the Parquet archive (DuckDB + the core) against the fold.

Writes JSON with at least:

* ``duckdb_replay_events_per_s``: ``caretally replay --input ARCHIVE`` on a 10,000,000-event
  archive (``streams.archive.replay.replay_views``, every view serialized);
* ``fold_replay_events_per_s``: the event-by-event fold (parse + ``Ledger`` + billing) on a
  1,000,000-event sample of it (the first million in the archive's order), and the DuckDB
  replay on that same sample, with both outputs checked equal;
* ``archiver_events_per_s``: ``caretally archive --once`` copying events from a real
  broker's log into a fresh archive (sustained, from the broker).

The 10M-event archive is generated once (``streams.demo.synthetic.generate_events``, every event
validated by ``parse_event`` and archived by ``archive_store.write_events`` over 8
partitions, in two processes) and reused from ``--work-dir`` afterwards.

    .venv/bin/python benchmarks/archive_replay.py --out benchmarks/results/archive_replay.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import shutil
import sys
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import orjson
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from projections.engine import billing
from projections.ledger import Ledger
from schemas.events import parse_event
from streams.archive.replay import replay_views
from streams.archive.store import (
    Flush,
    archive_files,
    event_row,
    read_raw,
    write_events,
    write_flush,
)
from streams.demo.synthetic import generate_events
from streams.kafka.records import event_key

PARTITIONS = 8
TARGET_EVENTS_PER_S = 1_000_000


class PeakRss:
    """Peak resident memory of this process and its children, polled."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            try:
                rss = me.memory_info().rss + sum(
                    c.memory_info().rss for c in me.children(recursive=True)
                )
            except psutil.Error:
                rss = 0
            self.peak = max(self.peak, rss)
            time.sleep(0.05)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _write_share(root: str, events: int, seed: int, share: int, shares: int) -> int:
    """Archive the partitions ``p % shares == share`` of the generated log."""
    pending: dict[int, list[dict[str, Any]]] = {}
    offsets: dict[int, int] = {}
    n = 0
    for i, ev in enumerate(generate_events(events, seed=seed)):
        key = event_key(ev["org_id"], ev.get("patient_id"))
        p = zlib.crc32(key) % PARTITIONS
        if p % shares != share:
            continue
        raw = orjson.dumps(ev)
        off = offsets.get(p, 0)
        offsets[p] = off + 1
        rows = pending.setdefault(p, [])
        rows.append(event_row(parse_event(raw), raw, p, off, i))
        n += 1
        if len(rows) >= 250_000:
            write_flush(Path(root), Flush(p, rows[0]["offset"], rows[-1]["offset"]), rows)
            pending[p] = []
    for p, rows in pending.items():
        if rows:
            write_flush(Path(root), Flush(p, rows[0]["offset"], rows[-1]["offset"]), rows)
    return n


def build_archive(root: Path, events: int, seed: int) -> dict[str, Any]:
    """The generated archive under ``root`` (reused when its manifest matches)."""
    manifest = root / "bench-manifest.json"
    if manifest.exists():
        meta = json.loads(manifest.read_text())
        if meta.get("events") == events and meta.get("seed") == seed:
            return {**meta, "reused": True}
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    t0 = time.perf_counter()
    shares = max(1, min(2, os.cpu_count() or 1))
    with multiprocessing.get_context("spawn").Pool(shares) as pool:
        counts = pool.starmap(
            _write_share, [(str(root), events, seed, k, shares) for k in range(shares)]
        )
    meta = {
        "events": events,
        "seed": seed,
        "rows": sum(counts),
        "partitions": PARTITIONS,
        "generation_s": round(time.perf_counter() - t0, 1),
        "parquet_bytes": sum(p.stat().st_size for p in archive_files(root)),
    }
    manifest.write_text(json.dumps(meta))
    return {**meta, "reused": False}


def duckdb_replay(root: Path, workers: int) -> dict[str, Any]:
    with PeakRss() as rss:
        t0 = time.perf_counter()
        views, stats = replay_views(root, workers=workers)
        lines = [orjson.dumps(v) for v in views]
        wall = time.perf_counter() - t0
    return {
        "wall_s": round(wall, 2),
        "patient_months": len(lines),
        "events_applied": stats.applied,
        "patients": stats.patients,
        "peak_rss_mb": round(rss.peak / 2**20, 1),
        "lines": lines,
    }


def fold_replay(raws: list[bytes]) -> dict[str, Any]:
    with PeakRss() as rss:
        t0 = time.perf_counter()
        ledger = Ledger()
        for raw in raws:
            ledger.apply(parse_event(raw), raw)
        lines = [orjson.dumps(b.view()) for b in billing(ledger)]
        wall = time.perf_counter() - t0
    return {"wall_s": round(wall, 2), "peak_rss_mb": round(rss.peak / 2**20, 1), "lines": lines}


def archiver_rate(events: list[bytes], work: Path) -> dict[str, Any]:
    """Produce ``events`` to a fresh embedded broker's log, then time ``archive --once``."""
    from kafka import KafkaProducer

    from streams.archive.archiver import archive_once
    from streams.kafka.broker import EmbeddedBroker
    from streams.kafka.topics import Topics, ensure_topics

    root = work / "archiver-bench"
    shutil.rmtree(root, ignore_errors=True)
    with EmbeddedBroker() as broker:
        topics = Topics("bench.")
        ensure_topics(broker.bootstrap, topics, partitions=PARTITIONS)
        producer = KafkaProducer(
            bootstrap_servers=broker.bootstrap, linger_ms=20, batch_size=1 << 20, acks="all"
        )
        for raw in events:
            obj = orjson.loads(raw)
            producer.send(topics.events, raw, key=event_key(obj["org_id"], obj.get("patient_id")))
        producer.flush()
        producer.close()
        t0 = time.perf_counter()
        stats = archive_once(broker.bootstrap, topics, root)
        wall = time.perf_counter() - t0
    rows = sum(1 for _ in read_raw(root))
    return {
        "events": len(events),
        "archived_rows": rows,
        "wall_s": round(wall, 2),
        "events_per_s": round(rows / wall, 1),
        "stats": str(stats),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--sample", type=int, default=1_000_000)
    ap.add_argument("--archiver-events", type=int, default=200_000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--work-dir", type=Path, default=Path("/tmp/caretally-bench"))
    args = ap.parse_args()

    big = args.work_dir / f"archive-{args.events}"
    meta = build_archive(big, args.events, args.seed)
    print(f"archive: {meta}", file=sys.stderr)

    full = duckdb_replay(big, args.workers)
    rows = meta["rows"]
    print(f"duckdb replay of {rows} events: {full['wall_s']} s", file=sys.stderr)

    sample_raws: list[bytes] = []
    for raw in read_raw(big):
        sample_raws.append(raw)
        if len(sample_raws) >= args.sample:
            break
    small = args.work_dir / f"sample-{args.sample}"
    shutil.rmtree(small, ignore_errors=True)
    write_events(
        small, ((parse_event(r), r) for r in sample_raws), partitions=PARTITIONS, flush_rows=250_000
    )
    fold = fold_replay(sample_raws)
    fast_small = duckdb_replay(small, args.workers)
    agree = fold["lines"] == fast_small["lines"]
    print(f"fold of {len(sample_raws)} events: {fold['wall_s']} s; agree={agree}", file=sys.stderr)

    arch = archiver_rate(sample_raws[: args.archiver_events], args.work_dir)
    print(f"archiver: {arch['events_per_s']} events/s", file=sys.stderr)

    def drop_lines(d: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in d.items() if k != "lines"}

    result = {
        "duckdb_replay_events_per_s": round(rows / full["wall_s"], 1),
        "fold_replay_events_per_s": round(len(sample_raws) / fold["wall_s"], 1),
        "archiver_events_per_s": arch["events_per_s"],
        "target_duckdb_events_per_s": TARGET_EVENTS_PER_S,
        "meets_target": rows / full["wall_s"] >= TARGET_EVENTS_PER_S,
        "archive": meta,
        "duckdb_replay": drop_lines(full),
        "sample": {
            "events": len(sample_raws),
            "fold": drop_lines(fold),
            "duckdb": drop_lines(fast_small),
            "duckdb_events_per_s": round(len(sample_raws) / fast_small["wall_s"], 1),
            "outputs_equal": agree,
        },
        "archiver": arch,
        "workers": args.workers,
        "python": platform.python_version(),
        "machine": f"{platform.system()} {platform.release()} {platform.machine()}",
        "cpu_count": os.cpu_count(),
        "command": [sys.executable, *sys.argv],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in list(result)[:5]}, indent=2))
    if not agree:
        sys.exit("the DuckDB replay and the fold disagree on the sample")


if __name__ == "__main__":
    main()

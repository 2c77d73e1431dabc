"""The Parquet archive of ``care.events.v1``: layout, row format, atomic writes, reading.

Layout (hive style, so DuckDB can prune by org and month)::

    ROOT/org=<org key>/month=<YYYY-MM of recorded_at, UTC>/
        p<partition>-<first offset>-<last offset>.parquet
    ROOT/_committed/p<partition>-<first offset>-<last offset>
    ROOT/_orgs.json                 {org key: org_id}, for people (nothing reads it back)

The org key (:func:`org_key`) is the first 32 hex digits of the SHA-256 of the org id:
a fixed-length folder name, so no org id, however long or whatever its characters, can
make a path the file system refuses (which would stop the archive at that event on
every restart). No other event value becomes a path component: the month is bounded by
the schema's ``recorded_at`` range, the file name is the flush's offsets. Readers take
the org from the rows' ``org_id`` column, never from a folder name, so archives written
before this layout (``org=<org_id, percent-encoded>``), and archives mixing both, read
the same.

One *flush* copies a contiguous offset range of one log partition; its rows are split
into one file per (org, month), all named by the flush's range. A flush is visible only
once its commit marker exists (written last, atomically), so a crash mid-flush leaves
nothing a reader sees; the archiver deletes the orphans of an uncommitted flush at
start and resumes after the highest committed offset of each partition.

Each row keeps the event's exact log bytes (``raw``), its partition, offset and the
broker's record timestamp, plus typed copies of the fields the replay needs, so DuckDB
never parses JSON (columns added later, such as the payment settings of
``practice.configured``, are missing from files written before them: a reader selecting
them reads the files by column name, and such a file's rows hold the defaults). The
archive's canonical order is :data:`ORDER_SQL`: per partition the offset order (which is
per-key order), interleaved across partitions by record timestamp (made non-decreasing
within each partition, so a clock step back can never reorder one key's events).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.parquet as pq

from schemas.events import (
    ActivityLogged,
    ActivityVoided,
    CarePlanRecorded,
    ConditionsRecorded,
    ConsentRecorded,
    ConsentRevoked,
    DeviceReading,
    EnrollmentRecorded,
    Event,
    MonthClosed,
    PracticeConfigured,
    StayRecorded,
    VisitRecorded,
)
from streams.files.atomic import replace_file, write_bytes

DEFAULT_ARCHIVE = Path("data/archive")
COMMITTED = "_committed"
ORGS_FILE = "_orgs.json"  # {org key: org_id}: which folder is whose, for people
_TS = pa.timestamp("us", tz="UTC")

SCHEMA = pa.schema(
    [
        ("partition", pa.int32()),
        ("offset", pa.int64()),
        ("timestamp_ms", pa.int64()),  # the broker record's timestamp
        ("raw", pa.binary()),  # the log value, byte for byte
        ("org_id", pa.string()),
        ("patient_id", pa.string()),  # null for practice-wide events
        ("event_id", pa.string()),
        ("type", pa.string()),
        ("recorded_at", _TS),
        # typed copies of data fields (null where the type has no such field)
        ("activity_id", pa.string()),
        ("staff_id", pa.string()),
        ("staff_role", pa.string()),
        ("practitioner_id", pa.string()),
        ("program", pa.string()),
        ("started_at", _TS),
        ("seconds", pa.int64()),  # activity length as the ledger counts it (rounded down)
        ("face_to_face", pa.bool_()),
        ("interactive", pa.bool_()),
        ("reason", pa.string()),
        ("on", pa.date32()),
        ("complexity", pa.string()),
        ("chronic_count", pa.int32()),  # distinct codes on the list
        ("qmb", pa.bool_()),
        ("kind", pa.string()),
        ("setting", pa.string()),
        ("admitted_on", pa.date32()),
        ("discharged_on", pa.date32()),
        ("taken_at", _TS),
        ("timezone", pa.string()),
        ("facility_type", pa.string()),
        ("closed_month", pa.string()),
        # added after the first archives (theirs lack them: readers take the defaults)
        ("qualifying_apm_participant", pa.bool_()),
        ("fee_schedule", pa.string()),
    ]
)
COLUMNS = SCHEMA.names

# Canonical archive order, for SQL over ``read_parquet`` of the archive (see module doc).
ORDER_SQL = 'log_ts, partition, "offset"'
LOG_TS_SQL = (
    'max(timestamp_ms) OVER (PARTITION BY partition ORDER BY "offset" '
    "ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS log_ts"
)

_FILE = re.compile(r"^p(\d+)-(\d+)-(\d+)\.parquet$")
_MARK = re.compile(r"^p(\d+)-(\d+)-(\d+)$")


@dataclass(frozen=True, slots=True, order=True)
class Flush:
    """A contiguous offset range of one partition, archived together."""

    partition: int
    first: int
    last: int

    @property
    def name(self) -> str:
        return f"p{self.partition}-{self.first}-{self.last}"


def event_row(
    event: Event, raw: bytes, partition: int, offset: int, timestamp_ms: int
) -> dict[str, Any]:
    """One archive row for a validated log event."""
    row: dict[str, Any] = dict.fromkeys(COLUMNS)
    row.update(
        partition=partition,
        offset=offset,
        timestamp_ms=timestamp_ms,
        raw=raw,
        org_id=event.org_id,
        patient_id=getattr(event, "patient_id", None),
        event_id=event.event_id,
        type=event.type,
        recorded_at=event.recorded_at,
    )
    d: Any = event.data
    if isinstance(event, ActivityLogged):
        row.update(
            activity_id=d.activity_id,
            staff_id=d.staff_id,
            staff_role=d.staff_role,
            practitioner_id=d.practitioner_id,
            program=d.program,
            started_at=d.started_at,
            seconds=d.seconds,
            face_to_face=d.face_to_face,
            interactive=d.interactive,
        )
    elif isinstance(event, ActivityVoided):
        row.update(activity_id=d.activity_id, reason=d.reason)
    elif isinstance(event, ConsentRecorded | ConsentRevoked):
        row.update(program=d.program, practitioner_id=d.practitioner_id, on=d.on, kind=d.method)
    elif isinstance(event, CarePlanRecorded):
        row.update(program=d.program, on=d.on, complexity=d.complexity)
    elif isinstance(event, ConditionsRecorded):
        row.update(chronic_count=len(set(d.chronic)))
    elif isinstance(event, EnrollmentRecorded):
        row.update(program=d.program, practitioner_id=d.practitioner_id, on=d.on, qmb=d.qmb)
    elif isinstance(event, VisitRecorded):
        row.update(practitioner_id=d.practitioner_id, on=d.on, kind=d.kind)
    elif isinstance(event, StayRecorded):
        row.update(setting=d.setting, admitted_on=d.admitted_on, discharged_on=d.discharged_on)
    elif isinstance(event, DeviceReading):
        row.update(program=d.program, taken_at=d.taken_at, kind=d.device_id)
    elif isinstance(event, PracticeConfigured):
        row.update(
            timezone=d.timezone,
            facility_type=d.facility_type,
            qualifying_apm_participant=d.qualifying_apm_participant,
            fee_schedule=d.fee_schedule,
        )
    elif isinstance(event, MonthClosed):
        row.update(closed_month=d.month)
    return row


def month_dir(recorded_at: datetime) -> str:
    """The archive month of an event: its ``recorded_at`` month in UTC."""
    utc = recorded_at.astimezone(UTC)
    return f"{utc.year:04d}-{utc.month:02d}"


def org_key(org_id: str) -> str:
    """The fixed-length folder key of an org: 32 hex digits of the SHA-256 of its id."""
    return hashlib.sha256(org_id.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def org_dir(org_id: str) -> str:
    """The org's folder name (``org=`` and its 32-digit key: 36 bytes, whatever the id)."""
    return "org=" + org_key(org_id)


def read_orgs(root: Path) -> dict[str, str]:
    """The archive's ``{org key: org_id}`` manifest (empty if absent or unreadable)."""
    try:
        data = json.loads((root / ORGS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def _note_orgs(root: Path, orgs: Iterable[str]) -> None:
    """Add orgs the manifest does not name yet (atomically; before the flush commits)."""
    known = read_orgs(root)
    new = {org_key(o): o for o in orgs if org_key(o) not in known}
    if new:
        text = json.dumps({**known, **new}, ensure_ascii=False, indent=0, sort_keys=True)
        write_bytes(root / ORGS_FILE, (text + "\n").encode("utf-8", "surrogatepass"))


def write_flush(root: Path, flush: Flush, rows: list[dict[str, Any]]) -> list[Path]:
    """Write one flush's rows (in offset order) atomically and commit it; returns the files.

    Every file is written under a temporary name and renamed; the commit marker comes
    last. Rows must all belong to ``flush.partition`` within ``[first, last]``. Rows
    are grouped by folder, not by org id, so even two ids with one key (a SHA-256
    collision) would share a file rather than overwrite each other's.
    """
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((org_dir(row["org_id"]), month_dir(row["recorded_at"])), []).append(row)
    root.mkdir(parents=True, exist_ok=True)
    _note_orgs(root, {row["org_id"] for row in rows})
    written: list[Path] = []
    for (org, month), part in sorted(groups.items()):
        folder = root / org / f"month={month}"
        folder.mkdir(parents=True, exist_ok=True)
        final = folder / f"{flush.name}.parquet"
        replace_file(final, lambda tmp, part=part: _write_table(tmp, part))  # type: ignore[misc]
        written.append(final)
    marks = root / COMMITTED
    marks.mkdir(parents=True, exist_ok=True)
    write_bytes(marks / flush.name, f"{len(rows)}\n".encode())
    return written


def _write_table(path: Path, rows: list[dict[str, Any]]) -> None:
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    pq.write_table(table, path, compression="zstd")


def committed(root: Path) -> set[Flush]:
    marks = root / COMMITTED
    if not marks.is_dir():
        return set()
    out = set()
    for p in marks.iterdir():
        m = _MARK.match(p.name)
        if m:
            out.add(Flush(int(m[1]), int(m[2]), int(m[3])))
    return out


def _flush_of(path: Path) -> Flush | None:
    m = _FILE.match(path.name)
    return Flush(int(m[1]), int(m[2]), int(m[3])) if m else None


def archive_files(root: Path) -> list[Path]:
    """Committed Parquet files of the archive under ``root`` (sorted)."""
    done = committed(root)
    return sorted(p for p in root.glob("org=*/month=*/*.parquet") if _flush_of(p) in done)


def next_offsets(root: Path) -> dict[int, int]:
    """Per partition, the first offset not yet archived (highest committed last + 1)."""
    out: dict[int, int] = {}
    for f in committed(root):
        out[f.partition] = max(out.get(f.partition, 0), f.last + 1)
    return out


def remove_uncommitted(root: Path) -> list[Path]:
    """Delete temporaries and files of flushes that never committed (a crash mid-flush)."""
    done = committed(root)
    removed = []
    for p in list(root.glob("org=*/month=*/*")):
        if p.name.endswith(".tmp") or (p.suffix == ".parquet" and _flush_of(p) not in done):
            p.unlink()
            removed.append(p)
    for p in list((root / COMMITTED).glob(".*.tmp")) if (root / COMMITTED).is_dir() else []:
        p.unlink()
        removed.append(p)
    for p in list(root.glob(f".{ORGS_FILE}.*.tmp")):
        p.unlink()
        removed.append(p)
    return removed


def org_months(root: Path) -> Iterator[tuple[str, str]]:
    """(org_id, month) folders present in the archive: the org named by the manifest, or
    (a folder of the old layout) by the folder's percent-encoded name."""
    orgs = read_orgs(root)
    for org in sorted(root.glob("org=*")):
        key = org.name[4:]
        for month in sorted(org.glob("month=*")):
            yield orgs.get(key, unquote(key)), month.name[6:]


def is_archive(path: Path) -> bool:
    """A directory holding an archive, or a single archive Parquet file."""
    if path.is_dir():
        return (path / COMMITTED).is_dir() or any(path.glob("org=*"))
    return path.suffix == ".parquet"


def parquet_sources(path: Path) -> list[str]:
    """The Parquet files to read for ``path`` (an archive directory or one file)."""
    if path.is_dir():
        return [str(p) for p in archive_files(path)]
    return [str(path)]


def read_raw(
    path: Path,
    as_of: datetime | None = None,
    org_id: str | None = None,
    patient_id: str | None = None,
) -> Iterator[bytes]:
    """The archived events' raw bytes in canonical order.

    ``as_of``: only events recorded at or before it. ``org_id``: only that org's events.
    ``patient_id`` (with ``org_id``): only that patient's events and the org's
    practice-wide ones (what a fold of that patient needs).
    """
    import duckdb

    files = parquet_sources(path)
    if not files:
        return
    where: list[str] = ["TRUE"]
    params: list[Any] = []
    if as_of is not None:
        where.append("recorded_at <= ?")
        params.append(as_of)
    if org_id is not None:
        where.append("org_id = ?")
        params.append(org_id)
        if patient_id is not None:
            where.append("(patient_id = ? OR patient_id IS NULL)")
            params.append(patient_id)
    con = duckdb.connect()
    try:
        cur = con.execute(
            f'SELECT raw FROM (SELECT raw, recorded_at, org_id, patient_id, partition, "offset", '
            f"{LOG_TS_SQL} FROM read_parquet(?)) WHERE {' AND '.join(where)} "
            f"ORDER BY {ORDER_SQL}",
            [files, *params],
        )
        while batch := cur.fetchmany(10_000):
            for (raw,) in batch:
                yield bytes(raw)
    finally:
        con.close()


def write_events(
    root: Path,
    events: Iterable[tuple[Event, bytes]],
    partitions: int = 1,
    flush_rows: int = 100_000,
    partition_of: Any = None,
) -> int:
    """Archive ``events`` (log order) as if they came from a log of ``partitions``
    partitions, keyed like ``care.events.v1``; for tests, benchmarks and files.

    Record timestamps are the event's position, so the canonical order is the input
    order. Returns the number of rows written.
    """
    from streams.kafka.records import event_key

    if partition_of is None:
        import zlib

        def partition_of(key: bytes) -> int:
            return zlib.crc32(key) % partitions

    pending: dict[int, list[dict[str, Any]]] = {}
    offsets: dict[int, int] = {}
    n = 0
    for i, (event, raw) in enumerate(events):
        p = partition_of(event_key(event.org_id, getattr(event, "patient_id", None)))
        off = offsets.get(p, 0)
        offsets[p] = off + 1
        pending.setdefault(p, []).append(event_row(event, raw, p, off, i))
        n += 1
        if len(pending[p]) >= flush_rows:
            rows = pending.pop(p)
            write_flush(root, Flush(p, rows[0]["offset"], rows[-1]["offset"]), rows)
    for p, rows in sorted(pending.items()):
        write_flush(root, Flush(p, rows[0]["offset"], rows[-1]["offset"]), rows)
    return n

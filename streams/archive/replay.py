"""Replay of the Parquet archive: DuckDB reads, orders and groups the events; the core
accounts and bills them.

The event-by-event fold (:func:`projections.engine.replay`) parses and applies every
event in Python. Here DuckDB does, in SQL over the archive's typed columns, only what
the ledger does before any rule of docs/rules.md §6.2 runs:

* the archive's canonical order (``ord``: the ledger's log position), the ``--as-of``
  cut and idempotency (the first of each ``(org_id, event_id)`` wins, over the whole
  archive), then the ledger's volume bounds;
* the current version of every activity (amendments replace, voids remove, an
  amendment keeps the position of its first logging after the last void);
* per patient, in (org, patient) order, three ordered streams: the current activities,
  the documentation events, and the quarter-hours with a device reading.

Python merges those streams, one patient at a time, into the
:class:`projections.ledger.PatientState` the ledger would hold after folding the same
events (``seq`` is ``ord``: another number, the same order, and the core only ever
compares the seqs of one patient) and evaluates it with the core's
:class:`projections.billing.PatientContext` as :func:`projections.engine.billing` does
(with the same ``as_of`` month cut; without its memo of verdicts, which made this
replay slower and bigger). The accounting (§6.2 steps 1-5) is the core's alone, so
every month carries its real intervals (claim dates of service read them). A
hypothesis property test holds this path to the fold on random logs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import heapq
import multiprocessing
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from itertools import chain, groupby
from operator import itemgetter
from pathlib import Path
from typing import Any

import orjson

from projections.billing import MonthBilling, PatientContext
from projections.calendar import DEFAULT_TIMEZONE, epoch, month_bounds
from projections.ledger import (
    MAX_ACTIVITY_VERSIONS,
    MAX_READINGS,
    Activity,
    ConsentEntry,
    EnrollmentEntry,
    PatientState,
    Practice,
)
from projections.rules import SHIPPED_CATALOG, RuleCatalog
from streams.archive.store import LOG_TS_SQL, parquet_sources

# Tables live in the connection's in-memory database (not TEMP): the patient streams are
# read through several cursors at once, and a cursor sees no other connection's TEMP.
_FDIV = "CREATE OR REPLACE MACRO fdiv(a, b) AS (a - (((a % b) + b) % b)) // b"
_STAGES = ("_load", "_activities", "_streams")
_FETCH_ROWS = 20_000
REPLAY_MEMORY_MB = 1024
"""DuckDB's memory for one ``replay_views`` (its shares split it, 256 MB each at least);
beyond it DuckDB spills to disk. The 10M-event archive replays in 2 GB this way."""
_Rows = Iterator[tuple[Any, ...]]
_Groups = Iterator[tuple[tuple[str, str], _Rows]]  # (org, patient) and that patient's rows
_Fill = Callable[[PatientState, _Rows], None]

# the typed columns ``ev`` keeps (``rd`` keeps those of readings)
_EVENT_COLS = (
    "org_id, patient_id, type, recorded_at, activity_id, staff_id, staff_role, "
    'practitioner_id, program, started_at, seconds, face_to_face, interactive, "on", '
    "complexity, chronic_count, qmb, kind, setting, admitted_on, discharged_on, timezone, "
    "facility_type, qualifying_apm_participant, fee_schedule"
)
_ADDED_COLS = {"qualifying_apm_participant": "BOOLEAN", "fee_schedule": "VARCHAR"}
"""Columns of ``ev`` the archive's first files lack (``streams.archive.store.SCHEMA``): read
by name across files, and null (the defaults) where a file has none."""
# the codes of a conditions.recorded (the archive keeps their count only): from its log bytes
_CHRONIC = (
    "CASE WHEN type = 'conditions.recorded' "
    "THEN json_extract_string(decode(raw), '$.data.chronic[*]') END AS chronic"
)
_READING_COLS_EMPTY = (
    'NULL::INTEGER AS partition, NULL::BIGINT AS "offset", NULL::VARCHAR AS org_id, '
    "NULL::VARCHAR AS patient_id, NULL::VARCHAR AS program, NULL::TIMESTAMPTZ AS taken_at"
)
_DOCUMENT_TYPES = (
    "consent.recorded",
    "consent.revoked",
    "care_plan.recorded",
    "conditions.recorded",
    "enrollment.recorded",
    "visit.recorded",
    "stay.recorded",
)


@dataclass(slots=True)
class ReplayStats:
    applied: int = 0  # events after --as-of, idempotency and the volume bounds
    patients: int = 0  # patient records evaluated (with an activity, reading or document)
    patient_months: int = 0
    practice_events: int = 0  # practice-wide events (every shard reads them)
    over_limit: int = 0  # events refused: their patient-month was at a volume bound


class ArchiveReplay:
    """One replay of an archive (directory or Parquet file); iterate :meth:`billing`."""

    def __init__(
        self,
        source: Path,
        as_of: datetime | None = None,
        threads: int | None = None,
        shard: tuple[int, int] | None = None,
        catalog: RuleCatalog = SHIPPED_CATALOG,
        memory_mb: int | None = None,
    ) -> None:
        """``shard`` ``(k, n)``: only patients whose key hashes to ``k`` modulo ``n`` (with
        every practice-wide event), so ``n`` processes can share one replay. ``catalog``:
        the rule books the months are evaluated with. ``memory_mb``: DuckDB's memory
        limit (default: 70% of physical memory split between the shares); beyond it,
        DuckDB spills to a private temporary folder (not the current directory)."""
        import duckdb

        self.as_of = as_of
        self.catalog = catalog
        self.shard = shard
        self.stats = ReplayStats()
        self.files = parquet_sources(source)
        shares = 1 if shard is None else shard[1]
        limit = memory_mb or _memory_mb() * 7 // 10 // shares
        self._spill = tempfile.TemporaryDirectory(prefix="caretally-replay-")
        self.con = duckdb.connect(
            config={
                "threads": threads or os.cpu_count() or 1,
                "memory_limit": f"{limit}MB",
                "temp_directory": self._spill.name,
            }
        )
        self.con.execute(_FDIV)
        self._done: set[str] = set()

    def close(self) -> None:
        self.con.close()
        self._spill.cleanup()

    # -- SQL stages ----------------------------------------------------------------

    def _load(self) -> None:
        """The share's events as the ledger applies them: ``ev`` (all but device readings,
        numbered by ``ord``) and ``rd`` (device readings: their order never matters but
        for the volume bound), then ``orgs`` (each practice's settings)."""
        sql = self.con.execute
        known = "TRUE" if self.as_of is None else "recorded_at <= ?"
        cut: list[Any] = [] if self.as_of is None else [self.as_of]
        share = "TRUE"
        if self.shard is not None:
            # idempotency is decided over the whole archive (an event id reused by another
            # patient of the org is a conflict there too); only then is the share taken
            k, n = self.shard
            share = f"(patient_id IS NULL OR hash(org_id, patient_id) % {n:d} = {k:d})"
        if not self.files:
            sql(
                f"CREATE TABLE ev AS SELECT NULL::BIGINT AS ord, {_empty_cols()}, "
                "NULL::VARCHAR[] AS chronic LIMIT 0"
            )
            sql(f"CREATE TABLE rd AS SELECT {_READING_COLS_EMPTY} LIMIT 0")
        else:
            # canonical order -> ord, over narrow rows of the whole archive
            sql(
                f"""CREATE TABLE lt AS
                SELECT partition, "offset",
                       row_number() OVER (ORDER BY log_ts, partition, "offset") AS ord
                FROM (SELECT partition, "offset", recorded_at, {LOG_TS_SQL} FROM read_parquet(?))
                WHERE {known}""",
                [self.files, *cut],
            )
            # the first (org_id, event_id) wins: the rest are ``losers``. Only keys whose
            # 64-bit hash comes twice are candidates; among them the ids themselves decide
            sql(
                f"""CREATE TABLE losers AS
                WITH twice AS (
                  SELECT hash(org_id, event_id) AS h FROM read_parquet(?) WHERE {known}
                  GROUP BY ALL HAVING count(*) > 1)
                SELECT partition, "offset" FROM (
                  SELECT p.partition, p."offset", p.org_id, p.event_id, lt.ord
                  FROM (SELECT partition, "offset", org_id, event_id FROM read_parquet(?)
                        WHERE hash(org_id, event_id) IN (SELECT h FROM twice)) p
                  JOIN lt USING (partition, "offset"))
                QUALIFY row_number() OVER (PARTITION BY org_id, event_id ORDER BY ord) > 1""",
                [self.files, *cut, self.files],
            )
            sql(
                f"""CREATE TABLE ev AS
                SELECT lt.ord, {", ".join("p." + c.strip() for c in _EVENT_COLS.split(","))},
                       p.chronic
                FROM (SELECT partition, "offset", {self._event_cols()}, {_CHRONIC}
                      FROM read_parquet(?, union_by_name = true)
                      WHERE type <> 'device.reading' AND {share}) p
                JOIN lt USING (partition, "offset")
                ANTI JOIN losers USING (partition, "offset")""",
                [self.files],
            )
            sql(
                f"""CREATE TABLE rd AS
                SELECT p.partition, p."offset", p.org_id, p.patient_id, p.program, p.taken_at
                FROM (SELECT partition, "offset", org_id, patient_id, program, taken_at
                      FROM read_parquet(?)
                      WHERE type = 'device.reading' AND {known} AND {share}) p
                ANTI JOIN losers USING (partition, "offset")""",
                [self.files, *cut],
            )
            self._bound_volume()
            sql("DROP TABLE lt")
            sql("DROP TABLE losers")
        self.stats.applied, self.stats.practice_events = sql(  # type: ignore[misc]
            """SELECT count(*) + (SELECT count(*) FROM rd),
                      count(*) FILTER (WHERE patient_id IS NULL) FROM ev"""
        ).fetchone()
        # the practice as the ledger keeps it: its latest settings, else the defaults (a
        # file archived before the payment settings has no such columns: its rows are null
        # there, and a practice.configured of that time set the defaults)
        sql(
            f"""CREATE TABLE orgs AS
            SELECT o.org_id, coalesce(p.tz, '{DEFAULT_TIMEZONE}') AS tz,
                   coalesce(p.facility, 'office') AS facility,
                   coalesce(p.qp, false) AS qp, coalesce(p.fees, 'non_facility') AS fees
            FROM (SELECT org_id FROM ev UNION SELECT org_id FROM rd) o
            LEFT JOIN (SELECT org_id, arg_max(timezone, ord) AS tz,
                              arg_max(facility_type, ord) AS facility,
                              arg_max(coalesce(qualifying_apm_participant, false), ord) AS qp,
                              arg_max(coalesce(fee_schedule, 'non_facility'), ord) AS fees
                       FROM ev WHERE type = 'practice.configured' GROUP BY org_id) p
            USING (org_id)"""
        )

    def _event_cols(self) -> str:
        """:data:`_EVENT_COLS` as this archive has them: an added column that no file
        holds (an archive written before it) is a typed null."""
        query = "SELECT * FROM read_parquet(?, union_by_name = true) LIMIT 0"
        present = {d[0] for d in self.con.execute(query, [self.files]).description}
        return ", ".join(
            c if c in present or c not in _ADDED_COLS else f"NULL::{_ADDED_COLS[c]} AS {c}"
            for c in (c.strip() for c in _EVENT_COLS.split(","))
        )

    def _bound_volume(self) -> None:
        """Drop what the ledger refuses as ``over_limit``: a patient's activity versions
        (readings) past ``MAX_ACTIVITY_VERSIONS`` (``MAX_READINGS``) in a UTC month, in
        log order. The ledger counts only events it applied, and once a month is at its
        bound it refuses every later one, so the refused are exactly those numbered past
        it. Only the patient-months over a bound are numbered (there are rarely any)."""
        utc_month = "strftime(make_timestamp(epoch_us({})), '%Y-%m')"
        refused = self.con.execute(
            f"""DELETE FROM ev WHERE ord IN (
              WITH a AS (
                SELECT ord, org_id, patient_id, {utc_month.format("started_at")} AS m
                FROM ev WHERE type = 'activity.logged'),
              heavy AS (
                SELECT org_id, patient_id, m FROM a
                GROUP BY ALL HAVING count(*) > {MAX_ACTIVITY_VERSIONS:d})
              SELECT ord FROM (
                SELECT ord, row_number() OVER (PARTITION BY org_id, patient_id, m ORDER BY ord)
                       AS n
                FROM a SEMI JOIN heavy USING (org_id, patient_id, m))
              WHERE n > {MAX_ACTIVITY_VERSIONS:d})"""
        ).fetchone()
        readings = self.con.execute(
            f"""DELETE FROM rd USING (
              WITH r AS (
                SELECT partition, "offset", org_id, patient_id,
                       {utc_month.format("taken_at")} AS m
                FROM rd),
              heavy AS (
                SELECT org_id, patient_id, m FROM r
                GROUP BY ALL HAVING count(*) > {MAX_READINGS:d})
              SELECT partition, "offset" FROM (
                SELECT r.partition, r."offset", row_number() OVER (
                         PARTITION BY r.org_id, r.patient_id, r.m ORDER BY lt.ord) AS n
                FROM r SEMI JOIN heavy USING (org_id, patient_id, m)
                JOIN lt USING (partition, "offset"))
              WHERE n > {MAX_READINGS:d}) x
            WHERE rd.partition = x.partition AND rd."offset" = x."offset"
            """
        ).fetchone()
        self.stats.over_limit = sum(int(r[0]) for r in (refused, readings) if r)

    def _activities(self) -> None:
        """``cur``: the current version of every activity, as ``Ledger.activities`` holds
        it (``seq``: the first logging after the last void; times on epoch seconds)."""
        self.con.execute(
            """CREATE TABLE cur AS
            WITH a AS (
              SELECT org_id, patient_id, activity_id, ord, type FROM ev
              WHERE type IN ('activity.logged', 'activity.voided')),
            lv AS (
              SELECT org_id, patient_id, activity_id,
                     coalesce(max(ord) FILTER (WHERE type = 'activity.voided'), -1) AS last_void,
                     max(ord) AS last_ord
              FROM a GROUP BY ALL),
            live AS (
              SELECT a.org_id, a.patient_id, a.activity_id, min(a.ord) AS seq,
                     max(a.ord) AS cur_ord
              FROM a JOIN lv USING (org_id, patient_id, activity_id)
              WHERE a.type = 'activity.logged' AND a.ord > lv.last_void
                AND lv.last_ord > lv.last_void
              GROUP BY ALL)
            SELECT l.org_id, l.patient_id, l.activity_id, l.seq, e.staff_id, e.staff_role AS role,
                   e.practitioner_id, e.program,
                   fdiv(epoch_us(e.started_at), 1000000) AS start_s,
                   fdiv(epoch_us(e.started_at), 1000000) + e.seconds AS end_s,
                   e.face_to_face AS f2f, e.interactive
            FROM live l JOIN ev e ON e.ord = l.cur_ord"""
        )

    def _streams(self) -> None:
        """``docs`` (documentation events, narrow) and ``quarters`` (per patient and device
        program, the epoch quarter-hours with a reading: ``Ledger.readings``)."""
        sql = self.con.execute
        sql(
            f"""CREATE TABLE docs AS
            SELECT org_id, patient_id, ord, type, program, practitioner_id, "on", kind, qmb,
                   complexity, fdiv(epoch_us(recorded_at), 1000000) AS recorded_s,
                   chronic_count, setting, admitted_on, discharged_on, chronic
            FROM ev WHERE type IN {_DOCUMENT_TYPES}"""
        )
        sql(
            """CREATE TABLE quarters AS
            SELECT org_id, patient_id, program,
                   list(DISTINCT fdiv(epoch_us(taken_at), 900000000)) AS qs
            FROM rd GROUP BY ALL"""
        )

    def prepare(self, upto: str = _STAGES[-1]) -> None:
        """Run the SQL stages up to and including ``upto`` (each at most once)."""
        for stage in _STAGES:
            if stage not in self._done:
                getattr(self, stage)()
                self._done.add(stage)
            if stage == upto:
                return

    # -- Python: one patient at a time -------------------------------------------------

    def practices(self) -> dict[str, Practice]:
        """Each org's practice settings, as the ledger holds them (closed months aside:
        billing does not read them)."""
        self.prepare("_load")
        rows = self.con.execute("SELECT org_id, tz, facility, qp, fees FROM orgs").fetchall()
        return {
            org: Practice(tz, facility, qualifying_apm_participant=qp, fee_schedule=fees)
            for org, tz, facility, qp, fees in rows
        }

    def patients(self) -> Iterator[PatientState]:
        """Every patient's state, in (org, patient) order, one at a time: the activities,
        documentation and reading quarters the ledger would hold after the same events
        (``volume``, the ledger's own count for the bounds, is left empty: SQL applied them)."""
        self.prepare()
        streams: list[tuple[_Groups, _Fill]] = [
            (
                self._grouped(
                    """SELECT org_id, patient_id, activity_id, seq, staff_id, role,
                              practitioner_id, program, start_s, end_s, f2f, interactive
                       FROM cur ORDER BY org_id, patient_id, seq"""
                ),
                _add_activities,
            ),
            (
                self._grouped(
                    "SELECT * FROM docs ORDER BY org_id, patient_id, ord",
                ),
                _add_documents,
            ),
            (
                self._grouped(
                    "SELECT org_id, patient_id, program, qs FROM quarters "
                    "ORDER BY org_id, patient_id, program"
                ),
                _add_readings,
            ),
        ]
        heads = [next(it, None) for it, _ in streams]
        while True:
            keys = [h[0] for h in heads if h is not None]
            if not keys:
                return
            key = min(keys)
            state = PatientState(key[0], key[1])
            for i, (it, fill) in enumerate(streams):
                head = heads[i]
                if head is not None and head[0] == key:
                    fill(state, head[1])
                    nxt = next(it, None)
                    if nxt is not None and nxt[0] <= key:
                        # DuckDB and Python must agree on the order of ids, or one
                        # patient's records would be split in two: never silently
                        raise RuntimeError("archive replay: patient streams out of order")
                    heads[i] = nxt
            self.stats.patients += 1
            yield state

    def _grouped(self, query: str) -> _Groups:
        """The rows of ``query`` (ordered by org and patient first), grouped by patient,
        fetched in batches on a cursor of their own."""
        cursor = self.con.cursor()
        cursor.execute(query)
        rows = chain.from_iterable(iter(lambda: cursor.fetchmany(_FETCH_ROWS), []))
        try:
            yield from groupby(rows, key=itemgetter(0, 1))  # type: ignore[misc]
        finally:
            cursor.close()

    def bill(self, patient: PatientState, practice: Practice) -> Iterator[MonthBilling]:
        """The patient's months, as :func:`projections.engine.billing` evaluates them: every
        month of the record but those that had not begun at ``as_of`` (practice time)."""
        ctx = PatientContext(patient, practice, catalog=self.catalog)
        cutoff = None if self.as_of is None else epoch(self.as_of)
        for m in ctx.months():
            if cutoff is not None and month_bounds(m, practice.timezone)[0] > cutoff:
                continue
            self.stats.patient_months += 1
            # no memo of verdicts: here it cost time and memory (docs/performance.md)
            yield ctx.month(m)

    def billing(self) -> Iterator[MonthBilling]:
        """Every patient-month's billing, sorted by org, patient, month (as ``replay``)."""
        practices = self.practices()
        for patient in self.patients():
            yield from self.bill(patient, practices.get(patient.org_id) or Practice())


def _add_activities(state: PatientState, rows: _Rows) -> None:
    """In ``seq`` order, the order of the ledger's dict (a first logging inserts, an
    amendment replaces in place, a void removes so that the next logging inserts anew)."""
    acts = state.activities
    for _, _, aid, seq, staff, role, pract, program, start, end, f2f, interactive in rows:
        acts[aid] = Activity(aid, seq, staff, role, pract, program, start, end, f2f, interactive)


def _add_documents(state: PatientState, rows: _Rows) -> None:
    """In log order, each type into its list as the ledger's handler appends it."""
    for row in rows:
        seq, typ, program, pract, on, kind, qmb, cx, recorded, n, setting, adm, dis, codes = row[2:]
        if typ == "consent.recorded" or typ == "consent.revoked":
            state.consents.append(ConsentEntry(seq, program, pract, typ == "consent.revoked", on))
        elif typ == "care_plan.recorded":
            state.care_plans.append((seq, program, on, cx))
        elif typ == "conditions.recorded":
            state.conditions.append((seq, recorded, n))
            state.condition_codes[seq] = tuple(codes)
        elif typ == "enrollment.recorded":
            state.enrollments.append(EnrollmentEntry(seq, program, pract, on, bool(qmb)))
        elif typ == "visit.recorded":
            state.visits.append((pract, on, kind))
        else:  # stay.recorded
            state.stays.append((setting, adm, dis))


def _add_readings(state: PatientState, rows: _Rows) -> None:
    for _, _, program, quarters in rows:
        state.readings[program] = set(quarters)


def stages() -> tuple[str, ...]:
    """The SQL stages of a replay, in order (for :meth:`ArchiveReplay.prepare`)."""
    return _STAGES


def share_memory_mb(shares: int) -> int:
    """DuckDB's memory limit for one of ``shares`` shares of a ``replay_views``."""
    return min(_memory_mb() * 7 // 10, max(REPLAY_MEMORY_MB // shares, 256))


def _memory_mb() -> int:
    """Physical memory in MB (Linux and macOS; 4 GB if the system does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2**20
    except (ValueError, OSError, AttributeError):
        return 4096


def _empty_cols() -> str:
    return (
        "NULL::VARCHAR AS org_id, NULL::VARCHAR AS patient_id, NULL::VARCHAR AS event_id, "
        "NULL::VARCHAR AS type, NULL::TIMESTAMPTZ AS recorded_at, NULL::VARCHAR AS activity_id, "
        "NULL::VARCHAR AS staff_id, NULL::VARCHAR AS staff_role, "
        "NULL::VARCHAR AS practitioner_id, NULL::VARCHAR AS program, "
        "NULL::TIMESTAMPTZ AS started_at, NULL::BIGINT AS seconds, "
        'NULL::BOOLEAN AS face_to_face, NULL::BOOLEAN AS interactive, NULL::DATE AS "on", '
        "NULL::VARCHAR AS complexity, NULL::INTEGER AS chronic_count, NULL::BOOLEAN AS qmb, "
        "NULL::VARCHAR AS kind, NULL::VARCHAR AS setting, NULL::DATE AS admitted_on, "
        "NULL::DATE AS discharged_on, NULL::TIMESTAMPTZ AS taken_at, "
        "NULL::VARCHAR AS timezone, NULL::VARCHAR AS facility_type, "
        "NULL::BOOLEAN AS qualifying_apm_participant, NULL::VARCHAR AS fee_schedule"
    )


def replay_archive(
    source: Path,
    as_of: datetime | None = None,
    threads: int | None = None,
    catalog: RuleCatalog = SHIPPED_CATALOG,
) -> tuple[list[MonthBilling], ReplayStats]:
    """Billing of every patient-month in the archive (as :func:`projections.engine.replay`),
    in this process."""
    run = ArchiveReplay(source, as_of, threads, catalog=catalog)
    try:
        out = list(run.billing())
    finally:
        run.close()
    return out, run.stats


def _shard_views(
    source: Path,
    as_of: datetime | None,
    shard: tuple[int, int] | None,
    catalog: RuleCatalog,
    out: Path,
) -> ReplayStats:
    """One worker process's share (``None``: everything, in this process): its
    patient-months' views as sorted JSON lines in ``out``, written as they come."""
    shares = 1 if shard is None else shard[1]
    run = ArchiveReplay(
        source,
        as_of,
        threads=1 if shard else None,
        shard=shard,
        catalog=catalog,
        memory_mb=share_memory_mb(shares),
    )
    try:
        with out.open("wb") as f:
            for b in run.billing():
                f.write(orjson.dumps(b.view(), option=orjson.OPT_APPEND_NEWLINE))
    finally:
        run.close()
    return run.stats


def replay_views(
    source: Path,
    as_of: datetime | None = None,
    workers: int | None = None,
    catalog: RuleCatalog = SHIPPED_CATALOG,
) -> tuple[Iterator[dict[str, Any]], ReplayStats]:
    """The ``caretally replay`` view of every patient-month, sorted by org, patient and
    month, computed by ``workers`` processes (default: one per CPU), each replaying a
    share of the patients; practice-wide events go to every share. The shares' views
    wait in temporary files (removed once the views are read, or with the iterator), so
    no process holds them all."""
    n = workers or os.cpu_count() or 1
    tmp = tempfile.TemporaryDirectory(prefix="caretally-views-")
    paths = [Path(tmp.name) / f"share-{k}.jsonl" for k in range(n)]
    try:
        if n == 1:
            parts = [_shard_views(source, as_of, None, catalog, paths[0])]
        else:
            with multiprocessing.get_context("spawn").Pool(n) as pool:
                parts = pool.starmap(
                    _shard_views,
                    [(source, as_of, (k, n), catalog, paths[k]) for k in range(n)],
                )
    except BaseException:
        tmp.cleanup()
        raise
    stats = ReplayStats(practice_events=parts[0].practice_events)
    for st in parts:
        for f in dataclasses.fields(ReplayStats):
            if f.name != "practice_events":
                setattr(stats, f.name, getattr(stats, f.name) + getattr(st, f.name))
    stats.applied -= (n - 1) * stats.practice_events  # once, not once per share
    return _merged(tmp, paths), stats


def _merged(tmp: tempfile.TemporaryDirectory[str], paths: list[Path]) -> Iterator[dict[str, Any]]:
    """The shares' sorted views merged in (org, patient, month) order; then ``tmp`` goes."""
    try:
        with contextlib.ExitStack() as files:
            streams = [
                (orjson.loads(line) for line in files.enter_context(p.open("rb"))) for p in paths
            ]
            yield from heapq.merge(
                *streams, key=lambda v: (v["org_id"], v["patient_id"], v["month"])
            )
    finally:
        tmp.cleanup()


__all__ = ["ArchiveReplay", "ReplayStats", "replay_archive", "replay_views"]

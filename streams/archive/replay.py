"""Replay of the Parquet archive: DuckDB does the per-event work, the core the rules.

The event-by-event fold (:func:`projections.engine.replay`) parses and applies every
event in Python. Here DuckDB does, in SQL over the archive's typed columns:

* idempotency (the first of each ``(org_id, event_id)`` in the archive's canonical
  order wins, as in the ledger) and the ``--as-of`` cut;
* the current version of every activity (amendments replace, voids remove, an
  amendment keeps the log position of the first logging);
* month bucketing in each practice's time zone (local month bounds come from the
  core's own calendar, so both engines agree on every DST edge), and reading days;
* the interval accounting of docs/rules.md §6.2 steps 1-5 (face-to-face, non-clinical,
  before consent, pooled seconds with interval unions, concurrent staff time) for
  every patient-month with no overlap, no duplicate, no inpatient stay and no revoked
  consent. The rare months with any of those go through the core's own
  :func:`projections.accounting.account` (log-order claims are sequential by nature).

The rules then run in Python once per patient-month, through the same
:class:`projections.billing.PatientContext` as the fold. A hypothesis property test
holds this path to the fold on random logs.
"""

from __future__ import annotations

import heapq
import multiprocessing
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from projections.accounting import MonthTime, Pool
from projections.billing import MonthBilling, PatientContext
from projections.calendar import (
    DEFAULT_TIMEZONE,
    day_start,
    epoch,
    month_bounds,
    month_key,
    next_month,
)
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

_FDIV = "CREATE OR REPLACE TEMP MACRO fdiv(a, b) AS (a - (((a % b) + b) % b)) // b"
_CONSENT_PROGRAMS = ("ccm", "pcm", "rpm", "rtm", "bhi")
_STAGES = ("_load", "_calendar", "_activities", "_simple_months", "_pools")


@dataclass(slots=True)
class ReplayStats:
    applied: int = 0  # events after --as-of and idempotency
    patient_months: int = 0
    sql_accounted: int = 0  # patient-months whose time SQL accounted
    core_accounted: int = 0  # ... and those the core accounted (overlaps, stays, ...)
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
    ) -> None:
        """``shard`` ``(k, n)``: only patients whose key hashes to ``k`` modulo ``n`` (with
        every practice-wide event), so ``n`` processes can share one replay. ``catalog``:
        the rule books the months are evaluated with."""
        import duckdb

        self.as_of = as_of
        self.catalog = catalog
        self.shard = shard
        self.stats = ReplayStats()
        self.files = parquet_sources(source)
        shares = 1 if shard is None else shard[1]
        self._spill = tempfile.TemporaryDirectory(prefix="caretally-replay-")
        self.con = duckdb.connect(
            config={
                "threads": threads or os.cpu_count() or 1,
                # the shares of one replay split 70% of the memory; beyond it DuckDB spills
                # to a private temporary folder (not the current directory)
                "memory_limit": f"{_memory_mb() * 7 // 10 // shares}MB",
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
        sql = self.con.execute
        cols = (
            "org_id, patient_id, event_id, type, recorded_at, activity_id, staff_id, "
            "staff_role, practitioner_id, program, started_at, seconds, face_to_face, "
            'interactive, "on", complexity, chronic_count, qmb, kind, setting, admitted_on, '
            "discharged_on, taken_at, timezone, facility_type"
        )
        known = "TRUE" if self.as_of is None else "recorded_at <= ?"
        params: list[Any] = [self.files] + ([] if self.as_of is None else [self.as_of])
        where = known
        if self.shard is not None:
            # idempotency is decided over the whole archive (an event id reused by another
            # patient of the org is a conflict there too); only then is the share taken
            k, n = self.shard
            where += f" AND (patient_id IS NULL OR hash(org_id, patient_id) % {n:d} = {k:d})"
        if not self.files:
            sql(f"CREATE TEMP TABLE ev AS SELECT NULL::BIGINT AS ord, {_empty_cols()} LIMIT 0")
        else:
            # canonical order -> ord, and the first (org_id, event_id) wins; both windows
            # run over narrow rows (sorting the wide ones cost 5x more), then the kept
            # (partition, offset) pairs pick the wide rows
            sql(
                f"""CREATE TEMP TABLE keep AS
                SELECT partition, "offset", ord FROM (
                  SELECT partition, "offset", org_id, event_id,
                         row_number() OVER (ORDER BY log_ts, partition, "offset") AS ord
                  FROM (SELECT partition, "offset", org_id, event_id, patient_id, recorded_at,
                               {LOG_TS_SQL} FROM read_parquet(?))
                  WHERE {known})
                QUALIFY row_number() OVER (PARTITION BY org_id, event_id ORDER BY ord) = 1""",
                params,
            )
            sql(
                f"""CREATE TEMP TABLE ev AS
                SELECT k.ord, {", ".join("p." + c.strip() for c in cols.split(","))}
                FROM (SELECT partition, "offset", {cols} FROM read_parquet(?) WHERE {where}) p
                JOIN keep k USING (partition, "offset")""",
                params,
            )
            sql("DROP TABLE keep")
            self._bound_volume()
        self.stats.applied, self.stats.practice_events = sql(  # type: ignore[misc]
            "SELECT count(*), count(*) FILTER (WHERE patient_id IS NULL) FROM ev"
        ).fetchone()
        sql(
            f"""CREATE TEMP TABLE orgs AS
            SELECT o.org_id, coalesce(p.tz, '{DEFAULT_TIMEZONE}') AS tz,
                   coalesce(p.facility, 'office') AS facility
            FROM (SELECT DISTINCT org_id FROM ev) o
            LEFT JOIN (SELECT org_id, arg_max(timezone, ord) AS tz,
                              arg_max(facility_type, ord) AS facility
                       FROM ev WHERE type = 'practice.configured' GROUP BY org_id) p
            USING (org_id)"""
        )

    def _bound_volume(self) -> None:
        """Drop what the ledger refuses as ``over_limit``: a patient's activity versions
        (readings) past ``MAX_ACTIVITY_VERSIONS`` (``MAX_READINGS``) in a UTC month, in
        log order. The ledger counts only events it applied, and once a month is at its
        bound it refuses every later one, so the refused are exactly those numbered past it."""
        n = self.con.execute(
            f"""DELETE FROM ev WHERE ord IN (
              SELECT ord FROM (
                SELECT ord, type, row_number() OVER (
                  PARTITION BY org_id, patient_id, type, strftime(
                    make_timestamp(epoch_us(coalesce(started_at, taken_at))), '%Y-%m')
                  ORDER BY ord) AS n
                FROM ev WHERE type IN ('activity.logged', 'device.reading'))
              WHERE n > CASE type WHEN 'activity.logged' THEN {MAX_ACTIVITY_VERSIONS:d}
                              ELSE {MAX_READINGS:d} END)"""
        ).fetchone()
        self.stats.over_limit = int(n[0]) if n else 0

    def _calendar(self) -> None:
        """Local month and day bounds per zone, from the core's calendar (no ICU)."""
        sql = self.con.execute
        zones = [r[0] for r in sql("SELECT DISTINCT tz FROM orgs").fetchall()]
        span = sql(
            """SELECT min(least(started_at, taken_at, recorded_at)),
                      max(greatest(started_at, taken_at, recorded_at))
               FROM ev"""
        ).fetchone()
        stay_span = sql(  # dates that need local midnights: stays and consents
            """SELECT min(least(admitted_on, "on")), max(greatest(discharged_on, "on"))
               FROM ev WHERE type IN ('stay.recorded', 'consent.recorded')"""
        ).fetchone()
        months: list[tuple[Any, ...]] = []
        days: list[tuple[Any, ...]] = []
        if span is not None and span[0] is not None:
            lo_d = span[0].date() - timedelta(days=2)
            hi_d = span[1].date() + timedelta(days=3)
            if stay_span is not None and stay_span[0] is not None:
                lo_d, hi_d = min(lo_d, stay_span[0]), max(hi_d, stay_span[1] + timedelta(days=2))
            for tz in zones:
                m, last = month_key(lo_d.year, lo_d.month), month_key(hi_d.year, hi_d.month)
                i = 0
                while m <= last:
                    lo, hi = month_bounds(m, tz)
                    book = self.catalog.for_month(m)
                    months.append(
                        (
                            tz,
                            i,
                            m,
                            lo,
                            hi,
                            book.policy.exclude_face_to_face,
                            list(book.policy.inpatient_excluded_programs),
                            book.policy.concurrent_staff_time,
                        )
                    )
                    m, i = next_month(m), i + 1
                d = lo_d
                while d <= hi_d:
                    days.append((tz, d, day_start(d, tz)))
                    d += timedelta(days=1)
        sql(
            "CREATE TEMP TABLE months (tz VARCHAR, mi INTEGER, month VARCHAR, lo BIGINT, "
            "hi BIGINT, ex_f2f BOOLEAN, inpatient VARCHAR[], concurrent VARCHAR)"
        )
        sql("CREATE TEMP TABLE days (tz VARCHAR, day DATE, lo BIGINT)")
        if months:
            self._insert("months", months)
            self._insert("days", days)

    def _insert(self, table: str, rows: list[tuple[Any, ...]]) -> None:
        import pyarrow as pa

        names = [d[0] for d in self.con.execute(f"SELECT * FROM {table} LIMIT 0").description]
        arrow = pa.Table.from_pylist([dict(zip(names, r, strict=True)) for r in rows])
        self.con.register("_rows", arrow)
        self.con.execute(f"INSERT INTO {table} SELECT * FROM _rows")
        self.con.unregister("_rows")

    def _activities(self) -> None:
        """Current versions (``seq``: first logging after the last void) and month pieces."""
        sql = self.con.execute
        sql(
            """CREATE TEMP TABLE cur AS
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
                   e.face_to_face AS f2f, e.interactive, o.tz
            FROM live l JOIN ev e ON e.ord = l.cur_ord JOIN orgs o ON o.org_id = l.org_id"""
        )
        # one piece per local month touched (an activity lasts at most 24 h: two months)
        sql(
            """CREATE TEMP TABLE spans AS
            WITH first AS (
              SELECT c.*, m.mi FROM cur c
              ASOF JOIN months m ON c.tz = m.tz AND c.start_s >= m.lo)
            SELECT f.*, m.month, m.lo, m.hi, m.ex_f2f, m.inpatient, m.concurrent
            FROM first f JOIN months m
              ON m.tz = f.tz AND m.mi >= f.mi AND m.lo < greatest(f.end_s, f.start_s + 1)
              AND m.hi > f.start_s"""
        )
        # ... of which the month's accounting sees those with time after its start (a
        # zero-second activity at local midnight belongs to the month, with no piece)
        sql(
            """CREATE TEMP TABLE pieces AS
            SELECT *, greatest(start_s, lo) AS s, least(end_s, hi) AS e,
                   (start_s < lo OR end_s > hi) AS cross_month,
                   role IN ('physician', 'qhp') AND staff_id = practitioner_id AS personal,
                   NOT (ex_f2f AND f2f) AND role <> 'non_clinical' AS claims
            FROM spans WHERE end_s > lo"""
        )

    def _simple_months(self) -> None:
        """Mark the patient-months SQL accounts: no same-person overlap, no re-sent
        duplicate, no inpatient stay in the month, no revoked consent in play."""
        sql = self.con.execute
        sql(
            f"""CREATE TEMP TABLE consent_state AS
            SELECT e.org_id, e.patient_id, e.program, e.practitioner_id,
                   count(*) FILTER (WHERE e.type = 'consent.recorded') AS n_consent,
                   count(*) FILTER (WHERE e.type = 'consent.revoked') AS n_revoked,
                   min(d.lo) FILTER (WHERE e.type = 'consent.recorded') AS opens
            FROM ev e JOIN orgs o USING (org_id)
            LEFT JOIN days d ON d.tz = o.tz AND d.day = e."on"
            WHERE e.type IN ('consent.recorded', 'consent.revoked')
              AND e.program IN {_CONSENT_PROGRAMS}
            GROUP BY ALL"""
        )
        sql(
            """CREATE TEMP TABLE stays AS
            SELECT e.org_id, e.patient_id, a.lo AS s, d.lo AS e
            FROM ev e JOIN orgs o USING (org_id)
            JOIN days a ON a.tz = o.tz AND a.day = e.admitted_on
            JOIN days d ON d.tz = o.tz AND d.day = e.discharged_on + 1
            WHERE e.type = 'stay.recorded'"""
        )
        sql(
            """CREATE TEMP TABLE hard AS
            SELECT DISTINCT org_id, patient_id, month FROM (
              SELECT org_id, patient_id, month FROM pieces
              GROUP BY org_id, patient_id, month, staff_id, start_s, end_s - start_s, program
              HAVING count(*) > 1
              UNION ALL
              SELECT org_id, patient_id, month FROM (
                SELECT org_id, patient_id, month, s,
                       max(e) OVER (PARTITION BY org_id, patient_id, month, staff_id
                                    ORDER BY s, e ROWS BETWEEN UNBOUNDED PRECEDING
                                    AND 1 PRECEDING) AS prev_e
                FROM pieces WHERE role <> 'non_clinical')
              WHERE s < prev_e
              UNION ALL
              SELECT p.org_id, p.patient_id, p.month FROM pieces p
              JOIN stays st ON st.org_id = p.org_id AND st.patient_id = p.patient_id
                AND st.s < p.hi AND st.e > p.lo
              UNION ALL
              SELECT p.org_id, p.patient_id, p.month FROM pieces p
              JOIN consent_state c ON c.org_id = p.org_id AND c.patient_id = p.patient_id
                AND c.program = p.program AND c.practitioner_id = p.practitioner_id
              WHERE p.claims AND c.n_consent > 0 AND c.n_revoked > 0)"""
        )

    def _pools(self) -> None:
        """Steps 3-5 for the simple months: consent cut, then pooled seconds with unions."""
        sql = self.con.execute
        sql(
            """CREATE TEMP TABLE counted AS
            SELECT p.org_id, p.patient_id, p.month, p.program, p.practitioner_id, p.staff_id,
                   p.personal, p.interactive, p.concurrent, p.s,
                   CASE WHEN c.n_consent > 0 AND c.n_revoked = 0 THEN greatest(p.s, c.opens)
                        ELSE p.s END AS ks,
                   p.e
            FROM pieces p
            ANTI JOIN hard h USING (org_id, patient_id, month)
            LEFT JOIN consent_state c ON c.org_id = p.org_id AND c.patient_id = p.patient_id
              AND c.program = p.program AND c.practitioner_id = p.practitioner_id
            WHERE p.claims"""
        )
        sql(
            """CREATE TEMP TABLE pool_time AS
            WITH k AS (
              SELECT *, greatest(e - ks, 0) AS kept FROM counted),
            t AS (
              SELECT *, max(e) OVER w_all AS prev_all FROM k WHERE kept > 0
              WINDOW w_all AS (PARTITION BY org_id, patient_id, month, program, practitioner_id
                               ORDER BY ks, e ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)),
            s AS (
              SELECT *, max(e) OVER w_staff AS prev_staff FROM k
              WHERE kept > 0 AND NOT personal
              WINDOW w_staff AS (PARTITION BY org_id, patient_id, month, program,
                                 practitioner_id ORDER BY ks, e
                                 ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)),
            tu AS (
              SELECT org_id, patient_id, month, program, practitioner_id,
                     sum(greatest(0, e - greatest(ks, coalesce(prev_all, ks)))) AS t_union
              FROM t GROUP BY ALL),
            su AS (
              SELECT org_id, patient_id, month, program, practitioner_id,
                     sum(greatest(0, e - greatest(ks, coalesce(prev_staff, ks)))) AS s_union
              FROM s GROUP BY ALL),
            base AS (
              SELECT org_id, patient_id, month, program, practitioner_id,
                     any_value(concurrent) AS concurrent,
                     coalesce(sum(kept) FILTER (WHERE personal), 0) AS p,
                     coalesce(sum(kept) FILTER (WHERE NOT personal), 0) AS s_sum,
                     bool_or(interactive) AS interactive,
                     bool_or(least(ks, e) > s) AS cut
              FROM k GROUP BY ALL)
            SELECT b.*, coalesce(su.s_union, 0) AS s_union, coalesce(tu.t_union, 0) AS t_union
            FROM base b
            LEFT JOIN su USING (org_id, patient_id, month, program, practitioner_id)
            LEFT JOIN tu USING (org_id, patient_id, month, program, practitioner_id)"""
        )

    # -- Python: the rules, once per patient-month -----------------------------------

    def prepare(self, upto: str = "_pools") -> None:
        """Run the SQL stages up to and including ``upto`` (each at most once)."""
        for stage in _STAGES:
            if stage not in self._done:
                getattr(self, stage)()
                self._done.add(stage)
            if stage == upto:
                return

    def billing(self) -> Iterator[MonthBilling]:
        """Every patient-month's billing, sorted by org, patient, month (as ``replay``)."""
        self.prepare()
        fetch = self.con.execute
        practices = {
            org: Practice(tz, facility)
            for org, tz, facility in fetch("SELECT org_id, tz, facility FROM orgs").fetchall()
        }
        patients = _PatientTable(self.con)
        month_flags: dict[tuple[str, str, str], set[str]] = {}
        for org, pid, month, flags in fetch(
            """SELECT org_id, patient_id, month, list(DISTINCT flag) FROM (
                 SELECT org_id, patient_id, month, unnest([
                   CASE WHEN cross_month THEN 'cross_month_split' END,
                   CASE WHEN ex_f2f AND f2f THEN 'face_to_face_excluded' END,
                   CASE WHEN NOT (ex_f2f AND f2f) AND role = 'non_clinical'
                        THEN 'non_clinical_staff_excluded' END]) AS flag
                 FROM pieces ANTI JOIN hard USING (org_id, patient_id, month))
               WHERE flag IS NOT NULL GROUP BY ALL"""
        ).fetchall():
            month_flags[(org, pid, month)] = set(flags)
        simple: dict[tuple[str, str, str], list[tuple[Any, ...]]] = {}
        for row in fetch(
            """SELECT org_id, patient_id, month, program, practitioner_id, concurrent, p, s_sum,
                      s_union, t_union, interactive, cut FROM pool_time"""
        ).fetchall():
            simple.setdefault((row[0], row[1], row[2]), []).append(row[3:])
        hard_acts: dict[tuple[str, str], dict[str, list[Activity]]] = {}
        for row in fetch(
            """SELECT DISTINCT p.org_id, p.patient_id, p.month, p.activity_id, p.seq,
                      p.staff_id, p.role, p.practitioner_id, p.program, p.start_s, p.end_s,
                      p.f2f, p.interactive
               FROM pieces p SEMI JOIN hard USING (org_id, patient_id, month)"""
        ).fetchall():
            act = Activity(
                activity_id=row[3],
                seq=row[4],
                staff_id=row[5],
                role=row[6],
                practitioner_id=row[7],
                program=row[8],
                start=row[9],
                end=row[10],
                face_to_face=row[11],
                interactive=row[12],
            )
            hard_acts.setdefault((row[0], row[1]), {}).setdefault(row[2], []).append(act)
        activity_months: dict[tuple[str, str], list[str]] = {}
        for org, pid, month in fetch(
            "SELECT DISTINCT org_id, patient_id, month FROM spans"
        ).fetchall():
            activity_months.setdefault((org, pid), []).append(month)

        cutoff = None if self.as_of is None else epoch(self.as_of)
        for key, patient, days in patients:
            practice = practices.get(key[0]) or Practice()
            tz = practice.timezone
            hard = hard_acts.get(key, {})
            by_month: dict[str, list[Activity]] = {m: [] for m in activity_months.get(key, ())}
            by_month.update(hard)
            ctx = PatientContext(
                patient, practice, days=days, by_month=by_month, catalog=self.catalog
            )
            for m in ctx.months():
                if cutoff is not None and month_bounds(m, tz)[0] > cutoff:
                    continue
                self.stats.patient_months += 1
                if m in hard:
                    self.stats.core_accounted += 1
                    yield ctx.month(m)
                elif m in by_month:  # activity in the month, accounted in SQL
                    self.stats.sql_accounted += 1
                    pm = (key[0], key[1], m)
                    yield ctx.month_from_time(
                        _month_time(m, tz, simple.get(pm, []), month_flags.get(pm, set()))
                    )
                else:  # readings, periods or APCM only: no time to account
                    yield ctx.month(m)


def stages() -> tuple[str, ...]:
    """The SQL stages of a replay, in order (for :meth:`ArchiveReplay.prepare`)."""
    return _STAGES


def _memory_mb() -> int:
    """Physical memory in MB (Linux and macOS; 4 GB if the system does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2**20
    except (ValueError, OSError, AttributeError):
        return 4096


def _month_time(month: str, tz: str, pools: list[tuple[Any, ...]], flags: set[str]) -> MonthTime:
    """The accounted time of a month SQL accounted: pools carry their seconds (memoised)
    but no intervals and no per-activity detail, which is all billing needs; anything
    that reads intervals (claim dates of service, the audit) must use the core's
    :func:`projections.accounting.account` instead."""
    lo, hi = month_bounds(month, tz)
    mt = MonthTime(month, lo, hi, set(flags))
    for program, practitioner, concurrent, p, s_sum, s_union, t_union, interactive, cut in pools:
        pool = Pool(program, practitioner, interactive=bool(interactive))
        individual = p + s_sum
        if concurrent == "sum":
            pool._memo = (concurrent, (p, s_sum, individual, False))
        else:
            pool._memo = (concurrent, (p, s_union, t_union, individual > t_union))
            if individual > t_union:
                mt.flags.add("concurrent_staff_time")
        if cut:
            mt.flags.add("consent_after_activity")
        mt.pools[(program, practitioner)] = pool
    return mt


class _PatientTable:
    """Per patient, in (org, patient) order: documentation and reading days from SQL."""

    def __init__(self, con: Any) -> None:
        self.con = con

    def __iter__(self) -> Iterator[tuple[tuple[str, str], PatientState, dict[str, set[date]]]]:
        fetch = self.con.execute
        keys = fetch(
            "SELECT DISTINCT org_id, patient_id FROM ev WHERE patient_id IS NOT NULL "
        ).fetchall()
        keys.sort()
        docs: dict[tuple[str, str], PatientState] = {}

        def state(org: str, pid: str) -> PatientState:
            p = docs.get((org, pid))
            if p is None:
                p = docs[(org, pid)] = PatientState(org, pid)
            return p

        for org, pid, seq, typ, program, pract, on, kind, qmb in fetch(
            """SELECT org_id, patient_id, ord, type, program, practitioner_id, "on", kind, qmb
               FROM ev WHERE type IN ('consent.recorded', 'consent.revoked',
                                      'enrollment.recorded', 'visit.recorded')
               ORDER BY ord"""
        ).fetchall():
            p = state(org, pid)
            if typ == "enrollment.recorded":
                p.enrollments.append(EnrollmentEntry(seq, program, pract, on, bool(qmb)))
            elif typ == "visit.recorded":
                p.visits.append((pract, on, kind))
            else:
                p.consents.append(ConsentEntry(seq, program, pract, typ == "consent.revoked", on))
        for org, pid, seq, program, on, cx in fetch(
            """SELECT org_id, patient_id, ord, program, "on", complexity FROM ev
               WHERE type = 'care_plan.recorded' ORDER BY ord"""
        ).fetchall():
            state(org, pid).care_plans.append((seq, program, on, cx))
        for org, pid, seq, recorded, count in fetch(
            """SELECT org_id, patient_id, ord, fdiv(epoch_us(recorded_at), 1000000),
                      chronic_count
               FROM ev WHERE type = 'conditions.recorded' ORDER BY ord"""
        ).fetchall():
            state(org, pid).conditions.append((seq, recorded, count))
        for org, pid, setting, a, d in fetch(
            """SELECT org_id, patient_id, setting, admitted_on, discharged_on FROM ev
               WHERE type = 'stay.recorded' ORDER BY ord"""
        ).fetchall():
            state(org, pid).stays.append((setting, a, d))
        days: dict[tuple[str, str], dict[str, set[date]]] = {}
        for org, pid, program, ds in fetch(
            """WITH q AS (
                 SELECT DISTINCT e.org_id, e.patient_id, e.program,
                        fdiv(epoch_us(e.taken_at), 900000000) * 900 AS t, o.tz
                 FROM ev e JOIN orgs o USING (org_id) WHERE e.type = 'device.reading')
               SELECT q.org_id, q.patient_id, q.program, list(DISTINCT d.day)
               FROM q ASOF JOIN days d ON d.tz = q.tz AND q.t >= d.lo
               GROUP BY ALL"""
        ).fetchall():
            days.setdefault((org, pid), {})[program] = set(ds)
            # the fold keeps readings for the device-period bookkeeping only via days
        for org, pid in keys:
            key = (org, pid)
            yield key, docs.get(key) or PatientState(org, pid), days.get(key, {})


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
        "NULL::VARCHAR AS timezone, NULL::VARCHAR AS facility_type"
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
    source: Path, as_of: datetime | None, shard: tuple[int, int], catalog: RuleCatalog
) -> tuple[bytes, ReplayStats]:
    """One worker process's share: its patient-months' views as sorted JSON lines."""
    run = ArchiveReplay(source, as_of, threads=1, shard=shard, catalog=catalog)
    try:
        lines = [orjson.dumps(b.view()) for b in run.billing()]
    finally:
        run.close()
    return b"\n".join(lines), run.stats


def replay_views(
    source: Path,
    as_of: datetime | None = None,
    workers: int | None = None,
    catalog: RuleCatalog = SHIPPED_CATALOG,
) -> tuple[Iterator[dict[str, Any]], ReplayStats]:
    """The ``caretally replay`` view of every patient-month, sorted by org, patient and
    month, computed by ``workers`` processes (default: one per CPU), each replaying a
    share of the patients; practice-wide events go to every share."""
    n = workers or os.cpu_count() or 1
    if n == 1:
        billings, stats = replay_archive(source, as_of, catalog=catalog)
        return (b.view() for b in billings), stats
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(n) as pool:
        parts = pool.starmap(_shard_views, [(source, as_of, (k, n), catalog) for k in range(n)])
    stats = ReplayStats(practice_events=parts[0][1].practice_events)
    for _, st in parts:
        for name in ("applied", "patient_months", "sql_accounted", "core_accounted", "over_limit"):
            setattr(stats, name, getattr(stats, name) + getattr(st, name))
    stats.applied -= (n - 1) * stats.practice_events  # once, not once per share
    streams = [(orjson.loads(line) for line in blob.split(b"\n") if line) for blob, _ in parts]
    merged = heapq.merge(*streams, key=lambda v: (v["org_id"], v["patient_id"], v["month"]))
    return merged, stats


__all__ = ["ArchiveReplay", "ReplayStats", "replay_archive", "replay_views"]

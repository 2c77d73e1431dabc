"""Read-only SQL over the archive: a DuckDB connection with three ready views.

* ``events``: every archived log record (the typed columns of streams/archive_store.py,
  ``raw`` bytes, ``data`` as JSON), deduplicated by ``(org_id, event_id)`` like the fold,
  with ``log_position`` (the archive's canonical order).
* ``activities``: one row per current activity version (amendments applied, voids
  removed), as the ledger keeps them.
* ``patient_months``: the replayed billing view, the same numbers ``caretally replay``
  prints (``minutes`` as a MAP, ``billable`` and ``blocked`` as lists of structs).

``activities`` and ``patient_months`` come from the archive replay
(streams/archive_replay.py), so they are built only when a query names them. Only
``SELECT`` statements (``DESCRIBE``, ``SHOW``, ``SUMMARIZE`` and plain ``EXPLAIN``
included) are accepted, so nothing writes through this connection; extensions are
neither installed nor loaded automatically. It is read-only, not a sandbox: a query
may read other local files, as the user running it can anyway.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from streams.archive_replay import ArchiveReplay
from streams.archive_store import LOG_TS_SQL

VIEWS = ("events", "activities", "patient_months")


class SqlRejected(ValueError):
    """The statement is not a read-only query (or does not parse)."""


def check_read_only(con: Any, query: str) -> None:
    """Reject anything but read-only statements, before running any of them."""
    import duckdb

    allowed = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}
    try:
        statements = con.extract_statements(query)
    except duckdb.Error as exc:
        raise SqlRejected(str(exc).splitlines()[0]) from exc
    if not statements:
        raise SqlRejected("no SQL statement given")
    for st in statements:
        if st.type not in allowed:
            name = str(st.type).rsplit(".", 1)[-1]
            raise SqlRejected(f"only read-only queries are allowed here, not {name} statements")
        if st.type == duckdb.StatementType.EXPLAIN and re.match(
            r"\s*EXPLAIN\s+ANALY[SZ]E\b", st.query, re.IGNORECASE
        ):  # it runs the statement it explains (COPY ... TO included)
            raise SqlRejected("only read-only queries are allowed here, not EXPLAIN ANALYZE")


class ArchiveSql:
    """A connection over ``source`` (an archive directory or file) with the views."""

    def __init__(self, source: Path, as_of: datetime | None = None) -> None:
        self.replay = ArchiveReplay(source, as_of=as_of)
        self.con = self.replay.con
        # no extension may be fetched or loaded behind the user's back
        self.con.execute("SET autoinstall_known_extensions = false")
        self.con.execute("SET autoload_known_extensions = false")
        self._built: set[str] = set()

    def close(self) -> None:
        self.replay.close()

    def _ensure(self, query: str) -> None:
        wanted = {v for v in VIEWS if re.search(rf"\b{v}\b", query, re.IGNORECASE)}
        if "events" in wanted and "events" not in self._built:
            self._built.add("events")
            files = ", ".join("'" + f.replace("'", "''") + "'" for f in self.replay.files)
            if files:
                body = f"""SELECT * EXCLUDE (raw, log_ts), decode(raw)::JSON AS event FROM (
                      SELECT *, row_number() OVER (ORDER BY log_ts, partition, "offset")
                             AS log_position
                      FROM (SELECT *, {LOG_TS_SQL}
                            FROM read_parquet([{files}], hive_partitioning = false)))
                    QUALIFY row_number() OVER (PARTITION BY org_id, event_id
                                               ORDER BY log_position) = 1"""
            else:  # an empty archive: the (empty) typed table
                self.replay.prepare("_load")
                body = "SELECT ord AS log_position, * EXCLUDE (ord) FROM ev"
            self.con.execute(f"CREATE TEMP VIEW events AS {body}")
        if wanted & {"activities", "patient_months"} and "activities" not in self._built:
            self.replay.prepare("_activities")
            self._built.add("activities")
            self.con.execute(
                """CREATE TEMP VIEW activities AS
                SELECT org_id, patient_id, activity_id, seq AS log_position, staff_id,
                       role AS staff_role, practitioner_id, program,
                       to_timestamp(start_s) AS started_at, to_timestamp(end_s) AS ended_at,
                       round((end_s - start_s) / 60.0, 2) AS minutes,
                       f2f AS face_to_face, interactive
                FROM cur"""
            )
        if "patient_months" in wanted and "patient_months" not in self._built:
            self._patient_months()
            self._built.add("patient_months")

    def _patient_months(self) -> None:
        import pyarrow as pa

        rows = [b.view() for b in self.replay.billing()]
        for r in rows:
            r["minutes"] = list(r["minutes"].items())
        schema = pa.schema(
            [
                ("org_id", pa.string()),
                ("patient_id", pa.string()),
                ("month", pa.string()),
                ("minutes", pa.map_(pa.string(), pa.float64())),
                (
                    "billable",
                    pa.list_(pa.struct([("code", pa.string()), ("units", pa.int64())])),
                ),
                (
                    "blocked",
                    pa.list_(
                        pa.struct(
                            [
                                ("code", pa.string()),
                                ("units", pa.int64()),
                                ("reasons", pa.list_(pa.string())),
                            ]
                        )
                    ),
                ),
                ("flags", pa.list_(pa.string())),
                ("estimated_payment", pa.float64()),
            ]
        )
        table = pa.Table.from_pylist(rows, schema=schema)
        self.con.register("_patient_months", table)
        self.con.execute("CREATE TEMP TABLE patient_months AS SELECT * FROM _patient_months")
        self.con.unregister("_patient_months")

    def query(self, query: str) -> tuple[list[str], Iterator[tuple[Any, ...]]]:
        """Column names and rows of a read-only ``query``."""
        check_read_only(self.con, query)
        self._ensure(query)
        cur = self.con.execute(query)
        names = [d[0] for d in cur.description or []]

        def rows() -> Iterator[tuple[Any, ...]]:
            while batch := cur.fetchmany(10_000):
                yield from batch

        return names, rows()

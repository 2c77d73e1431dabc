"""Read-only SQL over the archive: a DuckDB connection with three ready views.

* ``events``: every archived log record (the typed columns of streams/archive/store.py,
  ``raw`` bytes, ``data`` as JSON), deduplicated by ``(org_id, event_id)`` like the fold,
  with ``log_position`` (the archive's canonical order).
* ``activities``: one row per current activity version (amendments applied, voids
  removed), as the ledger keeps them.
* ``patient_months``: the replayed billing view, the same numbers ``caretally replay``
  prints (``minutes`` as a MAP, ``billable`` and ``blocked`` as lists of structs).

``activities`` and ``patient_months`` come from the archive replay
(streams/archive/replay.py), so they are built only when a query names them.

Read-only is decided by DuckDB, not by a pattern over the text: the input must parse
into exactly one statement, and DuckDB must call it a ``SELECT`` (``DESCRIBE``,
``SHOW`` and ``SUMMARIZE`` are). ``EXPLAIN`` is refused whatever follows it: ``EXPLAIN
ANALYZE`` runs the statement it explains, ``COPY ... TO`` or ``INSTALL`` included, and
its options can be spelled in too many ways to recognise. Then the connection itself is
locked down before any user SQL runs: no file but the archive's own Parquet files can
be read or written (``enable_external_access = false`` with ``allowed_paths``), no
extension installed or loaded, no Python variable scanned, and the configuration is
locked (``lock_configuration``), so a query cannot lift any of it, nor the memory
limit. A timer interrupts a query that runs longer than its timeout. It is read-only,
not a sandbox: anyone who may run it may read every row of the archive.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from projections.rules import SHIPPED_CATALOG, RuleCatalog
from streams.archive.replay import ArchiveReplay
from streams.archive.store import LOG_TS_SQL

VIEWS = ("events", "activities", "patient_months")
DEFAULT_TIMEOUT_S = 300.0


class SqlRejected(ValueError):
    """The statement is not a read-only query (or does not parse)."""


class SqlTimeout(RuntimeError):
    """The query ran longer than its timeout and was interrupted."""


_REFUSED = "only read-only queries are allowed here"


def check_read_only(con: Any, query: str) -> None:
    """Refuse anything but one plain ``SELECT`` statement, as DuckDB's parser sees it."""
    import duckdb

    try:
        statements = con.extract_statements(query)
    except duckdb.Error as exc:
        raise SqlRejected(str(exc).splitlines()[0]) from exc
    if not statements:
        raise SqlRejected("no SQL statement given")
    for st in statements:
        if st.type != duckdb.StatementType.SELECT:
            name = str(st.type).rsplit(".", 1)[-1]
            raise SqlRejected(f"{_REFUSED}, not {name} statements")
    if len(statements) > 1:
        raise SqlRejected(f"{_REFUSED}, one SELECT at a time ({len(statements)} statements given)")


def _sql_list(items: list[str]) -> str:
    return "[" + ", ".join("'" + i.replace("'", "''") + "'" for i in items) + "]"


class ArchiveSql:
    """A locked-down connection over ``source`` (an archive directory or file) with the
    views; each :meth:`query` is interrupted after ``timeout`` seconds (None: never);
    ``patient_months`` is evaluated with the rule books of ``catalog``."""

    def __init__(
        self,
        source: Path,
        as_of: datetime | None = None,
        timeout: float | None = DEFAULT_TIMEOUT_S,
        catalog: RuleCatalog = SHIPPED_CATALOG,
    ) -> None:
        # absolute paths: the files allowed below are the files the views read
        self.replay = ArchiveReplay(Path(source).absolute(), as_of=as_of, catalog=catalog)
        self.con = self.replay.con
        self.timeout = timeout
        self._timer: threading.Timer | None = None
        self._built: set[str] = set()
        self._lock_down(self.replay.files)

    def _lock_down(self, files: list[str]) -> None:
        """No file but ``files``, no extension, no Python variable, no setting change."""
        for setting in (
            "autoinstall_known_extensions = false",
            "autoload_known_extensions = false",
            "python_enable_replacements = false",
            f"allowed_paths = {_sql_list(files)}",
            "enable_external_access = false",
            "lock_configuration = true",  # last: none of the above can be undone
        ):
            self.con.execute(f"SET {setting}")

    def close(self) -> None:
        self._cancel_timer()
        self.replay.close()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

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
                            FROM read_parquet([{files}], hive_partitioning = false,
                                              union_by_name = true)))
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
                ("rule_year", pa.int64()),
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
                ("payment_provisional", pa.bool_()),
            ]
        )
        table = pa.Table.from_pylist(rows, schema=schema)
        self.con.register("_patient_months", table)
        self.con.execute("CREATE TEMP TABLE patient_months AS SELECT * FROM _patient_months")
        self.con.unregister("_patient_months")

    def query(self, query: str) -> tuple[list[str], Iterator[tuple[Any, ...]]]:
        """Column names and rows of a read-only ``query``; :class:`SqlRejected` if it is
        not one, :class:`SqlTimeout` if it (with the views it needs) outlasts the timeout."""
        import duckdb

        check_read_only(self.con, query)
        self._cancel_timer()
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        if self.timeout is not None:
            self._timer = threading.Timer(self.timeout, self.con.interrupt)
            self._timer.daemon = True
            self._timer.start()
        try:
            self._ensure(query)
            # an interrupt that came while Python (not DuckDB) built a view is lost
            if deadline is not None and time.monotonic() > deadline:
                raise self._timed_out()
            cur = self.con.execute(query)
        except duckdb.InterruptException as exc:
            raise self._timed_out() from exc
        names = [d[0] for d in cur.description or []]

        def rows() -> Iterator[tuple[Any, ...]]:
            try:
                while batch := cur.fetchmany(10_000):
                    yield from batch
            except duckdb.InterruptException as exc:
                raise self._timed_out() from exc
            finally:
                self._cancel_timer()

        return names, rows()

    def _timed_out(self) -> SqlTimeout:
        self._cancel_timer()
        return SqlTimeout(
            f"the query ran longer than {self.timeout:g} s and was stopped (--timeout)"
        )

"""Log setup of the long-running processes: one stderr handler, text or JSON lines, and a
:class:`RepeatFilter` so that a failure repeating many times a second (a Kafka client
retrying an unreachable broker every 100 ms) writes a few lines and a count, not a flood.

``caretally serve`` calls :func:`configure_logging`; a process whose framework installs its
own handlers (the worker: Faust/mode) calls :func:`add_repeat_filter` on the root logger
once those handlers are in place.

Patient ids are never logged at info level: nothing here adds to a record's text, and the
suppression summary repeats a suppressed record at that record's own level.
"""

from __future__ import annotations

import atexit
import json
import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
REPEAT_BURST = 3
"""Records of one kind let through per interval."""
REPEAT_INTERVAL_S = 10.0
REPEAT_MIN_LEVEL = logging.WARNING
"""Only warnings and errors are rate-limited: info lines (the access log) are each news."""
MAX_KINDS = 1000
"""Kinds tracked at once; beyond that a new kind passes unlimited (memory stays bounded)."""

_SUMMARY = "caretally_repeat_summary"  # marks the filter's own summary records


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts`` (UTC, ISO 8601, milliseconds), ``level``, ``logger``,
    ``message``, and ``exc`` (the formatted traceback) / ``stack`` when the record has one."""

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        out: dict[str, str] = {
            "ts": ts.replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False)


@dataclass(slots=True)
class _Window:
    start: float
    passed: int = 0
    suppressed: int = 0
    last_message: str = ""


Kind = tuple[str, int, str]
"""(logger name, level, message template): what makes two records "the same"."""


class RepeatFilter(logging.Filter):
    """Lets each kind of record (same logger, level and message template, whatever the
    arguments) through at most ``burst`` times per ``interval`` seconds; when the interval
    of a kind that had records suppressed ends, one summary line follows at the same level:
    ``<last suppressed message> (N similar lines suppressed in the last 10 s)``.

    A filter cannot act on its own, so the summary is written with the first record (of
    any kind) handled after the interval ends, and by :meth:`flush` (at exit, when
    installed by :func:`add_repeat_filter`); ``sink`` writes it (the handler's ``handle``),
    else the record's logger does. Records below ``min_level`` always pass. One filter per
    handler: a filter shared by two handlers would count each record twice.
    """

    def __init__(
        self,
        burst: int = REPEAT_BURST,
        interval: float = REPEAT_INTERVAL_S,
        *,
        min_level: int = REPEAT_MIN_LEVEL,
        sink: Callable[[logging.LogRecord], object] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        if burst < 1 or interval <= 0:
            raise ValueError("burst must be at least 1 and interval positive")
        self.burst = burst
        self.interval = interval
        self.min_level = min_level
        self.sink = sink
        self.clock = clock
        self._windows: dict[Kind, _Window] = {}
        self._lock = threading.Lock()
        self._next_sweep = 0.0

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, _SUMMARY, False):
            return True
        now = self.clock()
        with self._lock:
            due = self._sweep(now) if now >= self._next_sweep else []
            allow = record.levelno < self.min_level or self._admit(record, now, due)
        for summary in due:
            self._write(summary)
        return allow

    def flush(self) -> None:
        """Write the summaries of every kind with suppressed records now, and forget them."""
        with self._lock:
            windows, self._windows = self._windows, {}
        for kind, window in windows.items():
            if window.suppressed:
                self._write(self._summary(kind, window))

    def _admit(self, record: logging.LogRecord, now: float, due: list[logging.LogRecord]) -> bool:
        kind = (record.name, record.levelno, str(record.msg))
        window = self._windows.get(kind)
        if window is not None and now - window.start >= self.interval:
            del self._windows[kind]
            if window.suppressed:
                due.append(self._summary(kind, window))
            window = None
        if window is None:
            if len(self._windows) >= MAX_KINDS:
                return True
            window = self._windows[kind] = _Window(now)
        if window.passed < self.burst:
            window.passed += 1
            return True
        window.suppressed += 1
        try:
            window.last_message = record.getMessage()
        except Exception:  # arguments that do not fit the template: logging reports those
            window.last_message = str(record.msg)
        return False

    def _sweep(self, now: float) -> list[logging.LogRecord]:
        """Summaries of the kinds whose interval has ended; their windows are dropped."""
        self._next_sweep = now + min(1.0, self.interval)
        due = []
        for kind, window in list(self._windows.items()):
            if now - window.start >= self.interval:
                del self._windows[kind]
                if window.suppressed:
                    due.append(self._summary(kind, window))
        return due

    def _summary(self, kind: Kind, window: _Window) -> logging.LogRecord:
        name, level, _ = kind
        record = logging.LogRecord(
            name,
            level,
            __file__,
            0,
            "%s (%d similar lines suppressed in the last %s s)",
            (window.last_message, window.suppressed, f"{self.interval:g}"),
            None,
        )
        setattr(record, _SUMMARY, True)
        return record

    def _write(self, record: logging.LogRecord) -> None:
        if self.sink is not None:
            self.sink(record)
        else:
            logging.getLogger(record.name).handle(record)


def add_repeat_filter(
    target: logging.Handler | logging.Logger,
    burst: int = REPEAT_BURST,
    interval: float = REPEAT_INTERVAL_S,
) -> list[RepeatFilter]:
    """Install a :class:`RepeatFilter` on a handler, or on each handler of a logger (records
    propagated from child loggers meet only the handlers' filters, so that is where it
    must go); a logger without handlers gets it itself. A handler that has one already is
    left alone. The summaries still owed are written at exit. Returns the filters
    installed.

    For a process whose framework sets up logging (Faust/mode in the worker), call it
    with ``logging.getLogger()`` after the framework has installed its handlers."""
    installed: list[RepeatFilter] = []
    owners: list[logging.Handler | logging.Logger] = (
        [target] if isinstance(target, logging.Handler) else list(target.handlers) or [target]
    )
    for owner in owners:
        if any(isinstance(f, RepeatFilter) for f in owner.filters):
            continue
        f = RepeatFilter(burst, interval, sink=owner.handle)
        owner.addFilter(f)
        atexit.register(f.flush)  # before logging's own exit hook, registered earlier
        installed.append(f)
    return installed


def formatter(fmt: str) -> logging.Formatter:
    """The formatter of ``--log-format`` ``text`` (today's look) or ``json``."""
    if fmt == "json":
        return JsonFormatter()
    if fmt == "text":
        return logging.Formatter(TEXT_FORMAT)
    raise ValueError(f"log format {fmt!r} is not one of {', '.join(LOG_FORMATS)}")


def configure_logging(level: str, fmt: str = "text") -> None:
    """The root logger at ``level`` (``debug``, ``info``, ...) with one handler, on stderr, in
    ``fmt`` (``text``: ``2025-03-14 20:02:11,123 INFO caretally.serve: ...``; ``json``: one
    object per line), rate-limited by a :class:`RepeatFilter`. Handlers already on the
    root logger are removed (not closed: they may belong to someone else)."""
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(fmt))
    add_repeat_filter(handler)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)

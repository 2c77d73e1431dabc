"""The shared log setup (``streams.observe.logs``): the repeat filter that turns a flood of
one failure into a few lines and a count, the JSON lines, and ``configure_logging``."""

from __future__ import annotations

import io
import json
import logging
import re
import sys
from collections.abc import Iterator
from datetime import datetime

import pytest

from streams.observe.logs import (
    JsonFormatter,
    RepeatFilter,
    add_repeat_filter,
    configure_logging,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def logger(request: pytest.FixtureRequest) -> Iterator[logging.Logger]:
    """A logger of the test's own that sends nothing to the root logger."""
    log = logging.getLogger(f"test.observe.{request.node.name}")
    log.propagate, log.level = False, logging.DEBUG
    yield log
    for handler in list(log.handlers):
        log.removeHandler(handler)
    log.filters.clear()


def capture(log: logging.Logger, clock: Clock) -> tuple[io.StringIO, RepeatFilter]:
    """A handler writing ``LEVEL name: message`` lines, with a filter on a test clock."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    repeat = RepeatFilter(3, 10.0, sink=handler.handle, clock=clock)
    handler.addFilter(repeat)
    log.addHandler(handler)
    return stream, repeat


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_a_flood_of_one_kind_is_three_lines_then_a_count(logger: logging.Logger) -> None:
    clock = Clock()
    stream, _ = capture(logger, clock)
    for n in range(50):
        logger.error("Unable connect to node with id %s: attempt %d", 111, n)
        clock.now += 0.1  # 5 s in all: one interval
    assert len(lines(stream)) == 3
    clock.now += 5.0  # the interval has ended: the next record brings the count
    logger.error("Unable connect to node with id %s: attempt %d", 111, 50)
    got = lines(stream)
    assert got[3] == (
        f"ERROR {logger.name}: Unable connect to node with id 111: attempt 49 "
        "(47 similar lines suppressed in the last 10 s)"
    )
    assert got[4].endswith("attempt 50") and len(got) == 5


def test_kinds_are_counted_apart_by_logger_level_and_template(logger: logging.Logger) -> None:
    clock = Clock()
    stream, _ = capture(logger, clock)
    other = logger.getChild("other")  # its records reach the same handler
    for _ in range(10):
        logger.error("broker %s gone", "a")
        logger.warning("broker %s gone", "a")
        logger.error("fetch from %s failed", "a")
        other.error("broker %s gone", "a")
    assert len(lines(stream)) == 4 * 3


def test_info_and_debug_are_never_rate_limited(logger: logging.Logger) -> None:
    clock = Clock()
    stream, _ = capture(logger, clock)
    for n in range(100):
        logger.info("%s %s %d %.1fms", "GET", "/healthz", 200, n / 10)
        logger.debug("accepted %d event(s)", n)
    assert len(lines(stream)) == 200


def test_a_summary_owed_at_exit_is_written_by_flush(logger: logging.Logger) -> None:
    clock = Clock()
    stream, repeat = capture(logger, clock)
    for _ in range(5):
        logger.warning("Got error produce response: %s", "NodeNotReadyError")
    assert len(lines(stream)) == 3
    repeat.flush()
    assert lines(stream)[-1] == (
        f"WARNING {logger.name}: Got error produce response: NodeNotReadyError "
        "(2 similar lines suppressed in the last 10 s)"
    )
    repeat.flush()  # nothing owed any more
    assert len(lines(stream)) == 4


def test_a_quiet_interval_writes_no_summary_and_starts_afresh(logger: logging.Logger) -> None:
    clock = Clock()
    stream, _ = capture(logger, clock)
    for _ in range(3):
        logger.error("once in a while")
    clock.now += 11.0
    for _ in range(3):
        logger.error("once in a while")
    assert lines(stream) == [f"ERROR {logger.name}: once in a while"] * 6


def test_add_repeat_filter_puts_one_filter_on_each_handler() -> None:
    logger = logging.Logger("test.observe.handlers")  # outside the registry: no other handlers
    first, second = io.StringIO(), io.StringIO()
    for stream in (first, second):
        logger.addHandler(logging.StreamHandler(stream))
    installed = add_repeat_filter(logger)
    assert len(installed) == 2 and add_repeat_filter(logger) == []  # the second call: none
    for _ in range(10):
        logger.error("the same failure")
    for repeat in installed:
        repeat.flush()
    for stream in (first, second):
        got = lines(stream)
        assert got[:3] == ["the same failure"] * 3
        assert got[3:] == ["the same failure (7 similar lines suppressed in the last 10 s)"]


def test_json_lines_carry_time_level_logger_message_and_traceback() -> None:
    formatter = JsonFormatter()
    record = logging.LogRecord("caretally.serve", logging.INFO, __file__, 1, "%d views", (3,), None)
    line = formatter.format(record)
    assert "\n" not in line
    got = json.loads(line)
    assert set(got) == {"ts", "level", "logger", "message"}
    assert (got["level"], got["logger"], got["message"]) == ("INFO", "caretally.serve", "3 views")
    assert got["ts"].endswith("Z")
    assert datetime.fromisoformat(got["ts"].replace("Z", "+00:00")).timestamp() == pytest.approx(
        record.created, abs=0.001
    )
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        failed = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", None, sys.exc_info())
    line = formatter.format(failed)
    assert "\n" not in line
    got = json.loads(line)
    assert got["message"] == "failed"
    assert got["exc"].startswith("Traceback") and "ValueError: bad\nthing" in got["exc"]


@pytest.fixture
def root_restored() -> Iterator[logging.Logger]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield root
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_configure_logging_leaves_one_rate_limited_stderr_handler(
    root_restored: logging.Logger, capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    configure_logging("warning", fmt)
    assert len(root_restored.handlers) == 1 and root_restored.level == logging.WARNING
    log = logging.getLogger("caretally.test")
    log.info("not shown")
    for n in range(5):
        log.error("broker %d gone", n)
    (handler,) = root_restored.handlers
    err = capsys.readouterr().err.splitlines()
    for repeat in handler.filters:
        assert isinstance(repeat, RepeatFilter)
        repeat.flush()  # now, while stderr is still captured, rather than at exit
    assert len(err) == 3
    if fmt == "json":
        assert [json.loads(line)["message"] for line in err] == [
            f"broker {n} gone" for n in range(3)
        ]
    else:
        stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"
        assert re.fullmatch(stamp + r" ERROR caretally\.test: broker 0 gone", err[0]), err[0]


def test_configure_logging_refuses_an_unknown_format_or_level(
    root_restored: logging.Logger,
) -> None:
    with pytest.raises(ValueError, match="log format"):
        configure_logging("info", "xml")
    with pytest.raises(ValueError, match="log level"):
        configure_logging("loud")

"""Month and day arithmetic in a practice's time zone, on integer epoch seconds.

Elapsed time is measured on absolute instants (so DST transitions neither add nor
lose minutes); buckets (months, days) are local to the practice (docs/rules.md G2).
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

DEFAULT_TIMEZONE = "America/New_York"


@lru_cache(maxsize=256)
def zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def epoch(instant: datetime) -> int:
    """Whole epoch seconds of an aware instant (sub-second parts are dropped)."""
    return int(instant.timestamp() // 1)


@lru_cache(maxsize=4096)
def month_key(year: int, month: int) -> str:
    return f"{year:04d}-{month:02d}"


@lru_cache(maxsize=4096)
def next_month(month: str) -> str:
    y, m = int(month[:4]), int(month[5:7])
    return month_key(y + (m == 12), 1 if m == 12 else m + 1)


@lru_cache(maxsize=4096)
def first_day(month: str) -> date:
    return date(int(month[:4]), int(month[5:7]), 1)


@lru_cache(maxsize=4096)
def last_day(month: str) -> date:
    return first_day(next_month(month)) - timedelta(days=1)


def month_of_date(d: date) -> str:
    return month_key(d.year, d.month)


@lru_cache(maxsize=65536)
def day_start(d: date, tz: str) -> int:
    """Epoch second of local midnight starting ``d`` in ``tz``."""
    return int(datetime(d.year, d.month, d.day, tzinfo=zone(tz)).timestamp())


@lru_cache(maxsize=8192)
def month_bounds(month: str, tz: str) -> tuple[int, int]:
    """[start, end) epoch seconds of the local calendar month."""
    return day_start(first_day(month), tz), day_start(first_day(next_month(month)), tz)


def local_date(ts: int, tz: str) -> date:
    return datetime.fromtimestamp(ts, zone(tz)).date()


_QUARTER = 900
_QUARTER_DAY: dict[tuple[str, int], date] = {}


def local_day(ts: int, tz: str) -> date:
    """Local date of ``ts``, cached per quarter-hour.

    Exact because every modern UTC offset is a multiple of 15 minutes, so a local
    midnight always falls on a quarter-hour boundary.
    """
    key = (tz, ts // _QUARTER)
    d = _QUARTER_DAY.get(key)
    if d is None:
        if len(_QUARTER_DAY) > 1_000_000:
            _QUARTER_DAY.clear()
        d = _QUARTER_DAY[key] = local_date(key[1] * _QUARTER, tz)
    return d


_QUARTER_MONTH: dict[tuple[str, int], str] = {}


def month_of(ts: int, tz: str) -> str:
    """Local month (YYYY-MM) of ``ts``, cached per quarter-hour like :func:`local_day`."""
    key = (tz, ts // _QUARTER)
    m = _QUARTER_MONTH.get(key)
    if m is None:
        if len(_QUARTER_MONTH) > 1_000_000:
            _QUARTER_MONTH.clear()
        d = local_day(ts, tz)
        m = _QUARTER_MONTH[key] = month_key(d.year, d.month)
    return m


def months_spanned(start: int, end: int, tz: str) -> list[str]:
    """Local months touched by [start, end) (end exclusive)."""
    first = month_of(start, tz)
    out = [first]
    m = first
    while month_bounds(m, tz)[1] < end:
        m = next_month(m)
        out.append(m)
    return out

"""The minutes of a patient-month by day and program, as data for a small SVG bar chart
(drawn by the template) and the table beside it that screen readers use."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from projections.audit import AuditReport

COLORS: dict[str, str] = {  # colour-blind safe (Okabe-Ito)
    "ccm": "#0072B2",
    "pcm": "#E69F00",
    "rpm": "#009E73",
    "rtm": "#CC79A7",
    "bhi": "#D55E00",
    "apcm": "#56B4E9",
    "tcm": "#999999",
}
WIDTH, HEIGHT, PAD = 640, 160, 24


@dataclass(frozen=True, slots=True)
class Bar:
    day: int
    program: str
    minutes: float
    x: float
    y: float
    width: float
    height: float
    color: str


@dataclass(frozen=True, slots=True)
class DayChart:
    days: int
    programs: list[str]
    by_day: dict[int, dict[str, float]]  # day of month -> program -> counted minutes
    bars: list[Bar]
    peak: float
    width: int = WIDTH
    height: int = HEIGHT
    pad: int = PAD

    def color(self, program: str) -> str:
        return COLORS.get(program, "#666666")

    @property
    def ticks(self) -> list[int]:
        """Days labelled under the bars: the 1st, every 7th day after it, the last."""
        return sorted({1, *range(8, self.days, 7), self.days})

    def x_of(self, day: int) -> float:
        """The centre of a day's bar."""
        step = (self.width - 2 * self.pad) / self.days
        return round(self.pad + (day - 0.5) * step, 1)


def minutes_by_day(report: AuditReport) -> DayChart:
    """Counted minutes of the month's current activity versions, on the local day each
    starts (the practice's zone), stacked by program."""
    first = report.month_start.date()
    days = ((report.month_end - timedelta(seconds=1)).date() - first).days + 1
    by_day: dict[int, dict[str, float]] = {}
    for row in report.activities:
        if row.status != "current" or row.counted <= 0:
            continue
        day = max(row.start.date(), first)
        n = (day - first).days + 1
        slot = by_day.setdefault(min(n, days), {})
        slot[row.program] = round(slot.get(row.program, 0.0) + row.counted / 60, 2)
    programs = sorted({p for d in by_day.values() for p in d})
    peak = max((sum(d.values()) for d in by_day.values()), default=0.0)
    bars: list[Bar] = []
    step = (WIDTH - 2 * PAD) / days
    scale = (HEIGHT - 2 * PAD) / peak if peak else 0.0
    for n, slot in sorted(by_day.items()):
        base = float(HEIGHT - PAD)
        for program in programs:
            m = slot.get(program, 0.0)
            if not m:
                continue
            h = m * scale
            base -= h
            x = PAD + (n - 1) * step + step * 0.15
            color = COLORS.get(program, "#666666")
            bars.append(
                Bar(
                    n,
                    program,
                    m,
                    round(x, 1),
                    round(base, 1),
                    round(step * 0.7, 1),
                    round(h, 1),
                    color,
                )
            )
    return DayChart(days, programs, dict(sorted(by_day.items())), bars, round(peak, 2))

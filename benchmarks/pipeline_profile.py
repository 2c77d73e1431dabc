"""Where a profiled worker's time went: self time per frame, from pyinstrument or py-spy.

Used by ``benchmarks/pipeline.py --profile``. Both profilers give stacks (root first)
with a weight (seconds for pyinstrument, samples for py-spy); a stack's weight is the
self time of its last frame. Samples whose last frames are the selector's ``select``
(the event loop in ``epoll``) are the worker's idle time; shares are given of all
samples and of the busy ones.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NamedTuple, TypeVar

ROOT = Path(__file__).resolve().parent.parent
K = TypeVar("K")


class Site(NamedTuple):
    function: str
    path: str
    line: int

    def label(self) -> str:
        return f"{self.function}  {short_path(self.path)}:{self.line}"


Stack = list[Site]


def short_path(path: str) -> str:
    """The path inside the repository, or inside site-packages / the standard library."""
    if not path or path.startswith("<"):  # <built-in>, <string>, <thread>
        return path
    for marker in ("/site-packages/", "/lib/python3"):
        if marker in path:
            tail = path.split(marker, 1)[1]
            return tail.split("/", 1)[1] if marker == "/lib/python3" and "/" in tail else tail
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except (ValueError, OSError):
        return path


def package(site: Site) -> str:
    """A coarse owner of a frame: our code, a library, asyncio, other standard library."""
    p = short_path(site.path)
    if not p or p.startswith("<"):
        return "built-in"
    top = p.split("/", 1)[0]
    if top in ("streams", "projections", "schemas", "benchmarks"):
        return f"caretally {top}/"
    if top in ("aiokafka", "faust", "mode", "kafka", "orjson", "prometheus_client", "pydantic"):
        return top
    if top == "asyncio":
        return "asyncio"
    return "other" if "/" in p else f"stdlib {top}"


def idle(stack: Stack) -> bool:
    return any(s.function in ("select", "poll") and "selectors" in s.path for s in stack[-2:])


def pyinstrument_stacks(session_file: Path) -> tuple[list[tuple[Stack, float]], dict[str, float]]:
    """The stacks of a saved pyinstrument session and its duration and sample count."""
    from pyinstrument.session import Session

    session = Session.load(session_file)
    out: list[tuple[Stack, float]] = []
    for frames, seconds in session.frame_records:
        stack: Stack = []
        for info in frames:
            ident = info.split("\x01", 1)[0]
            function, _, rest = ident.partition("\x00")
            path, _, line = rest.partition("\x00")
            if path != "<thread>":  # pyinstrument's root frame per thread
                stack.append(Site(function, path, int(line) if line.isdigit() else 0))
        out.append((stack, float(seconds)))
    meta = {
        "duration_s": float(session.duration),
        "samples": float(session.sample_count),
        "cpu_time_s": float(session.cpu_time),
    }
    return out, meta


def pyspy_stacks(raw_file: Path) -> list[tuple[Stack, float]]:
    """The stacks of ``py-spy record --format raw`` (``frame;frame;... count`` lines,
    each frame ``function (file:line)``)."""
    out: list[tuple[Stack, float]] = []
    for line in raw_file.read_text().splitlines():
        frames, _, count = line.rpartition(" ")
        if not frames or not count.isdigit():
            continue
        stack: Stack = []
        for f in frames.split(";"):
            function, _, where = f.partition(" (")
            path, _, lineno = where.rstrip(")").rpartition(":")
            stack.append(Site(function, path, int(lineno) if lineno.isdigit() else 0))
        out.append((stack, float(count)))
    return out


def most(weights: dict[K, float]) -> list[tuple[K, float]]:
    return sorted(weights.items(), key=lambda kv: kv[1], reverse=True)


WHERE: tuple[tuple[str, Callable[[Site], bool]], ...] = (
    (
        "the fold (FoldPartition.apply: Projector.step and its outputs' encoding)",
        lambda f: f.function == "apply" and f.path.endswith("streams/worker/partition.py"),
    ),
    (
        "the gate's decisions (IngressGate.route: parse, validate, dedupe)",
        lambda f: f.function == "route" and f.path.endswith("streams/worker/gate.py"),
    ),
    (
        "producing (Faust's producer.send and aiokafka's, partitioner included)",
        lambda f: "/aiokafka/producer/" in f.path or ("/faust/" in f.path and f.function == "send"),
    ),
    (
        "  of which aiokafka's default partitioner (murmur2 in Python)",
        lambda f: f.function == "murmur2",
    ),
    (
        "consuming (aiokafka fetcher: getmany, record decoding)",
        lambda f: "/aiokafka/consumer/" in f.path,
    ),
    ("snapshots (Partitions.save_dirty, state_codec)", lambda f: f.function == "save_dirty"),
    ("Prometheus metrics (labels, inc, observe)", lambda f: "/prometheus_client/" in f.path),
    ("pydantic validation", lambda f: "/pydantic" in f.path),
)
"""Inclusive buckets: a sample counts for a bucket when any frame of its stack matches."""


def leaf_label(stack: Stack) -> str:
    """The last frame; a C function or generated code (``<built-in>``, ``<string>``: a
    dataclass ``__init__``) is named with the frame that called it."""
    leaf = stack[-1]
    if leaf.path.startswith("<") and len(stack) > 1:
        return f"{leaf.label()}  <- {stack[-2].label()}"
    return leaf.label()


def owner(stack: Stack) -> str:
    """The owner of the last frame that is Python source (C calls count for their caller)."""
    for site in reversed(stack):
        if not site.path.startswith("<"):
            return package(site)
    return package(stack[-1])


def summary(stacks: Iterable[tuple[Stack, float]], top: int = 10) -> tuple[str, dict[str, object]]:
    """Text tables of the ``top`` frames by self time, of self time by owner, and of our
    functions by inclusive time; and the figures."""
    by_leaf: defaultdict[str, float] = defaultdict(float)
    by_owner: defaultdict[str, float] = defaultdict(float)
    inclusive: defaultdict[str, float] = defaultdict(float)
    where: defaultdict[str, float] = defaultdict(float)
    total = idle_w = 0.0
    for stack, w in stacks:
        if not stack:
            continue
        total += w
        if idle(stack):
            idle_w += w
            continue
        by_leaf[leaf_label(stack)] += w
        by_owner[owner(stack)] += w
        for label in {s.label() for s in stack if package(s).startswith("caretally")}:
            inclusive[label] += w
        for name, match in WHERE:
            if any(match(s) for s in stack):
                where[name] += w
    busy = total - idle_w
    if total <= 0 or busy <= 0:
        return "no samples\n", {}

    def pct(w: float, of: float) -> str:
        return f"{100 * w / of:5.1f}%"

    lines = [
        f"idle (event loop in epoll): {pct(idle_w, total)} of the samples; busy {pct(busy, total)}",
        "",
        f"Top {top} frames by self time (share of all samples | of the busy ones):",
    ]
    rows = []
    for i, (label, w) in enumerate(most(by_leaf)[:top], 1):
        lines.append(f"{i:3d}. {pct(w, total)} | {pct(w, busy)}  {label}")
        rows.append(
            {"frame": label, "share": round(w / total, 4), "busy_share": round(w / busy, 4)}
        )
    lines += ["", "Where the time goes (inclusive; share of the busy samples):"]
    for name, _ in WHERE:
        lines.append(f"     {pct(where[name], busy)}  {name}")
    lines += ["", "Self time by owner (C calls count for their caller; share of the busy samples):"]
    for name, w in most(by_owner):
        if w / busy >= 0.001:
            lines.append(f"     {pct(w, busy)}  {name}")
    lines += [
        "",
        f"Our functions by inclusive time (top {2 * top} under 99%; share of the busy samples):",
    ]
    for label, w in [(k, v) for k, v in most(inclusive) if v < 0.99 * busy][: 2 * top]:
        lines.append(f"     {pct(w, busy)}  {label}")
    figures: dict[str, object] = {
        "idle_share": round(idle_w / total, 4),
        "top_self": rows,
        "where_busy_share": {k: round(where[k] / busy, 4) for k, _ in WHERE},
        "by_owner_busy_share": {k: round(v / busy, 4) for k, v in most(by_owner)},
    }
    return "\n".join(lines) + "\n", figures

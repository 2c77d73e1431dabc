"""A data-only codec for the worker's fold state: plain JSON, never code.

Snapshots used to be pickles, and loading a pickle runs whatever its author wrote.
Here decoding can only build the types named in :data:`REGISTRY` (our state classes)
plus ``dict``/``list``/``tuple``/``set``/``frozenset``, ``date``/``datetime``,
``ZoneInfo``, ``bytes`` and registered enums. Anything else in the data is an error.

Encoding is generic over the registry:

* a dataclass is its fields (``{"$": name, "v": {field: value}}``), rebuilt by calling
  the class with them (a field declared transient, derived data, is left out);
* a plain class (the Ledger, the Projector...) is its instance attributes, minus the
  ones it declares *transient* (caches rebuilt on demand, bound methods), restored
  onto a fresh instance; :class:`~projections.digest_index.DigestIndex` has its own
  compact form.

The field names in the data must be exactly the class's, so a snapshot of a state
whose shape has since changed is refused (the worker refolds from the log) instead
of being half-applied; the one exception is a dataclass field declared *added* (with a
default), which a snapshot of the version before it may lack: it then takes its default.
Extending the state: add the new class to ``_register_all``.
Object identity is kept for instances of registered classes (the same ``Activity`` in
the ledger and in a month's accounting is one object again after decoding): a second
occurrence is written as ``{"$": "ref", "v": n}``, ``n`` counting registered objects
in the order they were finished (children before parents), on both sides.
"""

from __future__ import annotations

import base64
import dataclasses
import math
import sys
from array import array
from collections.abc import Callable, Iterable
from datetime import date, datetime
from enum import Enum
from typing import Any
from zoneinfo import ZoneInfo

import orjson


class CodecError(ValueError):
    """The state holds (or the data names) something the codec does not allow."""


@dataclasses.dataclass(frozen=True)
class Kind:
    """How one registered class is written and rebuilt."""

    name: str
    cls: type
    names: tuple[str, ...]  # the attributes written, in order
    build: Callable[[dict[str, Any]], Any]
    dump: Callable[[Any], dict[str, Any]] | None = None  # custom form (else the attributes)
    added: tuple[str, ...] = ()  # fields an earlier version's data lacks (default then)


REGISTRY: dict[str, Kind] = {}
_BY_TYPE: dict[type, Kind] = {}
_ENUMS: dict[str, type[Enum]] = {}
_BUILTIN_TAGS = frozenset(
    {"tuple", "set", "frozenset", "dict", "date", "datetime", "zone", "bytes", "float", "ref"}
)


def _add(kind: Kind) -> None:
    if kind.name in REGISTRY or kind.name in _BUILTIN_TAGS or kind.name in _ENUMS:
        raise ValueError(f"state codec: {kind.name} registered twice")
    REGISTRY[kind.name] = kind
    _BY_TYPE[kind.cls] = kind


def register_dataclass(
    cls: type, transient: Iterable[str] = (), added: tuple[str, ...] = ()
) -> None:
    """A dataclass written as its fields and rebuilt by ``cls(**fields)``; ``transient``
    fields (derived data, each with a default) are not written and come back as their
    default; ``added`` fields (each with a default) may all be missing from data written
    before they were added, and then take their default too."""
    skip = set(transient)
    fields = [f for f in dataclasses.fields(cls) if f.name not in skip]
    late = tuple(f.name for f in fields if not f.init)

    def build(values: dict[str, Any]) -> Any:
        obj = cls(**{k: v for k, v in values.items() if k not in late})
        for k in late:
            object.__setattr__(obj, k, values[k])
        return obj

    _add(Kind(cls.__qualname__, cls, tuple(f.name for f in fields), build, added=added))


def _attributes(obj: object) -> list[str]:
    names = list(getattr(obj, "__dict__", {}))
    for klass in type(obj).__mro__:
        slots = klass.__dict__.get("__slots__", ())
        names.extend([slots] if isinstance(slots, str) else slots)
    return [n for n in names if n not in ("__dict__", "__weakref__") and hasattr(obj, n)]


def register_plain(cls: type, transient: Iterable[str] = ()) -> None:
    """A class built with no arguments, written as its instance attributes but the
    ``transient`` ones (caches and the like, which a fresh instance starts empty)."""
    skip = set(transient)
    names = tuple(n for n in _attributes(cls()) if n not in skip)

    def build(values: dict[str, Any]) -> Any:
        obj = cls()
        for k, v in values.items():
            setattr(obj, k, v)
        return obj

    _add(Kind(cls.__qualname__, cls, names, build))


def register_custom(
    cls: type,
    names: tuple[str, ...],
    dump: Callable[[Any], dict[str, Any]],
    build: Callable[[dict[str, Any]], Any],
) -> None:
    """A class with its own data form: ``dump(obj)`` gives the ``names``."""
    _add(Kind(cls.__qualname__, cls, names, build, dump))


def register_enum(cls: type[Enum]) -> None:
    if cls.__qualname__ in REGISTRY or cls.__qualname__ in _ENUMS:
        raise ValueError(f"state codec: {cls.__qualname__} registered twice")
    _ENUMS[cls.__qualname__] = cls


# -- encoding ---------------------------------------------------------------------


class _Encoder:
    def __init__(self) -> None:
        self.memo: dict[int, int] = {}

    def enc(self, o: Any) -> Any:
        t = type(o)
        if t is str or t is int or t is bool or o is None:
            return o
        if t is float:
            return o if math.isfinite(o) else {"$": "float", "v": repr(o)}
        if t is list:
            return [self.enc(x) for x in o]
        if t is tuple:
            return {"$": "tuple", "v": [self.enc(x) for x in o]}
        if t is dict:
            flat: list[Any] = []
            for k, v in o.items():
                flat.append(self.enc(k))
                flat.append(self.enc(v))
            return {"$": "dict", "v": flat}
        if t is set or t is frozenset:
            return {"$": t.__name__, "v": [self.enc(x) for x in _ordered(o)]}
        kind = _BY_TYPE.get(t)
        if kind is not None:
            return self._object(kind, o)
        return self._scalar(o)

    def _object(self, kind: Kind, o: Any) -> Any:
        ref = self.memo.get(id(o))
        if ref is not None:
            return {"$": "ref", "v": ref}
        raw = kind.dump(o) if kind.dump is not None else {n: getattr(o, n) for n in kind.names}
        payload = {n: self.enc(raw[n]) for n in kind.names}
        self.memo[id(o)] = len(self.memo)  # after its children: the decoder's order too
        return {"$": kind.name, "v": payload}

    def _scalar(self, o: Any) -> Any:
        if isinstance(o, datetime):
            zone = o.tzinfo.key if isinstance(o.tzinfo, ZoneInfo) else None
            return {"$": "datetime", "v": [o.isoformat(), zone]}
        if type(o) is date:
            return {"$": "date", "v": o.isoformat()}
        if type(o) is ZoneInfo:
            return {"$": "zone", "v": o.key}
        if type(o) is bytes:
            return {"$": "bytes", "v": base64.b64encode(o).decode()}
        if isinstance(o, Enum) and _ENUMS.get(type(o).__qualname__) is type(o):
            return {"$": type(o).__qualname__, "v": self.enc(o.value)}
        raise CodecError(f"not a state type: {type(o).__module__}.{type(o).__qualname__}")


def _ordered(items: set[Any] | frozenset[Any]) -> list[Any]:
    """A set's items sorted when they compare (the same state, the same bytes)."""
    try:
        return sorted(items)
    except TypeError:
        return list(items)


def encode(state: Any) -> bytes:
    """``state`` as JSON bytes; :class:`CodecError` if it holds an unregistered type."""
    return orjson.dumps(_Encoder().enc(state))


# -- decoding ---------------------------------------------------------------------


class _Decoder:
    def __init__(self) -> None:
        self.memo: list[Any] = []

    def dec(self, o: Any) -> Any:
        t = type(o)
        if t is str or t is int or t is bool or o is None or t is float:
            return o
        if t is list:
            return [self.dec(x) for x in o]
        if t is not dict or set(o) != {"$", "v"}:
            raise CodecError("malformed state data")
        tag, v = o["$"], o["v"]
        if tag == "tuple":
            return tuple(self.dec(x) for x in _list(v))
        if tag == "dict":
            items = _list(v)
            if len(items) % 2:
                raise CodecError("malformed dict")
            return {self.dec(items[i]): self.dec(items[i + 1]) for i in range(0, len(items), 2)}
        if tag == "set":
            return {self.dec(x) for x in _list(v)}
        if tag == "frozenset":
            return frozenset(self.dec(x) for x in _list(v))
        if tag == "ref":
            if type(v) is not int or not 0 <= v < len(self.memo):
                raise CodecError("bad reference")
            return self.memo[v]
        kind = REGISTRY.get(tag)
        if kind is not None:
            return self._object(kind, v)
        return self._scalar(tag, v)

    def _object(self, kind: Kind, v: Any) -> Any:
        if type(v) is not dict or (
            tuple(v) != kind.names
            and (not kind.added or tuple(v) != tuple(n for n in kind.names if n not in kind.added))
        ):
            raise CodecError(f"{kind.name}: fields differ from this version's")
        obj = kind.build({n: self.dec(v[n]) for n in kind.names if n in v})
        self.memo.append(obj)
        return obj

    def _scalar(self, tag: str, v: Any) -> Any:
        if tag == "datetime":
            text, zone = _list(v)
            d = datetime.fromisoformat(_str(text))
            return d if zone is None else d.replace(tzinfo=ZoneInfo(_str(zone)))
        if tag == "date":
            return date.fromisoformat(_str(v))
        if tag == "zone":
            return ZoneInfo(_str(v))
        if tag == "bytes":
            return base64.b64decode(_str(v), validate=True)
        if tag == "float":
            if v not in ("inf", "-inf", "nan"):
                raise CodecError("bad float")
            return float(v)
        enum = _ENUMS.get(tag)
        if enum is not None:
            return enum(self.dec(v))
        raise CodecError(f"not a state type: {tag[:60]!r}")


def _list(v: Any) -> list[Any]:
    if type(v) is not list:
        raise CodecError("malformed state data")
    return v


def _str(v: Any) -> str:
    if type(v) is not str:
        raise CodecError("malformed state data")
    return v


def decode(data: bytes) -> Any:
    """The state in ``data`` (from :func:`encode`); :class:`CodecError` if it is not one.

    Only registered classes and the builtin containers above are ever built."""
    try:
        parsed = orjson.loads(data)
    except ValueError as exc:
        raise CodecError(f"unreadable state: {type(exc).__name__}") from None
    return from_json(parsed)


def from_json(parsed: Any) -> Any:
    """:func:`decode` of data already parsed by ``orjson.loads``."""
    try:
        return _Decoder().dec(parsed)
    except CodecError:
        raise
    except (ValueError, TypeError, KeyError, RecursionError) as exc:
        raise CodecError(f"unreadable state: {type(exc).__name__}") from None


# -- the registry of our state classes -------------------------------------------


def _digest_index_dump(index: Any) -> dict[str, Any]:
    items = index.items()
    keys, bodies = array("Q", [k for k, _ in items]), array("Q", [b for _, b in items])
    if sys.byteorder == "big":
        keys.byteswap()
        bodies.byteswap()
    return {"keys": keys.tobytes(), "bodies": bodies.tobytes()}


def _digest_index_build(values: dict[str, Any]) -> Any:
    from projections.digest_index import DigestIndex

    keys, bodies = array("Q"), array("Q")
    try:
        keys.frombytes(values["keys"])
        bodies.frombytes(values["bodies"])
    except (TypeError, ValueError):
        raise CodecError("DigestIndex: malformed") from None
    if len(keys) != len(bodies):
        raise CodecError("DigestIndex: malformed")
    if sys.byteorder == "big":
        keys.byteswap()
        bodies.byteswap()
    index = DigestIndex()
    for k, b in zip(keys, bodies, strict=True):
        index.add(k, b)
    return index


def _register_all() -> None:
    from projections import accounting, billing, engine, ledger, staff
    from projections.digest_index import DigestIndex
    from streams.worker import partition as fold_partition

    for cls in (
        ledger.Activity,
        ledger.ConsentEntry,
        ledger.EnrollmentEntry,
        accounting.ActivityTime,
        accounting.Pool,
        accounting.Pair,
        accounting.MonthTime,
        billing.Line,
        billing.Blocked,
        billing.Progress,
        staff.StaffInterval,
        fold_partition.FoldPartition,
    ):
        register_dataclass(cls)
    # the conditions' codes (claim diagnoses) came later: older snapshots restore without them
    register_dataclass(ledger.PatientState, added=("condition_codes",))
    # the payment settings came after format 4's first snapshots: those restore with defaults
    register_dataclass(ledger.Practice, added=("qualifying_apm_participant", "fee_schedule"))
    # a month's accounting detail: made with the billing for the audit and claim files,
    # never read back from the fold's views (about 85 % of the encoding work if kept)
    register_dataclass(billing.MonthBilling, transient=("time", "verdict"))
    register_custom(DigestIndex, ("keys", "bodies"), _digest_index_dump, _digest_index_build)
    register_plain(ledger.Ledger, transient=("_handlers",))  # bound methods, made by __init__
    # per-patient kernels and the verdict memo, rebuilt when absent (Projector._kernel);
    # the rule catalog is configuration, not state: a restored Projector has the default
    # until the worker gives it its configured books (streams.worker.app, Partitions), and
    # a snapshot of other books is not restored at all (streams.worker.snapshots)
    register_plain(engine.Projector, transient=("_kernels", "verdicts", "catalog"))
    register_plain(staff.StaffProjector)


_register_all()

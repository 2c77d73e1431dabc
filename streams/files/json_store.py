"""A list of records in a small JSON file that several processes change: the API keys
(``streams.http.api_keys``) and the webhook registry (``streams.webhooks.registry``).

The file is ``{"version": N, "<items>": [...]}``. It is read whole; a change is a
read-modify-write under an advisory lock (``<file>.lock``), and the file is replaced
atomically (temporary file, fsync, rename) with mode 0600, so a reader sees the old file or
the new one and two writers cannot lose each other's change.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import orjson

from streams.files.atomic import write_bytes

T = TypeVar("T")


def utc_now() -> str:
    """Now as ISO-8601 UTC to the second (``2025-03-14T20:02:11Z``): when a record was
    created or changed, for people reading the file."""
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


class JsonStore:
    """One such file. ``noun`` names it in errors (``key file``), ``error`` is the
    exception raised, ``malformed`` the message for a file that is not one (``{path}``,
    ``{type}`` and ``{error}`` are filled in)."""

    def __init__(
        self,
        path: Path,
        *,
        items: str,
        version: int,
        noun: str,
        error: type[Exception],
        malformed: str,
    ) -> None:
        self.path = path
        self.items = items
        self.version = version
        self.noun = noun
        self.error = error
        self.malformed = malformed

    def read(self, convert: Callable[[dict[str, Any]], T]) -> list[T]:
        """Each item through ``convert`` (none when the file does not exist). A file that
        is not JSON, lacks the items or has an item ``convert`` refuses (KeyError,
        TypeError, ValueError) is ``malformed``; one of a newer format version is refused."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise self.error(
                f"cannot read {self.noun} {str(self.path)!r}: {exc.strerror}"
            ) from None
        try:
            doc = orjson.loads(raw)
            if not isinstance(doc, dict):
                raise TypeError("not a JSON object")
            version = doc.get("version", self.version)
            if isinstance(version, int) and version <= self.version:
                return [convert(item) for item in doc[self.items]]
        except (KeyError, TypeError, ValueError) as exc:  # orjson's error is a ValueError
            path = repr(str(self.path))
            message = self.malformed.format(path=path, type=type(exc).__name__, error=exc)
            raise self.error(message) from None
        raise self.error(
            f"{self.noun} {str(self.path)!r} has format version {version!r}; this caretally "
            f"reads version {self.version} and older (upgrade caretally)"
        )

    def write(self, items: list[dict[str, Any]]) -> None:
        """Replace the file with ``items`` (atomically, mode 0600); under :meth:`locked`."""
        doc = {"version": self.version, self.items: items}
        write_bytes(self.path, orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Serialize read-modify-write of the file between processes."""
        path = self.path
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            lock = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise self.error(f"cannot write {self.noun} {str(path)!r}: {exc.strerror}") from None
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield
        finally:
            os.close(lock)

"""Snapshots of per-partition fold state, each beside the log offset it reflects.

The log is the truth; a snapshot only saves refolding it from the start. A snapshot
names the topic's id (a broker restart with memory storage makes a new topic with
the same name) so a snapshot of another log is never applied to this one, and the
digest of the rule books it was folded with (``streams.worker.books``), so months
evaluated with other books are refolded rather than kept.

Snapshots hold PHI and are read back by the worker, so they are data only (JSON via
:mod:`streams.worker.state_codec`: loading one can build nothing but our state classes, never
run code), in folders only the worker's user can open (0700, files 0600). A folder
that others may write, or that another user owns, is refused (:class:`UnsafeStateDir`).
Pickles of earlier versions are never opened: they are removed and the state refolded.
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from streams.files.atomic import replace_file
from streams.worker import state_codec

DEFAULT_STATE_DIR = Path(".caretally/state")
"""Where ``caretally worker`` keeps its snapshots unless told (``--state-dir``)."""

log = logging.getLogger(__name__)
FORMAT = 4  # 2: the fold's Projector keeps the claim lines billed at each month close;
# 3: claim line ids keyed by their close (projections.claims), the ledger keeps close ids;
# 4: data-only JSON (streams.worker.state_codec) instead of pickle
MAGIC = "caretally-snapshot"


class UnsafeStateDir(Exception):
    """The state folder could be written (or is owned) by someone else."""


@dataclass
class Slot:
    """One partition's state and the next log offset it has not folded."""

    state: Any
    next_offset: int = 0
    dirty: bool = False


def private_dir(path: Path) -> None:
    """Create ``path`` (every missing level 0700) and check it and the folder it is in:
    both must belong to this user and be writable by no one else."""
    missing = []
    level = path
    while not level.exists():
        missing.append(level)
        if level.parent == level:
            break
        level = level.parent
    for folder in (path.parent, path):
        if folder not in missing:  # refused before anything is written into it
            _check_private(folder)
    for folder in reversed(missing):
        folder.mkdir(mode=0o700, exist_ok=True)
        os.chmod(folder, 0o700)  # whatever the umask
    for folder in (path, path.parent):
        _check_private(folder)
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & 0o077:  # ours and not writable by others, but readable: tighten
        os.chmod(path, 0o700)


def _check_private(folder: Path) -> None:
    st = os.stat(folder)
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeStateDir(f"state folder {folder} is not a folder")
    if st.st_uid != os.geteuid():
        raise UnsafeStateDir(
            f"state folder {folder} belongs to another user (uid {st.st_uid}); "
            "use a folder of your own (--state-dir)"
        )
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafeStateDir(
            f"state folder {folder} is group- or world-writable "
            f"(mode {stat.S_IMODE(st.st_mode):o}); anyone who can write it could change "
            f"the billing state: `chmod go-w {folder}` or use another --state-dir"
        )


class SnapshotStore:
    """Slots as JSON under ``directory/<name>-<partition>.json`` (``None``: no snapshots).
    ``books``: the digest of the rule books the state is folded with ("" for state that
    no book decides); a snapshot of other books is not loaded."""

    def __init__(self, directory: Path | None, name: str, log_id: str, books: str = "") -> None:
        self.directory = directory
        self.name = name
        self.log_id = log_id
        self.books = books
        if directory is not None:
            private_dir(directory)

    def _path(self, partition: int, suffix: str = "json") -> Path:
        assert self.directory is not None
        return self.directory / f"{self.name}-{partition}.{suffix}"

    def load(self, partition: int) -> Slot | None:
        if self.directory is None:
            return None
        self._drop_pickle(partition)
        path = self._path(partition)
        try:
            slot = self._read(path)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:  # unreadable: refold from the log rather than fail
            log.warning("snapshot %s unreadable (%s); refolding from the log", path.name, exc)
            return None
        if slot is None:
            log.warning(
                "snapshot %s is of another log, format or set of rule books; refolding",
                path.name,
            )
        return slot

    def _read(self, path: Path) -> Slot | None:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if st.st_uid != os.geteuid() or st.st_mode & 0o022 or not stat.S_ISREG(st.st_mode):
                raise ValueError("not a private file of this user")
            doc = orjson.loads(f.read())
        if not isinstance(doc, dict) or doc.get("magic") != MAGIC:
            raise ValueError("not a caretally snapshot")
        offset = doc.get("next_offset")
        if (
            doc.get("format") != FORMAT
            or doc.get("log_id") != self.log_id
            or doc.get("name") != self.name
            or doc.get("books", "") != self.books
            or type(offset) is not int
            or offset < 0
        ):
            return None
        return Slot(state_codec.from_json(doc.get("state")), offset)

    def _drop_pickle(self, partition: int) -> None:
        """A pickle from an earlier version is never opened; it holds PHI, so it goes."""
        old = self._path(partition, "pickle")
        if old.exists() or old.is_symlink():
            log.warning("old pickle snapshot %s ignored and removed; refolding", old.name)
            old.unlink(missing_ok=True)

    def save(self, partition: int, slot: Slot) -> None:
        if self.directory is None:
            return
        head = {"magic": MAGIC, "format": FORMAT, "name": self.name, "log_id": self.log_id}
        if self.books:
            head["books"] = self.books
        head["next_offset"] = slot.next_offset
        # the state is spliced in as the codec's bytes (not re-parsed)
        data = orjson.dumps(head)[:-1] + b',"state":' + state_codec.encode(slot.state) + b"}"
        replace_file(self._path(partition), lambda tmp: tmp.write_bytes(data))
        slot.dirty = False

    def drop_all(self) -> int:
        """Remove every snapshot of this store (the log it reflects is gone)."""
        if self.directory is None:
            return 0
        n = 0
        for suffix in ("json", "pickle"):
            for path in self.directory.glob(f"{self.name}-*.{suffix}"):
                if path.name[len(self.name) + 1 : -len(suffix) - 1].isdigit():
                    path.unlink(missing_ok=True)
                    n += 1
        return n

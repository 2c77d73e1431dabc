"""Snapshots of per-partition fold state, each beside the log offset it reflects.

The log is the truth; a snapshot only saves refolding it from the start. A snapshot
names the topic's id (a broker restart with memory storage makes a new topic with
the same name) so a snapshot of another log is never applied to this one.
"""

from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streams.atomic_files import replace_file

log = logging.getLogger(__name__)
FORMAT = 2  # 2: the fold's Projector keeps the claim lines billed at each month close


@dataclass
class Slot:
    """One partition's state and the next log offset it has not folded."""

    state: Any
    next_offset: int = 0
    dirty: bool = False


class SnapshotStore:
    """Pickled slots under ``directory/<name>-<partition>.pickle`` (``None``: no snapshots)."""

    def __init__(self, directory: Path | None, name: str, log_id: str) -> None:
        self.directory = directory
        self.name = name
        self.log_id = log_id
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)

    def _path(self, partition: int) -> Path:
        assert self.directory is not None
        return self.directory / f"{self.name}-{partition}.pickle"

    def load(self, partition: int) -> Slot | None:
        if self.directory is None:
            return None
        path = self._path(partition)
        try:
            with open(path, "rb") as f:
                fmt, log_id, next_offset, state = pickle.load(f)
        except FileNotFoundError:
            return None
        except Exception as exc:  # unreadable: refold from the log rather than fail
            log.warning("snapshot %s unreadable (%s); refolding from the log", path.name, exc)
            return None
        if fmt != FORMAT or log_id != self.log_id:
            log.warning("snapshot %s is of another log or format; refolding", path.name)
            return None
        return Slot(state, next_offset)

    def save(self, partition: int, slot: Slot) -> None:
        if self.directory is None:
            return
        path = self._path(partition)

        def dump(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                pickle.dump((FORMAT, self.log_id, slot.next_offset, slot.state), f, protocol=5)

        replace_file(path, dump)
        slot.dirty = False

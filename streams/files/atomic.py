"""Replacing a file atomically: a reader sees the old file or the new one, never half."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def replace_file(path: Path, write: Callable[[Path], object]) -> None:
    """``write(tmp)`` fills a temporary file beside ``path`` (``.<name>.<random>.tmp``,
    mode 0600); it is then fsynced and renamed over ``path``, and the folder fsynced.
    On any error the temporary file is removed and the old ``path`` stays as it was."""
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_bytes(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically (see :func:`replace_file`)."""
    replace_file(path, lambda tmp: tmp.write_bytes(data))


def fsync_dir(folder: Path) -> None:
    """Make a rename or a new file in ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

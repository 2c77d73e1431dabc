"""The distribution builds cleanly and carries what the code reads at run time."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("wheel")
    # build from a copy: setuptools writes build/ and *.egg-info/ into the tree it builds
    tree = tmp_path_factory.mktemp("tree") / "caretally"
    skip = shutil.ignore_patterns(
        ".git",
        ".venv",
        "build",
        "*.egg-info",
        "__pycache__",
        ".*_cache",
        ".hypothesis",
        "*.ndjson",
        "*.parquet",
        "data",
        ".caretally",
    )
    shutil.copytree(ROOT, tree, ignore=skip)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-v", "-w", str(out), str(tree)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (built,) = out.glob("caretally-*.whl")
    return built, done.stdout + done.stderr


def test_the_build_prints_no_setuptools_warning(wheel: tuple[Path, str]) -> None:
    _, output = wheel
    noisy = [
        line
        for line in output.splitlines()
        if ("Warning" in line or "would be ignored" in line or "!!" in line)
        and "byte-compiling" not in line
        and "Location 'file://" not in line  # pip's note about this machine's local indexes
    ]
    assert noisy == []


def test_the_wheel_carries_rule_books_type_markers_and_licence(wheel: tuple[Path, str]) -> None:
    built, _ = wheel
    names = set(zipfile.ZipFile(built).namelist())
    books = sorted(p.name for p in (ROOT / "projections" / "rules").glob("*.toml"))
    assert books, "no rule books in the checkout"
    for book in books:
        assert f"projections/rules/{book}" in names
    for package in ("schemas", "projections", "streams"):
        assert f"{package}/py.typed" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    metadata = zipfile.ZipFile(built).read(
        next(n for n in names if n.endswith(".dist-info/METADATA"))
    )
    assert b"Requires-Python: <3.12,>=3.11" in metadata
    assert b"License-Expression: LicenseRef-Proprietary" in metadata
    # every streams room is a package in the wheel
    for room in (ROOT / "streams").iterdir():
        if (room / "__init__.py").is_file():
            assert f"streams/{room.name}/__init__.py" in names

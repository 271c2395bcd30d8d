"""Helpers for data sets that read a folder the user downloaded and unpacked."""

from __future__ import annotations

import re
from pathlib import Path


class DataFolderError(FileNotFoundError):
    """The data folder a data set needs is missing, empty or holds too few usable files."""


def require_folder(folder: str | Path, layout: str, root: str | Path | None = None) -> Path:
    """Return `folder` (`~` expanded) if it exists and is not empty, else say what was expected.

    `layout` is the expected content relative to `root`, the folder the user gave (default:
    the parent of `folder`): `data folder ROOT/Train does not exist; expected inside ROOT:
    {Train,Test}/{0..9}/*.bin`.
    """
    folder = Path(folder).expanduser()
    root = folder.parent if root is None else Path(root).expanduser()
    if not folder.is_dir() or not any(folder.iterdir()):
        state = "is empty" if folder.is_dir() else "does not exist"
        raise DataFolderError(f"data folder {folder} {state}; {expected_inside(root, layout)}")
    return folder


def expected_inside(root: Path, layout: str) -> str:
    """The end of a missing-data message: `expected inside ROOT: LAYOUT`."""
    return f"expected inside {root}: {layout}"


def natural_key(path: Path) -> list:
    """Sort key that orders `x_2` before `x_10`."""
    return [int(s) if s.isdigit() else s for s in re.split(r"(\d+)", path.name)]

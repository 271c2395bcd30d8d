"""Helpers for data sets that read a folder the user downloaded and unpacked."""

from __future__ import annotations

import re
from pathlib import Path


class DataFolderError(FileNotFoundError):
    """The data folder a data set needs is missing or empty."""


def require_folder(folder: str | Path, layout: str) -> Path:
    """Return `folder` if it exists and is not empty, else say what was expected."""
    folder = Path(folder)
    if not folder.is_dir() or not any(folder.iterdir()):
        state = "is empty" if folder.is_dir() else "does not exist"
        raise DataFolderError(f"data folder {folder} {state}; expected layout: {folder}/{layout}")
    return folder


def natural_key(path: Path) -> list:
    """Sort key that orders `x_2` before `x_10`."""
    return [int(s) if s.isdigit() else s for s in re.split(r"(\d+)", path.name)]

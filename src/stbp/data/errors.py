"""The one error every reader raises on a file it cannot decode."""

from __future__ import annotations

from pathlib import Path


class FormatError(ValueError):
    """A data file is not in the format its reader expects.

    The message names the file, the byte offset of the problem and what is wrong.
    """

    def __init__(self, path: str | Path, offset: int, problem: str):
        self.path = str(path)
        self.offset = int(offset)
        self.problem = problem
        super().__init__(f"{self.path}: at byte {self.offset}: {problem}")

    def __reduce__(self):  # so that errors raised in worker processes reach the parent intact
        return type(self), (self.path, self.offset, self.problem)

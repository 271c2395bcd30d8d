"""The error every reader raises on a file it cannot decode, and the warnings of data sets."""

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


class SkippedEventsWarning(UserWarning):
    """Records that are not events were left out; `counts` maps each file to how many.

    A reader gives one per file; a data set gathers them into one for all its files.
    """

    def __init__(self, message: str, counts: dict[str, int]):
        self.counts = {str(path): int(n) for path, n in counts.items()}
        super().__init__(message)

    def __reduce__(self):  # the warnings of worker processes travel back to the parent
        return type(self), (str(self), self.counts)


class SkippedFilesWarning(UserWarning):
    """A data set left out recordings it could not read; the message lists them and why."""

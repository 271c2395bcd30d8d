"""Events as a numpy structured array with fields x, y, p (0 = OFF, 1 = ON) and t (µs)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from .errors import FormatError

EVENT_DTYPE = np.dtype([("x", np.int16), ("y", np.int16), ("p", np.int8), ("t", np.int64)])


def make_events(x, y, p, t) -> np.ndarray:
    """Pack equal-length coordinate, polarity and time arrays into one event array."""
    events = np.empty(len(t), dtype=EVENT_DTYPE)
    events["x"], events["y"], events["p"], events["t"] = x, y, p, t
    return events


def read_bytes(path: str | Path) -> bytes:
    """Read a whole file (`~` expanded); an empty file is a `FormatError`."""
    data = Path(path).expanduser().read_bytes()
    if not data:
        raise FormatError(path, 0, "empty file")
    return data


def read_recording(reader: Callable[[str | Path], np.ndarray], path: str | Path) -> np.ndarray:
    """The events `reader` finds in `path`; a recording without a single event is a
    `FormatError` (it would train as an all-zero sample)."""
    events = reader(path)
    if len(events) == 0:
        end = Path(path).expanduser().stat().st_size
        raise FormatError(path, end, "the file ends without a single event")
    return events


def check_events(
    path: str | Path, events: np.ndarray, offsets: np.ndarray, sensor_size: tuple[int, int]
) -> None:
    """Reject events outside the sensor (height, width) or with timestamps that go backwards.

    `offsets[i]` is the byte offset of event i in the file, used in the error message.
    """
    height, width = sensor_size
    outside = (events["x"] >= width) | (events["y"] >= height)
    if outside.any():
        i = int(np.argmax(outside))
        raise FormatError(
            path,
            offsets[i],
            f"event at x={events['x'][i]}, y={events['y'][i]} is outside the "
            f"{width}x{height} sensor",
        )
    backwards = np.diff(events["t"]) < 0
    if backwards.any():
        i = int(np.argmax(backwards)) + 1
        raise FormatError(
            path,
            offsets[i],
            f"timestamp goes backwards ({events['t'][i - 1]} µs then {events['t'][i]} µs)",
        )

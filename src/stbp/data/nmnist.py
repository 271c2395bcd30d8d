"""N-MNIST binary files (Orchard et al. 2015): 5 bytes per event on a 34x34 sensor.

Byte 0 is x, byte 1 is y, the top bit of byte 2 is the polarity and the remaining 23 bits are
the timestamp in microseconds. A record with y == 240 marks a timestamp overflow: it is not an
event, and 2^13 µs is added to every event after it. That rule is the one of Garrick Orchard's
Python reader (`read_dataset` in gorchard/event-Python's `eventvision.py`) and of Tonic's
`read_mnist_file`, adapted from it; the MATLAB `Read_Ndataset.m` distributed with the data set
has no overflow rule: it returns such a record as an ordinary event.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import FormatError
from .events import check_events, make_events, read_bytes

SENSOR_SIZE = (34, 34)  # (height, width)
RECORD_BYTES = 5
OVERFLOW_Y = 240
OVERFLOW_STEP_US = 1 << 13
MAX_TIMESTAMP_US = (1 << 23) - 1


def read_nmnist(path: str | Path) -> np.ndarray:
    """Read an N-MNIST `.bin` file (`~` expanded) into an event array (fields x, y, p, t).

    A file without a single event (empty, or only overflow records) is a `FormatError`.
    """
    path = Path(path).expanduser()
    data = read_bytes(path)
    tail = len(data) % RECORD_BYTES
    if tail:
        raise FormatError(
            path, len(data) - tail, f"truncated record: {tail} of {RECORD_BYTES} bytes"
        )
    raw = np.frombuffer(data, dtype=np.uint8).reshape(-1, RECORD_BYTES).astype(np.int64)
    overflow = raw[:, 1] == OVERFLOW_Y
    t = ((raw[:, 2] & 0x7F) << 16) | (raw[:, 3] << 8) | raw[:, 4]
    t += np.cumsum(overflow) * OVERFLOW_STEP_US
    keep = ~overflow
    if not keep.any():
        raise FormatError(
            path, len(data), f"the file ends without a single event ({len(raw)} overflow records)"
        )
    events = make_events(raw[keep, 0], raw[keep, 1], raw[keep, 2] >> 7, t[keep])
    check_events(path, events, np.flatnonzero(keep) * RECORD_BYTES, SENSOR_SIZE)
    return events


def write_nmnist(path: str | Path, events: np.ndarray) -> None:
    """Write events (x, y < 34, t < 2^23 µs, sorted by t) as an N-MNIST `.bin` file (`~`
    expanded)."""
    height, width = SENSOR_SIZE
    x, y, p, t = (events[k].astype(np.int64) for k in ("x", "y", "p", "t"))
    if len(t) and (x.min() < 0 or y.min() < 0 or x.max() >= width or y.max() >= height):
        raise ValueError("event coordinates outside the 34x34 N-MNIST sensor")
    if len(t) and (t.min() < 0 or t.max() > MAX_TIMESTAMP_US or np.any(np.diff(t) < 0)):
        raise ValueError("timestamps must be sorted and within 0..2^23-1 µs")
    raw = np.stack([x, y, ((p & 1) << 7) | (t >> 16), (t >> 8) & 0xFF, t & 0xFF], axis=1)
    Path(path).expanduser().write_bytes(raw.astype(np.uint8).tobytes())

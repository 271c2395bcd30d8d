"""AEDAT 2.0 files (jAER) as recorded by a DVS128, the format of CIFAR10-DVS.

A header of text lines starting with `#` (the first is `#!AER-DAT2.0`) is followed by
big-endian pairs of uint32 address and uint32 timestamp (µs). In a DVS128 address bit 0 is the
polarity, bits 1-7 the column and bits 8-14 the row.

Orientation: we return jAER's own coordinates, x = 127 - column bits and y = row bits, which is
what jAER displays (origin at the bottom left) and what its DVS128 extractor computes. Keeping
jAER's convention means events read here match the ones users see in jAER and in MATLAB/Python
code that copies it; we do not flip y, so a frame `[y, x]` is upright with
`imshow(..., origin="lower")`. The emulator (`stbp emulate-dvs`) writes files in the same
convention, so they also look upright in jAER.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import FormatError
from .events import check_events, make_events, read_bytes

SENSOR_SIZE = (128, 128)  # (height, width)
MAGIC = b"#!AER-DAT"
SUPPORTED_VERSIONS = ("2.0",)
RECORD_BYTES = 8
MAX_ADDRESS = 0x7FFF  # bit 15 and up: not a DVS128 polarity event


def read_aedat(path: str | Path) -> np.ndarray:
    """Read an AEDAT 2.0 DVS128 recording into an event array (fields x, y, p, t)."""
    data = read_bytes(path)
    start = _body_offset(path, data)
    body = data[start:]
    tail = len(body) % RECORD_BYTES
    if tail:
        raise FormatError(
            path, len(data) - tail, f"truncated record: {tail} of {RECORD_BYTES} bytes"
        )
    words = np.frombuffer(body, dtype=">u4").reshape(-1, 2).astype(np.int64)
    address, t = words[:, 0], words[:, 1]
    offsets = start + RECORD_BYTES * np.arange(len(t))
    bad = address > MAX_ADDRESS
    if bad.any():
        i = int(np.argmax(bad))
        raise FormatError(
            path,
            offsets[i],
            f"address 0x{address[i]:08x} is not a DVS128 polarity event (bits above 14 set)",
        )
    x = 127 - ((address >> 1) & 0x7F)
    events = make_events(x, (address >> 8) & 0x7F, address & 1, t)
    check_events(path, events, offsets, SENSOR_SIZE)
    return events


def _body_offset(path: str | Path, data: bytes) -> int:
    """Check the header's version line and return the offset of the first event."""
    if not data.startswith(MAGIC):
        raise FormatError(
            path,
            0,
            "no '#!AER-DAT<version>' header line; supported AEDAT versions: "
            + ", ".join(SUPPORTED_VERSIONS),
        )
    first_end = data.find(b"\n")
    version = data[len(MAGIC) : first_end if first_end >= 0 else 32].strip()
    version = version.decode("ascii", errors="replace")
    if version not in SUPPORTED_VERSIONS:
        raise FormatError(
            path,
            len(MAGIC),
            f"AEDAT version {version!r} is not supported; supported versions: "
            + ", ".join(SUPPORTED_VERSIONS),
        )
    pos = 0
    while data[pos : pos + 1] == b"#":
        end = data.find(b"\n", pos)
        if end < 0:
            raise FormatError(path, pos, "header line does not end with a newline")
        pos = end + 1
    return pos


def write_aedat(path: str | Path, events: np.ndarray) -> None:
    """Write DVS128 events (x, y < 128, t sorted, µs) as an AEDAT 2.0 file."""
    x, y, p, t = (events[k].astype(np.int64) for k in ("x", "y", "p", "t"))
    if len(t) and (min(x.min(), y.min()) < 0 or max(x.max(), y.max()) > 127):
        raise ValueError("event coordinates outside the 128x128 DVS128 sensor")
    if len(t) and (t.min() < 0 or t.max() >= 1 << 32 or np.any(np.diff(t) < 0)):
        raise ValueError("timestamps must be sorted and within 0..2^32-1 µs")
    address = (y << 8) | ((127 - x) << 1) | (p & 1)
    header = (
        b"#!AER-DAT2.0\r\n"
        b"# This is a raw AE data file - do not edit\r\n"
        b"# Data format is int32 address, int32 timestamp (8 bytes total)\r\n"
        b"# Timestamps tick is 1 us\r\n"
    )
    body = np.stack([address, t], axis=1).astype(">u4").tobytes()
    Path(path).write_bytes(header + body)

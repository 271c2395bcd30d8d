"""AEDAT 2.0 files (jAER) as recorded by a DVS128, the format of CIFAR10-DVS.

A header of text lines starting with `#` (the first is `#!AER-DAT2.0`) is followed by
big-endian pairs of uint32 address and uint32 timestamp (µs). In a DVS128 address bit 0 is the
polarity, bits 1-7 the column and bits 8-14 the row; bits 16-30 are zero.

We decode addresses as jAER's DVS128 event extractor does (SensorsINI/jaer,
`src/ch/unizh/ini/jaer/chip/retina/DVS128.java`, class `Extractor`):

- Polarity: ON is raw bit 0 CLEAR. jAER computes `type = (1 - addr) & 1` ("The ON events have
  raw polarity 0"), and SpikingJelly's CIFAR10-DVS loader (`spikingjelly/datasets/
  cifar10_dvs.py`, `_load_origin_data`) returns `p = 1 - (addr & 1)`. So `p = 1 - (a & 1)`,
  with p = 1 meaning ON as everywhere in `stbp.data`.
- Special events: an address with bit 15 (`SYNC_EVENT_BITMASK = 0x8000`, the sync / external
  input event) or bit 31 (`BasicEvent.SPECIAL_EVENT_BIT_MASK = 0x80000000`) set is not a
  polarity event; jAER marks it special and gives it no pixel. We skip these records and say
  how many with a `SkippedEventsWarning`. An address that sets any of bits 16-30 and neither
  special bit is not a DVS128 address at all (a recording from another camera, or a corrupt
  file): that is a `FormatError`.
- Orientation: x = 127 - column bits and y = row bits (jAER's `setFlipx(true)`), which is what
  jAER displays (origin at the bottom left). We do not flip y, so a frame `[y, x]` is upright
  with `imshow(..., origin="lower")`, and events read here match the ones users see in jAER.
  SpikingJelly's loader decodes the same polarity but returns other axes
  (x = 127 - row bits, y = 127 - column bits).

The emulator (`stbp emulate-dvs`) writes its files with `write_aedat`, in the same convention,
so they also look upright and have the right polarity in jAER.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from .errors import FormatError, SkippedEventsWarning
from .events import check_events, make_events, read_bytes

SENSOR_SIZE = (128, 128)  # (height, width)
MAGIC = b"#!AER-DAT"
SUPPORTED_VERSIONS = ("2.0",)
RECORD_BYTES = 8
SPECIAL_MASK = 0x80008000  # jAER: SYNC_EVENT_BITMASK | BasicEvent.SPECIAL_EVENT_BIT_MASK
UNUSED_MASK = 0x7FFF0000  # bits 16-30: zero in every DVS128 address
SPECIAL_WHAT = "special events (address bit 15 or 31 set: sync/external input, not polarity)"


def read_aedat(path: str | Path) -> np.ndarray:
    """Read an AEDAT 2.0 DVS128 recording into an event array (fields x, y, p, t).

    Special (sync) events are left out with a `SkippedEventsWarning` naming the file and the
    count; a file with no polarity event is a `FormatError`.
    """
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
    special = (address & SPECIAL_MASK) != 0
    _reject_foreign_addresses(path, address, special, offsets)
    n_special = int(special.sum())
    if n_special == len(t):
        found = f" (only {n_special} {SPECIAL_WHAT})" if n_special else ""
        raise FormatError(path, start, f"no polarity events after the header{found}")
    keep = ~special
    address = address[keep]
    x = 127 - ((address >> 1) & 0x7F)
    events = make_events(x, (address >> 8) & 0x7F, 1 - (address & 1), t[keep])
    check_events(path, events, offsets[keep], SENSOR_SIZE)
    if n_special:
        message = f"{path}: skipped {n_special} {SPECIAL_WHAT}"
        warnings.warn(SkippedEventsWarning(message, {path: n_special}), stacklevel=2)
    return events


def _reject_foreign_addresses(
    path: str | Path, address: np.ndarray, special: np.ndarray, offsets: np.ndarray
) -> None:
    foreign = ~special & ((address & UNUSED_MASK) != 0)
    if foreign.any():
        i = int(np.argmax(foreign))
        raise FormatError(
            path,
            offsets[i],
            f"address 0x{address[i]:08x} is not a DVS128 address: bits 16-30 are set "
            "(a DVS128 leaves them zero; bit 15 or 31 would mark a special event)",
        )


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
    """Write DVS128 events (x, y < 128, p = 1 for ON, t sorted, µs) as an AEDAT 2.0 file.

    The address is `y << 8 | (127 - x) << 1 | (1 - p)`: jAER's DVS128 layout, ON = bit 0 clear.
    """
    x, y, p, t = (events[k].astype(np.int64) for k in ("x", "y", "p", "t"))
    if len(t) and (min(x.min(), y.min()) < 0 or max(x.max(), y.max()) > 127):
        raise ValueError("event coordinates outside the 128x128 DVS128 sensor")
    if len(t) and (t.min() < 0 or t.max() >= 1 << 32 or np.any(np.diff(t) < 0)):
        raise ValueError("timestamps must be sorted and within 0..2^32-1 µs")
    address = (y << 8) | ((127 - x) << 1) | (1 - (p & 1))
    header = (
        b"#!AER-DAT2.0\r\n"
        b"# This is a raw AE data file - do not edit\r\n"
        b"# Data format is int32 address, int32 timestamp (8 bytes total)\r\n"
        b"# Timestamps tick is 1 us\r\n"
    )
    body = np.stack([address, t], axis=1).astype(">u4").tobytes()
    Path(path).expanduser().write_bytes(header + body)

"""Events to frames: T bins of ON/OFF counts per pixel, the input of a spiking network."""

from __future__ import annotations

import numpy as np

SPLITS = ("time", "number")


def events_to_frames(
    events: np.ndarray,
    T: int,
    sensor_size: tuple[int, int],
    split: str = "time",
    size: int | tuple[int, int] | None = None,
    binary: bool = False,
) -> np.ndarray:
    """Count events per time bin, polarity and pixel: returns `[T, 2, H, W]` (int32).

    `sensor_size` is (height, width) of the recording sensor. `split="time"` makes T bins of
    equal duration between the first and last event, `split="number"` T bins of (nearly) equal
    event count. Channel 0 counts OFF events (p = 0), channel 1 ON events (p = 1). `size`
    downsamples to (H, W) by summing the events of the sensor pixels that fall on each output
    pixel (e.g. CIFAR10-DVS 128x128 -> 42x42 as in Wu et al. 2019). `binary` clips counts to 0/1.
    """
    if T < 1:
        raise ValueError(f"T must be at least 1, got {T}")
    height, width = sensor_size
    out_h, out_w = (size, size) if isinstance(size, int) else (size or sensor_size)
    shape = (T, 2, out_h, out_w)
    if len(events) == 0:
        return np.zeros(shape, dtype=np.int32)
    x, y = events["x"].astype(np.int64), events["y"].astype(np.int64)
    if x.min() < 0 or y.min() < 0 or x.max() >= width or y.max() >= height:
        raise ValueError(f"events outside the {width}x{height} sensor")
    bins = _time_bins(events, T, split)
    channel = events["p"].astype(np.int64) & 1
    flat = ((bins * 2 + channel) * out_h + y * out_h // height) * out_w + x * out_w // width
    frames = np.bincount(flat, minlength=int(np.prod(shape))).reshape(shape).astype(np.int32)
    return np.minimum(frames, 1) if binary else frames


def _time_bins(events: np.ndarray, T: int, split: str) -> np.ndarray:
    n = len(events)
    if split == "number":
        return np.arange(n, dtype=np.int64) * T // n
    if split == "time":
        t = events["t"].astype(np.int64)
        start, span = t.min(), t.max() - t.min() + 1
        return (t - start) * T // span
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")

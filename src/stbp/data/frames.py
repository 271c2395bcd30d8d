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
    pixel (e.g. CIFAR10-DVS 128x128 -> 42x42, as the `dvs-cifar10` config does). `binary`
    clips counts to 0/1.
    """
    check_framing(T, split, size)
    height, width = sensor_size
    out_h, out_w = frame_size(size, sensor_size)
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
    t = events["t"].astype(np.int64)
    start, span = t.min(), t.max() - t.min() + 1
    return (t - start) * T // span


def check_framing(
    T: int, split: str, size: int | tuple[int, int] | None, split_name: str = "split"
) -> None:
    """Raise one `ValueError` naming a bad framing setting and the values it allows.

    `split_name` is what the caller calls the split mode (data sets say `frame_split`).
    """
    if not _is_count(T):
        raise ValueError(f"T (time bins) must be an integer of at least 1, got {T!r}")
    if not isinstance(split, str) or split not in SPLITS:
        allowed = ", ".join(repr(s) for s in SPLITS)
        raise ValueError(f"{split_name} must be one of {allowed}, got {split!r}")
    if size is None:
        return
    pair = (size,) * 2 if _is_count(size) else size
    if not isinstance(pair, (tuple, list)) or len(pair) != 2 or not all(map(_is_count, pair)):
        raise ValueError(
            "size (output frame size) must be None, an integer of at least 1 or a pair "
            f"(height, width) of them, got {size!r}"
        )


def frame_size(size: int | tuple[int, int] | None, sensor_size: tuple[int, int]) -> tuple[int, int]:
    """The (height, width) of the frames: `size`, or the sensor's when `size` is None."""
    if size is None:
        return int(sensor_size[0]), int(sensor_size[1])
    if _is_count(size):
        return int(size), int(size)
    return int(size[0]), int(size[1])


def _is_count(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 1

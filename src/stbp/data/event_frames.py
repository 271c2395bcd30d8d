"""Frames of any data set that yields `(events, label)`: the interface of Tonic's data sets.

`EventFrames(dataset, T)` wraps a data set whose items are `(events, label)`, with events a
numpy structured array with fields x, y, p, t (as `tonic.datasets.DVSGesture`, `NMNIST`, ...
return them), and yields `(frames [T, 2, H, W] float32, label)` made by `events_to_frames`,
with the options and the bad-sample handling of our own event data sets. Frames are cached
on disk (`cache_dir`) under a key made of the data set's class, its length and the content of
its first and last samples; sample i's entry is trusted to hold the frames of `dataset[i]`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import warnings
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from .cache import default_workers, frame_params, write_atomic
from .errors import FormatError, SkippedFilesWarning
from .event_datasets import _caller_outside_package, listing
from .frames import check_framing, events_to_frames
from .layout import DataFolderError

CACHE_VERSION = 1
FIELDS = ("x", "y", "p", "t")
WIDE_EVENTS = np.dtype([("x", np.int64), ("y", np.int64), ("p", np.int8), ("t", np.int64)])
FLOAT_TIME_STEPS = 1 << 40  # fractional timestamps: rescaled to integers 0 .. 2^40 over the span
LABELS_FILE = "labels.json"  # in a framing folder: index -> label of every cached sample
SENSOR_FILE = "sensor.json"  # in a data set's folder: the sensor size found by a scan


class SampleError(FormatError):
    """A sample of a wrapped data set cannot be framed; the message names its index and why."""

    def __init__(self, index: int, problem: str):
        ValueError.__init__(self, f"sample {index}: {problem}")
        self.index, self.problem = int(index), problem
        self.path, self.offset = f"sample {index}", 0

    def __reduce__(self):  # errors found in worker processes reach the parent intact
        return type(self), (self.index, self.problem)


@dataclass
class PassReport:
    """What a pass over samples found: label (and sensor extent) of the usable ones, and the
    error of each refused one, keyed by sample index."""

    labels: dict[int, int] = field(default_factory=dict)
    extents: dict[int, tuple[int, int]] = field(default_factory=dict)
    refused: dict[int, Exception] = field(default_factory=dict)


class EventFrames(Dataset):
    """`(frames [T, 2, H, W] float32, label)` of a data set that yields `(events, label)`.

    `sensor_size` is (width, height) or (width, height, polarities), Tonic's order; None takes
    the data set's `sensor_size` attribute, or, where it has none (or it is None), the largest
    x and y seen in a first pass over every sample. `split`, `size` and `binary` are those of
    `events_to_frames` (`size` is (height, width), as there). Polarities 0/1, -1/1 and booleans
    are read as OFF/ON; events are sorted by time; fractional timestamps are rescaled.

    Construction reads every sample once: to fill the cache under `cache_dir` (later
    constructions read only the samples without an entry), or in a check pass when
    `cache_dir` is None. A sample that cannot be used is left out of `indices` and `labels`
    (kept in `refused`, index -> error) with one `SkippedFilesWarning` listing them; with
    `strict=True` its `SampleError` is raised instead. `labels` holds one int per sample.
    """

    def __init__(
        self,
        dataset: Dataset,
        T: int,
        sensor_size: Sequence[int] | None = None,
        split: str = "time",
        size: int | tuple[int, int] | None = None,
        binary: bool = False,
        cache_dir: str | Path | None = None,
        workers: int | None = None,
        strict: bool = False,
    ):
        check_framing(T, split, size)
        if not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
            raise ValueError(f"dataset must have __len__ and __getitem__, got {_kind(dataset)}")
        if len(dataset) == 0:
            raise DataFolderError(f"the data set {_kind(dataset)} has no samples")
        self.dataset, self.workers, self.strict = dataset, workers, strict
        self.root = None
        if cache_dir is not None:
            key = f"{type(dataset).__name__}-{dataset_fingerprint(dataset)}"
            self.root = Path(cache_dir).expanduser() / key
        scan = None
        sensor = _sensor(sensor_size, "sensor_size") if sensor_size is not None else None
        if sensor is None:
            sensor = _sensor(getattr(dataset, "sensor_size", None), "the data set's sensor_size")
        if sensor is None:
            sensor, scan = self._found_sensor()
        self.sensor_size = (sensor[1], sensor[0], 2)  # Tonic's order: (width, height, P)
        self.params = frame_params(sensor, T, split, size, binary)
        self.folder = self.root / _tag(self.params) if self.root is not None else None
        self._framer = Framer(dataset, self.params, self.folder)
        if self.folder is not None:
            report = self._fill_cache()
        else:
            report = scan or self._pass(range(len(dataset)), self._framer, "checking")
        self.refused: dict[int, Exception] = report.refused
        self._keep(report)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        index = self.indices[i]
        frames = self._framer.load(index) if self.folder is not None else None
        if frames is None:
            frames = self._framer(index)[0]
        return torch.from_numpy(frames.astype(np.float32)), self.labels[i]

    def _pass(self, indices, framer: Framer, desc: str) -> PassReport:
        return run_pass(framer, list(indices), self.workers, self.strict, desc)

    def _found_sensor(self) -> tuple[tuple[int, int], PassReport | None]:
        """(height, width) from the largest x and y of every usable sample (stored in the
        cache, so that a cached data set is not scanned again), and the scan's report."""
        stored = _read_json(self.root / SENSOR_FILE) if self.root is not None else None
        if stored and stored.get("version") == CACHE_VERSION:
            return tuple(stored["sensor_size"]), None
        report = self._pass(range(len(self.dataset)), Framer(self.dataset), "scanning")
        if not report.extents:
            raise DataFolderError(_none_usable(report.refused, len(self.dataset)))
        height = max(h for h, _ in report.extents.values())
        width = max(w for _, w in report.extents.values())
        if self.root is not None:
            _write_json(self.root / SENSOR_FILE, {"version": CACHE_VERSION,
                                                  "sensor_size": [height, width]})  # fmt: skip
        return (height, width), report

    def _fill_cache(self) -> PassReport:
        """Frame and cache every sample without an entry; labels of the others come from
        the cache's label file."""
        stored = _read_json(self.folder / LABELS_FILE) or {}
        known = {
            int(i): label
            for i, label in stored.get("labels", {}).items()
            if self._framer.entry(int(i)).exists()
        }
        todo = [i for i in range(len(self.dataset)) if i not in known]
        report = self._pass(todo, self._framer, "framing")
        if report.labels:
            known.update(report.labels)
            labels = {str(i): known[i] for i in sorted(known)}
            _write_json(self.folder / LABELS_FILE, {"version": CACHE_VERSION, "labels": labels})
        report.labels = known
        return report

    def _keep(self, report: PassReport) -> None:
        """Set `indices` and `labels` to the usable samples; list the others in a warning."""
        total = len(self.dataset)
        if not report.labels:
            raise DataFolderError(_none_usable(report.refused, total))
        self.indices = sorted(report.labels)
        self.labels = [report.labels[i] for i in self.indices]
        if report.refused:
            reasons = [str(report.refused[i]) for i in sorted(report.refused)]
            warnings.warn(
                SkippedFilesWarning(
                    f"left out {len(reasons)} of {total} samples of {_kind(self.dataset)} that "
                    f"cannot be used (strict=True stops at the first instead):\n{listing(reasons)}"
                ),
                stacklevel=_caller_outside_package(),
            )


class Framer:
    """Reads and frames samples of a data set (in worker processes, too).

    Without `params` it only reads: the result is (label, (max y + 1, max x + 1)). With
    `params` it frames (`frame_params`); with a `folder` it also writes the sample's entry.
    """

    def __init__(self, dataset: Dataset, params: dict | None = None, folder: Path | None = None):
        self.dataset, self.params, self.folder = dataset, params, folder

    def __call__(self, index: int) -> tuple[np.ndarray | None, int, tuple[int, int]]:
        """(frames or None, label, sensor extent) of sample `index`; a `SampleError` if it
        cannot be used."""
        try:
            item = self.dataset[index]
        except Exception as err:  # a reader of any library: whatever it raises, name the sample
            raise SampleError(index, f"reading it raised {type(err).__name__}: {err}") from None
        events, label = sample_events(item, index)
        extent = (int(events["y"].max()) + 1, int(events["x"].max()) + 1)
        if self.params is None:
            return None, label, extent
        frames = frame_events(events, self.params, index)
        if self.folder is not None:
            write_atomic(self.entry(index), frames, self._meta(index, label))
        return frames, label, extent

    def entry(self, index: int) -> Path:
        return self.folder / f"{index}.npz"

    def load(self, index: int) -> np.ndarray | None:
        """Frames of sample `index` from its entry; None if missing, unreadable or stale."""
        try:
            with np.load(self.entry(index), allow_pickle=False) as archive:
                meta = json.loads(str(archive["meta"]))
                frames = archive["frames"]
        except Exception:  # missing, truncated or otherwise unreadable: frame again
            return None
        meta.pop("label", None)
        h, w = self.params["size"]
        if meta != self._meta(index) or frames.shape != (self.params["T"], 2, h, w):
            return None
        return frames

    def _meta(self, index: int, label: int | None = None) -> dict:
        meta = {"version": CACHE_VERSION, "index": index, **self.params}
        return meta if label is None else {**meta, "label": label}


_WORKER_FRAMER: Framer | None = None  # the framer of this worker process


def _start_worker(framer: Framer) -> None:
    global _WORKER_FRAMER
    _WORKER_FRAMER = framer


def _in_worker(index: int):
    return _try(_WORKER_FRAMER, index)


def _try(framer: Framer, index: int) -> tuple[int, tuple[int, int]] | SampleError:
    try:
        _, label, extent = framer(index)
    except SampleError as err:
        return err
    return label, extent


def run_pass(
    framer: Framer, indices: list[int], workers: int | None, strict: bool, desc: str
) -> PassReport:
    """Run `framer` on every index (in `workers` processes, each given the framer once)."""
    report = PassReport()
    if not indices:
        return report
    workers = min(workers or default_workers(), len(indices))
    pool = None
    if workers > 1:
        pool = ProcessPoolExecutor(workers, initializer=_start_worker, initargs=(framer,))
    bar = tqdm(total=len(indices), desc=desc, unit="sample", disable=None)
    try:
        chunk = max(1, len(indices) // (workers * 16))
        outcomes = (
            pool.map(_in_worker, indices, chunksize=chunk)
            if pool
            else (_try(framer, i) for i in indices)
        )
        for index, outcome in zip(indices, outcomes, strict=True):
            bar.update()
            if isinstance(outcome, SampleError):
                if strict:
                    raise outcome
                report.refused[index] = outcome
            else:
                report.labels[index], report.extents[index] = outcome
    finally:
        bar.close()
        if pool:
            pool.shutdown(cancel_futures=True)  # strict or interrupted: drop the queued jobs
    return report


def sample_events(item, index: int) -> tuple[np.ndarray, int]:
    """(events with int64 x, y, t sorted by t and p 0 = OFF / 1 = ON, label) of one item."""
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        raise SampleError(index, f"expected an (events, label) pair, got {_kind(item)}")
    events, label = item
    names = events.dtype.names if isinstance(events, np.ndarray) else None
    if names is None:
        raise SampleError(
            index, "events must be a numpy structured array with fields x, y, p, t "
            f"(Tonic's layout), got {_kind(events)}"
        )  # fmt: skip
    missing = [name for name in FIELDS if name not in names]
    if missing:
        raise SampleError(
            index, f"the events have no field {', '.join(missing)} (they have "
            f"{', '.join(names)}); a 2-D sensor's events need x, y, p, t"
        )  # fmt: skip
    events = events.reshape(-1)
    if len(events) == 0:
        raise SampleError(index, "no events (it would train as an all-zero sample)")
    wide = np.empty(len(events), dtype=WIDE_EVENTS)
    wide["x"], wide["y"] = _pixels(events["x"], "x", index), _pixels(events["y"], "y", index)
    wide["p"], wide["t"] = _polarity(events["p"], index), _timestamps(events["t"], index)
    if np.any(np.diff(wide["t"]) < 0):
        wide = wide[np.argsort(wide["t"], kind="stable")]
    return wide, _label(label, index)


def frame_events(events: np.ndarray, params: dict, index: int) -> np.ndarray:
    """`events_to_frames` of one sample's events (`params` from `frame_params`), in the
    smallest integer type that holds the counts; events off the sensor are a `SampleError`."""
    height, width = params["sensor_size"]
    x, y = events["x"], events["y"]
    outside = (x < 0) | (y < 0) | (x >= width) | (y >= height)
    if outside.any():
        i = int(np.argmax(outside))
        raise SampleError(
            index, f"event at x={x[i]}, y={y[i]} is outside the {width}x{height} sensor "
            f"(sensor_size=({width}, {height}) in Tonic's (width, height) order)"
        )  # fmt: skip
    frames = events_to_frames(
        events, params["T"], (height, width), params["split"], tuple(params["size"]),
        params["binary"],
    )  # fmt: skip
    return frames.astype(np.min_scalar_type(int(frames.max(initial=0))))


def _pixels(values: np.ndarray, name: str, index: int) -> np.ndarray:
    if values.dtype.kind in "biu":
        return values.astype(np.int64)
    if values.dtype.kind == "f" and np.all(np.isfinite(values)) and np.all(values % 1 == 0):
        return values.astype(np.int64)
    raise SampleError(index, f"{name} must hold whole pixel numbers, got dtype {values.dtype}")


def _polarity(values: np.ndarray, index: int) -> np.ndarray:
    """ON = 1, OFF = 0 from polarities 0/1, -1/1 or booleans (Tonic's readers give 0/1 or
    booleans; its `RandomTimeReversal` multiplies p by -1, older transforms used -1/1)."""
    if values.dtype.kind not in "biuf":
        raise SampleError(index, f"polarity p must be numbers, got dtype {values.dtype}")
    found = set(np.unique(values).tolist())
    if found <= {0, 1} or found <= {-1, 1}:
        return (values == 1).astype(np.int8)
    shown = ", ".join(str(v) for v in sorted(found)[:6])
    raise SampleError(
        index, f"polarities {{{shown}}}: expected 0/1 (OFF/ON), -1/1 (OFF/ON) or booleans"
    )


def _timestamps(values: np.ndarray, index: int) -> np.ndarray:
    """Integer timestamps as they are; fractional ones rescaled onto 0 .. 2^40, which keeps
    their order and (to 2^-40 of the span) their spacing: all `events_to_frames` uses."""
    if values.dtype.kind in "iu":
        return values.astype(np.int64)
    if values.dtype.kind != "f" or not np.all(np.isfinite(values)):
        raise SampleError(index, f"timestamps t must be finite numbers, got dtype {values.dtype}")
    if np.all(values % 1 == 0):
        return values.astype(np.int64)
    low, span = values.min(), values.max() - values.min()
    if span == 0:
        return np.zeros(len(values), dtype=np.int64)
    return np.round((values - low) / span * FLOAT_TIME_STEPS).astype(np.int64)


def _label(label, index: int) -> int:
    if isinstance(label, torch.Tensor) and label.numel() == 1:
        label = label.item()
    elif isinstance(label, np.ndarray) and label.size == 1:
        label = label.item()
    if isinstance(label, (int, np.integer)) and not isinstance(label, bool) and label >= 0:
        return int(label)
    raise SampleError(
        index, f"label {label!r} is not a class index (an int >= 0); map it to one (Tonic: "
        "target_transform=...)"
    )  # fmt: skip


def _sensor(value, name: str) -> tuple[int, int] | None:
    """(height, width) from Tonic's (width, height[, polarities]); None for None."""
    if value is None:
        return None
    ok = isinstance(value, (tuple, list)) and len(value) in (2, 3)
    if ok and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value):
        if min(value) >= 1:
            return int(value[1]), int(value[0])
    raise ValueError(
        f"{name} must be (width, height) or (width, height, polarities) as Tonic writes it, "
        f"integers >= 1, got {value!r}"
    )


def dataset_fingerprint(dataset: Dataset) -> str:
    """16 hex digits from the data set's class, its length, and its first and last samples.

    The first sample is read twice: a data set that gives two different results (a random
    transform) cannot be cached, which is a `ValueError`.
    """
    first = _item_digest(dataset, 0)
    if _item_digest(dataset, 0) != first:
        raise ValueError(
            f"{_kind(dataset)} gives a different sample 0 each time it is read (a random "
            "transform?), so its frames cannot be cached: pass cache_dir=None, or move the "
            "random transform out of the wrapped data set"
        )
    cls = type(dataset)
    parts = [cls.__module__, cls.__qualname__, str(len(dataset)), first,
             _item_digest(dataset, len(dataset) - 1)]  # fmt: skip
    return hashlib.sha1("\n".join(parts).encode()).hexdigest()[:16]


def _item_digest(dataset: Dataset, index: int) -> str:
    digest = hashlib.sha1()
    try:
        item = dataset[index]
    except Exception as err:  # a bad sample still has a stable fingerprint: its error
        digest.update(f"{type(err).__name__}: {err}".encode())
        return digest.hexdigest()
    for part in item if isinstance(item, (tuple, list)) else (item,):
        if isinstance(part, np.ndarray):
            digest.update(str(part.dtype.descr).encode() + str(part.shape).encode())
            digest.update(np.ascontiguousarray(part).tobytes())
        else:
            digest.update(repr(part).encode())
    return digest.hexdigest()


def _tag(params: dict) -> str:
    """The folder of one framing: T, split, frame size, sensor size, binary."""
    (h, w), (sh, sw) = params["size"], params["sensor_size"]
    binary = "-binary" if params["binary"] else ""
    return f"T{params['T']}-{params['split']}-{h}x{w}-of-{sh}x{sw}{binary}"


def _none_usable(refused: dict[int, Exception], total: int) -> str:
    reasons = [str(refused[i]) for i in sorted(refused)]
    return f"none of the {total} samples can be used:\n{listing(reasons)}"


def _kind(value) -> str:
    return type(value).__name__


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_json(path: Path, content: dict) -> None:
    """Write to a temporary file in the same folder, then rename into place (as cache entries)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "w") as f:
            json.dump(content, f)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise

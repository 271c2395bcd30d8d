"""Event-camera data sets read from the folders their official downloads unpack to.

Each sample is `(frames [T, 2, H, W] float32, label)`. By default every recording is framed
once, in parallel, into a `FrameCache` under the data root (`<root>/stbp-frames`), and later
runs load the cached frames. Without a cache, a check pass reads every recording once.
Either pass leaves out the recordings that cannot be used (unreadable, broken or without
events) and lists them in one warning; `strict=True` raises on the first instead.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from . import aedat, nmnist
from .cache import BuildReport, FrameCache, check_recordings, frame_params, frame_recording
from .errors import FormatError, SkippedEventsWarning, SkippedFilesWarning
from .frames import check_framing
from .layout import DataFolderError, expected_inside, natural_key, require_folder

CIFAR10DVS_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
CIFAR10DVS_SPLITS = ("random-9:1", "first-100-test")
FIRST_TEST = 100  # split="first-100-test": recordings 0..99 of each class are the test set
CACHE_FOLDER = "stbp-frames"
LISTED = 10  # lines of a long list of files shown in a message


class EventRecordings(Dataset):
    """Recording files and labels, framed by `events_to_frames` (through a disk cache by default).

    The base of `NMNIST` and `CIFAR10DVS`: `reader(path)` turns one file into events. To frame
    a data set that yields `(events, label)` (Tonic's interface), use `stbp.data.EventFrames`.

    Construction reads every recording once: while filling the cache under `cache_dir`, or in
    a check pass when `cache_dir` is None. A recording that cannot be used is left out of
    `files` and `labels` (and kept in `refused`, file -> error) with one `SkippedFilesWarning`
    listing them all; with `strict=True` its error is raised instead. `labels` holds one int
    per sample, in sample order.
    """

    def __init__(
        self,
        files: Sequence[str | Path],
        labels: Sequence[int],
        reader: Callable[[str | Path], np.ndarray],
        sensor_size: tuple[int, int],
        T: int,
        split: str = "time",
        size: int | tuple[int, int] | None = None,
        binary: bool = False,
        cache_dir: str | Path | None = None,
        workers: int | None = None,
        strict: bool = False,
    ):
        self.files = [Path(f).expanduser() for f in files]
        self.labels = [int(y) for y in labels]
        if len(self.files) != len(self.labels):
            raise ValueError(f"{len(self.files)} files but {len(self.labels)} labels")
        self.params = frame_params(sensor_size, T, split, size, binary)
        self.reader = reader
        self.cache = None
        if cache_dir is not None:
            self.cache = FrameCache(cache_dir, reader, sensor_size, T, split, size, binary)
            report = self.cache.build(self.files, workers, strict=strict)
        else:
            report = check_recordings(reader, self.files, self.params, workers, strict=strict)
        self.refused: dict[str, Exception] = report.refused
        self._leave_out(report)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path = self.files[i]
        with warnings.catch_warnings():  # said once for the data set when it was built
            warnings.simplefilter("ignore", SkippedEventsWarning)
            if self.cache is not None:
                frames = self.cache.load(path)
            else:
                frames = frame_recording(self.reader, path, self.params)
        return torch.from_numpy(frames.astype(np.float32)), self.labels[i]

    def _leave_out(self, report: BuildReport) -> None:
        """Drop the refused recordings from `files` and `labels`, and say so."""
        total = len(self.files)
        if report.skipped:
            _warn_skipped_events(report.skipped, total)
        if not report.refused:
            return
        reasons = [_reason(path, err) for path, err in report.refused.items()]
        if len(report.refused) == total:
            raise DataFolderError(
                f"none of the {total} recordings can be used:\n{listing(reasons)}"
            )
        keep = [i for i, f in enumerate(self.files) if str(f) not in report.refused]
        self.files = [self.files[i] for i in keep]
        self.labels = [self.labels[i] for i in keep]
        warnings.warn(
            SkippedFilesWarning(
                f"left out {len(reasons)} of {total} recordings that cannot be used "
                f"(strict=True stops at the first instead):\n{listing(reasons)}"
            ),
            stacklevel=_caller_outside_package(),
        )


def listing(lines: Sequence[str], limit: int = LISTED) -> str:
    """The first `limit` lines, indented, then `and N more`."""
    shown = "\n".join(f"  {line}" for line in lines[:limit])
    return shown + (f"\n  and {len(lines) - limit} more" if len(lines) > limit else "")


def _reason(path: str, error: Exception) -> str:
    message = str(error)
    return message if isinstance(error, FormatError) else f"{path}: {message}"


def _warn_skipped_events(skipped: list[SkippedEventsWarning], total: int) -> None:
    counts: dict[str, int] = {}
    for warning in skipped:
        counts.update(warning.counts)
    lines = [str(w) for w in skipped]
    message = (
        f"{sum(counts.values())} records that are not events were left out of {len(counts)} "
        f"of {total} recordings (the frames use the other events):\n{listing(lines)}"
    )
    warnings.warn(SkippedEventsWarning(message, counts), stacklevel=_caller_outside_package())


def _caller_outside_package() -> int:
    """The `stacklevel` that makes a warning name the first caller outside `stbp.data`."""
    frame, level = sys._getframe(1), 1
    while frame is not None and Path(frame.f_code.co_filename).parent == Path(__file__).parent:
        frame, level = frame.f_back, level + 1
    return level


def _cache_dir(root: Path, cache: bool, cache_dir: str | Path | None) -> Path | None:
    if not cache:
        return None
    return Path(cache_dir).expanduser() if cache_dir is not None else root / CACHE_FOLDER


class NMNIST(EventRecordings):
    """N-MNIST from `root/Train/<digit>/*.bin` and `root/Test/<digit>/*.bin` (34x34 sensor)."""

    def __init__(
        self,
        root: str | Path,
        train: bool = True,
        T: int = 10,
        frame_split: str = "time",
        size: int | tuple[int, int] | None = None,
        binary: bool = False,
        cache: bool = True,
        cache_dir: str | Path | None = None,
        workers: int | None = None,
        strict: bool = False,
    ):
        check_framing(T, frame_split, size, split_name="frame_split")
        root = Path(root).expanduser()
        layout = "{Train,Test}/{0..9}/*.bin (the official N-MNIST Train.zip and Test.zip, unpacked)"
        folder = require_folder(root / ("Train" if train else "Test"), layout, root)
        files, labels = [], []
        for digit in range(10):
            found = sorted((folder / str(digit)).glob("*.bin"), key=natural_key)
            files += found
            labels += [digit] * len(found)
        if not files:
            raise DataFolderError(
                f"no .bin files in {folder}/<digit>/; {expected_inside(root, layout)}"
            )
        super().__init__(
            files, labels, nmnist.read_nmnist, nmnist.SENSOR_SIZE, T, frame_split, size, binary,
            _cache_dir(root, cache, cache_dir), workers, strict,
        )  # fmt: skip


class CIFAR10DVS(EventRecordings):
    """CIFAR10-DVS from `root/<class name>/*.aedat` (airplane ... truck; 128x128 DVS128).

    The data set has no official test set; `split` picks one of the two used in the literature:
    `"random-9:1"` holds out a seeded, stratified random 10% of each class (our seeded version
    of the 9:1 split reported in the literature); `"first-100-test"` holds out the first 100
    recordings of each class in file-number order (every class needs more than 100). The split
    is made from the file listing, before unusable recordings are left out, so a file never
    moves between training and test. `size=42` (the default) gives 42x42 frames.
    """

    def __init__(
        self,
        root: str | Path,
        train: bool = True,
        T: int = 10,
        split: str = "random-9:1",
        seed: int = 0,
        frame_split: str = "time",
        size: int | tuple[int, int] | None = 42,
        binary: bool = False,
        cache: bool = True,
        cache_dir: str | Path | None = None,
        workers: int | None = None,
        strict: bool = False,
    ):
        _check_split(split)
        check_framing(T, frame_split, size, split_name="frame_split")
        root = Path(root).expanduser()
        layout = "{" + ",".join(CIFAR10DVS_CLASSES) + "}/*.aedat"
        require_folder(root, layout, root)
        found = {
            name: sorted((root / name).glob("*.aedat"), key=natural_key)
            for name in CIFAR10DVS_CLASSES
        }
        if not any(found.values()):
            raise DataFolderError(f"no .aedat files under {root}; {expected_inside(root, layout)}")
        if split == "first-100-test":
            _check_first_100(root, found)
        files, labels = [], []
        for label, recordings in enumerate(found.values()):
            chosen = split_recordings(len(recordings), split, seed + label)[0 if train else 1]
            files += [recordings[i] for i in chosen]
            labels += [label] * len(chosen)
        super().__init__(
            files, labels, aedat.read_aedat, aedat.SENSOR_SIZE, T, frame_split, size, binary,
            _cache_dir(root, cache, cache_dir), workers, strict,
        )  # fmt: skip


def _check_split(split: str) -> None:
    if split not in CIFAR10DVS_SPLITS:
        allowed = ", ".join(repr(s) for s in CIFAR10DVS_SPLITS)
        raise ValueError(f"split must be one of {allowed}, got {split!r}")


def _check_first_100(root: Path, found: dict[str, list[Path]]) -> None:
    """Refuse `first-100-test` when a class has no recording left for training."""
    short = [f"{name}/ has {len(f)}" for name, f in found.items() if len(f) <= FIRST_TEST]
    if short:
        raise DataFolderError(
            f"split='first-100-test' tests on the first {FIRST_TEST} recordings of every class, "
            f"so each class folder needs more than {FIRST_TEST} .aedat files; in {root}: "
            + ", ".join(short)
            + " (split='random-9:1' works with any number)"
        )


def split_recordings(n: int, split: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and test indices of one class's `n` recordings (sorted by file number)."""
    _check_split(split)
    if split == "first-100-test":
        return np.arange(min(n, FIRST_TEST), n), np.arange(min(n, FIRST_TEST))
    order = np.random.default_rng(seed).permutation(n)
    n_test = max(round(n / 10), 1 if n > 1 else 0)
    return np.sort(order[n_test:]), np.sort(order[:n_test])

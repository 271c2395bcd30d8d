"""Event-camera data sets read from the folders their official downloads unpack to.

Each sample is `(frames [T, 2, H, W] float32, label)`. By default every recording is framed
once, in parallel, into a `FrameCache` under the data root (`<root>/stbp-frames`), and later
runs load the cached frames.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from . import aedat, nmnist
from .cache import FrameCache
from .frames import events_to_frames
from .layout import DataFolderError, natural_key, require_folder

CIFAR10DVS_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
CIFAR10DVS_SPLITS = ("random-9:1", "first-100-test")
CACHE_FOLDER = "stbp-frames"


class EventFrames(Dataset):
    """Recordings and labels, framed by `events_to_frames` (through a disk cache by default)."""

    def __init__(
        self,
        files: Sequence[Path],
        labels: Sequence[int],
        reader: Callable[[str | Path], np.ndarray],
        sensor_size: tuple[int, int],
        T: int,
        split: str = "time",
        size: int | tuple[int, int] | None = None,
        binary: bool = False,
        cache_dir: str | Path | None = None,
        workers: int | None = None,
    ):
        self.files, self.labels = list(files), [int(y) for y in labels]
        self.frame_args = (T, sensor_size, split, size, binary)
        self.reader = reader
        self.cache = None
        if cache_dir is not None:
            self.cache = FrameCache(cache_dir, reader, sensor_size, T, split, size, binary)
            self.cache.build(self.files, workers)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path = self.files[i]
        if self.cache is not None:
            frames = self.cache.load(path)
        else:
            frames = events_to_frames(self.reader(path), *self.frame_args)
        return torch.from_numpy(frames.astype(np.float32)), self.labels[i]


def _cache_dir(root: Path, cache: bool, cache_dir: str | Path | None) -> Path | None:
    if not cache:
        return None
    return Path(cache_dir) if cache_dir is not None else root / CACHE_FOLDER


class NMNIST(EventFrames):
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
    ):
        root = Path(root)
        layout = "{Train,Test}/{0..9}/*.bin (the official N-MNIST Train.zip and Test.zip, unpacked)"
        folder = require_folder(root / ("Train" if train else "Test"), layout)
        files, labels = [], []
        for digit in range(10):
            found = sorted((folder / str(digit)).glob("*.bin"), key=natural_key)
            files += found
            labels += [digit] * len(found)
        if not files:
            raise DataFolderError(
                f"no .bin files in {folder}/<digit>/; expected layout: {root}/{layout}"
            )
        super().__init__(
            files, labels, nmnist.read_nmnist, nmnist.SENSOR_SIZE, T, frame_split, size, binary,
            _cache_dir(root, cache, cache_dir), workers,
        )  # fmt: skip


class CIFAR10DVS(EventFrames):
    """CIFAR10-DVS from `root/<class name>/*.aedat` (airplane ... truck; 128x128 DVS128).

    The data set has no official test set; `split` picks one of the two used in the literature:
    `"random-9:1"` holds out a seeded, stratified random 10% of each class (as in Wu et al.
    2019); `"first-100-test"` holds out the first 100 recordings of each class in file-number
    order. `size=42` gives the paper's 42x42 frames.
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
    ):
        root = Path(root)
        layout = "{" + ",".join(CIFAR10DVS_CLASSES) + "}/*.aedat"
        require_folder(root, layout)
        files, labels, total = [], [], 0
        for label, name in enumerate(CIFAR10DVS_CLASSES):
            found = sorted((root / name).glob("*.aedat"), key=natural_key)
            total += len(found)
            chosen = split_recordings(len(found), split, seed + label)[0 if train else 1]
            files += [found[i] for i in chosen]
            labels += [label] * len(chosen)
        if not total:
            raise DataFolderError(f"no .aedat files under {root}; expected layout: {root}/{layout}")
        super().__init__(
            files, labels, aedat.read_aedat, aedat.SENSOR_SIZE, T, frame_split, size, binary,
            _cache_dir(root, cache, cache_dir), workers,
        )  # fmt: skip


def split_recordings(n: int, split: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and test indices of one class's `n` recordings (sorted by file number)."""
    if split == "first-100-test":
        return np.arange(min(n, 100), n), np.arange(min(n, 100))
    if split == "random-9:1":
        order = np.random.default_rng(seed).permutation(n)
        n_test = max(round(n / 10), 1 if n > 1 else 0)
        return np.sort(order[n_test:]), np.sort(order[:n_test])
    raise ValueError(f"split must be one of {CIFAR10DVS_SPLITS}, got {split!r}")

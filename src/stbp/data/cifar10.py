"""CIFAR-10 python batches (`cifar-10-batches-py/data_batch_1` ... `test_batch`).

The batches are pickles. Unpickling can run arbitrary code, so the reader first walks the
opcodes without executing them and admits only the few globals these files reference (numpy's
array reconstructors and dtype); anything else is a `FormatError` at the offending byte.
"""

from __future__ import annotations

import codecs
import io
import pickle
import pickletools
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .errors import FormatError
from .events import read_bytes
from .layout import require_folder

FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCHES = ("test_batch",)
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
IMAGE_BYTES = 3 * 32 * 32

_multiarray = getattr(np, "_core", None) or np.core
ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _multiarray.multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _multiarray.multiarray._reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,  # bytes pickled by Python 3, protocol 2
}
_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed") from None


def read_cifar10_batch(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one batch: (images uint8 [N, 3, 32, 32], labels int64 [N])."""
    data = read_bytes(path)
    _check_opcodes(path, data)
    try:
        batch = _RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
    except Exception as err:  # any failure to decode is a format problem of this file
        raise FormatError(path, 0, f"cannot unpickle: {err}") from None
    return _images_and_labels(path, batch)


def _check_opcodes(path: str | Path, data: bytes) -> None:
    """Walk the pickle without running it; reject unknown globals, bad opcodes, truncation."""
    strings: list[str] = []
    pos = 0
    try:
        for op, arg, pos in pickletools.genops(data):
            if op.name in _STRING_OPS:
                strings = (strings + [arg])[-2:]
            elif op.name in ("GLOBAL", "INST"):
                _check_global(path, pos, *arg.split(" ", 1))
            elif op.name == "STACK_GLOBAL":
                _check_global(path, pos, *(strings if len(strings) == 2 else ["?", "?"]))
    except FormatError:
        raise
    except Exception as err:
        raise FormatError(path, pos, f"not a valid pickle: {err}") from None


def _check_global(path: str | Path, pos: int, module: str, name: str = "?") -> None:
    if (module, name) not in ALLOWED_GLOBALS:
        raise FormatError(path, pos, f"pickle references {module}.{name}, which is not allowed")


def _images_and_labels(path: str | Path, batch) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(batch, dict):
        raise FormatError(path, 0, f"expected a dict, found {type(batch).__name__}")
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    images, labels = batch.get("data"), batch.get("labels")
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 2:
        raise FormatError(path, 0, "'data' is not a 2-d uint8 array")
    if images.shape[1] != IMAGE_BYTES:
        raise FormatError(path, 0, f"'data' rows have {images.shape[1]} bytes, not {IMAGE_BYTES}")
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError):
        raise FormatError(path, 0, "'labels' is not a list of integers") from None
    if labels.shape != (len(images),) or labels.min(initial=0) < 0 or labels.max(initial=0) > 9:
        raise FormatError(path, 0, f"'labels' is not {len(images)} integers in 0..9")
    return images.reshape(-1, 3, 32, 32), labels


class CIFAR10(Dataset):
    """CIFAR-10 from `root/cifar-10-batches-py/`: normalised `[3, 32, 32]` images and labels.

    With `augment` (default: on for training), each image is padded by 4 pixels, randomly
    cropped back to 32x32 and flipped horizontally with probability 1/2.
    """

    def __init__(self, root: str | Path, train: bool = True, augment: bool | None = None):
        folder = require_folder(
            Path(root) / FOLDER,
            "cifar-10-batches-py/{data_batch_1 ... data_batch_5, test_batch} "
            "(the official python version, unpacked)",
        )
        names = TRAIN_BATCHES if train else TEST_BATCHES
        parts = [read_cifar10_batch(folder / name) for name in names]
        self.images = torch.from_numpy(np.concatenate([p[0] for p in parts]))
        self.labels = torch.from_numpy(np.concatenate([p[1] for p in parts]))
        self.augment = train if augment is None else augment
        self.mean = torch.tensor(MEAN).view(3, 1, 1)
        self.std = torch.tensor(STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image = self.images[i].float().div_(255.0)
        if self.augment:
            image = random_crop_flip(image, padding=4)
        return (image - self.mean) / self.std, int(self.labels[i])


def random_crop_flip(image: torch.Tensor, padding: int) -> torch.Tensor:
    """Zero-pad `[C, H, W]`, crop a random H x W window, flip left-right with probability 1/2."""
    _, h, w = image.shape
    padded = torch.nn.functional.pad(image, (padding,) * 4)
    top, left = torch.randint(0, 2 * padding + 1, (2,)).tolist()
    crop = padded[:, top : top + h, left : left + w]
    return crop.flip(-1) if torch.rand(()) < 0.5 else crop

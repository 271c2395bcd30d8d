"""CIFAR-10 python batches (`cifar-10-batches-py/data_batch_1` ... `test_batch`).

The batches are pickles. Unpickling can run arbitrary code, so the reader first walks the
opcodes without executing them, following the unpickler's stack and memo just far enough to
know every global the pickle would import, and admits only numpy's array and dtype
reconstructors (under their numpy 1.x and 2.x module names); anything else is a `FormatError`
at the offending byte. The unpickler that then loads the batch resolves globals from the same
short list, so nothing outside it can run even if the walk were fooled.
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
from .layout import DataFolderError, expected_inside, require_folder

FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCHES = ("test_batch",)
IMAGE_BYTES = 3 * 32 * 32

MEAN = (0.4914, 0.4822, 0.4465)
"""Per-channel mean of the 50,000 training images' pixels, in [0, 1] (also the authors' mean)."""
DATASET_STD = (0.2470, 0.2435, 0.2616)
"""Per-channel standard deviation of the 50,000 training images' pixels, in [0, 1]: the data
set's own statistic, our default (`std="dataset"`)."""
AUTHORS_STD = (0.2023, 0.1994, 0.2010)
"""The std of the authors' released code (yjwu17/STBP-for-training-SpikingNN, branch
yjwu17-pytorch-snn, `code_cifar10/main_run_cifar10.py`, the `transforms.Normalize` of both the
training and the test transform), a value common in PyTorch CIFAR-10 code; it is not the
pixels' standard deviation (`std="authors"`)."""
STD_CHOICES = {"dataset": DATASET_STD, "authors": AUTHORS_STD}
STD = DATASET_STD  # the default, kept under its old name

_core = getattr(np, "_core", None) or np.core
ALLOWED_GLOBALS = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,  # bytes pickled by Python 3, protocol 2
}
for _package in ("numpy.core", "numpy._core"):  # the module names of numpy 1.x and 2.x
    ALLOWED_GLOBALS |= {
        (f"{_package}.multiarray", "_reconstruct"): _core.multiarray._reconstruct,  # protocol <= 4
        (f"{_package}.numeric", "_frombuffer"): _core.numeric._frombuffer,  # protocol 5
        (f"{_package}.multiarray", "scalar"): _core.multiarray.scalar,  # e.g. numpy int labels
    }
# Strings an opcode pushes; the last three are Python 2 str, read as str with encoding latin1.
_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"}
_STRING_OPS |= {"STRING", "BINSTRING", "SHORT_BINSTRING"}
_MEMO_PUT = {"PUT", "BINPUT", "LONG_BINPUT"}
_MEMO_GET = {"GET", "BINGET", "LONG_BINGET"}
_MARK = object()  # a MARK on the simulated stack; every other non-string slot is None


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed") from None


def read_cifar10_batch(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one batch: (images uint8 [N, 3, 32, 32], labels int64 [N]).

    Reads the official files (Python 2, numpy 1.x, protocol 2) and batches pickled again by
    Python 3 with numpy 1.x or 2.x, protocols 2 to 5.
    """
    path = Path(path).expanduser()
    data = read_bytes(path)
    _check_opcodes(path, data)
    try:
        batch = _RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
    except Exception as err:  # any failure to decode is a format problem of this file
        raise FormatError(path, 0, f"cannot unpickle: {err}") from None
    return _images_and_labels(path, batch)


def _check_opcodes(path: str | Path, data: bytes) -> None:
    """Walk the pickle without running it; reject unknown globals, bad opcodes, truncation.

    GLOBAL and INST carry their names; STACK_GLOBAL (protocol 4+) takes them from the stack,
    where they may have been put back from the memo (BINGET), so the walk keeps a stack of
    the strings pushed and a memo of the strings stored.
    """
    stack: list = []
    memo: dict = {}
    pos = 0
    try:
        for op, arg, pos in pickletools.genops(data):
            if op.name in ("GLOBAL", "INST"):
                _check_global(path, pos, *arg.split(" ", 1))
            elif op.name == "STACK_GLOBAL":
                _check_global(path, pos, *_stack_global_names(path, pos, stack))
            _simulate(op, arg, stack, memo)
    except FormatError:
        raise
    except Exception as err:
        raise FormatError(path, pos, f"not a valid pickle: {err}") from None


def _stack_global_names(path: str | Path, pos: int, stack: list) -> tuple[str, str]:
    names = stack[-2:]
    if len(names) != 2 or not all(isinstance(s, str) for s in names):
        raise FormatError(path, pos, "pickle imports a global whose name is not a string")
    return names[0], names[1]


def _simulate(op: pickletools.OpcodeInfo, arg, stack: list, memo: dict) -> None:
    """Apply one opcode to the simulated stack and memo (strings kept, other values None)."""
    if op.name == "MEMOIZE":
        memo[len(memo)] = _top(stack)  # as the unpickler numbers it
    elif op.name in _MEMO_PUT:
        memo[arg] = _top(stack)
    elif op.name in _MEMO_GET:
        if arg not in memo:
            raise ValueError(f"memo entry {arg} read before it was written")
        stack.append(memo[arg])
    elif op.name == "POP" and stack and stack[-1] is _MARK:
        stack.pop()
    else:
        _pop(op.stack_before, stack)
        for item in op.stack_after:
            if item is pickletools.markobject:
                stack.append(_MARK)
            else:
                stack.append(arg if op.name in _STRING_OPS else None)


def _top(stack: list):
    if not stack or stack[-1] is _MARK:
        raise ValueError("stack underflow")
    return stack[-1]


def _pop(before: list, stack: list) -> None:
    """Remove what an opcode consumes: down to the topmost MARK if it takes one, then the
    items under the mark it also takes (SETITEMS' dict, for instance)."""
    count = len(before)
    if pickletools.markobject in before:
        while stack and stack[-1] is not _MARK:
            stack.pop()
        if not stack:
            raise ValueError("no MARK to pop to")
        stack.pop()
        count = before.index(pickletools.markobject)
    if count > len(stack) or _MARK in stack[len(stack) - count :]:
        raise ValueError("stack underflow")
    del stack[len(stack) - count :]


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
    return np.ascontiguousarray(images).reshape(-1, 3, 32, 32), labels


LAYOUT = (
    f"{FOLDER}/{{data_batch_1 ... data_batch_5, test_batch}} "
    "(the official python version, cifar-10-python.tar.gz, unpacked)"
)


def cifar10_folder(root: str | Path, names: tuple[str, ...]) -> Path:
    """`root/cifar-10-batches-py` (`~` expanded), checked to hold the batch files `names`."""
    root = Path(root).expanduser()
    folder = require_folder(root / FOLDER, LAYOUT, root)
    missing = [name for name in names if not (folder / name).is_file()]
    if missing:
        raise DataFolderError(
            f"data folder {folder} has no {', '.join(missing)}; {expected_inside(root, LAYOUT)}"
        )
    return folder


class CIFAR10(Dataset):
    """CIFAR-10 from `root/cifar-10-batches-py/`: normalised `[3, 32, 32]` images and labels.

    Images are normalised per channel with `MEAN` and the std chosen by `std`: `"dataset"`
    (default, `DATASET_STD`) or `"authors"` (`AUTHORS_STD`, as in the authors' code); the
    attributes `mean` and `std` hold them as `[3, 1, 1]` tensors. `labels` holds one int64
    class per sample (a tensor `[N]`), `images` the raw uint8 images `[N, 3, 32, 32]`.
    With `augment` (default: on for training), each image is padded by 4 pixels, randomly
    cropped back to 32x32 and flipped horizontally with probability 1/2.
    """

    def __init__(self, root: str | Path, train: bool = True, augment: bool | None = None,
                 std: str = "dataset"):  # fmt: skip
        if std not in STD_CHOICES:
            raise ValueError(f"CIFAR10 std must be one of {', '.join(STD_CHOICES)}, got {std!r}")
        names = TRAIN_BATCHES if train else TEST_BATCHES
        folder = cifar10_folder(root, names)
        parts = [read_cifar10_batch(folder / name) for name in names]
        self.images = torch.from_numpy(np.concatenate([p[0] for p in parts]))
        self.labels = torch.from_numpy(np.concatenate([p[1] for p in parts]))
        self.augment = train if augment is None else augment
        self.mean = torch.tensor(MEAN).view(3, 1, 1)
        self.std = torch.tensor(STD_CHOICES[std]).view(3, 1, 1)

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

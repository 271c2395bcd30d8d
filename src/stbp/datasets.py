"""The data sets a config names, split into training, validation and test parts.

The validation part is carved from the training part (`[data] val_fraction`, seeded by
`[data] split_seed`, stratified by class), so training, validation and test never share a
sample. With `val_fraction = 0` there is no validation part and runs select their best epoch
on the test set (the authors' protocol).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from stbp.config import ConfigError, DataSettings
from stbp.data import CIFAR10, CIFAR10DVS, NMNIST, MNIST10k
from stbp.data.splits import stratified_split

LAYOUTS = {
    "nmnist": "Train/0..9/*.bin and Test/0..9/*.bin (or run `stbp emulate-nmnist --out DIR`)",
    "cifar10-dvs": "airplane/ ... truck/, each with *.aedat files",
    "cifar10": "cifar-10-batches-py/ (the official python version, unpacked)",
}


@dataclass
class Splits:
    """A training set with its validation indices, and the test set."""

    train_set: Dataset  # the whole training part; `train` and `val` index into it
    train: torch.Tensor  # indices of the samples trained on
    val: torch.Tensor  # indices of the validation samples (empty: no validation split)
    test_set: Dataset

    def record(self, data: DataSettings) -> dict:
        """What `summary.json` says of the split."""
        name = data.dataset + (f" ({data.split})" if data.dataset == "cifar10-dvs" else "")
        record = {"name": name, "seed": data.split_seed, "train": len(self.train),
                  "val": len(self.val), "test": len(self.test_set)}  # fmt: skip
        if data.dataset in ("nmnist", "cifar10-dvs"):
            record.update(T=data.T, frame_split=data.frame_split)
        return record


def make_dataset(data: DataSettings, train: bool, run_name: str = "") -> Dataset:
    """The training or test part of the data set of `[data]`."""
    if data.dataset == "mnist10k":
        return MNIST10k(train, seed=data.split_seed, n_train=data.n_train)
    if not data.dir:
        raise ConfigError(
            f"config {run_name!r} reads {data.dataset} from a folder: pass --data-dir DIR "
            f"(expected inside DIR: {LAYOUTS[data.dataset]})"
        )
    root = Path(data.dir).expanduser()
    if data.dataset == "cifar10":
        return CIFAR10(root, train, augment=False, std=data.cifar_std)  # augmented per batch
    cache_dir = Path(data.cache_dir).expanduser() if data.cache_dir else None
    events = dict(T=data.T, frame_split=data.frame_split, strict=data.strict, cache_dir=cache_dir)
    if data.dataset == "nmnist":
        return NMNIST(root, train, size=data.size or None, **events)
    return CIFAR10DVS(root, train, split=data.split, seed=data.split_seed, size=data.size or 42,
                      **events)  # fmt: skip


def make_splits(data: DataSettings, run_name: str = "") -> Splits:
    """Training, validation and test parts of `[data]`; a clear error if one is empty."""
    train_set, test_set = make_dataset(data, True, run_name), make_dataset(data, False, run_name)
    train, val = stratified_split(train_set.labels, data.val_fraction, data.split_seed)
    splits = Splits(train_set, torch.from_numpy(train), torch.from_numpy(val), test_set)
    for part, n in (("training", len(splits.train)), ("test", len(test_set))):
        if n == 0:
            raise ConfigError(f"the {part} part of {data.dataset} is empty; check [data] settings")
    return splits


def in_shape(dataset: Dataset) -> tuple[int, ...]:
    """The shape of one input frame or image, (C, H, W)."""
    x = dataset[0][0]
    return tuple(x.shape[-3:])


def stored_test_set(config: dict, data_dir: str | Path | None = None,
                    cache_dir: str | Path | None = None) -> Dataset:  # fmt: skip
    """The test set of a stored config (a checkpoint's, perhaps from an older version: missing
    keys take their defaults); `data_dir` and `cache_dir` override its folders."""
    from stbp.config import DEFAULTS, merge

    config = merge(DEFAULTS, config, "the checkpoint's config")
    for key, value in (("dir", data_dir), ("cache_dir", cache_dir)):
        if value:
            config["data"][key] = str(value)
    return make_dataset(DataSettings(**config["data"]), False, config["run"]["name"])

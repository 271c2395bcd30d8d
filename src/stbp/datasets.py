"""The data sets a config names, split into training, validation and test parts.

The validation part is carved from the training part (`[data] val_fraction`, seeded by
`[data] split_seed`, stratified by class), so training, validation and test never share a
sample. With `val_fraction = 0` there is no validation part and runs select their best epoch
on the test set (the authors' protocol).

`[data] factory = "package.module:function"` replaces the named data set by your own: the
training and test sets are `function(train=True|False, T=[data] T, **[data] factory_kwargs)`,
plus `data_dir=` and `cache_dir=` where the function has parameters of those names: Paths
from `[data] dir` / `cache_dir` (or the `--data-dir` / `--cache-dir` flags) when set, else
the value in `factory_kwargs`, else None.
"""

from __future__ import annotations

import inspect
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
        if data.factory:
            name = f"factory {data.factory}"
        record = {"name": name, "seed": data.split_seed, "train": len(self.train),
                  "val": len(self.val), "test": len(self.test_set)}  # fmt: skip
        if data.factory:
            record.update(T=data.T)
        elif data.dataset in ("nmnist", "cifar10-dvs"):
            record.update(T=data.T, frame_split=data.frame_split)
        return record


def make_dataset(data: DataSettings, train: bool, run_name: str = "") -> Dataset:
    """The training or test part of the data set of `[data]` (or of `[data] factory`)."""
    if data.factory:
        return factory_dataset(data, train)
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
    name = f"[data] factory {data.factory!r}" if data.factory else data.dataset
    for part, n in (("training", len(splits.train)), ("test", len(test_set))):
        if n == 0:
            raise ConfigError(f"the {part} part of {name} is empty; check [data] settings")
    if data.factory and in_shape(train_set) != in_shape(test_set):
        raise ConfigError(
            f"{_factory_setting(data)}: the training frames are {in_shape(train_set)} (C, H, W) "
            f"but the test frames {in_shape(test_set)}; both must have one shape (with "
            "stbp.data.EventFrames, give sensor_size when the data set has none)"
        )
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


# ----------------------------------------------------------------------- [data] factory

FACTORY_FOLDERS = ("data_dir", "cache_dir")  # passed where the function names them


def factory_dataset(data: DataSettings, train: bool) -> Dataset:
    """`function(train=train, T=data.T, **data.factory_kwargs)` of `[data] factory`, checked:
    it must have `labels` and give `(frames [T, C, H, W], label)` samples."""
    function = load_factory(data)
    kwargs = {"train": train, "T": data.T, **data.factory_kwargs}
    clash = sorted({"train", "T"} & set(data.factory_kwargs))
    if clash:
        raise ConfigError(
            f"{_factory_setting(data)}: [data] factory_kwargs may not set {', '.join(clash)}; "
            "the factory is called with train=True|False and T=[data] T"
        )
    params = _parameters(function)
    folders = {"data_dir": data.dir, "cache_dir": data.cache_dir}
    for name in FACTORY_FOLDERS:  # the setting (or flag) when set, else factory_kwargs, else None
        if params is not None and name in params and (folders[name] or name not in kwargs):
            kwargs[name] = Path(folders[name]).expanduser() if folders[name] else None
    if params is not None:
        try:
            inspect.signature(function).bind(**kwargs)
        except TypeError as err:
            raise ConfigError(
                f"{_factory_setting(data)}: cannot call {data.factory}({_call(kwargs)}): {err}; "
                "the factory is called as function(train=..., T=..., **[data] factory_kwargs)"
            ) from None
    dataset = function(**kwargs)
    _check_factory_dataset(dataset, data)
    return dataset


def load_factory(data: DataSettings):
    """The function `[data] factory` names (`stbp.factory.import_factory`)."""
    from stbp.factory import import_factory

    return import_factory(data.factory, "[data] factory")


def _check_factory_dataset(dataset, data: DataSettings) -> None:
    """One `ConfigError` if what the factory returned cannot train: no `labels`, labels that
    do not pair with the samples, or samples that are not `(frames [T, C, H, W], label)`."""
    setting = _factory_setting(data)
    if not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
        raise ConfigError(f"{setting} returned {type(dataset).__name__}, not a Dataset")
    if not hasattr(dataset, "labels"):
        raise ConfigError(
            f"{setting} returned a {type(dataset).__name__} without `labels` (one int per "
            "sample, for the stratified validation split): wrap an event data set in "
            "stbp.data.EventFrames(dataset, T), which has them, or give your Dataset a "
            "`labels` list"
        )
    if len(dataset.labels) != len(dataset):
        raise ConfigError(
            f"{setting} returned {len(dataset)} samples but {len(dataset.labels)} labels"
        )
    if len(dataset) == 0:
        return  # `make_splits` names the empty part
    x = dataset[0][0]
    shape = tuple(getattr(x, "shape", ()))
    if len(shape) != 4 or shape[0] != data.T:
        raise ConfigError(
            f"{setting}: a sample must be (frames [T, C, H, W], label) with T = [data] T = "
            f"{data.T}; sample 0 has frames of shape {shape or type(x).__name__}"
        )


def _parameters(function) -> dict | None:
    try:
        return dict(inspect.signature(function).parameters)
    except (TypeError, ValueError):  # no signature to read (some builtins): call and see
        return None


def _call(kwargs: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())


def _factory_setting(data: DataSettings) -> str:
    return f"[data] factory = {data.factory!r}"

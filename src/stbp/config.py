"""Experiment configs: TOML files (one per experiment of the paper) read with `tomllib`,
and the data sets they name (`make_datasets`).

A config has four tables, `[run]`, `[data]`, `[model]` and `[optim]`; every key has a default
in `DEFAULTS`, so a file only states what it changes. The shipped configs live in
`stbp/configs/*.toml`; `load_config` takes one of their names or a path to a `.toml` file.
"""

from __future__ import annotations

import copy
import sys
from importlib import resources
from pathlib import Path

from torch.utils.data import Dataset

from stbp.data import CIFAR10, CIFAR10DVS, NMNIST, MNIST10k

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULTS: dict[str, dict] = {
    "run": {
        "name": "",  # set from the file name when empty
        "description": "",
        "epochs": 120,
        "seed": 0,
        "device": "auto",  # cpu | cuda | auto
        "precision": "fp32",  # fp32 | bf16 | auto (bf16 where the device computes it natively)
        "max_steps_per_epoch": 0,  # 0: the whole training set (a smaller value: smoke runs)
        "eval_batch_size": 500,
        "workers": 2,  # data-loader worker processes for event data
    },
    "data": {
        "dataset": "mnist10k",  # mnist10k | nmnist | cifar10-dvs | cifar10
        "dir": "",  # data folder (nmnist, cifar10-dvs, cifar10); --data-dir overrides
        "T": 8,  # time window: frames per recording, steps per static image
        "augment_shift": 0,  # random shift of static images by up to this many pixels
        "augment_flip": False,  # random horizontal flip of static images
        "augment_rotate": 0.0,  # random rotation of static images by up to this many degrees
        "augment_scale": 0.0,  # random zoom of static images by a factor in [1 - s, 1 + s]
        "split": "random-9:1",  # CIFAR10-DVS: random-9:1 | first-100-test
        "size": 0,  # event frames resized to size x size (0: sensor size)
        "frame_split": "time",  # time | number
        "n_train": 8000,  # mnist10k: train/test split of the embedded digits
        "split_seed": 0,
    },
    "model": {
        "network": "mnist-demo",  # a name in stbp.PAPER_NETWORKS, or "" to use `spec`
        "spec": "",  # a spec in the paper's notation (overrides `network`)
        "in_shape": [],  # with `spec`: input shape [C, H, W]
        "neunorm": False,
        "dropout": 0.0,
        "decay": 0.2,
        "threshold": 0.5,
        "surrogate": "rect",
        "width": 1.0,
        "votes": 10,
    },
    "optim": {
        "optimizer": "adam",  # adam | sgd
        "lr": 1e-3,  # Adam: every parameter; SGD: conv layers (and NeuNorm)
        "lr_fc": 0.01,  # SGD: fully connected layers
        "momentum": 0.9,
        "weight_decay": 0.0,
        "schedule": "cosine",  # cosine (to 0 over the run) | step | constant
        "step_epochs": 35,  # step: multiply the lr by `gamma` every this many epochs
        "gamma": 0.1,
        "batch_size": 50,  # the global batch (divided among the processes under torchrun)
        "loss": "mse",  # mse (the paper's) | ce
        "calibrate_rate": 0.15,  # calibrate_ on the first batch of a fresh run; 0: off
    },
}

CHOICES = {
    ("run", "device"): ("cpu", "cuda", "auto"),
    ("run", "precision"): ("fp32", "bf16", "auto"),
    ("data", "dataset"): ("mnist10k", "nmnist", "cifar10-dvs", "cifar10"),
    ("optim", "optimizer"): ("adam", "sgd"),
    ("optim", "schedule"): ("cosine", "step", "constant"),
    ("optim", "loss"): ("mse", "ce"),
}


class ConfigError(ValueError):
    """A config name, file or value is not usable; the message says which and why."""


def config_names() -> list[str]:
    """Names of the configs shipped with the package."""
    folder = resources.files("stbp").joinpath("configs")
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def _read_text(name_or_path: str) -> tuple[str, str]:
    """(text, source description) of a shipped config name or a file path."""
    path = Path(name_or_path)
    if name_or_path.endswith(".toml") or path.is_file():
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        return path.read_text(), str(path)
    if name_or_path not in config_names():
        raise ConfigError(
            f"unknown config {name_or_path!r}; choose one of: {', '.join(config_names())} "
            "(or give a path to a .toml file)"
        )
    resource = resources.files("stbp").joinpath("configs", f"{name_or_path}.toml")
    return resource.read_text(), f"stbp/configs/{name_or_path}.toml"


def load_config(name_or_path: str) -> dict:
    """Read a shipped config by name or a TOML file by path, merged over `DEFAULTS`."""
    text, source = _read_text(name_or_path)
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{source}: not valid TOML: {err}") from None
    config = merge(DEFAULTS, raw, source)
    if not config["run"]["name"]:
        config["run"]["name"] = Path(name_or_path).stem
    validate(config, source)
    return config


def merge(base: dict, update: dict, source: str = "config") -> dict:
    """A copy of `base` with the tables of `update` applied; unknown tables/keys are errors."""
    config = copy.deepcopy(base)
    for table, values in update.items():
        if table not in config or not isinstance(values, dict):
            raise ConfigError(f"{source}: unknown table [{table}]; known: {', '.join(config)}")
        for key, value in values.items():
            if key not in config[table]:
                known = ", ".join(config[table])
                raise ConfigError(f"{source}: unknown key {key!r} in [{table}]; known: {known}")
            config[table][key] = value
    return config


def validate(config: dict, source: str = "config") -> None:
    """Check types against `DEFAULTS` and choices against `CHOICES`."""
    for table, values in DEFAULTS.items():
        for key, default in values.items():
            value = config[table][key]
            expected = (int, float) if isinstance(default, float) else type(default)
            if isinstance(value, bool) and not isinstance(default, bool):
                expected = ()
            if not isinstance(value, expected):
                raise ConfigError(
                    f"{source}: [{table}] {key} = {value!r} should be {type(default).__name__}"
                )
    for (table, key), options in CHOICES.items():
        if config[table][key] not in options:
            raise ConfigError(
                f"{source}: [{table}] {key} = {config[table][key]!r}; choose one of: "
                + ", ".join(options)
            )
    if config["optim"]["batch_size"] < 1 or config["data"]["T"] < 1:
        raise ConfigError(f"{source}: batch_size and T must be at least 1")


def to_toml(config: dict) -> str:
    """Write a config (tables of scalars and lists) as TOML text."""
    lines = []
    for table, values in config.items():
        lines.append(f"[{table}]")
        lines += [f"{key} = {_toml_value(value)}" for key, value in values.items()]
        lines.append("")
    return "\n".join(lines)


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise ConfigError(f"cannot write {value!r} to TOML")


def describe(name: str) -> str:
    """The one-line description of a shipped config."""
    return load_config(name)["run"]["description"]


LAYOUTS = {
    "nmnist": "Train/0..9/*.bin and Test/0..9/*.bin (or run `stbp emulate-nmnist --out DIR`)",
    "cifar10-dvs": "airplane/ ... truck/, each with *.aedat files",
    "cifar10": "cifar-10-batches-py/ (the official python version, unpacked)",
}


def make_dataset(config: dict, train: bool, data_dir: str | Path | None = None) -> Dataset:
    """The training or test set of `config` (`data_dir` overrides `[data] dir`)."""
    data = config["data"]
    kind = data["dataset"]
    if kind == "mnist10k":
        return MNIST10k(train, seed=data["split_seed"], n_train=data["n_train"])
    root = data_dir or data["dir"]
    if not root:
        raise ConfigError(
            f"config {config['run']['name']!r} reads {kind} from a folder: pass --data-dir DIR "
            f"(expected inside DIR: {LAYOUTS[kind]})"
        )
    size = data["size"] or None
    if kind == "nmnist":
        return NMNIST(root, train, data["T"], data["frame_split"], size)
    if kind == "cifar10-dvs":
        return CIFAR10DVS(root, train, data["T"], data["split"], data["split_seed"],
                          data["frame_split"], size or 42)  # fmt: skip
    return CIFAR10(root, train, augment=False)  # augmented a batch at a time below


def make_datasets(config: dict, data_dir: str | Path | None = None) -> tuple[Dataset, Dataset]:
    """(train set, test set) of `config`."""
    return make_dataset(config, True, data_dir), make_dataset(config, False, data_dir)


def in_shape(dataset: Dataset) -> tuple[int, ...]:
    """The shape of one input frame or image, (C, H, W)."""
    x = dataset[0][0]
    return tuple(x.shape[-3:])

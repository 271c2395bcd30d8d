"""Experiment configs: TOML files (one per experiment of the paper) read with `tomllib`.

A config has four tables, `[run]`, `[data]`, `[model]` and `[optim]`, each a small dataclass
below (`RunSettings`, `DataSettings`, `ModelSettings`, `OptimSettings`) whose fields are the
keys and their defaults, so a file only states what it changes. The shipped configs live in
`stbp/configs/*.toml`; `load_config` takes one of their names or a path to a `.toml` file and
returns the checked nested dict that `Settings.of` turns into the typed sections.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from stbp.data.cifar10 import STD_CHOICES
from stbp.data.event_datasets import CIFAR10DVS_SPLITS
from stbp.data.frames import SPLITS as FRAME_SPLITS
from stbp.models import DROPOUT_MASKS, PAPER_NETWORKS, parse
from stbp.neunorm import READINGS
from stbp.surrogate import SURROGATES

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass(frozen=True)
class RunSettings:
    name: str = ""  # set from the file name when empty
    description: str = ""
    epochs: int = 120
    seed: int = 0
    device: str = "auto"  # cpu | cuda | auto
    precision: str = "fp32"  # fp32 | bf16 | auto (bf16 where the device computes it natively)
    max_steps_per_epoch: int = 0  # 0: the whole training set (a smaller value: smoke runs)
    eval_batch_size: int = 500
    workers: int = 2  # data-loader worker processes for event data
    checkpoint_every: int = 0  # also save last.pt every this many steps inside an epoch (0: off)
    checkpoint_minutes: float = 10.0  # ... and every this many minutes inside an epoch (0: off)
    deterministic: bool = False  # repeatable CUDA runs: deterministic algorithms, TF32 off (slower)


@dataclass(frozen=True)
class DataSettings:
    dataset: str = "mnist10k"  # mnist10k | nmnist | cifar10-dvs | cifar10
    dir: str = ""  # data folder (nmnist, cifar10-dvs, cifar10); --data-dir overrides
    T: int = 8  # time window: frames per recording, steps per static image
    augment_shift: int = 0  # random shift of static images by up to this many pixels
    augment_flip: bool = False  # random horizontal flip of static images
    augment_rotate: float = 0.0  # random rotation of static images by up to this many degrees
    augment_scale: float = 0.0  # random zoom of static images by a factor in [1 - s, 1 + s]
    split: str = "random-9:1"  # CIFAR10-DVS: random-9:1 | first-100-test
    size: int = 0  # event frames resized to size x size (0: sensor size)
    frame_split: str = "time"  # time | number
    n_train: int = 8000  # mnist10k: train/test split of the embedded digits
    split_seed: int = 0  # seeds the train/test split (mnist10k, CIFAR10-DVS) and the val split
    val_fraction: float = 0.1  # seeded, stratified validation split carved from the training part
    cifar_std: str = "dataset"  # CIFAR-10 normalisation std: dataset | authors
    strict: bool = False  # event data: stop at the first bad file instead of skipping it
    cache_dir: str = ""  # event data: frame cache folder (default <data dir>/stbp-frames)
    encoding: str = "analog"  # static images: analog (the encoding layer) | bernoulli | latency
    factory: str = ""  # "package.module:function" returning your own Dataset (see docs/data.md)
    factory_kwargs: dict = field(default_factory=dict)  # keyword arguments of `factory`


@dataclass(frozen=True)
class ModelSettings:
    network: str = "mnist-demo"  # a name in stbp.PAPER_NETWORKS, or "" to use `spec`
    spec: str = ""  # a spec in the paper's notation (overrides `network`)
    in_shape: list = field(default_factory=list)  # with `spec`: input shape [C, H, W]
    neunorm: bool = False
    dropout: float = 0.0
    decay: float = 0.2
    threshold: float = 0.5
    surrogate: str = "rect"
    width: float = 1.0
    votes: int = 10
    dropout_mask: str = "sample"  # sample: one mask for all T steps | step: a fresh mask per step
    neunorm_reading: str = "stbp"  # stbp | spikingjelly (see stbp.NeuNorm)
    reset: str = "hard"  # hard: Algorithm 1 (u to 0 after a spike) | soft: subtract the threshold
    detach_reset: bool = False  # no gradient through the reset (the paper keeps it)
    learn_decay: bool = False  # learnable leak factor, kept in (0, 1) (as PLIF)
    learn_threshold: bool = False  # learnable threshold
    per_channel: bool = False  # learnable decay/threshold: one per channel instead of one per layer
    factory: str = ""  # "package.module:function" returning your own nn.Module (overrides spec)
    factory_kwargs: dict = field(default_factory=dict)  # keyword arguments of `factory`


@dataclass(frozen=True)
class OptimSettings:
    optimizer: str = "adam"  # adam | sgd
    lr: float = 1e-3  # Adam: every parameter; SGD: conv layers (and NeuNorm)
    lr_fc: float = 0.01  # SGD: fully connected layers
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "cosine"  # cosine (to 0 over the run) | step | constant
    step_epochs: int = 35  # step: multiply the lr by `gamma` every this many epochs
    gamma: float = 0.1
    batch_size: int = 50  # the global batch (divided among the processes under torchrun)
    loss: str = "mse"  # mse (the paper's) | ce
    calibrate_rate: float = 0.15  # calibrate_ on the first batch of a fresh run; 0: off


SECTIONS = {"run": RunSettings, "data": DataSettings, "model": ModelSettings,
            "optim": OptimSettings}  # fmt: skip


@dataclass(frozen=True)
class Settings:
    """The four typed sections of a config."""

    run: RunSettings
    data: DataSettings
    model: ModelSettings
    optim: OptimSettings

    @classmethod
    def of(cls, config: dict) -> Settings:
        return cls(**{table: kind(**config[table]) for table, kind in SECTIONS.items()})


DEFAULTS: dict[str, dict] = {table: dataclasses.asdict(kind()) for table, kind in SECTIONS.items()}

CHOICES = {
    ("run", "device"): ("cpu", "cuda", "auto"),
    ("run", "precision"): ("fp32", "bf16", "auto"),
    ("data", "dataset"): ("mnist10k", "nmnist", "cifar10-dvs", "cifar10"),
    ("data", "split"): CIFAR10DVS_SPLITS,
    ("data", "frame_split"): FRAME_SPLITS,
    ("data", "cifar_std"): tuple(STD_CHOICES),
    ("data", "encoding"): ("analog", "bernoulli", "latency"),
    ("model", "surrogate"): tuple(SURROGATES),
    ("model", "dropout_mask"): tuple(DROPOUT_MASKS),
    ("model", "neunorm_reading"): READINGS,
    ("model", "reset"): ("hard", "soft"),
    ("optim", "optimizer"): ("adam", "sgd"),
    ("optim", "schedule"): ("cosine", "step", "constant"),
    ("optim", "loss"): ("mse", "ce"),
}

# (low, high, low inclusive, high inclusive); None: unbounded on that side.
RANGES = {
    ("run", "epochs"): (1, None, True, True),
    ("run", "seed"): (0, None, True, True),
    ("run", "max_steps_per_epoch"): (0, None, True, True),
    ("run", "eval_batch_size"): (1, None, True, True),
    ("run", "workers"): (0, None, True, True),
    ("run", "checkpoint_every"): (0, None, True, True),
    ("run", "checkpoint_minutes"): (0, None, True, True),
    ("data", "T"): (1, None, True, True),
    ("data", "augment_shift"): (0, None, True, True),
    ("data", "augment_rotate"): (0, 180, True, True),
    ("data", "augment_scale"): (0, 1, True, False),
    ("data", "size"): (0, None, True, True),
    ("data", "n_train"): (1, 9999, True, True),
    ("data", "split_seed"): (0, None, True, True),
    ("data", "val_fraction"): (0, 1, True, False),
    ("model", "dropout"): (0, 1, True, False),
    ("model", "decay"): (0, 1, True, True),
    ("model", "threshold"): (0, None, False, True),
    ("model", "width"): (0, None, False, True),
    ("model", "votes"): (1, None, True, True),
    ("optim", "lr"): (0, None, False, True),
    ("optim", "lr_fc"): (0, None, False, True),
    ("optim", "momentum"): (0, 1, True, False),
    ("optim", "weight_decay"): (0, None, True, True),
    ("optim", "step_epochs"): (1, None, True, True),
    ("optim", "gamma"): (0, 1, False, True),
    ("optim", "batch_size"): (1, None, True, True),
    ("optim", "calibrate_rate"): (0, 1, True, False),
}

FLAG_KEYS = {  # `stbp train` flags (by argparse name) and the keys they set
    "epochs": ("run", "epochs"),
    "seed": ("run", "seed"),
    "device": ("run", "device"),
    "precision": ("run", "precision"),
    "max_steps_per_epoch": ("run", "max_steps_per_epoch"),
    "checkpoint_every": ("run", "checkpoint_every"),
    "deterministic": ("run", "deterministic"),
    "T": ("data", "T"),
    "data_dir": ("data", "dir"),
    "val_fraction": ("data", "val_fraction"),
    "cache_dir": ("data", "cache_dir"),
    "neunorm": ("model", "neunorm"),
    "model": ("model", "factory"),
    "batch_size": ("optim", "batch_size"),
}


def flag_name(dest: str) -> str:
    """The command-line spelling of an argparse name: `--batch-size`, `--T`."""
    return "--T" if dest == "T" else "--" + dest.replace("_", "-")


FLAGS = {key: flag_name(dest) for dest, key in FLAG_KEYS.items()}  # named in error messages


class ConfigError(ValueError):
    """A config name, file or value is not usable; the message says which and why."""


def config_names() -> list[str]:
    """Names of the configs shipped with the package."""
    folder = resources.files("stbp").joinpath("configs")
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def _read_text(name_or_path: str) -> tuple[str, str]:
    """(text, source description) of a shipped config name or a file path."""
    path = Path(name_or_path).expanduser()
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


def _setting(table: str, key: str, value) -> str:
    flag = FLAGS.get((table, key))
    return f"[{table}] {key}{f' ({flag})' if flag else ''} = {value!r}"


def validate(config: dict, source: str = "config") -> None:
    """Check every value: its type, its choices or its range, and the network spec."""
    for table, values in DEFAULTS.items():
        for key, default in values.items():
            _check_type(source, table, key, config[table][key], default)
    for (table, key), options in CHOICES.items():
        if config[table][key] not in options:
            raise ConfigError(
                f"{source}: {_setting(table, key, config[table][key])}; choose one of: "
                + ", ".join(options)
            )
    for (table, key), bounds in RANGES.items():
        _check_range(source, table, key, config[table][key], *bounds)
    _check_model(config["model"], source)
    _check_encoding(config["data"], source)


def _check_type(source: str, table: str, key: str, value, default) -> None:
    expected = (int, float) if isinstance(default, float) else type(default)
    if isinstance(value, bool) and not isinstance(default, bool):
        expected = ()
    if not isinstance(value, expected):
        raise ConfigError(
            f"{source}: {_setting(table, key, value)} should be {type(default).__name__}"
        )
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{source}: {_setting(table, key, value)} should be a finite number")


def _check_range(source, table, key, value, low, high, low_in, high_in) -> None:
    too_low = low is not None and (value < low if low_in else value <= low)
    too_high = high is not None and (value > high if high_in else value >= high)
    if too_low or too_high:
        lo = "" if low is None else f"{low} {'<=' if low_in else '<'} "
        hi = "" if high is None else f" {'<=' if high_in else '<'} {high}"
        raise ConfigError(f"{source}: {_setting(table, key, value)}; allowed: {lo}{key}{hi}")


def _check_model(model: dict, source: str) -> None:
    if model["spec"]:
        try:
            parse(model["spec"])
        except ValueError as err:
            raise ConfigError(f"{source}: [model] spec = {model['spec']!r}: {err}") from None
    elif model["network"] not in PAPER_NETWORKS:
        raise ConfigError(
            f"{source}: [model] network = {model['network']!r}; choose one of: "
            + ", ".join(PAPER_NETWORKS) + " (or set [model] spec)"
        )
    shape = model["in_shape"]
    if shape and (len(shape) != 3 or not all(isinstance(s, int) and s >= 1 for s in shape)):
        raise ConfigError(f"{source}: [model] in_shape = {shape!r}; expected [C, H, W] >= 1")


def _check_encoding(data: dict, source: str) -> None:
    """Spike encoders need static images in [0, 1]: the embedded digits (pixels / 255)."""
    if data["encoding"] == "analog" or data["factory"] or data["dataset"] == "mnist10k":
        return
    gives = "images normalised by mean and std" if data["dataset"] == "cifar10" else "event frames"
    raise ConfigError(
        f"{source}: [data] encoding = {data['encoding']!r} needs static images with intensities "
        f'in [0, 1] (dataset = "mnist10k" gives pixels / 255), but [data] dataset = '
        f'{data["dataset"]!r} gives {gives}; use encoding = "analog"'
    )


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
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise ConfigError(f"cannot write {value!r} to TOML")


def describe(name: str) -> str:
    """The one-line description of a shipped config."""
    return load_config(name)["run"]["description"]


def absolute_paths(config: dict) -> dict:
    """`config` with `~` expanded and its data folders made absolute (so that the run folder's
    `config.toml` works from any folder)."""
    config = copy.deepcopy(config)
    for key in ("dir", "cache_dir"):
        if config["data"][key]:
            config["data"][key] = str(Path(config["data"][key]).expanduser().resolve())
    return config

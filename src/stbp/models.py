"""The paper's networks, built from the paper's own notation.

A spec is a `-`-separated list of layers, e.g. `128C3(Enc)-AP2-256C3-AP2-256FC-Voting`:

- `128C3`: convolution, 128 channels, 3x3 kernel, same padding, then LIF
- `AP2` / `MP2`: 2x2 average / max pooling (stride 2)
- `1024FC`: fully connected layer of 1024 LIF neurons
- `Voting`: the output layer, `votes x num_classes` LIF neurons voting per class
- `DO`: dropout of the previous layer's output, with the model's `dropout` probability
  (anywhere after the first layer and before `Voting`; `build(..., dropout_mask=...)` picks
  one mask per sample or a fresh mask per time step)
- `(Enc)` after the first layer marks it as the encoding layer (it always is one: the first
  layer receives the analog input directly).

`build` returns an `SNN` that maps `[T, B, C, H, W]` (or a static `[B, C, H, W]`) to class
scores `[B, num_classes]`.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass
from numbers import Integral

import torch
from torch import nn

from stbp.init import threshold_scaled_
from stbp.layers import (
    Encoding,
    SeqDropout,
    SpikeAvgPool,
    StepDropout,
    Temporal,
    Voting,
    check_choice,
    check_fraction,
    check_int,
)
from stbp.neunorm import READINGS, NeuNorm
from stbp.neuron import LIF, LIFParameters

_TOKEN = re.compile(
    r"(?:(?P<conv>\d+)C(?P<kernel>\d+)|(?P<pool>[AM])P(?P<stride>\d+)|(?P<fc>\d+)FC"
    r"|(?P<voting>Voting)|(?P<dropout>DO))(?P<enc>\(Enc\))?"
)

DROPOUT_MASKS: dict[str, type[nn.Module]] = {"sample": SeqDropout, "step": StepDropout}

# Arguments `build` gained after checkpoints were first written: an older `build_args` means
# these values (the behaviour of the code that wrote it).
BUILD_ARG_DEFAULTS = {"dropout_mask": "sample", "neunorm_reading": "stbp"}


@dataclass(frozen=True)
class Layer:
    """One parsed token of a spec."""

    kind: str  # "conv", "pool", "fc", "voting" or "dropout"
    size: int = 0  # channels (conv), features (fc), window (pool)
    kernel: int = 0
    pool: str = ""  # "A" or "M"
    token: str = ""


def parse(spec: str) -> list[Layer]:
    """Parse a spec in the paper's notation; `ValueError` naming the bad token otherwise."""
    tokens = [t.strip() for t in spec.split("-")] if spec and spec.strip() else []
    if not tokens:
        raise ValueError("empty network spec; expected e.g. '128C3-AP2-1024FC-Voting'")
    layers = [_parse_token(tok, i) for i, tok in enumerate(tokens)]
    _check_order(layers)
    return layers


def _parse_token(tok: str, index: int) -> Layer:
    m = _TOKEN.fullmatch(tok)
    if m is None:
        raise ValueError(
            f"bad layer {tok!r} (position {index + 1}): expected <channels>C<kernel>, AP<n>, "
            "MP<n>, <features>FC, DO or Voting, with optional (Enc) on the first layer"
        )
    if m["enc"] and index != 0:
        raise ValueError(f"bad layer {tok!r}: only the first layer can be the encoding layer")
    if m["conv"]:
        layer = Layer("conv", int(m["conv"]), int(m["kernel"]), token=tok)
        if layer.kernel == 0:
            raise ValueError(f"bad layer {tok!r}: kernel size must be at least 1")
    elif m["pool"]:
        layer = Layer("pool", int(m["stride"]), pool=m["pool"], token=tok)
    elif m["fc"]:
        layer = Layer("fc", int(m["fc"]), token=tok)
    elif m["dropout"]:
        layer = Layer("dropout", token=tok)
    else:
        layer = Layer("voting", token=tok)
    if layer.kind in ("conv", "fc", "pool") and layer.size == 0:
        raise ValueError(f"bad layer {tok!r}: size must be at least 1")
    return layer


def _check_order(layers: list[Layer]) -> None:
    if layers[-1].kind != "voting":
        raise ValueError(f"the spec must end with 'Voting', not {layers[-1].token!r}")
    if layers[0].kind in ("pool", "dropout"):
        raise ValueError(f"bad layer {layers[0].token!r}: the first layer must be C or FC")
    seen_fc = False
    for previous, layer in zip(layers[:-2], layers[1:-1], strict=True):
        if layer.kind == "dropout" and previous.kind == "dropout":
            raise ValueError("'DO-DO': two dropouts in a row; write one 'DO'")
    for layer in layers[:-1]:
        if layer.kind == "voting":
            raise ValueError("'Voting' must be the last layer")
        if seen_fc and layer.kind in ("conv", "pool"):
            raise ValueError(f"bad layer {layer.token!r}: conv/pooling cannot follow an FC layer")
        seen_fc = seen_fc or layer.kind == "fc"


class SNN(nn.Module):
    """A feed-forward spiking network: encoding layer, LIF layers, voting output.

    Input: time-first event frames `[T, B, *in_shape]` or a static `[B, *in_shape]` (an image,
    presented at each of the `T` steps). A sequence whose time size is not the model's `T` is
    refused (a DataLoader batch `[B, T, ...]` would be read as `[T, B, ...]`): pass
    `model(x, T=x.shape[0])` to run another window on purpose.
    """

    def __init__(
        self, layers: nn.Sequential, spec: str, in_shape: tuple[int, ...], T: int, num_classes: int
    ):
        super().__init__()
        self.layers = layers
        self.spec, self.in_shape = spec, check_shape(in_shape)
        self.T, self.num_classes = check_int("T", T), check_int("num_classes", num_classes)

    def forward(self, x: torch.Tensor, T: int | None = None) -> torch.Tensor:
        """Class scores `[B, num_classes]` of `x`; `T` runs a window other than the model's
        (the sequence's length, or the steps a static input is presented for)."""
        steps = self._steps(x, T)
        if x.dim() == len(self.in_shape) + 1 and steps != self.T:
            x = x.unsqueeze(0).expand(steps, *x.shape)  # the encoding layer then runs per step
        return self.layers(x)

    def _steps(self, x: torch.Tensor, T: int | None) -> int:
        """The time steps `x` runs for; `ValueError` for a shape or window that does not fit."""
        n, shape = len(self.in_shape), ", ".join(map(str, self.in_shape))
        if x.dim() not in (n + 1, n + 2) or tuple(x.shape[-n:]) != self.in_shape:
            raise ValueError(
                f"expected input [T, B, {shape}] or static [B, {shape}], got {list(x.shape)}"
            )
        window = self.T if T is None else check_int("T", T)
        if x.dim() == n + 2 and x.shape[0] != window:
            asked = f"model(x, T={T}) asks for {T}"
            if T is None:
                asked = f"the model was built for T = {self.T}"
            raise ValueError(
                f"input {list(x.shape)} has {x.shape[0]} time steps, but {asked}. Inputs are "
                f"time-first [T, B, {shape}]: a DataLoader batch [B, T, ...] needs "
                f"x.transpose(0, 1); to run a window of {x.shape[0]} steps on purpose, call "
                f"model(x, T={x.shape[0]})"
            )
        return window


def check_shape(in_shape) -> tuple[int, ...]:
    """`in_shape` as a tuple if it is a non-empty sequence of integers >= 1; else `ValueError`."""
    try:
        shape = tuple(in_shape)
    except TypeError:
        shape = ()
    if not shape or any(isinstance(s, bool) or not isinstance(s, Integral) or s < 1 for s in shape):
        raise ValueError(
            f"in_shape must be a non-empty sequence of integers >= 1, e.g. (1, 28, 28); "
            f"got {in_shape!r}"
        )
    return tuple(int(s) for s in shape)


def build(
    spec: str,
    in_shape: tuple[int, ...],
    num_classes: int = 10,
    T: int = 8,
    neunorm: bool = False,
    dropout: float = 0.0,
    lif: LIFParameters | None = None,
    votes: int = 10,
    dropout_mask: str = "sample",
    neunorm_reading: str = "stbp",
) -> SNN:
    """Build the network of `spec` for inputs of shape `in_shape` (C, H, W).

    Every conv/FC layer is followed by LIF neurons, and by NeuNorm after conv layers when
    `neunorm` (set as `neunorm_reading` reads the paper: "stbp" or "spikingjelly", see
    `stbp.NeuNorm`). Dropout of probability `dropout` goes where the spec has `DO` tokens, or,
    in a spec without any, after each hidden FC layer when `dropout > 0`; `dropout_mask`
    "sample" keeps one mask per sample for all T steps, "step" draws a fresh mask per step
    (as the authors' CIFAR-10 code). Weights are initialised by `threshold_scaled_` so every
    layer fires at init. Every argument is checked: one `ValueError` naming it.
    """
    layers = parse(_check_spec(spec))
    in_shape = check_shape(in_shape)
    lif = _check_build_args(
        layers, num_classes, T, neunorm, dropout, lif, votes, dropout_mask, neunorm_reading
    )
    drop = DROPOUT_MASKS[dropout_mask]
    spec_has_dropout = any(layer.kind == "dropout" for layer in layers)
    shape = in_shape
    modules: dict[str, nn.Module] = {}
    counts = {"conv": 0, "fc": 0, "pool": 0, "dropout": 0}
    for i, layer in enumerate(layers):
        if layer.kind in counts:
            counts[layer.kind] += 1
        name = f"{layer.kind}{counts.get(layer.kind, '')}"
        if layer.kind == "dropout":
            modules[name] = drop(dropout)
            continue
        synapse, shape = _synapse(layer, shape, num_classes, votes, spec)
        if i == 0:
            modules[name] = Encoding(synapse, T, len(in_shape))
        else:
            modules[name] = Temporal(synapse, binary_input=_is_binary(modules))
        if layer.kind == "pool":
            continue
        modules[f"lif_{name}"] = LIF(*lif)
        if layer.kind == "conv" and neunorm:
            modules[f"neunorm_{name}"] = NeuNorm.from_reading(neunorm_reading, *shape)
        if layer.kind == "fc" and dropout > 0 and not spec_has_dropout:
            modules[f"dropout_{name}"] = drop(dropout)
    modules["vote"] = Voting(num_classes, votes)
    model = SNN(nn.Sequential(OrderedDict(modules)), spec, in_shape, T, num_classes)
    model.build_args = {
        "spec": spec,
        "in_shape": list(in_shape),
        "num_classes": num_classes,
        "T": T,
        "neunorm": neunorm,
        "dropout": dropout,
        "lif": lif._asdict(),
        "votes": votes,
        "dropout_mask": dropout_mask,
        "neunorm_reading": neunorm_reading,
    }
    threshold_scaled_(model)
    return model


def _check_spec(spec) -> str:
    if not isinstance(spec, str):
        raise ValueError(f"spec must be a string such as '128C3-AP2-1024FC-Voting', got {spec!r}")
    return spec


def _check_build_args(
    layers: list[Layer], num_classes, T, neunorm, dropout, lif, votes, dropout_mask, neunorm_reading
) -> LIFParameters:
    """`ValueError` naming the first bad argument of `build`; returns the LIF parameters."""
    check_int("num_classes", num_classes)
    check_int("T", T)
    check_int("votes", votes)
    if not isinstance(neunorm, bool):
        raise ValueError(f"neunorm must be True or False, got {neunorm!r}")
    check_fraction("dropout", dropout)
    check_choice("dropout_mask", dropout_mask, tuple(DROPOUT_MASKS))
    check_choice("neunorm_reading", neunorm_reading, READINGS)
    if dropout == 0 and any(layer.kind == "dropout" for layer in layers):
        raise ValueError(
            "the spec has DO (dropout) tokens but dropout is 0; set dropout to a probability "
            "in (0, 1) (the authors' CIFAR-10 code uses 0.5) or remove the DO tokens"
        )
    if lif is None:
        return LIFParameters()
    if not isinstance(lif, LIFParameters):
        raise ValueError(f"lif must be an stbp.LIFParameters, got {lif!r}")
    return lif


def _is_max_pool(module: nn.Module) -> bool:
    return isinstance(getattr(module, "module", None), nn.MaxPool2d)


def _is_binary(modules: dict[str, nn.Module]) -> bool:
    """Whether the current output (the last module's) is 0/1 spikes: a LIF's, or max-pooled
    ones. Not after dropout (it scales the kept spikes by 1/(1-p)), NeuNorm (it subtracts
    the analog auxiliary term) or average pooling."""
    last = list(modules.values())[-1]
    if isinstance(last, LIF):
        return True
    if _is_max_pool(last):
        return _is_binary(dict(list(modules.items())[:-1]))
    return False


def complete_build_args(build_args: dict) -> dict:
    """`build_args` with the arguments an older checkpoint did not record set to what the
    code that wrote it did (`BUILD_ARG_DEFAULTS`)."""
    return {**BUILD_ARG_DEFAULTS, **build_args}


def rebuild(build_args: dict) -> SNN:
    """Build the same network again from `model.build_args` (as stored in checkpoints; an
    older one without `dropout_mask` / `neunorm_reading` gets "sample" / "stbp")."""
    args = complete_build_args(build_args)
    args["in_shape"] = tuple(args["in_shape"])
    args["lif"] = LIFParameters(**args["lif"])
    return build(**args)


def _synapse(layer: Layer, shape: tuple[int, ...], num_classes: int, votes: int, spec: str):
    """The stateless module of one layer and the shape it outputs."""
    if layer.kind == "conv":
        if len(shape) != 3:
            raise ValueError(f"bad layer {layer.token!r}: conv needs a [C, H, W] input")
        conv = nn.Conv2d(shape[0], layer.size, layer.kernel, padding=layer.kernel // 2)
        out_hw = [s + 2 * (layer.kernel // 2) - layer.kernel + 1 for s in shape[1:]]
        return conv, (layer.size, *out_hw)
    if layer.kind == "pool":
        out_hw = [s // layer.size for s in shape[1:]]
        if min(out_hw) < 1:
            raise ValueError(
                f"bad layer {layer.token!r} in {spec!r}: pooling a {shape[1]}x{shape[2]} map "
                f"by {layer.size} leaves less than 1x1"
            )
        pool = SpikeAvgPool if layer.pool == "A" else nn.MaxPool2d
        return pool(layer.size), (shape[0], *out_hw)
    features = layer.size if layer.kind == "fc" else num_classes * votes
    fan_in = 1
    for s in shape:
        fan_in *= s
    linear = nn.Linear(fan_in, features)
    return (nn.Sequential(nn.Flatten(), linear) if len(shape) > 1 else linear), (features,)


PAPER_NETWORKS: dict[str, tuple[str, tuple[int, int, int]]] = {
    # The neuromorphic network as quoted from the paper by a published review.
    "nmnist": ("128C3(Enc)-128C3-AP2-384C3-384C3-AP2-1024FC-512FC-Voting", (2, 34, 34)),
    "dvs-cifar10": ("128C3(Enc)-128C3-AP2-384C3-384C3-AP2-1024FC-512FC-Voting", (2, 42, 42)),
    # The smaller neuromorphic net: the speed benchmark's fixed work.
    "nmnist-small": ("128C3(Enc)-128C3-AP2-128C3-256C3-AP2-1024FC-Voting", (2, 34, 34)),
    "cifar10-small": ("128C3(Enc)-AP2-256C3-AP2-256FC-Voting", (3, 32, 32)),
    "cifar10-middle": ("128C3(Enc)-AP2-256C3-512C3-AP2-512FC-Voting", (3, 32, 32)),
    "cifarnet": (
        "128C3(Enc)-256C3-AP2-512C3-AP2-1024C3-512C3-1024FC-512FC-Voting",
        (3, 32, 32),
    ),
    # A small net for the embedded MNIST digits (the demo): after the encoding layer, whose
    # convolution of a static image runs once, only one conv runs at every step.
    "mnist-demo": ("32C3(Enc)-AP2-64C3-AP2-256FC-Voting", (1, 28, 28)),
    # Two convs per stage: the longer run on the embedded digits (configs/demo-deep.toml).
    "mnist-deep": ("32C3(Enc)-32C3-AP2-64C3-64C3-AP2-256FC-Voting", (1, 28, 28)),
}


def paper_network(name: str, **kwargs) -> SNN:
    """One of the paper's networks by name (see `PAPER_NETWORKS`); kwargs go to `build`,
    which checks them."""
    if not isinstance(name, str) or name not in PAPER_NETWORKS:
        raise ValueError(f"unknown network {name!r}; choose one of: {', '.join(PAPER_NETWORKS)}")
    spec, in_shape = PAPER_NETWORKS[name]
    return build(spec, in_shape, **kwargs)


def firing_rates(model: nn.Module) -> dict[str, float]:
    """Mean firing rate of each LIF layer in the last forward pass."""
    return {
        name.removeprefix("layers."): float(m.last_rate)
        for name, m in model.named_modules()
        if isinstance(m, LIF) and m.last_rate is not None
    }

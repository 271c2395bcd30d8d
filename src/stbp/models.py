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
  layer receives the analog input directly, unless `build(..., encoding=...)` puts a spike
  encoder before it).

`build` returns an `SNN` that maps `[T, B, C, H, W]` (or a static `[B, C, H, W]`) to class
scores `[B, num_classes]`, and runs one time step at a time with `SNN.step` (streaming).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass
from numbers import Integral
from typing import Any, NamedTuple

import torch
from torch import nn

from stbp import encoders
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
from stbp.neuron import LIF, RESETS, LIFParameters

_TOKEN = re.compile(
    r"(?:(?P<conv>\d+)C(?P<kernel>\d+)|(?P<pool>[AM])P(?P<stride>\d+)|(?P<fc>\d+)FC"
    r"|(?P<voting>Voting)|(?P<dropout>DO))(?P<enc>\(Enc\))?"
)

DROPOUT_MASKS: dict[str, type[nn.Module]] = {"sample": SeqDropout, "step": StepDropout}

# Arguments `build` gained after checkpoints were first written: an older `build_args` means
# these values (the behaviour of the code that wrote it).
BUILD_ARG_DEFAULTS = {
    "dropout_mask": "sample",
    "neunorm_reading": "stbp",
    "reset": "hard",
    "detach_reset": False,
    "learn_decay": False,
    "learn_threshold": False,
    "per_channel": False,
    "encoding": "analog",
}
ENCODER = "encode"  # the name of the spike encoder in `SNN.layers`, when there is one
# LIFParameters fields that `build` takes (and `build_args` records) as arguments of their own.
_LIF_FIELDS_OF_BUILD = ("reset", "detach_reset")


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


class SNNState(NamedTuple):
    """The state of a whole network between two calls of `SNN.step`."""

    steps: int  # time steps run so far
    layers: dict[str, Any]  # per module (by name): LIFState, NeuNorm's auxiliary x, the
    # votes summed so far ("vote"), a dropout mask (SeqDropout in training mode)


class SNN(nn.Module):
    """A feed-forward spiking network: encoding layer, LIF layers, voting output.

    Input: time-first event frames `[T, B, *in_shape]` or a static `[B, *in_shape]` (an image,
    presented at each of the `T` steps). A sequence whose time size is not the model's `T` is
    refused (a DataLoader batch `[B, T, ...]` would be read as `[T, B, ...]`): pass
    `model(x, T=x.shape[0])` to run another window on purpose.

    With a spike encoder (`build(..., encoding="bernoulli" | "latency")`, the module
    `layers.encode`), a static image goes through the encoder, and a sequence is taken as
    frames already encoded (the encoder is skipped).
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
        static = x.dim() == len(self.in_shape) + 1
        if self.encoder is not None:
            return self._after_encoder(self.encode(x, steps) if static else x)
        if static and steps != self.T:
            x = x.unsqueeze(0).expand(steps, *x.shape)  # the encoding layer then runs per step
        return self.layers(x)

    @property
    def encoder(self) -> nn.Module | None:
        """The spike encoder that turns a static image into spikes, if the network has one."""
        return self.layers._modules.get(ENCODER)

    def encode(self, x: torch.Tensor, T: int | None = None) -> torch.Tensor:
        """The frames `[T, B, *in_shape]` the first synaptic layer receives, one per step: a
        static `x` through the spike encoder (0/1 spikes), or repeated at each step without
        one (analog); a sequence as it is. Feed them to `step` one by one."""
        steps = self._steps(x, T)
        if x.dim() == len(self.in_shape) + 2:
            return x
        if self.encoder is None:
            return x.unsqueeze(0).expand(steps, *x.shape)
        return self.encoder(x) if steps == self.T else self.encoder(x, T=steps)

    def _after_encoder(self, x: torch.Tensor) -> torch.Tensor:
        for name, module in self.layers.named_children():
            if name != ENCODER:
                x = module(x)
        return x

    def step(
        self, x_t: torch.Tensor, state: SNNState | None = None
    ) -> tuple[torch.Tensor, SNNState]:
        """One time step of the whole network, for streaming: the frame `x_t` `[B, *in_shape]`
        that the first synaptic layer receives at this step, and the state of the previous
        step (None: the start of a sample). Returns the class scores so far (the voting
        layer's rates averaged over the steps run: after `T` steps, what `forward` gives over
        the same frames) and the new state; nothing is kept in the modules.

        Analog input: `x_t` is the image (static) or the event frame of the step. With a spike
        encoder, `x_t` is the encoded spikes of the step (`model.encode(image)[t]`): the
        encoder draws all T steps at once. In training mode this runs with plain autograd
        (a dropout mask shared over time travels in the state)."""
        self._check_frame(x_t)
        before = state.layers if state is not None else {}
        after: dict[str, Any] = {}
        for name, module in self.layers.named_children():
            if name == ENCODER:
                continue
            x_t, module_state = _step_module(module, x_t, before.get(name))
            if module_state is not None:
                after[name] = module_state
        steps = (state.steps if state is not None else 0) + 1
        return x_t / steps, SNNState(steps, after)

    def _check_frame(self, x_t: torch.Tensor) -> None:
        if x_t.dim() != len(self.in_shape) + 1 or tuple(x_t.shape[1:]) != self.in_shape:
            shape = ", ".join(map(str, self.in_shape))
            raise ValueError(
                f"step expects one frame [B, {shape}], got {list(x_t.shape)}; for a sequence "
                f"[T, B, {shape}] call step on each x[t]"
            )

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


def _step_module(module: nn.Module, x_t: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
    """One time step of one module of `SNN.layers`: its output and its new state (None for a
    stateless module)."""
    if isinstance(module, LIF):
        return module.step(x_t, state)
    if isinstance(module, NeuNorm):
        return module.step(x_t, state)
    if isinstance(module, Voting):
        votes = x_t.view(x_t.shape[0], module.num_classes, module.votes).mean(dim=-1)
        total = votes if state is None else state + votes
        return total, total
    if isinstance(module, SeqDropout):
        return _seq_dropout_step(module, x_t, state)
    if isinstance(module, nn.Dropout):  # a fresh mask per step (StepDropout)
        return module(x_t), None
    return module(x_t.unsqueeze(0)).squeeze(0), None  # stateless: a window of one step


def _seq_dropout_step(module: SeqDropout, x_t: torch.Tensor, mask: torch.Tensor | None):
    """`SeqDropout` one step at a time: in training mode, the mask drawn at the first step is
    kept in the state for the next ones (one mask per sample, as in `forward`)."""
    if not module.training or module.p == 0:
        return x_t, None
    if mask is None:
        mask = torch.empty_like(x_t).bernoulli_(1 - module.p).div_(1 - module.p)
    return x_t * mask, mask


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
    reset: str = "hard",
    detach_reset: bool = False,
    learn_decay: bool = False,
    learn_threshold: bool = False,
    per_channel: bool = False,
    encoding: str = "analog",
) -> SNN:
    """Build the network of `spec` for inputs of shape `in_shape` (C, H, W).

    Every conv/FC layer is followed by LIF neurons, and by NeuNorm after conv layers when
    `neunorm` (set as `neunorm_reading` reads the paper: "stbp" or "spikingjelly", see
    `stbp.NeuNorm`). Dropout of probability `dropout` goes where the spec has `DO` tokens, or,
    in a spec without any, after each hidden FC layer when `dropout > 0`; `dropout_mask`
    "sample" keeps one mask per sample for all T steps, "step" draws a fresh mask per step
    (as the authors' CIFAR-10 code). Weights are initialised by `threshold_scaled_` so every
    layer fires at init. Every argument is checked: one `ValueError` naming it.

    Neuron variants (see `stbp.LIF`), the same in every LIF layer: `reset` "hard"
    (Algorithm 1) or "soft" (subtract the threshold), `detach_reset`, `learn_decay`,
    `learn_threshold` (one value per layer, or per channel/feature with `per_channel`);
    `reset` and `detach_reset` may come inside `lif` instead. `encoding` "bernoulli" or
    "latency" puts a spike encoder (`stbp.encoders.make`) first, as `layers.encode`: the
    first synaptic layer then receives 0/1 spikes at each step; "analog" (the paper's
    encoding layer) presents the image itself.
    """
    layers = parse(_check_spec(spec))
    in_shape = check_shape(in_shape)
    _check_build_args(layers, num_classes, T, neunorm, dropout, votes, dropout_mask,
                      neunorm_reading)  # fmt: skip
    lif = _neuron_parameters(lif, reset, detach_reset)
    learnt = _learnt_parameters(learn_decay, learn_threshold, per_channel)
    encoder = _encoder(encoding, T)
    drop = DROPOUT_MASKS[dropout_mask]
    spec_has_dropout = any(layer.kind == "dropout" for layer in layers)
    shape = in_shape
    modules: dict[str, nn.Module] = {} if encoder is None else {ENCODER: encoder}
    counts = {"conv": 0, "fc": 0, "pool": 0, "dropout": 0}
    for i, layer in enumerate(layers):
        if layer.kind in counts:
            counts[layer.kind] += 1
        name = f"{layer.kind}{counts.get(layer.kind, '')}"
        if layer.kind == "dropout":
            modules[name] = drop(dropout)
            continue
        synapse, shape = _synapse(layer, shape, num_classes, votes, spec)
        if i == 0 and encoder is None:
            modules[name] = Encoding(synapse, T, len(in_shape))
        else:
            modules[name] = Temporal(
                synapse, binary_input=_is_binary(modules), spike_input=_carries_spikes(modules)
            )
        if layer.kind == "pool":
            continue
        modules[f"lif_{name}"] = LIF(*lif, **learnt, channels=shape[0])
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
        "lif": _lif_constants(lif),
        "votes": votes,
        "dropout_mask": dropout_mask,
        "neunorm_reading": neunorm_reading,
        "reset": lif.reset,
        "detach_reset": lif.detach_reset,
        **learnt,
        "encoding": encoding,
    }
    threshold_scaled_(model)
    return model


def _check_spec(spec) -> str:
    if not isinstance(spec, str):
        raise ValueError(f"spec must be a string such as '128C3-AP2-1024FC-Voting', got {spec!r}")
    return spec


def _check_build_args(
    layers: list[Layer], num_classes, T, neunorm, dropout, votes, dropout_mask, neunorm_reading
) -> None:
    """`ValueError` naming the first bad argument of `build` among these."""
    check_int("num_classes", num_classes)
    check_int("T", T)
    check_int("votes", votes)
    _check_bool("neunorm", neunorm)
    check_fraction("dropout", dropout)
    check_choice("dropout_mask", dropout_mask, tuple(DROPOUT_MASKS))
    check_choice("neunorm_reading", neunorm_reading, READINGS)
    if dropout == 0 and any(layer.kind == "dropout" for layer in layers):
        raise ValueError(
            "the spec has DO (dropout) tokens but dropout is 0; set dropout to a probability "
            "in (0, 1) (the authors' CIFAR-10 code uses 0.5) or remove the DO tokens"
        )


def _check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


def _neuron_parameters(lif, reset, detach_reset) -> LIFParameters:
    """The LIF constants of every layer: `lif` (default `LIFParameters()`) with `reset` and
    `detach_reset`, which may be given here or inside `lif` (a non-default value wins: each has
    only one)."""
    if lif is None:
        lif = LIFParameters()
    if not isinstance(lif, LIFParameters):
        raise ValueError(f"lif must be an stbp.LIFParameters, got {lif!r}")
    check_choice("reset", reset, RESETS)
    _check_bool("detach_reset", detach_reset)
    return lif._replace(
        reset=reset if reset != "hard" else lif.reset,
        detach_reset=detach_reset or lif.detach_reset,
    ).validate()


def _lif_constants(lif: LIFParameters) -> dict:
    """`lif` as `build_args` records it: without the fields `build` records on their own."""
    return {k: v for k, v in lif._asdict().items() if k not in _LIF_FIELDS_OF_BUILD}


def _learnt_parameters(learn_decay, learn_threshold, per_channel) -> dict[str, bool]:
    learnt = {
        "learn_decay": _check_bool("learn_decay", learn_decay),
        "learn_threshold": _check_bool("learn_threshold", learn_threshold),
        "per_channel": _check_bool("per_channel", per_channel),
    }
    if per_channel and not (learn_decay or learn_threshold):
        raise ValueError(
            "per_channel = True needs learn_decay or learn_threshold (it makes the learnt "
            "decay/threshold one per channel); fixed constants are one per network"
        )
    return learnt


def _encoder(encoding, T: int) -> nn.Module | None:
    """The spike encoder of `encoding` (None for "analog": the paper's encoding layer)."""
    check_choice("encoding", encoding, tuple(encoders.ENCODINGS))
    return encoders.make(encoding, T)


def _is_max_pool(module: nn.Module) -> bool:
    return isinstance(getattr(module, "module", None), nn.MaxPool2d)


def _is_binary(modules: dict[str, nn.Module]) -> bool:
    """Whether the current output (the last module's) is 0/1 spikes: a LIF's, a spike
    encoder's, or max-pooled ones. Not after dropout (it scales the kept spikes by 1/(1-p)),
    NeuNorm (it subtracts the analog auxiliary term) or average pooling."""
    return _spikes_through(modules, _is_max_pool)


def _carries_spikes(modules: dict[str, nn.Module]) -> bool:
    """Whether the current output is spikes, pooled or dropped out (mostly zeros, values in
    {0, 1/k^2, ..., 1} or {0, 1/(1-p)}), which the event-driven synapses of `stbp.sparse` take.
    Not after NeuNorm (analog) or the encoding layer's input."""
    return _spikes_through(modules, _passes_spikes)


def _passes_spikes(module: nn.Module) -> bool:
    pools = (SpikeAvgPool, nn.MaxPool2d)
    return isinstance(module, (SeqDropout, StepDropout)) or isinstance(
        getattr(module, "module", None), pools
    )


def _spikes_through(modules: dict[str, nn.Module], passes) -> bool:
    """Whether the last module's output comes from a LIF layer or the spike encoder through
    modules that `passes(module)` accepts."""
    *before, (last_name, last) = modules.items()
    if isinstance(last, LIF) or last_name == ENCODER:
        return True
    return passes(last) and _spikes_through(dict(before), passes)


def complete_build_args(build_args: dict) -> dict:
    """`build_args` with the arguments an older checkpoint did not record set to what the
    code that wrote it did (`BUILD_ARG_DEFAULTS`)."""
    return {**BUILD_ARG_DEFAULTS, **build_args}


def rebuild(build_args: dict) -> SNN:
    """Build the same network again from `model.build_args` (as stored in checkpoints; an
    older one without `dropout_mask`, `neunorm_reading` or the neuron variants and encoding
    gets what the code that wrote it did: `BUILD_ARG_DEFAULTS`)."""
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

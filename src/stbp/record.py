"""Record what the `stbp.LIF` layers of a network do: their spikes and membrane potentials.

`record(model, x)` runs one sample (or a batch) through any `nn.Module` that contains
`stbp.LIF` layers and returns the spikes of the chosen layers, and on request their membrane
potentials `u[t]` of Algorithm 1 (after integration, before the reset). The potentials are
recomputed from each layer's input with `stbp.neuron.lif_step`, so the layer itself keeps
running its fused kernel.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from stbp.models import SNN
from stbp.neuron import LIF, lif_step

IMAGE_DIMS = 3  # a sample of stbp's data sets: [C, H, W] (or [T, C, H, W] for event frames)


class Recording(NamedTuple):
    """What `record` returns, each a dict keyed by LIF layer name (in forward order).

    One sample gives `[T, neurons]` tensors, a batch (`batch=True`) `[T, B, neurons]`; the
    neurons are the layer's own shape (`[C, H, W]` or `[F]`) flattened."""

    spikes: dict[str, torch.Tensor]  # 0/1 spikes o[t]
    potentials: dict[str, torch.Tensor] | None  # u[t] (None unless `potentials=True`)
    thresholds: dict[str, torch.Tensor]  # [neurons]: each neuron's firing threshold


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's parameters (CPU for a model without any)."""
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def input_shape(model: nn.Module) -> tuple[int, ...] | None:
    """The shape of one static sample the model takes: `model.in_shape` (every `stbp.SNN`),
    the `in_shape` a factory network was built for (`factory_args`), else None."""
    in_shape = getattr(model, "in_shape", None)
    if in_shape is None:
        args = getattr(model, "factory_args", None)
        in_shape = args.get("in_shape") if isinstance(args, dict) else None
    return tuple(in_shape) if in_shape is not None else None


def sample_dims(model: nn.Module) -> int:
    """Dimensions of one static sample: those of `input_shape(model)`, else 3 (`[C, H, W]`:
    the images and event frames of stbp's data sets)."""
    in_shape = input_shape(model)
    return len(in_shape) if in_shape is not None else IMAGE_DIMS


def lif_layers(model: nn.Module, names: list[str] | None = None) -> dict[str, LIF]:
    """The `stbp.LIF` layers of `model` by name, all of them when `names` is None.

    Names are those of `named_modules()` (`block1.lif`), relative to `model.layers` for an
    `stbp.SNN` (`lif_conv1`); a chosen name may leave out the `lif_` of its last part
    (`conv1` means `lif_conv1`, `block1.conv1` means `block1.lif_conv1`)."""
    lifs = {n: m for n, m in layer_root(model).named_modules() if isinstance(m, LIF)}
    if names is None:
        return lifs
    chosen = {}
    for name in names:
        key = next((k for k in _spellings(name) if k in lifs), None)
        if key is None:
            choices = ", ".join(lifs) or "none (the model has no stbp.LIF layer)"
            raise ValueError(f"no LIF layer {name!r}; choose from: {choices}")
        chosen[key] = lifs[key]
    return chosen


def layer_root(model: nn.Module) -> nn.Module:
    """The module whose `named_modules()` give the layer names: `model.layers` for an
    `stbp.SNN` (names as in its spec: `conv1`, `lif_conv1`), else `model` itself."""
    return model.layers if isinstance(model, SNN) else model


def _spellings(name: str) -> tuple[str, str]:
    parent, _, last = name.rpartition(".")
    return name, f"{parent}.lif_{last}" if parent else f"lif_{last}"


def run_model(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`model(x)` for a batch `x` (static `[B, ...]` or a sequence `[T, B, ...]`); an
    `stbp.SNN` runs a sequence for its own length, whatever the model's `T`."""
    if isinstance(model, SNN) and x.dim() == sample_dims(model) + 2:
        return model(x, T=x.shape[0])
    return model(x)


@torch.no_grad()
def record(
    model: nn.Module,
    x: torch.Tensor,
    layers: list[str] | None = None,
    potentials: bool = False,
    batch: bool = False,
) -> Recording:
    """Spikes (and with `potentials`, membrane potentials) of the chosen LIF layers of `model`
    for one sample `x`: static `[C, H, W]` or a sequence `[T, C, H, W]` (the model's
    `input_shape` when it has one); with `batch`, `x` is a batch as the model takes it
    (`[B, ...]` or `[T, B, ...]`) and the tensors keep the batch dimension.

    `layers`: names as `lif_layers` takes them (default: all). The model runs in eval mode
    on its device (`x` is moved there). The potentials are `u[t] = decay * u[t-1] *
    (1 - o[t-1]) + x[t]` of Algorithm 1 (or the layer's other reset), after integration and
    before the reset, recomputed from the layer's input by `stbp.neuron.lif_step`; a layer
    called more than once in one forward pass keeps its last call."""
    chosen, x = lif_layers(model, layers), torch.as_tensor(x)
    spikes, thresholds = {}, {}
    trace = {} if potentials else None

    def hook(lif: LIF, inputs: tuple, out: torch.Tensor, name: str) -> None:
        spikes[name] = out.flatten(2)
        thresholds[name] = neuron_thresholds(lif, out.shape[2:])
        if trace is not None:
            trace[name] = membrane_potentials(lif, inputs[0]).flatten(2)

    hooks = [
        m.register_forward_hook(lambda m, i, o, name=name: hook(m, i, o, name))
        for name, m in chosen.items()
    ]
    was_training = model.training
    model.eval()
    try:
        inputs = x if batch else _as_batch(model, x)
        run_model(model, inputs.to(model_device(model)))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    if not batch:
        spikes = {n: s[:, 0] for n, s in spikes.items()}
        trace = None if trace is None else {n: u[:, 0] for n, u in trace.items()}
    return Recording(spikes, trace, thresholds)


def membrane_potentials(lif: LIF, x: torch.Tensor) -> torch.Tensor:
    """`u[t]` `[T, B, ...]` of `lif` for its synaptic input `x` `[T, B, ...]`: Algorithm 1
    step by step (`stbp.neuron.lif_step` with the layer's effective parameters `lif.p`), in
    at least fp32 as the fused kernel computes it."""
    x = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    p, state, us = lif.p, None, []
    for x_t in x:
        _, state = lif_step(x_t, state, p)
        us.append(state.u)
    return torch.stack(us)


def neuron_thresholds(lif: LIF, shape: torch.Size) -> torch.Tensor:
    """Each neuron's threshold, flattened, for neurons of `shape` (`[C, ...]`): the layer's
    one threshold, or its per-channel thresholds (one per `C`) spread over the channel."""
    threshold = torch.as_tensor(lif.p.threshold).detach().float()
    if threshold.dim() == 1 and len(shape) > 0:
        threshold = threshold.view(-1, *[1] * (len(shape) - 1))
    return threshold.expand(shape).flatten()


def _as_batch(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """One sample as a batch of one: `[1, ...]` for a static sample, `[T, 1, ...]` for a
    sequence."""
    n = sample_dims(model)
    if x.dim() == n:
        return x.unsqueeze(0)
    if x.dim() == n + 1:
        return x.unsqueeze(1)
    in_shape = input_shape(model)
    shape = ", ".join(map(str, in_shape)) if in_shape is not None else "C, H, W"
    raise ValueError(
        f"expected one sample [{shape}] or [T, {shape}] of it, got {list(x.shape)} "
        "(pass batch=True for a batch as the model takes it)"
    )

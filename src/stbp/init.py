"""Initialisation that keeps every LIF layer firing.

With the paper's threshold (0.5) and PyTorch's default init, each layer's synaptic input is
too small to reach threshold and activity dies layer by layer. We scale each layer to its
neuron's threshold instead:

- `threshold_scaled_`: analytic. With zero-mean weights of std s and inputs of second moment
  m2, the synaptic input is roughly Gaussian with std `s * sqrt(fan_in * m2)`; it exceeds the
  threshold with probability `rate` when `s = V_th / (z * sqrt(fan_in * m2))`, where
  `z = Phi^-1(1 - rate)`. Spikes of rate r have m2 = r, which makes the scheme recursive.
- `calibrate_`: data-driven refinement (as LSUV does for ANNs): on one batch of real input,
  layer by layer from the input, rescale each layer's weights so that its LIF neurons fire at
  `rate`. Scaling W and b by c scales the synaptic input by c exactly, so each layer needs one
  synaptic pass and a few cheap LIF passes (bisection on log c).
"""

from __future__ import annotations

import math
from statistics import NormalDist

import torch
from torch import nn

from stbp.neuron import LIF, lif

DEFAULT_RATE = 0.15
_SAMPLE = 65536
_MAX_SCALE = 1e6


def _weighted(module: nn.Module) -> nn.Module | None:
    """The conv/linear layer inside a (wrapped) synapse, if any."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            return m
    return None


def _synapse_lif_pairs(layers: nn.Sequential):
    mods = list(layers)
    for i, m in enumerate(mods[:-1]):
        w = _weighted(m)
        if w is not None and isinstance(mods[i + 1], LIF):
            yield i, w, mods[i + 1]


@torch.no_grad()
def threshold_scaled_(model: nn.Module, rate: float = DEFAULT_RATE, input_m2: float = 0.1) -> None:
    """Analytic threshold-scaled init of `model.layers` (see module docstring); `input_m2` is
    the mean square of the analog input (about 0.1 for MNIST digits in [0, 1])."""
    z = NormalDist().inv_cdf(1 - rate)
    m2 = input_m2
    for module in _layers(model):
        w = _weighted(module)
        if w is not None:
            fan_in = w.weight[0].numel()
            w.weight.normal_(0, 1).mul_(_threshold(model) / (z * math.sqrt(fan_in * m2)))
            if w.bias is not None:
                w.bias.zero_()
        elif isinstance(module, LIF):
            m2 = rate
        elif isinstance(getattr(module, "module", None), nn.AvgPool2d):
            n = module.module.kernel_size**2
            m2 = m2 / n + (1 - 1 / n) * m2**2
        elif isinstance(getattr(module, "module", None), nn.MaxPool2d):
            m2 = 1 - (1 - m2) ** (module.module.kernel_size**2)


def _layers(model: nn.Module) -> nn.Sequential:
    """`model.layers` of stbp's own networks; `TypeError` for any other module."""
    layers = getattr(model, "layers", None)
    if not isinstance(layers, nn.Sequential):
        raise TypeError(
            "threshold_scaled_ and calibrate_ work on stbp's own networks (SNN.layers); "
            "initialise a network of your own in its factory function"
        )
    return layers


def _threshold(model: nn.Module) -> float:
    """The first LIF layer's threshold (a learnt one starts equal in every channel)."""
    return _mean(next(m.p.threshold for m in model.modules() if isinstance(m, LIF)))


def _mean(value: float | torch.Tensor) -> float:
    """A learnt (per-channel) decay or threshold as one number: the neurons are sampled
    across channels, and a fresh network starts with the same value in every channel."""
    return float(torch.as_tensor(value).detach().float().mean())


@torch.no_grad()
def calibrate_(
    model: nn.Module, x: torch.Tensor, rate: float = DEFAULT_RATE, iters: int = 12
) -> dict[str, float]:
    """Rescale each layer of `model.layers` so its LIF neurons fire at `rate` on the batch `x`.
    Returns the rate reached per LIF layer."""
    names = {m: n for n, m in _layers(model).named_children()}
    pairs = {i: (w, neuron) for i, w, neuron in _synapse_lif_pairs(model.layers)}
    reached = {}
    h = x
    for i, module in enumerate(model.layers):
        if i in pairs:
            w, neuron = pairs[i]
            current = module(h)
            c = _solve_scale(current, neuron, rate, iters)
            w.weight.mul_(c)
            if w.bias is not None:
                w.bias.mul_(c)
            h = current * c
        else:
            h = module(h)
            if isinstance(module, LIF):
                reached[names[module]] = float(module.last_rate)
    return reached


def _solve_scale(current: torch.Tensor, neuron: LIF, rate: float, iters: int) -> float:
    """Bisection on log c for the scale c at which `lif(c * current)` fires at `rate`."""

    rows = current.reshape(current.shape[0], -1)
    if rows.shape[1] > _SAMPLE:  # a fixed random subset of neurons estimates the rate well
        generator = torch.Generator().manual_seed(0)
        rows = rows[:, torch.randperm(rows.shape[1], generator=generator)[:_SAMPLE]]

    p = neuron.p._replace(decay=_mean(neuron.p.decay), threshold=_mean(neuron.p.threshold))

    def rate_at(c: float) -> float:
        return float(lif(rows * c, *p).mean())

    # Some inputs can make only a fraction of the neurons fire however large the weights (an
    # encoding layer on digits: zero background). Chasing a rate near that ceiling would
    # scale the weights without bound, push every potential out of the surrogate window and
    # freeze the layer; half the ceiling keeps the potentials spread around the threshold.
    rate = min(rate, rate_at(_MAX_SCALE) / 2)
    lo, hi = 1.0, 1.0
    while rate_at(lo) > rate and lo > 1 / _MAX_SCALE:
        lo /= 2
    while rate_at(hi) < rate and hi < _MAX_SCALE:
        hi *= 2
    for _ in range(iters):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if rate_at(mid) < rate else (lo, mid)
    return math.sqrt(lo * hi)

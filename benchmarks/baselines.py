"""Reference networks the speed benchmark compares stbp against.

Both have the same layers and weight shapes as `stbp.paper_network(name)`:

- `PerStepSNN`: a plain per-step PyTorch loop of Algorithm 1. For t in range(T) it runs every
  layer on `x[t]` alone (conv -> `stbp.neuron.lif_step` -> ... -> FC -> LIF -> voting), each
  LIF layer with its own `LIFState`; autograd records every step. This is what one writes
  without a framework, and the baseline of every ratio.
- `ANNTwin`: the same conv/pool/FC layers with ReLU instead of LIF, T folded into the batch
  (input `[T*B, C, H, W]`), the output FC's `votes x classes` units averaged into classes (and
  over T), trained with the same MSE loss.
"""

from __future__ import annotations

import torch
from torch import nn

import stbp
from stbp.neuron import LIF, LIFParameters, LIFState, lif_step


def _stateless_layers(snn: stbp.SNN) -> list[nn.Module]:
    """The synaptic/pooling modules of an stbp network in order (the `Temporal`/`Encoding`
    wrappers removed), each LIF layer marked by the string "lif"."""
    out: list[nn.Module | str] = []
    for module in snn.layers:
        if isinstance(module, stbp.Temporal):
            out.append(module.module)
        elif isinstance(module, LIF):
            out.append("lif")
        elif isinstance(module, stbp.Voting):
            continue
        else:
            raise TypeError(f"unexpected layer {module!r}")
    return out


class PerStepSNN(nn.Module):
    """Algorithm 1 as a plain loop over time steps, layer by layer inside each step."""

    def __init__(self, snn: stbp.SNN, p: LIFParameters | None = None):
        super().__init__()
        layers = _stateless_layers(snn)
        self.synapses = nn.ModuleList(m for m in layers if isinstance(m, nn.Module))
        self.plan = ["lif" if m == "lif" else "syn" for m in layers]
        self.p = p or LIFParameters()
        vote = snn.layers[-1]
        self.num_classes, self.votes = vote.num_classes, vote.votes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T = x.shape[0]
        state: list[LIFState | None] = [None] * len(self.plan)
        total = None
        for t in range(T):
            h = x[t]
            syn = iter(self.synapses)
            for i, kind in enumerate(self.plan):
                if kind == "syn":
                    h = next(syn)(h)
                    continue
                h, state[i] = lif_step(h, state[i], self.p)
            total = h if total is None else total + h
        rates = total / T
        return rates.view(rates.shape[0], self.num_classes, self.votes).mean(dim=-1)


class ANNTwin(nn.Module):
    """The same layers with ReLU, T folded into the batch; scores averaged over T and votes."""

    def __init__(self, snn: stbp.SNN):
        super().__init__()
        layers = []
        for m in _stateless_layers(snn):
            layers.append(nn.ReLU() if m == "lif" else m)
        self.net = nn.Sequential(*layers[:-1])  # no ReLU after the output FC
        vote = snn.layers[-1]
        self.num_classes, self.votes = vote.num_classes, vote.votes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T, B = x.shape[:2]
        y = self.net(x.flatten(0, 1))  # [T*B, votes*classes]
        y = y.view(T, B, self.num_classes, self.votes)
        return y.mean(dim=(0, 3))


def per_step_snn(name: str = "nmnist-small", T: int = 10) -> PerStepSNN:
    """The per-step baseline with a fresh copy of `stbp.paper_network(name)`'s layers."""
    return PerStepSNN(stbp.paper_network(name, T=T))


def ann_twin(name: str = "nmnist-small", T: int = 10) -> ANNTwin:
    return ANNTwin(stbp.paper_network(name, T=T))

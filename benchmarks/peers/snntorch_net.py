"""The benchmark network in snnTorch: `snn.Leaky` neurons, run step by step as snnTorch's
tutorials do (every layer on x[t], hidden state carried by the neurons).

LIF: beta = 0.2 (stbp's decay), threshold 0.5, reset_mechanism="zero" (hard reset to 0),
surrogate: a rectangle of width 1 around the threshold through `surrogate.custom_surrogate`
(snnTorch ships no rectangular one)."""

from __future__ import annotations

import snntorch as snn
import torch
from common import DECAY, THRESHOLD, needs_lif, synapses, vote
from common import version as _version
from snntorch import surrogate
from torch import nn


def _rect(input_, grad_input, spikes):
    return grad_input * (input_.abs() < 0.5).to(grad_input.dtype)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        spike_grad = surrogate.custom_surrogate(_rect)
        layers = []
        for m in synapses():
            layers.append(m)
            if needs_lif(m):
                layers.append(snn.Leaky(beta=DECAY, threshold=THRESHOLD, spike_grad=spike_grad,
                                        reset_mechanism="zero", init_hidden=True))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for m in self.net:
            if isinstance(m, snn.Leaky):
                m.reset_hidden()
        total = None
        for x_t in x:
            out = self.net(x_t)
            total = out if total is None else total + out
        return vote(total, x.shape[0])


def build(T: int) -> nn.Module:
    return Net()


def version() -> str:
    return _version("snntorch")

"""The benchmark network in SpikingJelly 2.0 (activation_based): multi-step mode
(`step_mode="m"`: layers take [T, B, ...] and fold T into the batch), `neuron.LIFNode`
(SpikingJelly 2.0 picks its backend itself; on CPU that is plain torch).

LIF: tau = 1.25, decay_input=False gives v[t] = 0.2 v[t-1] + x[t] (stbp's decay 0.2),
v_threshold 0.5, v_reset 0 (hard reset), detach_reset=False (STBP keeps the reset path),
surrogate `surrogate.Rect(alpha=1)` (rectangular)."""

from __future__ import annotations

import torch
from common import DECAY, THRESHOLD, needs_lif, synapses, vote
from common import version as _version
from spikingjelly.activation_based import functional, layer, neuron, surrogate
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        layers = []
        for m in synapses():
            layers.append(layer.SeqToANNContainer(m))
            if needs_lif(m):
                layers.append(neuron.LIFNode(tau=1.0 / (1.0 - DECAY), decay_input=False,
                                             v_threshold=THRESHOLD, v_reset=0.0,
                                             surrogate_function=surrogate.Rect(alpha=1.0),
                                             detach_reset=False, step_mode="m"))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        functional.reset_net(self.net)
        return vote(self.net(x).sum(0), x.shape[0])


def build(T: int) -> nn.Module:
    return Net()


def version() -> str:
    return _version("spikingjelly")

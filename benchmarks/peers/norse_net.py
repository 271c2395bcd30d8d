"""The benchmark network in Norse: `LIFBoxCell` neurons (LIF without a synaptic current),
each conv/linear applied to all T steps at once (T folded into the batch) and the cell
iterated over T, as Norse's own multi-step modules do.

LIF: Norse integrates dv = dt * tau_mem_inv * (v_leak - v + i); dt * tau_mem_inv = 0.8 gives
v[t] = 0.2 v[t-1] + 0.8 i[t] (decay 0.2 <-> tau 1.25 steps; the input is scaled by 0.8),
v_th 0.5, v_reset 0 (hard reset), surrogate "triangle" (Norse has no rectangular one)."""

from __future__ import annotations

import torch
from common import THRESHOLD, needs_lif, synapses, vote
from common import version as _version
from norse.torch import LIFBoxCell, LIFBoxParameters
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        p = LIFBoxParameters(tau_mem_inv=torch.as_tensor(800.0),
                             v_th=torch.as_tensor(THRESHOLD),
                             v_reset=torch.as_tensor(0.0), method="triangle",
                             alpha=torch.as_tensor(1.0))
        self.synapses = nn.ModuleList(synapses())
        self.cells = nn.ModuleList(LIFBoxCell(p, dt=0.001) if needs_lif(m) else nn.Identity()
                                   for m in self.synapses)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T, B = x.shape[:2]
        h = x
        for syn, cell in zip(self.synapses, self.cells, strict=True):
            h = syn(h.flatten(0, 1)).unflatten(0, (T, B))
            if isinstance(cell, LIFBoxCell):
                state, outs = None, []
                for h_t in h:
                    z, state = cell(h_t, state)
                    outs.append(z)
                h = torch.stack(outs)
        return vote(h.sum(0), T)


def build(T: int) -> nn.Module:
    return Net()


def version() -> str:
    return _version("norse")

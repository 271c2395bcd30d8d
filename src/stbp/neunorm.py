"""NeuNorm: the paper's neuron normalization with auxiliary neurons.

For a convolutional layer n with F feature maps, one auxiliary neuron per spatial position
(i, j) integrates the spikes of all F maps at that position, with its own decay k_tau2
(section "Neuron normalization (NeuNorm)" of the paper):

    x[t](i,j) = k_tau2 * x[t-1](i,j) + (v / F^2) * sum_f o[t](i,j,f)       (auxiliary neuron)

and what layer n+1 receives is the spikes minus the auxiliary output, weighted by trainable
per-position weights alpha:

    u_{n+1}[t] = k_tau1 u_{n+1}[t-1] (1 - o_{n+1}[t-1]) + W * (o[t] - alpha(i,j,f) x[t](i,j)) + b

so `NeuNorm` sits between a layer's LIF and the next layer's synapses. The paper leaves v
open; by default we take `v = F (1 - k_tau2)`, which makes x an exponential moving average
of the mean firing rate across the F maps (x stays in [0, 1]). alpha starts at `alpha_init`.
"""

from __future__ import annotations

import torch
from torch import nn


def neunorm(
    spikes: torch.Tensor, alpha: torch.Tensor, k: float = 0.9, v: float | None = None
) -> torch.Tensor:
    """Auxiliary-neuron normalization of `spikes` `[T, B, F, H, W]` (see module docstring);
    `alpha` broadcasts against `[F, H, W]`. Returns `o - alpha * x`, same shape."""
    channels = spikes.shape[2]
    v = channels * (1 - k) if v is None else v
    drive = spikes.sum(dim=2, keepdim=True) * (v / channels**2)
    x = torch.zeros_like(drive[0])
    aux = []
    for d_t in drive:
        x = k * x + d_t
        aux.append(x)
    return spikes - alpha * torch.stack(aux)


class NeuNorm(nn.Module):
    """NeuNorm for a conv layer's spikes `[T, B, channels, height, width]`, with trainable
    per-position weights alpha `[channels, height, width]` and auxiliary decay `k`."""

    def __init__(
        self,
        channels: int,
        height: int,
        width: int,
        k: float = 0.9,
        v: float | None = None,
        alpha_init: float = 1.0,
    ):
        super().__init__()
        self.k, self.v = k, v
        self.alpha = nn.Parameter(torch.full((channels, height, width), float(alpha_init)))

    def forward(self, spikes: torch.Tensor) -> torch.Tensor:
        return neunorm(spikes, self.alpha, self.k, self.v)

    def extra_repr(self) -> str:
        return f"shape={tuple(self.alpha.shape)}, k={self.k}, v={self.v}"

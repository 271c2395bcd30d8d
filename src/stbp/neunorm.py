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

from stbp import kernels


def neunorm(
    spikes: torch.Tensor, alpha: torch.Tensor, k: float = 0.9, v: float | None = None
) -> torch.Tensor:
    """Auxiliary-neuron normalization of `spikes` `[T, B, F, H, W]` (see module docstring);
    `alpha` broadcasts against `[F, H, W]`. Returns `o - alpha * x`, same shape.

    One autograd function: the auxiliary neurons are only `1/F` of the spikes, so the
    backward pass keeps just them (and alpha) and recomputes nothing."""
    scale = _input_weight(spikes.shape[2], k, v)
    return NeuNormFunction.apply(spikes, alpha.expand(spikes.shape[2:]), k, scale)


def neunorm_reference(
    spikes: torch.Tensor, alpha: torch.Tensor, k: float = 0.9, v: float | None = None
) -> torch.Tensor:
    """`neunorm` with plain autograd, step by step: the reference for tests."""
    drive = spikes.sum(dim=2, keepdim=True) * _input_weight(spikes.shape[2], k, v)
    x = torch.zeros_like(drive[0])
    aux = []
    for d_t in drive:
        x = k * x + d_t
        aux.append(x)
    return spikes - alpha * torch.stack(aux)


def _input_weight(channels: int, k: float, v: float | None) -> float:
    """The auxiliary neuron's weight on its summed input, `v / F^2` (`v = F (1 - k)` unless
    given)."""
    v = channels * (1 - k) if v is None else v
    return v / channels**2


def neunorm_forward(o: torch.Tensor, alpha: torch.Tensor, k: float, scale: float, dim: int):
    """The auxiliary neurons `x[t] = k x[t-1] + scale * sum_f o[t]` (summed over `dim`) and
    the normalized output `o - alpha * x`; returns `(output, x)`."""
    drive = o.sum(dim=dim, keepdim=True, dtype=_compute_dtype(o)) * scale
    x = [drive[0]]
    for t in range(1, o.shape[0]):
        x.append(k * x[-1] + drive[t])
    x = torch.stack(x)
    return o - alpha * x, x


def neunorm_backward(grad: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor, k: float,
                     scale: float, dim: int):
    """Gradients of `neunorm_forward` w.r.t. `o` and `alpha`: the auxiliary neurons' gradient
    runs back through their recursion, `d[t] = -sum_f alpha grad[t] + k d[t+1]`."""
    through_x = -(grad * alpha).sum(dim=dim, keepdim=True, dtype=x.dtype)
    d = [through_x[-1]]
    for t in range(grad.shape[0] - 2, -1, -1):
        d.append(through_x[t] + k * d[-1])
    d = torch.stack(d[::-1])
    return grad + scale * d, -(grad * x).sum(dim=(0, 1))


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


class NeuNormFunction(torch.autograd.Function):
    """`neunorm` forward and backward, run on the spikes in their memory order (channels_last
    stays channels_last) by the compiled kernels above."""

    @staticmethod
    def forward(ctx, spikes, alpha, k, scale):
        order = kernels.memory_order(spikes)
        alpha_order = [d - 2 for d in order[2:]]
        dim = order.index(2)
        alpha_p = alpha.permute(alpha_order)
        out, x = kernels.run(neunorm_forward, spikes.permute(order), alpha_p, k, scale, dim)
        ctx.save_for_backward(x, alpha_p)
        ctx.params = (k, scale, dim)
        ctx.order, ctx.alpha_order = order, alpha_order
        return out.permute(kernels.inverse(order))

    @staticmethod
    def backward(ctx, grad):
        x, alpha_p = ctx.saved_tensors
        grad_o, grad_alpha = kernels.run(
            neunorm_backward, grad.permute(ctx.order), x, alpha_p, *ctx.params
        )
        return (grad_o.permute(kernels.inverse(ctx.order)),
                grad_alpha.permute(kernels.inverse(ctx.alpha_order)), None, None)


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

"""Algorithm 1 of the paper: the explicitly iterative leaky integrate-and-fire neuron.

**Layout.** Multi-step tensors are `[T, B, ...]` everywhere in stbp: time first, then batch,
then the neuron's own shape (channels, height, width or features).

With synaptic input `x[t] = W o_in[t] + b`, Algorithm 1 updates, for t = 0 .. T-1,

    u[t] = decay * u[t-1] * (1 - o[t-1]) + x[t]      (leak, reset by the last spike, integrate)
    o[t] = H(u[t] - threshold)                        (fire when u > threshold)

from `u[-1] = o[-1] = 0`. STBP back-propagates through space (x) and time (u, and the reset
term `1 - o`, which is not detached); `H` gets an approximated derivative from `surrogate.py`.

`lif` is the fused implementation used for training; `lif_reference` is the plain per-step
autograd version it is tested against.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from stbp import kernels
from stbp import surrogate as sg


class LIFParameters(NamedTuple):
    """Constants of the iterative LIF neuron (defaults: the authors' MNIST/N-MNIST code)."""

    decay: float = 0.2  # k_tau, the leak factor per step
    threshold: float = 0.5  # V_th
    surrogate: str = "rect"  # name of the approximated spike derivative
    width: float = 1.0  # surrogate width (the rectangle's `a`)


def lif_step(
    x: torch.Tensor, u: torch.Tensor, o: torch.Tensor, p: LIFParameters
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of Algorithm 1 with plain autograd: returns `(o[t], u[t])`."""
    u = p.decay * u * (1 - o) + x
    return sg.spike(u - p.threshold, p.surrogate, p.width), u


def lif_reference(x: torch.Tensor, p: LIFParameters | None = None) -> torch.Tensor:
    """Algorithm 1 as a per-step loop building the autograd graph: the reference for tests."""
    p = p or LIFParameters()
    u = torch.zeros_like(x[0])
    o = torch.zeros_like(x[0])
    spikes = []
    for x_t in x:
        o, u = lif_step(x_t, u, o, p)
        spikes.append(o)
    return torch.stack(spikes)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def scan_forward(x: torch.Tensor, decay: float, threshold: float):
    """Algorithm 1 without a graph: returns `(u, spikes, spike count)`; `u` and the spikes in
    the input's dtype (`u` is computed in at least fp32 and stored rounded), the count in fp32
    (computed in the same compiled kernel: the firing rate costs no extra pass in Python)."""
    compute = _compute_dtype(x.dtype)
    # 0/1 as tensors and the reset as a product: the compiled CPU kernel vectorises this
    # 3x better than a boolean mask converted to floats.
    one = torch.ones((), dtype=compute, device=x.device)
    zero = torch.zeros_like(one)
    u = x[0].to(compute)
    o = torch.where(u > threshold, one, zero)
    potentials, spikes = [u.to(x.dtype)], [o.to(x.dtype)]
    for t in range(1, x.shape[0]):
        u = x[t] + decay * u * (1 - o)
        o = torch.where(u > threshold, one, zero)
        potentials.append(u.to(x.dtype))
        spikes.append(o.to(x.dtype))
    spikes = torch.stack(spikes)
    return torch.stack(potentials), spikes, spikes.sum(dtype=torch.float32)


def scan_backward(
    u_all: torch.Tensor, grad: torch.Tensor, decay: float, threshold: float,
    surrogate: str, width: float,
) -> torch.Tensor:
    """STBP through Algorithm 1 as a linear scan (see `LIFFunction`): returns dL/dx.

    Step by step from the last, so that no per-step coefficient is kept for the whole window.
    """
    surrogate_fn = sg.get(surrogate)
    compute = _compute_dtype(u_all.dtype)
    g = None
    grads = []
    for t in range(u_all.shape[0] - 1, -1, -1):
        u = u_all[t].to(compute)
        h = surrogate_fn(u - threshold, width)
        g_t = grad[t].to(compute) * h
        if g is not None:
            g_t = g_t + decay * ((u <= threshold).to(compute) - u * h) * g
        g = g_t
        grads.append(g.to(grad.dtype))
    return torch.stack(grads[::-1])


class LIFFunction(torch.autograd.Function):
    """Multi-step LIF with a hand-written STBP backward.

    The forward runs the recursion without an autograd graph and saves only the membrane
    potential `u` (spikes are `u > threshold`). With `h = h(u - V_th)` the surrogate
    derivative and `k = 1 - o`, STBP's chain rule through the spike and the reset term

        dL/do[t] = g[t] - decay * u[t] * dL/du[t+1]
        dL/du[t] = dL/do[t] * h[t] + decay * k[t] * dL/du[t+1]

    collapses to a linear scan, `dL/du[t] = g[t] h[t] + decay (k[t] - u[t] h[t]) dL/du[t+1]`,
    run from the last step back (`scan_backward`); `dL/dx[t] = dL/du[t]`. Both scans go
    through `stbp.kernels.run` (compiled, with an eager fallback).
    """

    @staticmethod
    def forward(ctx, x, decay, threshold, surrogate, width):
        order = kernels.memory_order(x)
        u_all, spikes, count = kernels.run(scan_forward, _rows(x, order), decay, threshold)
        ctx.save_for_backward(u_all)
        ctx.params = (decay, threshold, surrogate, width)
        ctx.order = order
        ctx.mark_non_differentiable(count)
        return _unrows(spikes, x.shape, order), count

    @staticmethod
    def backward(ctx, grad_spikes, _grad_count):
        (u_all,) = ctx.saved_tensors
        grad = kernels.run(scan_backward, u_all, _rows(grad_spikes, ctx.order), *ctx.params)
        return _unrows(grad, grad_spikes.shape, ctx.order), None, None, None, None


# The kernels see `[T, N]` in the input's own memory order, so one compiled graph serves
# every layer and channels_last activations stay channels_last without a copy.
def _rows(x: torch.Tensor, order: list[int]) -> torch.Tensor:
    return x.permute(order).reshape(x.shape[0], -1)


def _unrows(rows: torch.Tensor, shape: torch.Size, order: list[int]) -> torch.Tensor:
    return rows.view([shape[d] for d in order]).permute(kernels.inverse(order))


def lif(
    x: torch.Tensor,
    decay: float = 0.2,
    threshold: float = 0.5,
    surrogate: str = "rect",
    width: float = 1.0,
) -> torch.Tensor:
    """Algorithm 1 over all time steps: synaptic input `x` `[T, B, ...]` to spikes (0/1, same
    shape and dtype), differentiable by STBP with the approximated derivative `surrogate`."""
    return lif_with_count(x, decay, threshold, surrogate, width)[0]


def lif_with_count(
    x: torch.Tensor, decay: float, threshold: float, surrogate: str, width: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """`lif`, and the number of spikes it emitted (a 0-dim fp32 tensor, not differentiable)."""
    sg.get(surrogate)
    if x.dim() < 2:
        raise ValueError(f"lif expects [T, B, ...] input, got shape {tuple(x.shape)}")
    return LIFFunction.apply(x, decay, threshold, surrogate, width)


class LIF(nn.Module):
    """Multi-step iterative LIF neurons (`[T, B, ...]` in and out); state starts at zero in
    every forward call, so nothing leaks between two batches.

    `last_rate` holds the mean firing rate of the last forward pass (a 0-dim tensor).
    """

    def __init__(
        self,
        decay: float = 0.2,
        threshold: float = 0.5,
        surrogate: str = "rect",
        width: float = 1.0,
    ):
        super().__init__()
        sg.get(surrogate)
        self.p = LIFParameters(decay, threshold, surrogate, width)
        self.last_rate: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spikes, count = lif_with_count(x, *self.p)
        self.last_rate = count / spikes.numel()
        return spikes

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.p._asdict().items())

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

import functools
import math
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

    def validate(self) -> LIFParameters:
        """`self` if every constant is allowed, else one `ValueError` naming the parameter,
        its value and what is allowed: decay in [0, 1], threshold and width finite and > 0,
        a surrogate of `surrogate.SURROGATES`."""
        if not sg.is_number(self.decay) or not 0 <= self.decay <= 1:
            raise ValueError(
                f"LIF decay = {self.decay!r} is not allowed; it must be a number "
                "in [0, 1] (the leak factor per step)"
            )
        if not sg.is_number(self.threshold) or not 0 < self.threshold < math.inf:
            raise ValueError(
                f"LIF threshold = {self.threshold!r} is not allowed; it must be a finite number > 0"
            )
        sg.check(self.surrogate, self.width)
        return self


def lif_step(
    x: torch.Tensor, u: torch.Tensor, o: torch.Tensor, p: LIFParameters
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of Algorithm 1 with plain autograd: returns `(o[t], u[t])`."""
    u = p.decay * u * (1 - o) + x
    return sg.spike(u - p.threshold, p.surrogate, p.width), u


def lif_reference(x: torch.Tensor, p: LIFParameters | None = None) -> torch.Tensor:
    """Algorithm 1 as a per-step loop building the autograd graph: the reference for tests."""
    p = (p or LIFParameters()).validate()
    u = torch.zeros_like(x[0])
    o = torch.zeros_like(x[0])
    spikes = []
    for x_t in x:
        o, u = lif_step(x_t, u, o, p)
        spikes.append(o)
    return torch.stack(spikes)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def scan_forward(
    x: torch.Tensor, decay: float, threshold: float, window: tuple[float, float, float] | None
):
    """Algorithm 1 without a graph: returns `(saved, spikes, spike count)`.

    The spikes are in the input's dtype, the count in fp32 (computed in the same compiled
    kernel: the firing rate costs no extra pass in Python). `u` is computed in at least fp32;
    `saved` is what the backward needs of it: `u` itself in fp32 and float64; under bf16 and
    fp16, `v = u - threshold` in bf16, rounded so that the backward's decisions equal this
    forward's (`_round_keeping_decisions`, with `window` from `_window_in_bf16`).
    """
    compute = _compute_dtype(x.dtype)
    exact = compute == x.dtype
    # 0/1 as tensors and the reset as a product: the compiled CPU kernel vectorises this
    # 3x better than a boolean mask converted to floats.
    one = torch.ones((), dtype=compute, device=x.device)
    zero = torch.zeros_like(one)
    u = x[0].to(compute)
    o = torch.where(u > threshold, one, zero)
    saved, spikes = [], []
    for t in range(x.shape[0]):
        if t:
            u = x[t] + decay * u * (1 - o)
            o = torch.where(u > threshold, one, zero)
        saved.append(u if exact else _round_keeping_decisions(u - threshold, window))
        spikes.append(o.to(x.dtype))
    spikes = torch.stack(spikes)
    return torch.stack(saved), spikes, spikes.sum(dtype=torch.float32)


def _round_keeping_decisions(
    v: torch.Tensor, window: tuple[float, float, float] | None
) -> torch.Tensor:
    """`v = u - threshold` (fp32) in bf16, on the same side of 0 (the spike: rounding to
    nearest keeps the sign of any `v` the kernel computes for a threshold above 1e-32) and
    of the surrogate's jumps at `|v| = c`, with `window = (c, inner, outer)`: inside, `v` is
    clamped to `inner`, the largest bf16 number below `c`; outside, where `h = 0` and only
    the sign counts, it becomes `+-outer`, the smallest positive bf16 number >= `c`."""
    if window is None:
        return v.to(torch.bfloat16)
    c, inner, outer = window
    outside = torch.where(v > 0, outer, -outer)
    return torch.where(v.abs() < c, v.clamp(-inner, inner), outside).to(torch.bfloat16)


@functools.cache
def _window_in_bf16(surrogate: str, width: float) -> tuple[float, float, float] | None:
    """`(c, inner, outer)` for `_round_keeping_decisions`: the surrogate's half-width as the
    kernels compare it (fp32), the largest bf16 number below it and the smallest positive one
    at or above it; None for a surrogate without jumps."""
    if surrogate not in sg.WINDOWED:
        return None
    c = torch.tensor(sg.WINDOWED[surrogate](width), dtype=torch.float32)
    outer = c.to(torch.bfloat16)
    up, down = torch.tensor([math.inf, -math.inf], dtype=torch.bfloat16)
    if outer < c or outer == 0:
        outer = torch.nextafter(outer, up)
    inner = torch.nextafter(outer, down)
    return c.item(), inner.item(), outer.item()


def scan_backward(
    saved: torch.Tensor,
    grad: torch.Tensor,
    decay: float,
    threshold: float,
    surrogate: str,
    width: float,
) -> torch.Tensor:
    """STBP through Algorithm 1 as a linear scan (see `LIFFunction`): returns dL/dx.

    Step by step from the last, so that no per-step coefficient is kept for the whole window.
    """
    surrogate_fn = sg.get(surrogate)
    compute = _compute_dtype(grad.dtype)
    g = None
    grads = []
    for t in range(saved.shape[0] - 1, -1, -1):
        u, v = _potential(saved[t], compute, threshold)
        h = surrogate_fn(v, width)
        g_t = grad[t].to(compute) * h
        if g is not None:
            g_t = g_t + decay * ((v <= 0).to(compute) - u * h) * g
        g = g_t
        grads.append(g.to(grad.dtype))
    return torch.stack(grads[::-1])


def _potential(saved: torch.Tensor, compute: torch.dtype, threshold: float):
    """`(u, v = u - threshold)` in `compute` from what `scan_forward` saved (u, or v in bf16)."""
    if saved.dtype == compute:
        return saved, saved - threshold
    v = saved.to(compute)
    return v + threshold, v


class LIFFunction(torch.autograd.Function):
    """Multi-step LIF with a hand-written STBP backward.

    The forward runs the recursion without an autograd graph and saves only the membrane
    potential (spikes are `u > threshold`): `u` in fp32 and float64; under bf16 and fp16
    `v = u - threshold` in bf16, rounded so that the backward takes every spike and surrogate
    window exactly as the fp32 forward did. With `h = h(u - V_th)` the surrogate
    derivative and `k = 1 - o`, STBP's chain rule through the spike and the reset term

        dL/do[t] = g[t] - decay * u[t] * dL/du[t+1]
        dL/du[t] = dL/do[t] * h[t] + decay * k[t] * dL/du[t+1]

    collapses to a linear scan, `dL/du[t] = g[t] h[t] + decay (k[t] - u[t] h[t]) dL/du[t+1]`,
    run from the last step back (`scan_backward`); `dL/dx[t] = dL/du[t]`. Both scans go
    through `stbp.kernels.run` (compiled, with an eager fallback).

    Precision under bf16: `k[t]` and the rectangle's `h[t]` are exact (the forward's own
    decisions); `u[t] = V_th + v[t]` in `u[t] h[t]`, and a smooth surrogate's `h(v[t])`, carry
    the bf16 rounding of `v[t]` (at most 2^-8 |v[t]|, 2^-7 |v[t]| next to the rectangle's
    edges); the scan runs in fp32 and only dL/dx is rounded, to the input's dtype.
    """

    @staticmethod
    def forward(ctx, x, decay, threshold, surrogate, width):
        order = kernels.memory_order(x)
        exact = _compute_dtype(x.dtype) == x.dtype
        window = None if exact else _window_in_bf16(surrogate, width)
        saved, spikes, count = kernels.run(scan_forward, _rows(x, order), decay, threshold, window)
        ctx.save_for_backward(saved)
        ctx.params = (decay, threshold, surrogate, width)
        ctx.order = order
        ctx.mark_non_differentiable(count)
        return _unrows(spikes, x.shape, order), count

    @staticmethod
    def backward(ctx, grad_spikes, _grad_count):
        (saved,) = ctx.saved_tensors
        grad = kernels.run(scan_backward, saved, _rows(grad_spikes, ctx.order), *ctx.params)
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
    LIFParameters(decay, threshold, surrogate, width).validate()
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
        self.p = LIFParameters(decay, threshold, surrogate, width).validate()
        self.last_rate: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spikes, count = lif_with_count(x, *self.p)
        self.last_rate = count / spikes.numel()
        return spikes

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.p._asdict().items())

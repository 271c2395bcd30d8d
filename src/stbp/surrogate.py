"""Approximated spike derivatives: what STBP uses for the non-differentiable step.

The spike is `o = H(u - V_th)` (Algorithm 1). Its derivative is zero almost everywhere,
so the backward pass replaces `do/du` by a pseudo-derivative `h(u - V_th)`. The paper
uses a rectangle (section "Spatio-temporal backpropagation" of arXiv 1809.05793):

    do/du ≈ (1/a) * sign(|u - V_th| < a/2)

with `a = 1` in the authors' code. Every surrogate here is a bump of unit area and peak
height `1/width`, so one `width` parameter means the same thing for all of them.
Each function takes `v = u - V_th` and returns `h(v)`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

Surrogate = Callable[[torch.Tensor, float], torch.Tensor]


def rect(v: torch.Tensor, width: float) -> torch.Tensor:
    """The paper's rectangular window: `(1/width) * 1[|v| < width/2]`."""
    return (v.abs() < width / 2).to(v.dtype) / width


def triangle(v: torch.Tensor, width: float) -> torch.Tensor:
    """Triangle of half-base `width`: `max(0, 1 - |v|/width) / width`."""
    return (1 - v.abs() / width).clamp(min=0) / width


def sigmoid(v: torch.Tensor, width: float) -> torch.Tensor:
    """Derivative of `sigmoid(k v)` with sharpness `k = 4 / width`."""
    k = 4.0 / width
    s = torch.sigmoid(k * v)
    return k * s * (1 - s)


def atan(v: torch.Tensor, width: float) -> torch.Tensor:
    """Derivative of `atan(pi v / width) / pi + 1/2`: a Lorentzian bump."""
    return 1.0 / (width * (1 + (math.pi / width * v) ** 2))


SURROGATES: dict[str, Surrogate] = {
    "rect": rect,
    "triangle": triangle,
    "sigmoid": sigmoid,
    "atan": atan,
}


def get(name: str) -> Surrogate:
    """The surrogate derivative called `name`; `ValueError` listing the valid names otherwise."""
    try:
        return SURROGATES[name]
    except KeyError:
        valid = ", ".join(sorted(SURROGATES))
        raise ValueError(f"unknown surrogate {name!r}; choose one of: {valid}") from None


class SpikeFunction(torch.autograd.Function):
    """Heaviside step forward, surrogate derivative backward (one time step)."""

    @staticmethod
    def forward(ctx, v: torch.Tensor, surrogate: str, width: float) -> torch.Tensor:
        ctx.save_for_backward(v)
        ctx.surrogate, ctx.width = surrogate, width
        return (v > 0).to(v.dtype)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (v,) = ctx.saved_tensors
        return grad_out * get(ctx.surrogate)(v, ctx.width), None, None


def spike(v: torch.Tensor, surrogate: str = "rect", width: float = 1.0) -> torch.Tensor:
    """Algorithm 1, firing: `o = H(v)` with `v = u - V_th`, differentiable through `surrogate`."""
    get(surrogate)
    return SpikeFunction.apply(v, surrogate, width)

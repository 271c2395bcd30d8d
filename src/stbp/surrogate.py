"""Approximated spike derivatives: what STBP uses for the non-differentiable step.

The spike is `o = H(u - V_th)` (Algorithm 1). Its derivative is zero almost everywhere,
so the backward pass replaces `do/du` by a pseudo-derivative `h(u - V_th)`. The paper
uses a rectangle (section "Spatio-temporal backpropagation" of arXiv 1809.05793):

    do/du ≈ (1/a) * sign(|u - V_th| < a/2)

with `a = 1` in the authors' code. Every surrogate here is a bump of unit area and peak
height `1/width`, so one `width` parameter means the same thing for all of them.
Each function takes `v = u - V_th` and returns `h(v)`.

The rectangle is the one surrogate with jumps: `h` is `1/width` inside its window and 0
outside, so a `v` rounded across an edge changes `h` by `1/width`. `WINDOWED` names it with
where it jumps, so that the fused LIF (`neuron.py`) can store a rounded `v` on the same side.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import torch

Surrogate = Callable[[torch.Tensor, float], torch.Tensor]


def rect(v: torch.Tensor, width: float) -> torch.Tensor:
    """The paper's rectangular window: `(1/width) * 1[|v| < width/2]`."""
    return (v.abs() < rect_half_width(width)).to(v.dtype) / width


def rect_half_width(width: float) -> float:
    """Where the rectangle jumps: at `|v| = width/2`."""
    return width / 2


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


# Surrogates with jumps: each is nonzero exactly where `|v| < half_width(width)`.
WINDOWED: dict[str, Callable[[float], float]] = {"rect": rect_half_width}


def get(name: str) -> Surrogate:
    """The surrogate derivative called `name`; `ValueError` listing the valid names otherwise."""
    try:
        return SURROGATES[name]
    except (KeyError, TypeError):
        valid = ", ".join(sorted(SURROGATES))
        raise ValueError(f"unknown surrogate {name!r}; choose one of: {valid}") from None


def check(name: str, width: float) -> None:
    """`ValueError` naming the parameter unless `name` is a known surrogate and `width` a
    finite number > 0 (a zero width makes every gradient NaN)."""
    get(name)
    if not is_number(width) or not 0 < width < math.inf:
        raise ValueError(
            f"surrogate width = {width!r} is not allowed; it must be a finite "
            "number > 0 (the authors' code uses 1)"
        )


def is_number(value) -> bool:
    """A real number (int, float, numpy scalar), not a bool, a string or a tensor."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


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
    check(surrogate, width)
    return SpikeFunction.apply(v, surrogate, width)

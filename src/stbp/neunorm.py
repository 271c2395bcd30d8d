"""NeuNorm: the paper's neuron normalization with auxiliary neurons.

For a convolutional layer n with F feature maps, one auxiliary neuron per spatial position
(i, j) integrates the spikes of all F maps at that position, with its own decay k_tau2
(section "Neuron normalization (NeuNorm)" of the paper; the paper's auxiliary-neuron equation):

    x[t](i,j) = k_tau2 * x[t-1](i,j) + (v / F^2) * sum_f o[t](i,j,f)       (auxiliary neuron)

and what layer n+1 receives is the spikes minus the auxiliary output, weighted by trainable
per-position weights alpha (the paper's equation for the membrane potential of layer n+1):

    u_{n+1}[t] = k_tau1 u_{n+1}[t-1] (1 - o_{n+1}[t-1]) + W * (o[t] - alpha(i,j,f) x[t](i,j)) + b

so `NeuNorm` sits between a layer's LIF and the next layer's synapses. The paper leaves v and
the initial alpha open, and the authors released no NeuNorm code; two readings exist:

- `"stbp"` (ours, the default): `v = F (1 - k_tau2)`, i.e. the drive is `(1 - k) * mean_f o`,
  which makes x an exponential moving average of the mean firing rate across the F maps
  (x stays in [0, 1]); alpha starts at 1, so the next layer sees the spikes minus that rate.
- `"spikingjelly"` (SpikingJelly's `layer.NeuNorm`): its docstring derives v/F from
  `k_tau2 + vF = 1`; its code multiplies `sum_f o` by `(1 - k) / F^2`, which is `v = 1 - k`
  here (a drive F times weaker than ours), and initialises alpha (its `w`) with
  `kaiming_uniform_(a=sqrt(5))`: uniform in `+-1 / sqrt(H * W)` for a `[F, H, W]` weight.

`NeuNorm.from_reading(reading, ...)` and `build(..., neunorm_reading=...)` pick one.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from stbp import kernels
from stbp.layers import check_choice, check_fraction, check_int, is_number

READINGS = ("stbp", "spikingjelly")
KAIMING_UNIFORM = "kaiming-uniform"  # alpha_init: SpikingJelly's init of its weight w


def neunorm(
    spikes: torch.Tensor, alpha: torch.Tensor, k: float = 0.9, v: float | None = None
) -> torch.Tensor:
    """Auxiliary-neuron normalization of `spikes` `[T, B, F, H, W]`: the paper's auxiliary
    neuron `x[t] = k x[t-1] + (v/F^2) sum_f o[t]` and the normalized input `o - alpha * x`
    of the next layer (see module docstring; `v = None`: ours, `F (1 - k)`). `alpha`
    broadcasts against `[F, H, W]`. Returns `o - alpha * x`, same shape.

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


def neunorm_step(
    o_t: torch.Tensor,
    x_prev: torch.Tensor | None,
    alpha: torch.Tensor,
    k: float = 0.9,
    v: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One time step of `neunorm` for streaming, with plain autograd: the spikes `o_t`
    `[B, F, H, W]` of this step and the auxiliary neurons `x_prev` `[B, 1, H, W]` of the last
    one (None: zero, the first step). The paper's auxiliary neuron
    `x[t] = k x[t-1] + (v/F^2) sum_f o[t]`, and the next layer's normalized input
    `o[t] - alpha * x[t]` (the paper's equation for u_{n+1}). Returns `(o[t] - alpha x[t], x[t])`.
    """
    drive = o_t.sum(dim=1, keepdim=True) * _input_weight(o_t.shape[1], k, v)
    x = drive if x_prev is None else k * x_prev + drive
    return o_t - alpha * x, x


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


def neunorm_backward(
    grad: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor, k: float, scale: float, dim: int
):
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
        return (
            grad_o.permute(kernels.inverse(ctx.order)),
            grad_alpha.permute(kernels.inverse(ctx.alpha_order)),
            None,
            None,
        )


class NeuNorm(nn.Module):
    """NeuNorm for a conv layer's spikes `[T, B, channels, height, width]`: the paper's
    auxiliary neurons with decay `k` (k_tau2) and input weight `v / F^2` (`v = None`: ours,
    `F (1 - k)`), and trainable per-position weights alpha `[channels, height, width]`
    starting at `alpha_init` (a number, or `"kaiming-uniform"`: SpikingJelly's init)."""

    def __init__(
        self,
        channels: int,
        height: int,
        width: int,
        k: float = 0.9,
        v: float | None = None,
        alpha_init: float | str = 1.0,
    ):
        super().__init__()
        shape = tuple(
            check_int(n, s)
            for n, s in (("channels", channels), ("height", height), ("width", width))
        )
        self.k = check_fraction("NeuNorm k (k_tau2)", k)
        if v is not None and not (is_number(v) and v > 0):
            raise ValueError(f"NeuNorm v must be a number > 0 (or None: F (1 - k)), got {v!r}")
        self.v = None if v is None else float(v)
        self.alpha = nn.Parameter(_initial_alpha(shape, alpha_init))

    @classmethod
    def from_reading(
        cls, reading: str, channels: int, height: int, width: int, k: float = 0.9
    ) -> NeuNorm:
        """NeuNorm as `reading` (`"stbp"` or `"spikingjelly"`) sets v and alpha's init (see
        the module docstring). SpikingJelly's random alpha is drawn from torch's global RNG,
        so `torch.manual_seed` makes it reproducible."""
        check_choice("neunorm_reading", reading, READINGS)
        if reading == "spikingjelly":
            return cls(channels, height, width, k, v=1 - k, alpha_init=KAIMING_UNIFORM)
        return cls(channels, height, width, k)

    def forward(self, spikes: torch.Tensor) -> torch.Tensor:
        return neunorm(spikes, self.alpha, self.k, self.v)

    def step(
        self, o_t: torch.Tensor, x_prev: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One time step (`neunorm_step`): spikes `o_t` `[B, F, H, W]` and the auxiliary
        neurons of the last step (None at the first) to `(normalized output, auxiliary x)`;
        the module keeps no state."""
        return neunorm_step(o_t, x_prev, self.alpha, self.k, self.v)

    def extra_repr(self) -> str:
        return f"shape={tuple(self.alpha.shape)}, k={self.k}, v={self.v}"


def _initial_alpha(shape: tuple[int, int, int], alpha_init: float | str) -> torch.Tensor:
    """alpha's first value: a constant, or SpikingJelly's `kaiming_uniform_(a=sqrt(5))`,
    which for a `[F, H, W]` tensor (fan-in H * W) is uniform in `+-1 / sqrt(H * W)`."""
    if alpha_init == KAIMING_UNIFORM:
        return nn.init.kaiming_uniform_(torch.empty(shape), a=math.sqrt(5))
    if not is_number(alpha_init):
        raise ValueError(
            f"NeuNorm alpha_init must be a number or {KAIMING_UNIFORM!r}, got {alpha_init!r}"
        )
    return torch.full(shape, float(alpha_init))

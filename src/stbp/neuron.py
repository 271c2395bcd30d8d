"""Algorithm 1 of the paper: the explicitly iterative leaky integrate-and-fire neuron, and
its variants (soft reset, a detached reset, a learnable decay and threshold).

**Layout.** Multi-step tensors are `[T, B, ...]` everywhere in stbp: time first, then batch,
then the neuron's own shape (channels, height, width or features).

With synaptic input `x[t] = W o_in[t] + b`, Algorithm 1 updates, for t = 0 .. T-1,

    u[t] = decay * u[t-1] * (1 - o[t-1]) + x[t]      (leak, reset by the last spike, integrate)
    o[t] = H(u[t] - threshold)                        (fire when u > threshold)

from `u[-1] = o[-1] = 0`. STBP back-propagates through space (x) and time (u, and the reset
term `1 - o`, which is not detached); `H` gets an approximated derivative from `surrogate.py`.

Beyond the paper (our additions, off by default): `reset="soft"` subtracts the threshold
instead of zeroing, `u[t] = decay * (u[t-1] - threshold * o[t-1]) + x[t]`; `detach_reset`
stops the gradient through the spike in the reset term (`o[t-1]` above, as SpikingJelly's
and snnTorch's option does); `decay` and `threshold` may be tensors (0-dim, or one value per
channel, dim 2 of `[T, B, C, ...]`) that are learnt. `decay = 1` is the integrate-and-fire
neuron.

`lif` is the fused implementation used for training; `lif_step` one step with plain
autograd (the streaming API, with an explicit `LIFState`); `lif_reference` the per-step loop
the fused kernel is tested against.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple, Union

import torch
from torch import nn

from stbp import kernels
from stbp import surrogate as sg

Value = Union[float, torch.Tensor]  # noqa: UP007 (a runtime alias)
RESETS = ("hard", "soft")


class LIFParameters(NamedTuple):
    """Constants of the iterative LIF neuron (defaults: the authors' MNIST/N-MNIST code).

    `decay` and `threshold` may be Python numbers or tensors (0-dim, or shape `[C]`: one
    value per channel, dim 2 of a `[T, B, C, ...]` input), which may require grad."""

    decay: Value = 0.2  # k_tau, the leak factor per step
    threshold: Value = 0.5  # V_th
    surrogate: str = "rect"  # name of the approximated spike derivative
    width: float = 1.0  # surrogate width (the rectangle's `a`)
    reset: str = "hard"  # "hard": u = 0 after a spike (Algorithm 1); "soft": u -= threshold
    detach_reset: bool = False  # no gradient through the spike in the reset term

    def validate(self) -> LIFParameters:
        """`self` if every setting is allowed, else one `ValueError` naming the parameter,
        its value and what is allowed: decay in [0, 1], threshold finite and > 0 (numbers or
        floating-point tensors of 0 or 1 dimensions), a surrogate of `surrogate.SURROGATES`
        with a finite width > 0, reset "hard" or "soft", detach_reset True or False."""
        _check_value(
            "decay", self.decay, _is_decay, "a number in [0, 1] (the leak factor per step)"
        )
        _check_value("threshold", self.threshold, _is_threshold, "a finite number > 0")
        sg.check(self.surrogate, self.width)
        if not isinstance(self.reset, str) or self.reset not in RESETS:
            raise ValueError(f"LIF reset = {self.reset!r} is not allowed; choose 'hard' or 'soft'")
        if not isinstance(self.detach_reset, bool):
            raise ValueError(
                f"LIF detach_reset = {self.detach_reset!r} is not allowed; it must be True or False"
            )
        return self


def _is_decay(v):
    return (v >= 0) & (v <= 1)


def _is_threshold(v):
    return (v > 0) & (v < math.inf)


def _check_value(name: str, value, allowed, meaning: str) -> None:
    """One `ValueError` unless `value` is a number, or a floating-point tensor of shape []
    or [C], whose values are all `allowed` (`meaning`: "a number ...", which are)."""
    if isinstance(value, torch.Tensor):
        shaped = value.is_floating_point() and value.dim() <= 1 and value.numel() > 0
        if shaped and bool(allowed(value.detach()).all()):
            return
        raise ValueError(
            f"LIF {name} = tensor of shape {list(value.shape)} and dtype {value.dtype} is not "
            f"allowed; it must be a floating-point tensor of shape [] or [C] (one value per "
            f"channel), each value {meaning}"
        )
    if not sg.is_number(value) or not allowed(value):
        raise ValueError(f"LIF {name} = {value!r} is not allowed; it must be {meaning}")


class LIFState(NamedTuple):
    """The state of LIF neurons between two steps: membrane potential and last spikes."""

    u: torch.Tensor  # u[t], the membrane potential
    o: torch.Tensor  # o[t], the spikes (0/1)


def lif_step(
    x_t: torch.Tensor, state: LIFState | None, p: LIFParameters
) -> tuple[torch.Tensor, LIFState]:
    """One step of the LIF neuron with plain autograd: input `x_t` `[B, ...]` (`[B, C, ...]`
    for per-channel parameters), state `(u[t-1], o[t-1])` (None: zeros) to `(o[t], state)`:

        hard:  u[t] = decay * u[t-1] * (1 - o[t-1]) + x[t]    (Algorithm 1)
        soft:  u[t] = decay * (u[t-1] - threshold * o[t-1]) + x[t]
        o[t] = H(u[t] - threshold)                             (surrogate derivative backward)

    with `o[t-1]` detached in the reset term when `p.detach_reset`. `p` is validated."""
    return _step(x_t, state, p.validate())


def _step(x_t: torch.Tensor, state: LIFState | None, p: LIFParameters):
    decay, threshold = _per_channel(p.decay, x_t, 1), _per_channel(p.threshold, x_t, 1)
    if state is None:
        u = x_t
    else:
        o = state.o.detach() if p.detach_reset else state.o
        if p.reset == "hard":
            u = decay * state.u * (1 - o) + x_t
        else:
            u = decay * (state.u - threshold * o) + x_t
    o = sg.spike(u - threshold, p.surrogate, p.width)
    return o, LIFState(u, o)


def _per_channel(value: Value, x: torch.Tensor, channel_dim: int) -> Value:
    """`value` broadcastable against `x`: a `[C]` tensor as `[C, 1, ...]` on `channel_dim`."""
    if not isinstance(value, torch.Tensor) or value.dim() == 0:
        return value
    _check_channels(value, x, channel_dim)
    return value.view(-1, *[1] * (x.dim() - channel_dim - 1))


def _check_channels(value: torch.Tensor, x: torch.Tensor, channel_dim: int) -> None:
    if x.dim() <= channel_dim or x.shape[channel_dim] != value.shape[0]:
        layout = "[T, B, C, ...]" if channel_dim == 2 else "[B, C, ...]"
        raise ValueError(
            f"LIF parameters have one value per channel ({value.shape[0]}), but the input "
            f"{layout} has shape {tuple(x.shape)}: its dim {channel_dim} must have that size"
        )


def lif_reference(x: torch.Tensor, p: LIFParameters | None = None) -> torch.Tensor:
    """The LIF neuron as a per-step loop of `lif_step` building the autograd graph: the
    reference for tests."""
    p = (p or LIFParameters()).validate()
    _check_all_channels(p, x)
    state, spikes = None, []
    for x_t in x:
        o, state = lif_step(x_t, state, p)
        spikes.append(o)
    return torch.stack(spikes)


def _check_all_channels(p: LIFParameters, x: torch.Tensor) -> None:
    """One `ValueError` unless every per-channel parameter matches dim 2 of `x` `[T, B, C, ...]`."""
    for value in (p.decay, p.threshold):
        if isinstance(value, torch.Tensor) and value.dim() == 1:
            _check_channels(value, x, 2)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def scan_forward(
    x: torch.Tensor,
    decay: Value,
    threshold: Value,
    window: tuple[float, float, float] | None,
    soft: bool = False,
):
    """The LIF recursion (`lif_step`'s equations) without a graph: returns
    `(saved, spikes, spike count)`. `x` is `[T, N]`, or `[T, outer, C, inner]` with `decay`
    and `threshold` numbers, 0-dim tensors or `[C, 1]` (one per channel).

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
            if soft:
                u = x[t] + decay * (u - threshold * o)
            else:
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
    clamped to `inner`, the largest bf16 number below `c`; outside, to at least `outer`, the
    smallest positive bf16 number >= `c` (rounding to nearest is monotonic, so neither
    crosses `c`). Either way `v` moves by at most one bf16 rounding: the potential itself,
    which the decay's gradient needs, is kept as well as the decisions."""
    if window is None:
        return v.to(torch.bfloat16)
    c, inner, outer = window
    outside = torch.where(v > 0, v.clamp(min=outer), v.clamp(max=-outer))
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


class Variant(NamedTuple):
    """What the backward scan computes besides dL/dx (constants of one compiled variant)."""

    soft: bool = False
    detach_reset: bool = False
    grad_decay: bool = False
    grad_threshold: bool = False


ALGORITHM_1 = Variant()  # hard reset through the spike, gradients for x only


def scan_backward(
    saved: torch.Tensor,
    grad: torch.Tensor,
    decay: Value,
    threshold: Value,
    surrogate: str,
    width: float,
    variant: Variant = ALGORITHM_1,
):
    """STBP through the LIF recursion as a linear scan (see `LIFFunction`): returns
    `(dL/dx, dL/d decay, dL/d threshold)`, the last two summed to the parameter's shape (None
    unless `variant` asks for them).

    Step by step from the last, so that no per-step coefficient is kept for the whole window.
    """
    surrogate_fn = sg.get(surrogate)
    compute = _compute_dtype(grad.dtype)
    g = g_decay = g_threshold = None
    grads = []
    for t in range(saved.shape[0] - 1, -1, -1):
        u, v = _potential(saved[t], compute, threshold)
        h = surrogate_fn(v, width)
        keep = (v <= 0).to(compute)  # k[t] = 1 - o[t]
        g_t = grad[t].to(compute) * h
        if g is not None:
            g_t = g_t + decay * _carry(keep, u, h, threshold, variant) * g
            if variant.grad_decay:  # u[t+1] = decay * (reset u[t]) + x[t+1]
                reset_u = u - threshold * (1 - keep) if variant.soft else u * keep
                g_decay = _add(g_decay, g * reset_u)
        if variant.grad_threshold:
            g_threshold = _add(g_threshold, -g_t if g is None else decay * keep * g - g_t)
        g = g_t
        grads.append(g.to(grad.dtype))
    return torch.stack(grads[::-1]), _sum_to(g_decay, decay), _sum_to(g_threshold, threshold)


def _sum_to(per_neuron: torch.Tensor | None, param: Value) -> torch.Tensor | None:
    """A parameter's gradient summed from every neuron to the parameter: all of them for a
    0-dim one, all but the channel (`[outer, C, inner]`) for one per channel."""
    if per_neuron is None:
        return None
    return per_neuron.sum() if param.dim() == 0 else per_neuron.sum(dim=(0, 2))


def _carry(keep, u, h, threshold, variant: Variant):
    """du[t+1]/du[t] / decay: through the leak and (unless detached) the spike in the reset."""
    if variant.soft:
        return 1 if variant.detach_reset else 1 - threshold * h
    return keep if variant.detach_reset else keep - u * h


def _add(total: torch.Tensor | None, term: torch.Tensor) -> torch.Tensor:
    return term if total is None else total + term


def _potential(saved: torch.Tensor, compute: torch.dtype, threshold: Value):
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
    window exactly as the fp32 forward did. With `h[t] = h(u[t] - V_th)` the surrogate
    derivative, `k[t] = 1 - o[t]`, `g[t]` the gradient arriving at the spikes and
    `d[t] = dL/du[t]` (`d[T] = 0`), STBP's chain rule through the spike and the reset term is,
    for the hard reset (Algorithm 1),

        dL/do[t] = g[t] - decay * u[t] * d[t+1]
        d[t]     = dL/do[t] * h[t] + decay * k[t] * d[t+1]

    and for the soft reset (`u[t+1] = decay * (u[t] - V_th o[t]) + x[t+1]`)

        dL/do[t] = g[t] - decay * V_th * d[t+1]
        d[t]     = dL/do[t] * h[t] + decay * d[t+1]

    where `detach_reset` drops the second term of `dL/do[t]`. Each collapses to a linear scan
    `d[t] = g[t] h[t] + decay * m[t] * d[t+1]` run from the last step back (`scan_backward`),

        m[t] = k[t] - u[t] h[t]    (hard)       m[t] = k[t]    (hard, detach_reset)
        m[t] = 1 - V_th h[t]       (soft)       m[t] = 1       (soft, detach_reset)

    and `dL/dx[t] = d[t]`. The parameters' gradients come out of the same scan:

        dL/d decay = sum_t d[t+1] * r[t],   r[t] = u[t] k[t] (hard), u[t] - V_th o[t] (soft)
        dL/d V_th  = sum_t (decay * k[t] * d[t+1] - d[t])

    (the second from `do[t]/dV_th = -h[t]`, and for the soft reset the direct `-decay o[t]`
    in `u[t+1]`, which `detach_reset` keeps: it detaches the spike, not the threshold; both
    resets and both settings of `detach_reset` reduce to this one sum). They are summed per
    neuron over time in the scan, then over everything but the parameter's own shape (all,
    or all but the channel). Both scans go through `stbp.kernels.run` (compiled, with an
    eager fallback); a fixed (float) decay and threshold compile to the paper's kernel.

    Precision under bf16: `k[t]` and the rectangle's `h[t]` are exact (the forward's own
    decisions); `u[t] = V_th + v[t]` in `u[t] h[t]` and `r[t]`, and a smooth surrogate's
    `h(v[t])`, carry the bf16 rounding of `v[t]` (at most 2^-8 |v[t]|, 2^-7 |v[t]| next to
    the rectangle's edges); the scan runs in fp32 and only dL/dx is rounded, to the input's
    dtype. Tensor parameters are used in fp32 (the compute dtype), so the same holds for
    them; their gradients are returned in the parameters' own dtype.
    """

    @staticmethod
    def forward(ctx, x, decay, threshold, surrogate, width, soft, detach_reset):
        order = kernels.memory_order(x)
        layout = _layout(x, order, _is_per_channel(decay) or _is_per_channel(threshold))
        compute = _compute_dtype(x.dtype)
        window = None if compute == x.dtype else _window_in_bf16(surrogate, width)
        decay_k, threshold_k = (_for_kernel(v, x.device, compute) for v in (decay, threshold))
        saved, spikes, count = kernels.run(
            scan_forward, _rows(x, order, layout), decay_k, threshold_k, window, soft
        )
        ctx.save_for_backward(saved, *(v for v in (decay_k, threshold_k) if _is_tensor(v)))
        ctx.numbers = tuple(None if _is_tensor(v) else v for v in (decay_k, threshold_k))
        ctx.metas = tuple((v.shape, v.dtype) if _is_tensor(v) else None for v in (decay, threshold))
        ctx.params = (surrogate, width)
        ctx.soft, ctx.detach_reset, ctx.order, ctx.layout = soft, detach_reset, order, layout
        ctx.mark_non_differentiable(count)
        return _unrows(spikes, x.shape, order), count

    @staticmethod
    def backward(ctx, grad_spikes, _grad_count):
        saved, *tensors = ctx.saved_tensors
        decay, threshold = (n if n is not None else tensors.pop(0) for n in ctx.numbers)
        wanted = (bool(n) for n in ctx.needs_input_grad[1:3])
        grad, g_decay, g_threshold = kernels.run(
            scan_backward,
            saved,
            _rows(grad_spikes, ctx.order, ctx.layout),
            decay,
            threshold,
            *ctx.params,
            Variant(ctx.soft, ctx.detach_reset, *wanted),
        )
        g_decay, g_threshold = (
            None if g is None else g.view(meta[0]).to(meta[1])
            for g, meta in ((g_decay, ctx.metas[0]), (g_threshold, ctx.metas[1]))
        )
        grad = _unrows(grad, grad_spikes.shape, ctx.order)
        return grad, g_decay, g_threshold, None, None, None, None


# The kernels see `[T, N]` in the input's own memory order, so one compiled graph serves
# every layer and channels_last activations stay channels_last without a copy. With a
# parameter per channel they see `[T, outer, C, inner]` (the same memory), the parameter as
# `[C, 1]`: broadcast in the kernel rather than copied for every neuron.
def _layout(x: torch.Tensor, order: list[int], per_channel: bool) -> list[int]:
    if not per_channel:
        return [x.shape[0], -1]
    at = order.index(2)
    outer = math.prod(x.shape[d] for d in order[1:at])
    inner = math.prod(x.shape[d] for d in order[at + 1 :])
    return [x.shape[0], outer, x.shape[2], inner]


def _rows(x: torch.Tensor, order: list[int], layout: list[int]) -> torch.Tensor:
    return x.permute(order).reshape(layout)


def _unrows(rows: torch.Tensor, shape: torch.Size, order: list[int]) -> torch.Tensor:
    return rows.view([shape[d] for d in order]).permute(kernels.inverse(order))


def _is_tensor(value) -> bool:
    return isinstance(value, torch.Tensor)


def _is_per_channel(value: Value) -> bool:
    return _is_tensor(value) and value.dim() == 1


def _for_kernel(value: Value, device: torch.device, compute: torch.dtype) -> Value:
    """A parameter as the kernels take it: a number, a 0-dim tensor, or `[C, 1]` (detached,
    in the compute dtype)."""
    if not _is_tensor(value):
        return value
    value = value.detach().to(device=device, dtype=compute)
    return value.view(-1, 1) if value.dim() else value


def lif(
    x: torch.Tensor,
    decay: Value = 0.2,
    threshold: Value = 0.5,
    surrogate: str = "rect",
    width: float = 1.0,
    reset: str = "hard",
    detach_reset: bool = False,
) -> torch.Tensor:
    """The LIF neuron over all time steps (`lif_step`'s equations; the defaults are
    Algorithm 1): synaptic input `x` `[T, B, ...]` to spikes (0/1, same shape and dtype),
    differentiable by STBP with the approximated derivative `surrogate`, also with respect to
    `decay` and `threshold` when they are tensors that require grad."""
    return lif_with_count(x, decay, threshold, surrogate, width, reset, detach_reset)[0]


def lif_with_count(
    x: torch.Tensor,
    decay: Value,
    threshold: Value,
    surrogate: str,
    width: float,
    reset: str = "hard",
    detach_reset: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`lif`, and the number of spikes it emitted (a 0-dim fp32 tensor, not differentiable)."""
    p = LIFParameters(decay, threshold, surrogate, width, reset, detach_reset).validate()
    return _fused(x, p)


def _fused(x: torch.Tensor, p: LIFParameters) -> tuple[torch.Tensor, torch.Tensor]:
    if x.dim() < 2:
        raise ValueError(f"lif expects [T, B, ...] input, got shape {tuple(x.shape)}")
    _check_all_channels(p, x)
    soft = p.reset == "soft"
    return LIFFunction.apply(x, p.decay, p.threshold, p.surrogate, p.width, soft, p.detach_reset)


class LIF(nn.Module):
    """Multi-step LIF neurons (`[T, B, ...]` in and out; `lif`'s equations, Algorithm 1 by
    default); state starts at zero in every forward call, so nothing leaks between two
    batches. `step` runs one time step with an explicit state (streaming).

    `learn_decay` makes the decay a parameter through a sigmoid, `decay = sigmoid(w)`, so
    that it stays in (0, 1): the parametrisation of PLIF (Fang et al. 2021, "Incorporating
    learnable membrane time constant..."), which learns `1/tau = sigmoid(w)`; here the
    sigmoid gives the decay itself and the input is not scaled. `w` starts at
    `logit(decay)`, so a learnt decay of 0 or 1 is refused. `learn_threshold` makes the
    threshold a parameter through an exponential, `threshold = exp(w)` (our choice: always
    > 0, and a step changes it by a factor), starting at `log(threshold)`. `per_channel`
    learns one value per channel (dim 2 of the input; `channels` of them) instead of one per
    layer. `decay = 1` with a fixed decay is the integrate-and-fire neuron.

    `p` is the effective `LIFParameters` (numbers where fixed, tensors where learnt);
    `last_rate` holds the mean firing rate of the last forward pass (a 0-dim tensor).
    """

    def __init__(
        self,
        decay: float = 0.2,
        threshold: float = 0.5,
        surrogate: str = "rect",
        width: float = 1.0,
        reset: str = "hard",
        detach_reset: bool = False,
        learn_decay: bool = False,
        learn_threshold: bool = False,
        per_channel: bool = False,
        channels: int | None = None,
    ):
        super().__init__()
        p = LIFParameters(decay, threshold, surrogate, width, reset, detach_reset).validate()
        shape = _learnt_shape(learn_decay, learn_threshold, per_channel, channels)
        self._fixed = p
        self.learn = (learn_decay, learn_threshold)
        for name, value, learnt in (("decay", p.decay, learn_decay),
                                    ("threshold", p.threshold, learn_threshold)):  # fmt: skip
            if isinstance(value, torch.Tensor) and not learnt:  # moves with the module
                self.register_buffer(f"fixed_{name}", value.detach().clone())
        self.decay_logit = _learnt(learn_decay, p.decay, shape, _logit, "decay")
        self.threshold_log = _learnt(learn_threshold, p.threshold, shape, torch.log, "threshold")
        self.last_rate: torch.Tensor | None = None

    @property
    def p(self) -> LIFParameters:
        """The effective parameters: learnt ones through their parametrisation."""
        p = self._fixed
        for name in ("decay", "threshold"):
            if f"fixed_{name}" in self._buffers:
                p = p._replace(**{name: self._buffers[f"fixed_{name}"]})
        if self.decay_logit is not None:
            p = p._replace(decay=torch.sigmoid(self.decay_logit))
        if self.threshold_log is not None:
            p = p._replace(threshold=torch.exp(self.threshold_log))
        return p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spikes, count = _fused(x, self.p)
        self.last_rate = count / spikes.numel()
        return spikes

    def step(
        self, x_t: torch.Tensor, state: LIFState | None = None
    ) -> tuple[torch.Tensor, LIFState]:
        """One time step `[B, ...]` from `state` (None: zeros): `(o[t], new state)`."""
        return _step(x_t, state, self.p)

    def extra_repr(self) -> str:
        fields = self._fixed._asdict()
        for name, learnt, param in (
            ("decay", self.learn[0], self.decay_logit),
            ("threshold", self.learn[1], self.threshold_log),
        ):
            if learnt:
                shape = "per channel" if param.dim() else "per layer"
                fields[name] = f"learnt {shape}, from {fields[name]!r}"
        return ", ".join(
            f"{k}={v}" if k in ("decay", "threshold") and isinstance(v, str) else f"{k}={v!r}"
            for k, v in fields.items()
        )


def _learnt_shape(
    learn_decay: bool, learn_threshold: bool, per_channel: bool, channels: int | None
) -> tuple[int, ...]:
    """The shape of the learnt parameters: `[]`, or `[channels]` with `per_channel`."""
    for name, flag in (("learn_decay", learn_decay), ("learn_threshold", learn_threshold),
                       ("per_channel", per_channel)):  # fmt: skip
        if not isinstance(flag, bool):
            raise ValueError(f"LIF {name} = {flag!r} is not allowed; it must be True or False")
    if not per_channel:
        return ()
    if not (learn_decay or learn_threshold):
        raise ValueError(
            "LIF per_channel = True needs learn_decay or learn_threshold (it makes the learnt "
            "parameters one per channel)"
        )
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
        raise ValueError(
            f"LIF per_channel = True needs channels = the number of channels (dim 2 of the "
            f"input), an integer >= 1; got channels = {channels!r}"
        )
    return (channels,)


def _learnt(learn: bool, value: Value, shape, to_raw, name: str) -> nn.Parameter | None:
    """The raw parameter whose parametrisation starts at `value` (None when not learnt)."""
    if not learn:
        return None
    start = torch.as_tensor(value, dtype=torch.float32).detach().clone()
    if name == "decay" and not bool(((start > 0) & (start < 1)).all()):
        raise ValueError(
            f"LIF decay = {value!r} cannot be learnt: learn_decay keeps the decay in (0, 1) "
            "through a sigmoid, so it must start strictly between 0 and 1"
        )
    if start.dim() and start.shape != torch.Size(shape):
        raise ValueError(
            f"LIF {name} has shape {list(start.shape)}, but the learnt {name} has shape "
            f"{list(shape)} (per_channel, channels)"
        )
    return nn.Parameter(to_raw(start.expand(shape).clone()))


def _logit(p: torch.Tensor) -> torch.Tensor:
    return torch.log(p) - torch.log1p(-p)

"""The paper's layers around the LIF neurons: encoding, time-folded synapses, dropout, voting.

All take and return multi-step tensors `[T, B, ...]`. Every constructor checks its arguments
(`check_int`, `check_fraction`, `check_choice`): one `ValueError` naming the argument, the
value and the allowed range.
"""

from __future__ import annotations

import math
from numbers import Integral, Real

import torch
import torch.nn.functional as F
from torch import nn

from stbp.sparse import dispatch

# ---------------------------------------------------------------------- argument checks


def check_int(name: str, value, minimum: int = 1) -> int:
    """`value` if it is an integer >= `minimum`; else one `ValueError` naming `name`."""
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_fraction(name: str, value) -> float:
    """`value` if it is a number in [0, 1); else one `ValueError` naming `name`."""
    if not is_number(value) or not 0 <= value < 1:
        raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")
    return float(value)


def check_choice(name: str, value, choices: tuple[str, ...]) -> str:
    """`value` if it is one of `choices`; else one `ValueError` naming `name`."""
    if value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name} must be one of {allowed}; got {value!r}")
    return value


def is_number(value) -> bool:
    """A finite real number (not a bool)."""
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


# ---------------------------------------------------------------------- layers


class Temporal(nn.Module):
    """Apply a stateless module (conv, pooling, linear) to all T steps at once by folding
    time into the batch: `[T, B, ...] -> [T*B, ...] -> module -> [T, B, ...]`.

    With `binary_input` (the input is 0/1 spikes), a conv or linear module keeps its input for
    the backward pass as `bool` instead of floats: 4x less memory, the same gradients.
    Convolutions run in `channels_last`, which oneDNN and cuDNN run faster; the layers after
    keep that layout.

    With `spike_input` (the input is spikes, possibly average-pooled or dropped out: mostly
    zeros; default: `binary_input`), a conv (k x k, stride 1, same padding) or linear module
    measures its input's density at every call and runs event-driven (`stbp.sparse`) below
    the crossover measured for its shape on this machine (`stbp.sparse.dispatch`), dense
    otherwise. After each call `last_input_density` (float, or None when not measured) and
    `last_path` ("sparse", "dense", or None for a module that is no synapse) say what ran.
    """

    def __init__(
        self, module: nn.Module, binary_input: bool = False, spike_input: bool | None = None
    ):
        super().__init__()
        if not isinstance(module, nn.Module):
            raise TypeError(f"Temporal wraps an nn.Module, got {type(module).__name__}")
        self.module = module
        self.binary_input = binary_input and isinstance(module, (nn.Conv2d, nn.Linear))
        self.synapse_kind = dispatch.sparse_kind(module)  # "conv" | "linear" | None
        spikes = binary_input if spike_input is None else spike_input
        self.spike_input = bool(spikes) and self.synapse_kind is not None
        self.last_input_density: float | None = None
        self.last_path: str | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        folded = x.flatten(0, 1)
        if self._choose_path(folded) == "sparse":
            return self._sparse_synapse(folded).unflatten(0, x.shape[:2])
        spike_input = self.binary_input and torch.is_grad_enabled() and not _autocasting(x)
        run = self._spike_input_synapse if spike_input else self.module
        return _channels_last_for(self.module, folded, run).unflatten(0, x.shape[:2])

    def _choose_path(self, x: torch.Tensor) -> str | None:
        """Measure the density of the folded input `x` where the sparse path may run, decide,
        and record both in `last_input_density` and `last_path`."""
        self.last_input_density = None
        self.last_path = "dense" if self.synapse_kind else None
        if not self.spike_input or not dispatch.enabled():
            return self.last_path
        key = dispatch.layer_key(self.module, x, _autocasting(x))
        if key is None:
            return self.last_path
        self.last_input_density = dispatch.measure_density(x)
        self.last_path = dispatch.decide(key, self.last_input_density)
        return self.last_path

    def _sparse_synapse(self, x: torch.Tensor) -> torch.Tensor:
        """The synapse on `x` by `stbp.sparse`: fp32 weights and accumulation whatever
        autocast says; the output in autocast's dtype then, as the dense path's would be."""
        ops, m = dispatch.ops(), dispatch.synapse_weights(self.module)
        autocast = _autocasting(x)
        with torch.autocast(x.device.type, enabled=False):
            if self.synapse_kind == "conv":
                y = ops.conv2d(x, m.weight, m.bias).contiguous(memory_format=torch.channels_last)
            else:
                y = ops.linear(x.flatten(1), m.weight, m.bias)
        return y.to(torch.get_autocast_dtype(x.device.type)) if autocast else y

    def _spike_input_synapse(self, spikes: torch.Tensor) -> torch.Tensor:
        m = self.module
        return SpikeInputSynapse.apply(spikes, m.weight, m.bias, _conv_args(m))

    def extra_repr(self) -> str:
        flags = [f"{n}=True" for n in ("binary_input", "spike_input") if getattr(self, n)]
        return ", ".join(flags)


def _channels_last_for(module: nn.Module, x: torch.Tensor, run=None) -> torch.Tensor:
    """`run(x)` (default: the module) with a conv's input and output in channels_last, which
    oneDNN and cuDNN run faster and the layers after keep (the output too: a one-channel input
    is NCHW and channels_last at once, and oneDNN then answers in NCHW)."""
    run = run or module
    if not isinstance(module, nn.Conv2d):
        return run(x)
    y = run(x.contiguous(memory_format=torch.channels_last))
    return y.contiguous(memory_format=torch.channels_last)


def _autocasting(x: torch.Tensor) -> bool:
    """Whether autocast is on for `x`'s device (never on a device without autocast: meta)."""
    return x.device.type in ("cpu", "cuda") and torch.is_autocast_enabled(x.device.type)


def _conv_args(module: nn.Module) -> tuple | None:
    if isinstance(module, nn.Conv2d):
        return module.stride, module.padding, module.dilation, module.groups
    return None


class SpikeAvgPool(nn.AvgPool2d):
    """`k x k` average pooling (stride k) that keeps only the input's shape for backward.

    `nn.AvgPool2d` saves its whole input for the backward pass, which it does not need: the
    gradient is the output gradient spread evenly over each window.
    """

    def __init__(self, kernel_size: int):
        super().__init__(kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ShapeOnlyAvgPool.apply(x, self.kernel_size)


class ShapeOnlyAvgPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, k):
        ctx.k, ctx.shape, ctx.memory_format = k, x.shape, _memory_format(x)
        return F.avg_pool2d(x, k)

    @staticmethod
    def backward(ctx, grad):
        k, (h, w) = ctx.k, ctx.shape[-2:]
        # Scaled on the small map, then spread in channels_last: PyTorch's CPU upsampling is
        # up to 10x slower on NCHW maps.
        grad = (grad / (k * k)).contiguous(memory_format=torch.channels_last)
        spread = F.interpolate(grad, scale_factor=k, mode="nearest")
        if spread.shape[-2:] != (h, w):
            out = torch.empty(
                ctx.shape,
                dtype=spread.dtype,
                device=spread.device,
                memory_format=torch.channels_last,
            )
            h2, w2 = spread.shape[-2:]
            out[..., :h2, :w2] = spread
            out[..., h2:, :] = 0  # the rows and columns that the floor division left out
            out[..., :h2, w2:] = 0
            spread = out
        return spread.contiguous(memory_format=ctx.memory_format), None


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    cl = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
    return torch.channels_last if cl else torch.contiguous_format


class SpikeInputSynapse(torch.autograd.Function):
    """`conv2d` (with `conv_args`) or `linear` (without) on 0/1 spikes, saving them as bool."""

    @staticmethod
    def forward(ctx, spikes, weight, bias, conv_args):
        ctx.save_for_backward(spikes.bool(), weight)
        ctx.conv_args, ctx.has_bias, ctx.dtype = conv_args, bias is not None, spikes.dtype
        if conv_args is None:
            return F.linear(spikes, weight, bias)
        return F.conv2d(spikes, weight, bias, *conv_args)

    @staticmethod
    def backward(ctx, grad):
        saved, weight = ctx.saved_tensors
        spikes = saved.to(ctx.dtype)
        need_input, need_weight, need_bias = ctx.needs_input_grad[:3]
        if ctx.conv_args is None:
            grad_in = grad @ weight if need_input else None
            grad_w = grad.flatten(0, -2).T @ spikes.flatten(0, -2) if need_weight else None
            grad_b = grad.flatten(0, -2).sum(0) if need_bias else None
            return grad_in, grad_w, grad_b, None
        stride, padding, dilation, groups = ctx.conv_args
        grad_in, grad_w, grad_b = torch.ops.aten.convolution_backward(
            grad,
            spikes,
            weight,
            [weight.shape[0]] if ctx.has_bias else None,
            stride,
            padding,
            dilation,
            False,
            [0, 0],
            groups,
            [need_input, need_weight, need_bias and ctx.has_bias],
        )
        return grad_in, grad_w, grad_b, None


class Encoding(Temporal):
    """The encoding layer: the first synaptic layer takes the analog input directly.

    A static input `[B, *in_shape]` (an image) is presented at every one of the T steps; the
    layer is stateless, so its output is computed once and repeated without a copy. A
    sequence `[T, B, *in_shape]` (event frames) is processed step by step as in `Temporal`.
    """

    def __init__(self, module: nn.Module, T: int, in_dims: int):
        super().__init__(module)
        self.T, self.in_dims = check_int("T", T), check_int("in_dims", in_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == self.in_dims + 1:
            self.last_input_density, self.last_path = None, "dense" if self.synapse_kind else None
            y = _channels_last_for(self.module, x)
            return y.unsqueeze(0).expand(self.T, *y.shape)
        return super().forward(x)


class SeqDropout(nn.Module):
    """Dropout with one mask per sample, kept for all T steps of that sample
    (`build(..., dropout_mask="sample")`, our default)."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        self.p = check_fraction("dropout probability p", p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        mask = torch.empty_like(x[0]).bernoulli_(1 - self.p).div_(1 - self.p)
        return x * mask

    def extra_repr(self) -> str:
        return f"p={self.p}"


class StepDropout(nn.Dropout):
    """Dropout with a fresh mask at every time step, as the authors' CIFAR-10 code applies
    `F.dropout` inside its loop over time (`build(..., dropout_mask="step")`).

    On `[T, B, ...]` that is plain element-wise dropout, so this is `nn.Dropout` with the
    probability checked to lie in [0, 1)."""

    def __init__(self, p: float = 0.5):
        super().__init__(check_fraction("dropout probability p", p))


class Voting(nn.Module):
    """Voting output layer: `votes` LIF neurons per class; the class score is their firing
    rate averaged over the time window and over the class's group (fixed, not trained):
    `score_c = (1/T) sum_t mean_{i in group c} o[t, i]` (the paper's voting matrix M)."""

    def __init__(self, num_classes: int, votes: int = 10):
        super().__init__()
        self.num_classes = check_int("num_classes", num_classes)
        self.votes = check_int("votes", votes)

    def forward(self, spikes: torch.Tensor) -> torch.Tensor:
        rates = spikes.mean(dim=0)
        return rates.view(rates.shape[0], self.num_classes, self.votes).mean(dim=-1)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, votes={self.votes}"

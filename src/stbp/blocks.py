"""Building blocks for your own deeper networks on `[T, B, C, H, W]` spike tensors.

- `TDBatchNorm`: threshold-dependent batch normalisation (tdBN) of Zheng, Wu, Deng, Hu and
  Li, "Going Deeper With Directly-Trained Larger Spiking Neural Networks", AAAI 2021
  (arXiv 2011.05280): batch normalisation over the time-folded batch, to `alpha * V_th`.
- `ResidualBlock`: the spiking basic block of the same paper (its Fig. 5(b)): conv-tdBN-LIF-
  conv-tdBN, plus the shortcut, then LIF.

Both run every time step at once (time folded into the batch, as `stbp.layers.Temporal`) and
take the LIF neurons of `stbp.LIF`, so the fused kernels, `stats` and plots apply.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from stbp.layers import Temporal, check_int, is_number
from stbp.neuron import LIF

RESIDUAL_ALPHA = 1 / math.sqrt(2)  # tdBN's alpha on the two branches that meet in a sum


class TDBatchNorm(nn.Module):
    """Threshold-dependent batch normalisation (tdBN; Zheng et al., AAAI 2021) of
    `[T, B, C, ...]` pre-activations, per channel.

    With `x_k` the pre-activations of channel k at all time steps, samples and positions
    (the batch `T x B` folded, as the paper normalises over time too),

        x_hat_k = alpha * V_th * (x_k - E[x_k]) / sqrt(Var[x_k] + eps)
        y_k     = lambda_k * x_hat_k + beta_k

    so that the pre-activations start distributed as N(0, (alpha V_th)^2), scaled to the
    neurons' threshold `V_th` (`threshold`). `lambda` (`weight`, initialised to 1) and `beta`
    (`bias`, 0) are trained; `alpha` is a constant: 1, or 1/sqrt(2) on each of the two branches
    that a residual block adds (`RESIDUAL_ALPHA`). In training mode E and Var are the batch's
    (biased variance) and update the running statistics (`running_mean`, `running_var` with
    the unbiased variance, `momentum`), as `nn.BatchNorm2d` does; in eval mode the running
    statistics replace them. The state dict carries them, under `nn.BatchNorm2d`'s names.

    The formula is the one of the paper's Eq. for tdBN as the public reimplementations apply
    it (statistics over dims (T, B, H, W), `alpha * V_th` before the affine map); we could not
    check the paper's own text here.
    """

    def __init__(
        self,
        num_features: int,
        alpha: float = 1.0,
        threshold: float = 0.5,
        eps: float = 1e-5,
        momentum: float = 0.1,
    ):
        super().__init__()
        self.num_features = check_int("num_features", num_features)
        for name, value in (("alpha", alpha), ("threshold", threshold), ("eps", eps)):
            if not is_number(value) or value <= 0:
                raise ValueError(f"TDBatchNorm {name} must be a finite number > 0, got {value!r}")
        if not is_number(momentum) or not 0 < momentum <= 1:
            raise ValueError(f"TDBatchNorm momentum must be a number in (0, 1], got {momentum!r}")
        self.alpha, self.threshold = float(alpha), float(threshold)
        self.eps, self.momentum = float(eps), float(momentum)
        self.weight = nn.Parameter(torch.ones(num_features))  # lambda
        self.bias = nn.Parameter(torch.zeros(num_features))  # beta
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`y` of the class docstring for `x` of shape `[T, B, C, ...]`."""
        if x.dim() < 3 or x.shape[2] != self.num_features:
            raise ValueError(
                f"TDBatchNorm({self.num_features}) takes [T, B, {self.num_features}, ...], "
                f"got {list(x.shape)}"
            )
        if self.training:
            self.num_batches_tracked.add_(1)
        # alpha * V_th * x_hat, then lambda and beta: one batch_norm with weight lambda*alpha*V_th
        scale = self.weight * (self.alpha * self.threshold)
        y = F.batch_norm(x.flatten(0, 1), self.running_mean, self.running_var, scale, self.bias,
                         self.training, self.momentum, self.eps)  # fmt: skip
        return y.unflatten(0, x.shape[:2])

    def extra_repr(self) -> str:
        return (f"{self.num_features}, alpha={self.alpha:.4g}, threshold={self.threshold}, "
                f"eps={self.eps}, momentum={self.momentum}")  # fmt: skip


class ResidualBlock(nn.Module):
    """The spiking basic block of tdBN's ResNets (Zheng et al., AAAI 2021, Fig. 5(b)) on
    `[T, B, C, H, W]` spikes:

        h   = LIF(tdBN_1(conv3x3_s(o_in)))                          (alpha = 1)
        o   = LIF(tdBN_2(conv3x3(h)) + shortcut(o_in))              (tdBN_2: alpha = 1/sqrt(2))
        shortcut(o_in) = o_in, or tdBN_3(conv1x1_s(o_in))           (alpha = 1/sqrt(2))

    with `s` the `stride` of the first conv; the 1x1 conv shortcut is used when the stride
    or the number of channels changes. Every LIF is `stbp.LIF(**lif)` (decay, threshold,
    surrogate, ... as `stbp.LIF` takes them; the tdBNs normalise to its threshold). Convs have
    no bias (tdBN's beta is one). Unlike SEW ResNet (Fang et al. 2021), the sum is taken
    before the last LIF, so the block outputs spikes. The layout follows the paper's figure;
    names, defaults and the `spike_input` option are ours.

    The 1x1 conv of stride s runs as `Subsample(s)` then a 1x1 conv of stride 1 (the same
    map): torch 2.13's CPU backward of a strided 1x1 conv in channels_last (the layout
    `Temporal` gives convs) corrupts memory.

    `spike_input` (default True): the block's input is 0/1 spikes, so its convs keep it for
    the backward pass as bool (`Temporal(binary_input=True)`); set it False for a block fed
    with analog values.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        spike_input: bool = True,
        **lif,
    ):
        super().__init__()
        in_channels = check_int("in_channels", in_channels)
        out_channels = check_int("out_channels", out_channels)
        stride = check_int("stride", stride)
        if lif.get("per_channel") and "channels" not in lif:
            lif = {**lif, "channels": out_channels}
        threshold = float(lif.get("threshold", 0.5))  # the initial one, if it is learnt

        def conv(c_in: int, k: int, s: int, binary: bool) -> Temporal:
            layer = nn.Conv2d(c_in, out_channels, k, s, padding=k // 2, bias=False)
            return Temporal(layer, binary_input=binary)

        self.conv1 = conv(in_channels, 3, stride, spike_input)
        self.norm1 = TDBatchNorm(out_channels, 1.0, threshold)
        self.lif1 = LIF(**lif)
        self.conv2 = conv(out_channels, 3, 1, True)
        self.norm2 = TDBatchNorm(out_channels, RESIDUAL_ALPHA, threshold)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                Subsample(stride),  # then a 1x1 conv of stride 1: the same as stride `stride`
                conv(in_channels, 1, 1, spike_input),
                TDBatchNorm(out_channels, RESIDUAL_ALPHA, threshold),
            )
        self.lif2 = LIF(**lif)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Output spikes `[T, B, out_channels, H / stride, W / stride]` of `x`."""
        if x.dim() != 5:
            raise ValueError(f"ResidualBlock takes [T, B, C, H, W] spikes, got {list(x.shape)}")
        h = self.lif1(self.norm1(self.conv1(x)))
        return self.lif2(self.norm2(self.conv2(h)) + self.shortcut(x))


class Subsample(nn.Module):
    """Every `stride`-th row and column of `[T, B, C, H, W]`: `x[..., ::stride, ::stride]`,
    what a 1x1 conv of that stride reads."""

    def __init__(self, stride: int):
        super().__init__()
        self.stride = check_int("stride", stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[..., :: self.stride, :: self.stride]

    def extra_repr(self) -> str:
        return f"stride={self.stride}"

"""Input encoders: static images in [0, 1] turned into 0/1 spike trains `[T, B, ...]`.

The paper encodes a static image with its first layer: the convolution takes the analog
image at every step and its LIF neurons emit the first spikes (`"analog"`, the default,
`stbp.Encoding`). The encoders here put spikes in front of that layer instead:

- `"bernoulli"` (`Bernoulli`): rate coding, each pixel spikes at each step with probability
  equal to its intensity, as the authors' own MNIST script does;
- `"latency"` (`Latency`): time-to-first-spike coding, one spike per pixel, earlier for
  brighter (ours: the mapping below is our choice).

Both take a static batch `[B, *in_shape]` of intensities in [0, 1] (the embedded digits
`mnist10k` give `pixels / 255`) and return `[T, B, *in_shape]` spikes in the input's dtype,
on its device. Any other input is one `IntensityError`.
"""

from __future__ import annotations

import torch
from torch import nn

from stbp.layers import check_int

ENCODINGS = ("analog", "bernoulli", "latency")
EVAL_SEED = 0  # ours: the seed of `Bernoulli`'s evaluation draws


class IntensityError(ValueError):
    """The input of an encoder is not a float tensor of intensities in [0, 1]."""


def make(name: str, T: int) -> nn.Module | None:
    """The encoder called `name` (one of `ENCODINGS`) for a window of `T` steps; `None` for
    `"analog"` (the paper's encoding layer: the first synaptic layer takes the image)."""
    check_int("T", T)
    if name == "analog":
        return None
    if name == "bernoulli":
        return Bernoulli(T)
    if name == "latency":
        return Latency(T)
    allowed = ", ".join(repr(e) for e in ENCODINGS)
    raise ValueError(f"unknown encoding {name!r}; choose one of: {allowed}")


def check_intensities(x: torch.Tensor, encoding: str) -> None:
    """`IntensityError` unless `x` is a floating tensor with every value in [0, 1].

    One `aminmax` per batch (on an accelerator, one host-device sync): a normalised image
    would otherwise give silently wrong spikes (a negative pixel never fires)."""
    if not x.is_floating_point():
        raise IntensityError(
            f"the {encoding!r} encoding needs float intensities in [0, 1], got a {x.dtype} "
            "tensor; divide pixels by 255"
        )
    if x.numel() == 0:
        return
    low, high = (float(v) for v in torch.aminmax(x.detach()))
    if not (0.0 <= low and high <= 1.0):  # also refuses NaN
        raise IntensityError(
            f"the {encoding!r} encoding needs intensities in [0, 1], got values in "
            f"[{low:.4g}, {high:.4g}] (a normalised image?). The embedded digits (mnist10k) "
            "give pixels / 255 in [0, 1]; CIFAR-10 is normalised by mean and std, so use "
            'encoding = "analog" there'
        )


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """float32 for half-precision inputs (their 8- or 11-bit mantissas would quantise the
    probabilities and steps), else the input's own dtype."""
    return torch.promote_types(x.dtype, torch.float32)


class Bernoulli(nn.Module):
    """Rate coding: `o[t, i] = 1[x_i > r[t, i]]`, `r[t, i] ~ U[0, 1)` drawn afresh for every
    step and pixel, so that `P(o[t, i] = 1) = x_i` (0 never fires, 1 fires at every step).

    This is the authors' MNIST input: `x = input > torch.rand(input.size(), device=device)
    # prob. firing`, drawn at each step of the time loop of `SCNN.forward` in their
    `spiking_model.py` (github.com/yjwu17/STBP-for-training-SpikingNN, at the repository's
    root and in `code_nmnist/`, a script that trains MNIST despite the folder's name).

    Random numbers (ours): in training mode from the global torch RNG of the input's device,
    which stbp's checkpoints save and restore, so a resumed run draws the same spikes; in
    eval mode from a generator seeded with `eval_seed` at every forward, so that evaluation
    is reproducible (the same batch gives the same spikes) and leaves the training RNG
    untouched. The draws are float32 for half-precision inputs.
    """

    def __init__(self, T: int, eval_seed: int = EVAL_SEED):
        super().__init__()
        self.T = check_int("T", T)
        self.eval_seed = check_int("eval_seed", eval_seed, minimum=0)

    def forward(self, x: torch.Tensor, T: int | None = None) -> torch.Tensor:
        """Spikes `[T, B, *in_shape]` of a static batch `x` `[B, *in_shape]`; `T` overrides
        the window."""
        check_intensities(x, "bernoulli")
        steps = self.T if T is None else check_int("T", T)
        dtype = _compute_dtype(x)
        draws = torch.rand((steps, *x.shape), generator=self._generator(x.device),
                           device=x.device, dtype=dtype)  # fmt: skip
        return (x.to(dtype).unsqueeze(0) > draws).to(x.dtype)

    def _generator(self, device: torch.device) -> torch.Generator | None:
        """`None` (the global RNG) in training; a freshly seeded generator in eval mode."""
        if self.training:
            return None
        return torch.Generator(device=device).manual_seed(self.eval_seed)

    def extra_repr(self) -> str:
        return f"T={self.T}, eval_seed={self.eval_seed}"


class Latency(nn.Module):
    """Latency coding (ours): each pixel fires once, at step

        t_i = floor((1 - x_i) * (T - 1) + 1/2)

    (`(1 - x_i) * (T - 1)` rounded to the nearest step, halves to the later one): intensity 1
    fires at step 0, intensities near 0 at step T - 1, and intensity 0 never fires. With
    T = 1 every non-zero pixel fires at step 0. Deterministic: no random numbers.
    """

    def __init__(self, T: int):
        super().__init__()
        self.T = check_int("T", T)

    def forward(self, x: torch.Tensor, T: int | None = None) -> torch.Tensor:
        """Spikes `[T, B, *in_shape]` of a static batch `x` `[B, *in_shape]`; `T` overrides
        the window."""
        check_intensities(x, "latency")
        steps = self.T if T is None else check_int("T", T)
        return (latency_steps(x, steps).unsqueeze(0) == _time_index(x, steps)).to(x.dtype)

    def extra_repr(self) -> str:
        return f"T={self.T}"


def latency_steps(x: torch.Tensor, T: int) -> torch.Tensor:
    """The step at which each pixel of `x` fires under `Latency` (an int64 tensor shaped as
    `x`), or -1 for the pixels that never fire (intensity 0)."""
    values = x.to(_compute_dtype(x))
    steps = torch.floor((1 - values) * (T - 1) + 0.5).long()
    return torch.where(values > 0, steps, torch.full_like(steps, -1))


def _time_index(x: torch.Tensor, T: int) -> torch.Tensor:
    """`[T, 1, ..., 1]` holding 0 .. T - 1, to broadcast against `[1, B, *in_shape]`."""
    return torch.arange(T, device=x.device).view(T, *([1] * x.dim()))

"""`torch.compile` for stbp's hand-fused kernels (the LIF scans, NeuNorm), with an eager
fallback, and the memory-order views the kernels work on.

`STBP_COMPILE=0` runs the plain functions. A compile failure (no C++ compiler, an unsupported
platform) warns once and runs the plain functions for the rest of the process.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable

import torch

_COMPILED: dict[Callable, Callable] = {}
_STATE = {"failed": False}


def failed() -> bool:
    """Whether compilation failed in this process (the kernels then run eagerly)."""
    return _STATE["failed"]


def run(kernel: Callable, *args):
    """`kernel(*args)`, compiled unless turned off or failed. Tensor arguments are passed as
    plain contiguous tensors (no views, no autograd flags), which keeps the compiled guards
    simple: one graph serves every layer."""
    args = [a.detach().contiguous() if isinstance(a, torch.Tensor) else a for a in args]
    if os.environ.get("STBP_COMPILE", "1") == "0" or _STATE["failed"]:
        return kernel(*args)
    if kernel not in _COMPILED:
        _COMPILED[kernel] = torch.compile(kernel, dynamic=True)
    try:
        return _COMPILED[kernel](*args)
    except Exception as err:  # a compiler missing or failing: keep training, unfused
        warnings.warn(f"torch.compile failed ({err!r:.200}); running stbp's kernels eagerly",
                      stacklevel=2)
        _STATE["failed"] = True
        return kernel(*args)


def memory_order(x: torch.Tensor) -> list[int]:
    """The dimensions of `x` `[T, B, ...]` from outermost to innermost in memory (time first),
    so that `x.permute(order)` is contiguous for NCHW and channels_last activations alike."""
    return [0, *sorted(range(1, x.dim()), key=lambda d: -x.stride(d))]


def inverse(order: list[int]) -> list[int]:
    return sorted(range(len(order)), key=order.__getitem__)

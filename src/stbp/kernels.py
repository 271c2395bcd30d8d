"""`torch.compile` for stbp's hand-fused kernels (the LIF scans, NeuNorm), with an eager
fallback, and the memory-order views the kernels work on.

`STBP_COMPILE=0` runs the plain functions. A compiler failure (no C++ compiler, an unsupported
platform, an Inductor or Dynamo error) warns once and runs the plain functions for the rest of
the process. Any other error of a compiled call (out of memory, a device error) is raised as
it is. When a kernel needs more variants (time-window lengths, dtypes, surrogates) than
Dynamo's recompile limit allows, the new variants run eagerly, with a warning.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable

import torch

_COMPILED: dict[Callable, Callable] = {}
_STATE = {"failed": False}
_OVER_LIMIT: set[Callable] = set()


def compiler_errors() -> tuple[type[Exception], ...]:
    """What the compiler raises when it cannot compile (InductorError, the C++ compiler or
    Triton missing included, is a BackendCompilerFailed); other errors are the kernel's or the
    device's. Imported here: `torch._dynamo` takes seconds to import."""
    from torch._dynamo import exc

    return exc.BackendCompilerFailed, exc.InternalTorchDynamoError


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
    from torch._dynamo import config, exc

    try:
        with config.patch(fail_on_recompile_limit_hit=True):
            return _COMPILED[kernel](*args)
    except exc.FailOnRecompileLimitHit:
        _warn_recompile_limit(kernel)
        return kernel(*args)
    except compiler_errors() as err:  # keep training, unfused
        warnings.warn(
            f"torch.compile failed ({err!r:.200}); running stbp's kernels eagerly", stacklevel=2
        )
        _STATE["failed"] = True
        return kernel(*args)


def _warn_recompile_limit(kernel: Callable) -> None:
    if kernel in _OVER_LIMIT:
        return
    _OVER_LIMIT.add(kernel)
    from torch._dynamo import config

    limit = config.recompile_limit
    warnings.warn(
        f"stbp kernel {kernel.__name__} needs more than torch._dynamo.config.recompile_limit = "
        f"{limit} compiled variants (time-window lengths, dtypes, surrogates); new variants "
        "run eagerly, which is slower. Raise the limit to compile them.",
        stacklevel=3,
    )


def memory_order(x: torch.Tensor) -> list[int]:
    """The dimensions of `x` `[T, B, ...]` from outermost to innermost in memory (time first),
    so that `x.permute(order)` is contiguous for NCHW and channels_last activations alike."""
    return [0, *sorted(range(1, x.dim()), key=lambda d: -x.stride(d))]


def inverse(order: list[int]) -> list[int]:
    return sorted(range(len(order)), key=order.__getitem__)

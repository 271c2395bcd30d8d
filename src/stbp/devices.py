"""Where and how a run computes: precision, bf16 autocast, repeatable CUDA settings and the
CPU allocator setting of `stbp train`."""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys

import torch


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto` becomes bf16 where `device` computes it natively (CUDA with bf16, CPUs with
    AVX512-BF16 or AMX), else fp32; elsewhere bf16 is emulated and slower than fp32."""
    if precision != "auto":
        return precision
    if device.type == "cuda":  # compute capability 8.0 or above; emulation does not count
        native = torch.cuda.is_bf16_supported(including_emulation=False)
    else:
        checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        native = any(getattr(torch.cpu, name, lambda: False)() for name in checks)
    return "bf16" if native else "fp32"


def autocast(device: torch.device, precision: str):
    """bf16 autocast (CPU or CUDA) for `precision == "bf16"`, else nothing."""
    if precision != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


CUBLAS_WORKSPACE = ":4096:8"  # a fixed cuBLAS workspace, which repeatable CUDA matmuls need


@contextlib.contextmanager
def deterministic(on: bool = True):
    """Settings for repeatable CUDA runs while the block runs (`[run] deterministic`), put
    back as they were afterwards; nothing with `on=False`.

    Deterministic algorithms (`torch.use_deterministic_algorithms`, which also puts Inductor in
    its deterministic mode: no autotuning that changes numbers), warning rather than failing at
    an operation that has none on the device; cuDNN deterministic, without benchmarking; TF32
    off for matmuls and cuDNN convolutions (true fp32); `CUBLAS_WORKSPACE_CONFIG=:4096:8`
    unless already set (it must be set before the process's first cuBLAS call). None of this
    changes a CPU run's numbers."""
    if not on:
        yield
        return
    saved = _reproducibility_settings()
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        _restore_reproducibility_settings(saved)


def _reproducibility_settings() -> dict:
    """What `deterministic` changes, to put back afterwards."""
    return {
        "algorithms": torch.are_deterministic_algorithms_enabled(),
        "warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
        "cudnn": (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark),
        "tf32": _tf32_settings(),
        "cublas": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    }


def _tf32_settings() -> tuple[str, tuple]:
    """The TF32 flags, read through the API they were set with: reading the legacy
    `allow_tf32` flags raises once the newer `fp32_precision` API has set them."""
    cuda, cudnn = torch.backends.cuda, torch.backends.cudnn
    try:
        return "legacy", (cuda.matmul.allow_tf32, cudnn.allow_tf32)
    except RuntimeError:
        precisions = (cudnn.fp32_precision, cudnn.conv.fp32_precision, cudnn.rnn.fp32_precision)
        return "fp32_precision", (cuda.matmul.fp32_precision, precisions)


def _restore_reproducibility_settings(saved: dict) -> None:
    cuda, cudnn = torch.backends.cuda, torch.backends.cudnn
    torch.use_deterministic_algorithms(saved["algorithms"], warn_only=saved["warn_only"])
    cudnn.deterministic, cudnn.benchmark = saved["cudnn"]
    api, values = saved["tf32"]
    if api == "legacy":
        cuda.matmul.allow_tf32, cudnn.allow_tf32 = values
    else:
        cuda.matmul.fp32_precision, precisions = values
        cudnn.fp32_precision, cudnn.conv.fp32_precision, cudnn.rnn.fp32_precision = precisions
    if saved["cublas"] is None:
        os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    else:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = saved["cublas"]


def reuse_freed_memory() -> bool:
    """Let glibc keep freed memory for the next allocation instead of returning it.

    A training step allocates activations of tens to hundreds of MB, which glibc serves by a
    fresh `mmap` every time (its threshold is at most 32 MB): each page is then faulted in and
    zeroed again at every step, which costs more than the LIF neurons themselves. With mmap
    off and trimming deferred, freed activations are reused. Off with `STBP_MALLOC=default`;
    returns whether the setting was applied (glibc only).
    """
    if os.environ.get("STBP_MALLOC") == "default" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_max = -1, -4
    return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))

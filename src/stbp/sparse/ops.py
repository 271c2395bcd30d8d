"""Event-driven conv and linear synapses: the forward pass and the weight gradient skip the
zeros of the input (spikes, or average-pooled spikes); the input gradient is dense, as before.

The C++ kernels (`synapse.cpp`) are compiled on first use with `torch.utils.cpp_extension`
(`-O3 -march=native -fopenmp`) and cached under `~/.cache/stbp/sparse/` (or
`$XDG_CACHE_HOME/stbp/sparse/`), one build per source, compiler flags, torch version and CPU.
`STBP_SPARSE=0` turns them off; a failed build warns once, and `available()` is then False for
the rest of the process (callers run the dense path).

Precision: the input is read as given (float32, bfloat16 or float16) and its non-zero values
are kept as float32; the weight is read as float32; accumulation is float32; the output has
the input's dtype. The weight gradient is accumulated in float32 and returned in the
weight's dtype; the input gradient is the dense transposed conv / matmul in the output
gradient's dtype (oneDNN / BLAS). Under bf16 autocast this is more precise than the dense
path, which computes the convolution in bfloat16.
"""

from __future__ import annotations

import hashlib
import os
import platform
import warnings
from pathlib import Path
from types import ModuleType

import torch
import torch.nn.functional as F

SOURCE = Path(__file__).with_name("synapse.cpp")
CFLAGS = ["-O3", "-march=native", "-fopenmp"]
LDFLAGS = ["-fopenmp"]
DTYPES = (torch.float32, torch.bfloat16, torch.float16)

_STATE: dict = {"tried": False, "module": None}


class SparseUnavailableError(RuntimeError):
    """The kernels are turned off (STBP_SPARSE=0) or could not be built."""


# ---------------------------------------------------------------------- building


def available() -> bool:
    """Whether the sparse kernels can run: built (on the first call) and not turned off by
    `STBP_SPARSE=0`. A build failure warns once and gives False from then on."""
    if os.environ.get("STBP_SPARSE", "1") == "0":
        return False
    return _extension() is not None


def cache_root() -> Path:
    """stbp's cache folder: `$STBP_CACHE_DIR`, else `$XDG_CACHE_HOME/stbp`, else `~/.cache/stbp`."""
    if os.environ.get("STBP_CACHE_DIR"):
        return Path(os.environ["STBP_CACHE_DIR"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "stbp"


def cache_dir() -> Path:
    """Where the compiled kernels are kept between runs (`cache_root() / "sparse"`)."""
    return cache_root() / "sparse"


def _extension() -> ModuleType | None:
    if not _STATE["tried"]:
        _STATE["tried"] = True
        try:
            _STATE["module"] = _build()
        except Exception as err:  # no compiler, no ninja, a compile error: run dense
            warnings.warn(
                f"stbp.sparse: the C++ kernels could not be built ({_last_lines(err)}); the dense "
                "synapses run instead. Set STBP_SPARSE=0 to skip the attempt.",
                RuntimeWarning,
                stacklevel=3,
            )
    return _STATE["module"]


def _last_lines(err: Exception, count: int = 6) -> str:
    """The end of a build error, where the compiler's message is."""
    lines = [line for line in str(err).splitlines() if line.strip()]
    return " | ".join(lines[-count:])[-1200:]


def _build() -> ModuleType:
    from torch.utils import cpp_extension

    key = build_key()
    directory = cache_dir() / key
    directory.mkdir(parents=True, exist_ok=True)
    return cpp_extension.load(
        name=f"stbp_sparse_{key}",
        sources=[str(SOURCE)],
        extra_cflags=CFLAGS,
        extra_ldflags=LDFLAGS,
        build_directory=str(directory),
        verbose=False,
    )


def build_key() -> str:
    """A build per source (its text and place: two checkouts must not rebuild each other's),
    flags, torch and CPU (`-march=native` code must not run on another CPU that shares the
    home directory)."""
    parts = [SOURCE.read_bytes(), str(SOURCE).encode(), " ".join(CFLAGS).encode()]
    parts.append(torch.__version__.encode())
    parts.append((platform.machine() + _cpu_flags()).encode())
    return hashlib.sha256(b"\0".join(parts)).hexdigest()[:16]


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features", "model name")):
                return line
    except OSError:
        pass
    return platform.processor()


def _ops() -> ModuleType:
    if not available():
        raise SparseUnavailableError(
            "stbp.sparse kernels are not available (STBP_SPARSE=0 or the build failed); "
            "check stbp.sparse.available() and use the dense layer"
        )
    return _extension()


# ---------------------------------------------------------------------- public ops


def conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.conv2d(x, weight, bias, padding=k // 2)` (k x k, k odd, stride 1) computed from the
    non-zero inputs. x: `[N, C, H, W]` (NCHW or channels_last, T folded into N); returns
    `[N, Cout, H, W]` in channels_last, in x's dtype."""
    _check_conv(x, weight, bias)
    return SparseConv2d.apply(x, weight, bias)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear(x, weight, bias)` computed from the non-zero inputs. x: `[..., F]`."""
    _check_linear(x, weight, bias)
    return SparseLinear.apply(x, weight, bias)


def _check_conv(x, weight, bias) -> None:
    _check_dtype(x)
    if x.dim() != 4 or weight.dim() != 4:
        raise ValueError(
            f"stbp.sparse.conv2d takes x [N, C, H, W] and weight [Cout, C, k, k]; got "
            f"{tuple(x.shape)} and {tuple(weight.shape)}"
        )
    cout, cin, kh, kw = weight.shape
    if kh != kw or kh % 2 == 0 or cin != x.shape[1]:
        raise ValueError(
            f"stbp.sparse.conv2d needs an odd square kernel over x's {x.shape[1]} channels; "
            f"got weight {tuple(weight.shape)}"
        )
    _check_bias(bias, cout)


def _check_linear(x, weight, bias) -> None:
    _check_dtype(x)
    if x.dim() < 1 or weight.dim() != 2 or weight.shape[1] != x.shape[-1]:
        raise ValueError(
            f"stbp.sparse.linear takes x [..., F] and weight [Cout, F]; got "
            f"{tuple(x.shape)} and {tuple(weight.shape)}"
        )
    _check_bias(bias, weight.shape[0])


def _check_dtype(x) -> None:
    if x.dtype not in DTYPES or x.device.type != "cpu":
        raise ValueError(
            f"stbp.sparse runs on CPU tensors of dtype float32, bfloat16 or float16; got "
            f"{x.dtype} on {x.device}"
        )


def _check_bias(bias, cout: int) -> None:
    if bias is not None and tuple(bias.shape) != (cout,):
        raise ValueError(f"bias must have shape ({cout},), got {tuple(bias.shape)}")


# ---------------------------------------------------------------------- autograd


def _padded(t: torch.Tensor, lanes: int) -> torch.Tensor:
    """`t` as contiguous float32 with its last dimension zero-padded to a multiple of
    `lanes` (the kernels' vector width)."""
    t = t.detach().float()
    extra = -t.shape[-1] % lanes
    return (F.pad(t, (0, extra)) if extra else t).contiguous()


def _bias(bias: torch.Tensor | None, lanes: int) -> torch.Tensor:
    return _padded(bias, lanes) if bias is not None else torch.empty(0)


def _rows(x: torch.Tensor) -> torch.Tensor:
    """x as contiguous `[positions, channels]` in a dtype the kernels read."""
    return x.contiguous()


class SparseConv2d(torch.autograd.Function):
    """Sparse forward and weight gradient from the active-input lists, kept for backward
    instead of the input; dense input gradient."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ops = _ops()
        n, c, h, w = x.shape
        cout, k = weight.shape[0], weight.shape[2]
        rows = _rows(x.permute(0, 2, 3, 1)).view(n * h * w, c)
        offsets, index, value, binary = ops.active_lists(rows)
        packed = _padded(weight.permute(2, 3, 1, 0), ops.lanes)
        out = ops.forward(
            offsets, index, value, binary, n, h, w, k, packed, _bias(bias, ops.lanes), cout
        )
        ctx.save_for_backward(offsets, index, value, weight)
        ctx.binary, ctx.x_shape, ctx.ld, ctx.has_bias = (
            binary,
            x.shape,
            packed.shape[3],
            bias is not None,
        )
        ctx.x_dtype = x.dtype
        return out.view(n, h, w, cout).permute(0, 3, 1, 2).to(x.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        offsets, index, value, weight = ctx.saved_tensors
        n, c, h, w = ctx.x_shape
        k = weight.shape[2]
        need_x, need_w, need_b = ctx.needs_input_grad
        grad_x = grad_w = grad_b = None
        if need_x:
            grad_x = torch.nn.grad.conv2d_input(
                ctx.x_shape, weight.detach().to(grad.dtype), grad, padding=k // 2
            ).to(ctx.x_dtype)
        if need_w:
            rows = grad.float().permute(0, 2, 3, 1).contiguous().view(n * h * w, -1)
            packed = _extension().weight_grad(
                offsets, index, value, ctx.binary, n, h, w, k, c, ctx.ld, rows
            )
            grad_w = packed[..., : weight.shape[0]].permute(3, 2, 0, 1)
            grad_w = grad_w.to(weight.dtype).contiguous(memory_format=_layout(weight))
        if need_b and ctx.has_bias:
            grad_b = grad.float().sum((0, 2, 3))
        return grad_x, grad_w, grad_b


class SparseLinear(torch.autograd.Function):
    """Sparse forward and weight gradient from per-sample active-feature lists; dense input
    gradient."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ops = _ops()
        features, cout = x.shape[-1], weight.shape[0]
        rows = _rows(x.reshape(-1, features))
        offsets, index, value, binary = ops.active_lists(rows)
        packed = _padded(weight.t(), ops.lanes).view(1, 1, features, -1)
        out = ops.forward(
            offsets,
            index,
            value,
            binary,
            rows.shape[0],
            1,
            1,
            1,
            packed,
            _bias(bias, ops.lanes),
            cout,
        )
        ctx.save_for_backward(offsets, index, value, weight)
        ctx.binary, ctx.x_shape, ctx.x_dtype = binary, x.shape, x.dtype
        ctx.ld, ctx.has_bias = packed.shape[3], bias is not None
        return out.view(*x.shape[:-1], cout).to(x.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        offsets, index, value, weight = ctx.saved_tensors
        cout = weight.shape[0]
        need_x, need_w, need_b = ctx.needs_input_grad
        grad_x = grad_w = grad_b = None
        flat = grad.reshape(-1, cout)
        if need_x:
            grad_x = (grad @ weight.detach().to(grad.dtype)).to(ctx.x_dtype)
        if need_w:
            grad_w = _linear_weight_grad(ctx, offsets, index, value, flat.float().contiguous())
            grad_w = grad_w.to(weight.dtype)
        if need_b and ctx.has_bias:
            grad_b = flat.float().sum(0)
        return grad_x, grad_w, grad_b


# A thread's private [F, Cout] accumulator up to this size; larger weights are split by
# blocks of output channels instead (each block accumulated by one thread, in its cache).
PRIVATE_ACCUMULATOR_BYTES = 4 << 20


def _linear_weight_grad(ctx, offsets, index, value, grad):
    ops = _extension()
    n, cout = grad.shape
    features = ctx.x_shape[-1]
    if features * ctx.ld * 4 <= PRIVATE_ACCUMULATOR_BYTES:
        packed = ops.weight_grad(
            offsets, index, value, ctx.binary, n, 1, 1, 1, features, ctx.ld, grad
        )
        return packed.view(features, ctx.ld)[:, :cout].t().contiguous()
    return ops.linear_weight_grad(offsets, index, value, ctx.binary, features, grad)


def _layout(t: torch.Tensor) -> torch.memory_format:
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format

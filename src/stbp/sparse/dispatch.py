"""When a synapse runs event-driven: its input density against a crossover measured here.

A conv or linear layer whose input is spikes can skip the zeros (`stbp.sparse.conv2d`,
`stbp.sparse.linear`), which pays below some input density and costs above it. That density,
the *crossover*, depends on the layer's shape, the precision, the CPU and the thread count, so
it is measured on this machine: the first time a layer shape is met, sparse and dense
forward + backward are timed at a few densities (a second or two), and the result is stored in
`crossovers.json` in stbp's cache folder (`$STBP_CACHE_DIR`, default `~/.cache/stbp/`). A
change of torch, stbp, the CPU or the sparse kernels' build discards the stored values; the
thread count is part of each entry's key.

    python -m stbp.sparse.dispatch --show                 # the stored crossovers
    python -m stbp.sparse.dispatch --calibrate nmnist-small   # measure a paper net's layers
    python -m stbp.sparse.dispatch --reset                # forget them

Off with `STBP_SPARSE=0` (and when the kernels cannot be built): every layer runs dense.
`STBP_SPARSE_CALIBRATE=0` skips the measurement and uses `DEFAULT_CROSSOVER`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

DEFAULT_CROSSOVER = 0.03  # ours: dense unless very sparse, until this machine is measured
MAX_CROSSOVER = 0.5  # ours: at or above half the inputs active, always dense
CALIBRATION_DENSITIES = (0.01, 0.02, 0.05, 0.1, 0.2, 0.35, 0.5)
WIN_RATIO = 0.9  # ours: sparse counts as faster only at <= 0.9x the dense time
DENSITY_SAMPLE_ROWS = 8  # density from every 8th row of [T*B, ...]: ~0.5% of a conv's time
FILE_NAME = "crossovers.json"

_MEMORY: dict[str, float] = {}  # key text -> crossover, for this process


# ---------------------------------------------------------------------- what can run sparse


@dataclass(frozen=True)
class LayerKey:
    """What a crossover is measured for: layer kind, shape class, precision, threads."""

    kind: str  # "conv" or "linear"
    shape: tuple[int, ...]  # conv: (C_in, C_out, k, H, W); linear: (in, out)
    dtype: str  # "fp32", or "bf16" under bf16 autocast (sparse in fp32 against dense bf16)
    threads: int

    @property
    def text(self) -> str:
        return f"{self.kind}:{'x'.join(map(str, self.shape))}:{self.dtype}:t{self.threads}"


def enabled() -> bool:
    """Whether the sparse path may run: `STBP_SPARSE` is not "0" and the kernels built."""
    if os.environ.get("STBP_SPARSE", "1") == "0":
        return False
    return bool(ops().available())


def ops():
    """The `stbp.sparse` package (`available`, `conv2d`, `linear`): a seam for the tests."""
    import stbp.sparse

    return stbp.sparse


def sparse_kind(module: nn.Module) -> str | None:
    """ "conv" for a k x k conv with stride 1, same padding, dilation 1 and groups 1; "linear"
    for a linear layer (alone or after `nn.Flatten()`); None for anything else."""
    if isinstance(module, nn.Conv2d):
        k = module.kernel_size
        same = module.padding == (k[0] // 2, k[1] // 2) and module.padding_mode == "zeros"
        plain = module.stride == (1, 1) and module.dilation == (1, 1) and module.groups == 1
        return "conv" if k[0] == k[1] and k[0] % 2 == 1 and same and plain else None
    if isinstance(module, nn.Linear):
        return "linear"
    if _flatten_linear(module) is not None:
        return "linear"
    return None


def _flatten_linear(module: nn.Module) -> nn.Linear | None:
    """The linear layer of `nn.Sequential(nn.Flatten(), nn.Linear)` (what `build` makes of an
    FC layer after a conv), else None."""
    if not isinstance(module, nn.Sequential) or len(module) != 2:
        return None
    flatten, linear = module
    if isinstance(flatten, nn.Flatten) and flatten.start_dim == 1 and flatten.end_dim == -1:
        return linear if isinstance(linear, nn.Linear) else None
    return None


def synapse_weights(module: nn.Module) -> nn.Module:
    """The module holding `weight` and `bias` (the linear of a Flatten + Linear)."""
    return _flatten_linear(module) or module


def layer_key(module: nn.Module, x: torch.Tensor, autocast: bool) -> LayerKey | None:
    """The key of `module` on the folded input `x` [N, ...], or None when the sparse kernels
    cannot take it (not CPU, not fp32 weights, an fp64 or integer input, a conv it lacks)."""
    kind = sparse_kind(module)
    weight = synapse_weights(module).weight if kind else None
    if kind is None or x.device.type != "cpu" or weight.dtype != torch.float32:
        return None
    if x.dtype != torch.float32 and not (autocast and x.dtype == torch.bfloat16):
        return None
    if autocast and torch.get_autocast_dtype("cpu") != torch.bfloat16:
        return None
    if kind == "conv":
        if x.dim() != 4:
            return None
        c_out, c_in, k, _ = weight.shape
        shape = (c_in, c_out, k, x.shape[2], x.shape[3])
    else:
        shape = (weight.shape[1], weight.shape[0])
    dtype = "bf16" if autocast else "fp32"
    return LayerKey(kind, shape, dtype, torch.get_num_threads())


# ---------------------------------------------------------------------- the decision


def measure_density(x: torch.Tensor) -> float:
    """The fraction of nonzero entries of `x` [N, ...], from every `DENSITY_SAMPLE_ROWS`-th row
    (one reduction, one host sync; rows interleave time steps and samples)."""
    rows = x[::DENSITY_SAMPLE_ROWS] if x.shape[0] >= 2 * DENSITY_SAMPLE_ROWS else x
    return float(rows.count_nonzero()) / max(rows.numel(), 1)


def choose_path(density: float, crossover: float) -> str:
    """ "sparse" when `density` lies below the crossover (capped at `MAX_CROSSOVER`), else
    "dense": a dense input never leaves today's path."""
    return "sparse" if density < min(crossover, MAX_CROSSOVER) else "dense"


def decide(key: LayerKey, density: float) -> str:
    """The path for a layer of `key` seeing `density`: a dense input decides without a
    crossover (nothing is measured for it)."""
    if density >= MAX_CROSSOVER:
        return "dense"
    return choose_path(density, crossover(key))


def crossover(key: LayerKey) -> float:
    """The crossover for `key`: from this process, else the stored file, else measured now
    (and stored), else `DEFAULT_CROSSOVER` when measuring is off or fails."""
    if key.text in _MEMORY:
        return _MEMORY[key.text]
    stored = load().get(key.text)
    if stored is not None:
        _MEMORY[key.text] = float(stored["crossover"])
        return _MEMORY[key.text]
    if os.environ.get("STBP_SPARSE_CALIBRATE", "1") == "0" or not enabled():
        return DEFAULT_CROSSOVER
    entry = calibrate(key)
    save_entry(key, entry)
    _MEMORY[key.text] = entry["crossover"]
    return entry["crossover"]


def set_crossover(key: LayerKey, value: float) -> None:
    """Use `value` for `key` in this process (not stored): tests and experiments."""
    _MEMORY[key.text] = float(value)


def forget() -> None:
    """Drop this process's crossovers (the stored file stays)."""
    _MEMORY.clear()


# ---------------------------------------------------------------------- measuring


def calibrate(key: LayerKey, repeats: int = 3) -> dict:
    """Time sparse and dense forward + backward for `key` at `CALIBRATION_DENSITIES`; the
    crossover is where sparse stops being <= `WIN_RATIO` x dense (linear between the last
    density that wins and the first that loses; 0 if none wins). A private generator keeps the
    caller's random stream untouched."""
    # Called from inside a forward: under no_grad, inference mode or autocast alike.
    with torch.inference_mode(False), torch.enable_grad(), torch.autocast("cpu", enabled=False):
        dense_ms, ratios, rows = _time_paths(key, repeats)
    return {
        "crossover": _crossing(ratios),
        "dense_ms": dense_ms,
        "sparse_over_dense": ratios,
        "rows": rows,
        "measured": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def _time_paths(key: LayerKey, repeats: int) -> tuple[float, dict[str, float], int]:
    """Dense time (ms) and sparse / dense at rising densities, up to the first that loses."""
    generator = torch.Generator().manual_seed(0)
    weight, bias, shape = _calibration_tensors(key, generator)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=key.dtype == "bf16"):
        x = _spikes(shape, 0.1, generator)
        dense_ms = median_ms(lambda: _dense_step(key, x, weight, bias), repeats)
    ratios: dict[str, float] = {}
    for density in CALIBRATION_DENSITIES:
        x = _spikes(shape, density, generator)
        sparse_ms = median_ms(lambda x=x: _sparse_step(key, x, weight, bias), repeats)
        ratios[f"{density:g}"] = sparse_ms / dense_ms
        if sparse_ms > dense_ms * WIN_RATIO:
            break
    return dense_ms, ratios, shape[0]


def _crossing(ratios: dict[str, float]) -> float:
    """The density where the ratio sparse/dense crosses `WIN_RATIO` (linear in between)."""
    points = [(float(d), r) for d, r in ratios.items()]
    previous = (0.0, None)
    for density, ratio in points:
        if ratio > WIN_RATIO:
            d0, r0 = previous
            if r0 is None:
                return 0.0
            return d0 + (density - d0) * (WIN_RATIO - r0) / (ratio - r0)
        previous = (density, ratio)
    return min(points[-1][0], MAX_CROSSOVER)


def _calibration_tensors(key: LayerKey, generator: torch.Generator):
    """Weight, bias and input shape for timing `key` (a few rows: the times scale with rows)."""
    if key.kind == "conv":
        c_in, c_out, k, h, w = key.shape
        rows = max(1, 8 * 34 * 34 // (h * w))
        weight = torch.randn(c_out, c_in, k, k, generator=generator) * 0.1
        return weight.requires_grad_(), torch.zeros(c_out, requires_grad=True), (rows, c_in, h, w)
    n_in, n_out = key.shape
    weight = torch.randn(n_out, n_in, generator=generator) * 0.01
    return weight.requires_grad_(), torch.zeros(n_out, requires_grad=True), (64, n_in)


def _spikes(shape: tuple[int, ...], density: float, generator: torch.Generator) -> torch.Tensor:
    x = (torch.rand(shape, generator=generator) < density).float()
    if x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x.requires_grad_()


def _dense_step(key: LayerKey, x, weight, bias) -> None:
    if key.kind == "conv":
        y = F.conv2d(x, weight, bias, padding=key.shape[2] // 2)
    else:
        y = F.linear(x, weight, bias)
    y.sum().backward()


def _sparse_step(key: LayerKey, x, weight, bias) -> None:
    kernels = ops()
    y = kernels.conv2d(x, weight, bias) if key.kind == "conv" else kernels.linear(x, weight, bias)
    y.sum().backward()


def median_ms(step, repeats: int) -> float:
    """The median time of `step()` over `repeats` calls after one warm-up call, in ms."""
    step()  # warm-up: first-touch allocation, the kernels' lazy set-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


# ---------------------------------------------------------------------- the stored file


def store_path() -> Path:
    """`crossovers.json` in stbp's cache folder (`stbp.sparse.ops.cache_root()`: `$STBP_CACHE_DIR`,
    else `$XDG_CACHE_HOME/stbp`, else `~/.cache/stbp`)."""
    from stbp.sparse.ops import cache_root

    return cache_root() / FILE_NAME


def fingerprint() -> dict[str, str]:
    """What invalidates every stored crossover when it changes."""
    import stbp

    kernels = ops()
    return {
        "torch": torch.__version__,
        "stbp": stbp.__version__,
        "cpu": f"{_cpu_name()} ({torch.backends.cpu.get_cpu_capability()})",
        "kernels": _kernels_build(kernels),
    }


def _kernels_build(kernels) -> str:
    """The sparse kernels' build key (source, flags, torch, CPU), "" without them."""
    build_key = getattr(getattr(kernels, "ops", None), "build_key", None)
    return build_key() if callable(build_key) else ""


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load() -> dict[str, dict]:
    """The stored entries (key text -> entry) measured under today's `fingerprint()`; an
    unreadable file or another fingerprint counts as none (it is measured again)."""
    try:
        data = json.loads(store_path().read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("fingerprint") != fingerprint():
        return {}
    entries = data.get("crossovers")
    return entries if isinstance(entries, dict) else {}


def save_entry(key: LayerKey, entry: dict) -> None:
    """Add `entry` to the stored file (written whole, then renamed into place)."""
    path = store_path()
    entries = {**load(), key.text: entry}
    payload = {"fingerprint": fingerprint(), "crossovers": entries}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(payload, indent=1, sort_keys=True))
        tmp.replace(path)
    except OSError as err:  # a read-only home: keep the value for this process only
        print(f"stbp: could not store the sparse crossover in {path}: {err}", file=sys.stderr)


def reset() -> bool:
    """Delete the stored file and this process's values; whether a file was deleted."""
    forget()
    try:
        store_path().unlink()
    except FileNotFoundError:
        return False
    return True


# ---------------------------------------------------------------------- command line


def show() -> str:
    """The stored crossovers as a table, with the file and what they were measured under."""
    lines = [f"file: {store_path()}", f"sparse kernels: {'on' if enabled() else 'off'}"]
    lines += [f"{k}: {v}" for k, v in fingerprint().items()]
    entries = load()
    if not entries:
        lines.append(f"no crossover measured yet: dense unless density < {DEFAULT_CROSSOVER:.0%}")
        return "\n".join(lines)
    lines.append("| layer | crossover | dense ms | sparse / dense at density |")
    lines.append("|---|---:|---:|---|")
    for text, e in sorted(entries.items()):
        ratios = ", ".join(f"{float(d):.0%}: {r:.2f}" for d, r in e["sparse_over_dense"].items())
        lines.append(f"| {text} | {e['crossover']:.1%} | {e['dense_ms']:.1f} | {ratios} |")
    return "\n".join(lines)


def calibrate_network(name: str, precision: str = "fp32") -> None:
    """Measure the crossovers of every spike-input layer of the paper network `name` (one
    forward of a tiny all-zero batch meets each layer shape once)."""
    import stbp

    model = stbp.paper_network(name, T=1)
    x = torch.zeros(1, 1, *model.in_shape)
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16"):
        model(x)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m stbp.sparse.dispatch", description=__doc__)
    ap.add_argument("--show", action="store_true", help="print the stored crossovers")
    ap.add_argument("--reset", action="store_true", help="delete the stored crossovers")
    ap.add_argument("--calibrate", metavar="NETWORK", help="measure a paper network's layers")
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    args = ap.parse_args(argv)
    if args.reset:
        print(f"deleted {store_path()}" if reset() else f"nothing stored at {store_path()}")
    if args.calibrate:
        if not enabled():
            print("the sparse kernels are off (STBP_SPARSE=0 or not built): nothing to measure")
            return 1
        try:
            calibrate_network(args.calibrate, args.precision)
        except ValueError as err:
            print(f"--calibrate: {err}", file=sys.stderr)
            return 2
    if args.show or not (args.reset or args.calibrate):
        print(show())
    return 0


if __name__ == "__main__":
    sys.exit(main())

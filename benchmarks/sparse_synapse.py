"""The event-driven synapses (`stbp.sparse`) against dense fp32 and bf16, layer by layer.

    python benchmarks/sparse_synapse.py [--threads 2] [--repeats 5] [--scale 1.0]

For each synaptic layer after the encoding layer of `nmnist-small` (T = 10, batch 20) and
`mnist-demo` (T = 6, batch 50), with T folded into the batch as stbp runs it: forward + weight
gradient of the synapse alone (no input gradient: it is dense on both paths), on inputs at
densities 1, 2, 5, 10, 15, 30% (0/1 spikes after a LIF layer; after average pooling, values
in {1/4, ..., 1} at that fraction of non-zeros), against dense fp32 and dense bf16 (oneDNN,
channels_last) in the same run. Dense times do not depend on the density and are measured
once per layer. Median of --repeats. Prints a table and the crossover density per layer (where
sparse stops winning; linear interpolation between the measured densities) and writes
benchmarks/results/sparse_synapse.csv. `--scale 0.25` runs a quarter of the batch.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import itertools
import platform
from pathlib import Path

import torch
import torch.nn.functional as F

import stbp
from stbp import sparse
from stbp.sparse.dispatch import median_ms

NETWORKS = {"nmnist-small": (10, 20), "mnist-demo": (6, 50)}  # name: (T, batch)
DENSITIES = (0.01, 0.02, 0.05, 0.10, 0.15, 0.30)
RESULTS = Path(__file__).parent / "results" / "sparse_synapse.csv"


def synapse_layers(name: str, T: int, batch: int) -> list[dict]:
    """The conv and linear layers after the encoding layer: name, module, input shape with T
    folded into the batch, and whether the input is average-pooled spikes."""
    model = stbp.paper_network(name, T=T)
    shape, pooled, layers = (T * batch, *model.in_shape), False, []
    for child_name, child in model.layers.named_children():
        inner = getattr(child, "module", child)
        if isinstance(inner, torch.nn.Sequential):  # Flatten + Linear
            inner, shape = inner[-1], (shape[0], inner[-1].in_features)
        if isinstance(inner, torch.nn.AvgPool2d):
            shape, pooled = (*shape[:2], shape[2] // 2, shape[3] // 2), True
        elif isinstance(child, stbp.LIF):
            pooled = False
        elif isinstance(inner, (torch.nn.Conv2d, torch.nn.Linear)):
            if not isinstance(child, stbp.Encoding):
                layers.append(
                    {"name": child_name, "module": inner, "shape": shape, "pooled": pooled}
                )
            shape = _output_shape(inner, shape)
    return layers


def _output_shape(layer, shape):
    if isinstance(layer, torch.nn.Linear):
        return (shape[0], layer.out_features)
    return (shape[0], layer.out_channels, *shape[2:])


def layer_label(layer: dict) -> str:
    m, shape = layer["module"], layer["shape"]
    if isinstance(m, torch.nn.Linear):
        return f"{m.out_features}FC from {m.in_features}"
    return f"{m.out_channels}C{m.kernel_size[0]} on {shape[1]}x{shape[2]}x{shape[3]}"


def make_input(shape, density: float, pooled: bool, gen) -> torch.Tensor:
    active = torch.rand(shape, generator=gen) < density
    if pooled:
        return active * (torch.randint(1, 5, shape, generator=gen) / 4)
    return active.float()


def forward_weight_grad(fn, x, module, dtype):
    """A step: `fn(x, weight, bias)` and its weight and bias gradients (not the input's)."""
    weight = module.weight.detach().to(dtype).requires_grad_()
    bias = module.bias.detach().to(dtype).requires_grad_()
    x = x.to(dtype)
    if x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    grad = torch.randn(fn(x, weight, bias).shape).to(dtype)

    def step():
        weight.grad = bias.grad = None
        fn(x, weight, bias).backward(grad)

    return step


def dense_fn(module):
    if isinstance(module, torch.nn.Linear):
        return F.linear
    pad = module.padding
    return lambda x, w, b: F.conv2d(x, w, b, padding=pad)


def sparse_fn(module):
    return sparse.linear if isinstance(module, torch.nn.Linear) else sparse.conv2d


def crossover(densities, sparse_ms, dense_ms: float) -> str:
    """The density where the sparse time reaches the dense time, interpolated linearly."""
    points = list(zip(densities, sparse_ms, strict=True))
    if points[0][1] >= dense_ms:
        return f"<{points[0][0]:.0%}"
    for (d0, t0), (d1, t1) in itertools.pairwise(points):
        if t1 >= dense_ms:
            return f"{d0 + (dense_ms - t0) / (t1 - t0) * (d1 - d0):.0%}"
    return f">{points[-1][0]:.0%}"


def measure(layer: dict, densities, repeats: int) -> dict:
    gen = torch.Generator().manual_seed(0)
    module, shape, pooled = layer["module"], layer["shape"], layer["pooled"]
    x = make_input(shape, 0.05, pooled, gen)
    dense = {
        dtype: median_ms(forward_weight_grad(dense_fn(module), x, module, dtype), repeats)
        for dtype in (torch.float32, torch.bfloat16)
    }
    times = []
    for density in densities:
        x = make_input(shape, density, pooled, gen)
        times.append(
            median_ms(forward_weight_grad(sparse_fn(module), x, module, torch.float32), repeats)
        )
    return {"fp32": dense[torch.float32], "bf16": dense[torch.bfloat16], "sparse": times}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of the batch")
    ap.add_argument(
        "--densities",
        default=",".join(f"{d * 100:g}" for d in DENSITIES),
        help="percent, comma-separated",
    )
    ap.add_argument("--csv", type=Path, default=RESULTS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    densities = [float(d) / 100 for d in args.densities.split(",")]
    if not sparse.available():
        raise SystemExit("stbp.sparse kernels are not available here (see the warning)")
    today = datetime.date.today().isoformat()
    print(
        f"stbp.sparse vs dense, forward + weight gradient, median of {args.repeats}; "
        f"{platform.processor() or platform.machine()}, {args.threads} threads, {today}"
    )
    head = "  ".join(f"{d:>6.0%}" for d in densities)
    rows = []
    for net, (T, batch) in NETWORKS.items():
        batch = max(1, round(batch * args.scale))
        print(f"\n{net} (T={T}, batch {batch}): ms; speed-up over dense fp32 / bf16")
        print(f"  {'layer':28s} {'fp32':>7s} {'bf16':>7s}  sparse at {head}   crossover fp32/bf16")
        for layer in synapse_layers(net, T, batch):
            r = measure(layer, densities, args.repeats)
            label = layer_label(layer) + (" (pooled)" if layer["pooled"] else "")
            cells = "  ".join(f"{t:6.1f}" for t in r["sparse"])
            cross = (
                crossover(densities, r["sparse"], r["fp32"]),
                crossover(densities, r["sparse"], r["bf16"]),
            )
            print(
                f"  {label:28s} {r['fp32']:7.1f} {r['bf16']:7.1f}  {' ' * 10}{cells}"
                f"   {cross[0]} / {cross[1]}"
            )
            ratios = "  ".join(f"{r['fp32'] / t:4.1f}/{r['bf16'] / t:<4.1f}" for t in r["sparse"])
            print(f"  {'':28s} {'':7s} {'':7s}  {'x':>10s}{ratios}")
            for d, t in zip(densities, r["sparse"], strict=True):
                rows.append(
                    [
                        today,
                        args.threads,
                        net,
                        T,
                        batch,
                        label,
                        d,
                        round(t, 2),
                        round(r["fp32"], 2),
                        round(r["bf16"], 2),
                        cross[0],
                        cross[1],
                    ]
                )
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    with args.csv.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(
            [
                "date",
                "threads",
                "network",
                "T",
                "batch",
                "layer",
                "density",
                "sparse_ms",
                "dense_fp32_ms",
                "dense_bf16_ms",
                "crossover_fp32",
                "crossover_bf16",
            ]
        )
        out.writerows(rows)
    print(f"\nwrote {args.csv}")


if __name__ == "__main__":
    main()

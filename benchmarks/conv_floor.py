"""The floor under the speed benchmark: the synaptic layers of its network alone.

    python benchmarks/conv_floor.py [--T 10] [--batch 20] [--precision bf16]

Times forward + backward of each convolution and FC layer of `stbp.paper_network(
"nmnist-small")` on its own, with T folded into the batch as stbp runs it, in channels_last,
on inputs of the shapes and spike rate of a training step (the encoding layer's input gradient
is not computed, as in training). Prints each layer's ms and GFLOP/s and their sum: no
implementation of the network's dense arithmetic runs a training step faster than this sum on
this machine, whatever it does with the LIF neurons. Median of --repeats.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

import stbp
from stbp.devices import reuse_freed_memory
from stbp.sparse.dispatch import median_ms


def layer_times(T: int, batch: int, dtype: torch.dtype, repeats: int) -> list[tuple]:
    """(name, ms for forward + backward, GFLOP) for each synaptic layer."""
    model = stbp.paper_network("nmnist-small", T=T)
    shape = (T * batch, *model.in_shape)
    rows = []
    for name, module in model.layers.named_children():
        inner = getattr(module, "module", None)
        if isinstance(inner, torch.nn.AvgPool2d):
            shape = (shape[0], shape[1], shape[2] // 2, shape[3] // 2)
        if isinstance(inner, torch.nn.Sequential):  # Flatten + Linear
            inner, shape = inner[1], (shape[0], inner[1].in_features)
        if not isinstance(inner, (torch.nn.Conv2d, torch.nn.Linear)):
            continue
        rows.append(_time_layer(name, inner, shape, dtype, first=not rows, repeats=repeats))
        shape = _output_shape(inner, shape)
    return rows


def _output_shape(layer, shape):
    if isinstance(layer, torch.nn.Linear):
        return (shape[0], layer.out_features)
    return (shape[0], layer.out_channels, shape[2], shape[3])


def _time_layer(name, layer, shape, dtype, first: bool, repeats: int):
    x = (torch.rand(shape) < 0.15).to(dtype)
    w = layer.weight.detach().to(dtype)
    b = layer.bias.detach().to(dtype)
    conv = isinstance(layer, torch.nn.Conv2d)
    if conv:
        x = x.contiguous(memory_format=torch.channels_last)
        w = w.contiguous(memory_format=torch.channels_last)
        y = F.conv2d(x, w, b, padding=layer.padding)
        macs = y.numel() * w[0].numel()
    else:
        y = F.linear(x, w, b)
        macs = y.numel() * w.shape[1]
    grad = torch.randn_like(y)

    def step():
        if conv:
            F.conv2d(x, w, b, padding=layer.padding)
            torch.ops.aten.convolution_backward(
                grad, x, w, [w.shape[0]], layer.stride, layer.padding, layer.dilation,
                False, [0, 0], 1, [not first, True, True])
        else:
            F.linear(x, w, b)
            grad.T @ x
            grad @ w

    flops = 2 * macs * (2 if first else 3)
    return name, median_ms(step, repeats), flops / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--T", type=int, default=10)
    ap.add_argument("--batch", type=int, default=20)
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="bf16")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    reuse_freed_memory()
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    rows = layer_times(args.T, args.batch, dtype, args.repeats)
    print(f"nmnist-small, T={args.T}, batch {args.batch}, {args.precision}, "
          f"{torch.get_num_threads()} threads")
    for name, ms, gflop in rows:
        print(f"  {name:8s} {ms:7.1f} ms  {gflop:6.1f} GFLOP  {gflop / ms * 1000:5.0f} GFLOP/s")
    total = sum(ms for _, ms, _ in rows)
    print(f"  {'sum':8s} {total:7.1f} ms  {sum(g for *_, g in rows):6.1f} GFLOP")


if __name__ == "__main__":
    main()

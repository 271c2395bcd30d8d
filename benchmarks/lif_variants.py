"""The cost of learnt neuron parameters (issue 18): fixed decay and threshold against learnt
ones, one per layer and one per channel, measured interleaved in one process so that a busy
machine slows every variant alike.

    python benchmarks/lif_variants.py [--repeats 15] [--steps 5]

1. The fused LIF alone (compiled forward + backward on `[10, 20, 128, 34, 34]` fp32), as
   `stbp.functional.lif` with Python floats (the fixed-parameter kernel) and with tensors that
   require grad (0-dim, and per channel `[128]`).
2. A whole training step (forward, backward, Adam) of `nmnist-small` (T = 10, B = 20, binary
   input at 15%) with fixed parameters and with `learn_decay`, `learn_threshold` and
   `per_channel`; the event-driven synapses off (`STBP_SPARSE=0`), so only the neurons differ.

Prints the median time of each variant and its ratio to the fixed one.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ["STBP_SPARSE"] = "0"

import torch  # noqa: E402

import stbp  # noqa: E402
from stbp.neuron import lif  # noqa: E402

KERNEL = ("fixed", "learnt per layer", "learnt per channel")
STEP = ("fixed", "learnt per channel")


def kernel_timer(kind: str, x: torch.Tensor, grad: torch.Tensor):
    def once() -> float:
        if kind == "fixed":
            decay, threshold, inputs = 0.2, 0.5, [x]
        else:
            shape = () if kind == "learnt per layer" else (x.shape[2],)
            decay = torch.full(shape, 0.2, requires_grad=True)
            threshold = torch.full(shape, 0.5, requires_grad=True)
            inputs = [x, decay, threshold]
        start = time.perf_counter()
        torch.autograd.grad(lif(x, decay, threshold), inputs, grad)
        return time.perf_counter() - start

    return once


def step_timer(kind: str, x: torch.Tensor, labels: torch.Tensor):
    learnt = dict(learn_decay=True, learn_threshold=True, per_channel=True)
    model = stbp.paper_network("nmnist-small", T=x.shape[0], **(learnt if kind != "fixed" else {}))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def once() -> float:
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        stbp.rate_mse_loss(model(x), labels).backward()
        optimizer.step()
        return time.perf_counter() - start

    return once


def interleaved(timers: dict, repeats: int) -> dict[str, float]:
    for once in timers.values():  # compile and warm up
        once(), once()
    times = {kind: [] for kind in timers}
    for _ in range(repeats):
        for kind, once in timers.items():
            times[kind].append(once())
    return {kind: statistics.median(t) for kind, t in times.items()}


def report(title: str, medians: dict[str, float]) -> None:
    print(title)
    base = medians["fixed"]
    for kind, median in medians.items():
        print(f"  {kind:20s} {median * 1e3:9.1f} ms   {median / base:.3f}x fixed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15, help="kernel calls per variant")
    parser.add_argument("--steps", type=int, default=5, help="training steps per variant")
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{torch.backends.cpu.get_cpu_capability()}")  # fmt: skip
    x = (torch.randn(10, 20, 128, 34, 34) * 0.6 + 0.3).requires_grad_()
    grad = torch.randn_like(x)
    kernels = {kind: kernel_timer(kind, x, grad) for kind in KERNEL}
    report(
        "fused LIF, forward + backward, [10, 20, 128, 34, 34] fp32:",
        interleaved(kernels, args.repeats),
    )
    frames = (torch.rand(10, 20, 2, 34, 34) < 0.15).float()
    labels = torch.randint(0, 10, (20,))
    steps = {kind: step_timer(kind, frames, labels) for kind in STEP}
    report("nmnist-small training step, T = 10, B = 20, fp32:", interleaved(steps, args.steps))


if __name__ == "__main__":
    main()

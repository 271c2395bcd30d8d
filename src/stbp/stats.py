"""What a trained network does: per-layer firing, synaptic operations and an energy estimate.

For each layer with weights (conv, FC, voting) and the LIF neurons after it, `stats` reports
neurons and parameters per sample, the mean firing rate, the fractions of silent (never fire)
and saturated (fire at every step of every sample) neurons, and the operations per sample:

- `sops`: synaptic operations, `sum_t sum_i o_i[t] * fanout_i`, the presynaptic spikes times
  the number of this layer's synapses each presynaptic neuron drives (nonzero weights).
  Pooling in between is folded into the fan-out (a spike reaches the synapses behind its pool
  window); each SOP is one accumulate (AC).
- `macs`: multiply-accumulates the SNN itself needs. The encoding layer receives the analog
  input, so it costs the dense MACs (once for a static image, every step for a sequence); a
  layer after NeuNorm also receives the analog auxiliary term, dense at every step.
- `ann_macs`: the dense MACs of the same layer in the ANN twin (same weights, one pass).

Energy = `sops * E_AC + macs * E_MAC`, against `ann_macs * E_MAC` for the ANN, with the 45 nm
figures of Horowitz, "Computing's energy problem", ISSCC 2014: 32-bit float add 0.9 pJ,
multiply 3.7 pJ, so E_AC = 0.9 pJ and E_MAC = 0.9 + 3.7 = 4.6 pJ by default.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from stbp.layers import Encoding, SeqDropout, Temporal
from stbp.neunorm import NeuNorm
from stbp.neuron import LIF

ENERGY_SOURCE = (
    "Horowitz, 'Computing's energy problem', ISSCC 2014, 45 nm: 32-bit float add 0.9 pJ, "
    "32-bit float multiply 3.7 pJ (MAC = 4.6 pJ)"
)


@dataclass
class _Row:
    """One weighted layer, the modules feeding it since the last LIF, and its LIF."""

    name: str
    synapse: nn.Module
    path: list[nn.Module]  # pooling/NeuNorm/dropout between the previous LIF and the synapse
    lif_name: str = ""
    params: int = 0
    spike_counts: torch.Tensor | None = None
    # running sums, tensors on the model's device until the summary (no sync per batch)
    totals: dict = field(default_factory=lambda: dict(sops=0.0, macs=0.0, ann_macs=0.0))


def _weighted(module: nn.Module) -> bool:
    return any(isinstance(m, (nn.Conv2d, nn.Linear)) for m in module.modules())


def _plan(layers: nn.Sequential) -> list[_Row]:
    """Group the network's children into rows, one per weighted layer."""
    rows: list[_Row] = []
    pending: list[nn.Module] = []
    for name, module in layers.named_children():
        if _weighted(module):
            rows.append(_Row(name, module, pending))
            pending = []
        elif isinstance(module, LIF) and rows and not rows[-1].lif_name:
            rows[-1].lif_name = name
        else:
            pending.append(module)
        if rows:
            rows[-1].params += sum(p.numel() for p in module.parameters())
    return rows


def _structural(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply `module`'s connectivity to `x` `[N, ...]`: weights -> 1 where nonzero, no bias,
    average pooling -> sum pooling. The output's sum is `sum_i x_i * fanout_i`."""
    if isinstance(module, Temporal):
        return _structural(module.module, x)
    if isinstance(module, nn.Sequential):
        for child in module:
            x = _structural(child, x)
        return x
    if isinstance(module, nn.Conv2d):
        mask = (module.weight != 0).to(x.dtype)
        return F.conv2d(
            x, mask, None, module.stride, module.padding, module.dilation, module.groups
        )
    if isinstance(module, nn.Linear):
        return F.linear(x, (module.weight != 0).to(x.dtype))
    if isinstance(module, nn.AvgPool2d):
        return F.avg_pool2d(
            x,
            module.kernel_size,
            module.stride,
            module.padding,
            module.ceil_mode,
            module.count_include_pad,
            divisor_override=1,
        )
    if isinstance(module, (nn.MaxPool2d, nn.Flatten)):
        return module(x)
    if isinstance(module, (NeuNorm, SeqDropout, nn.Dropout, nn.Identity)):
        return x
    raise ValueError(f"stats: cannot count operations through {type(module).__name__}")


def _count(modules: list[nn.Module], x: torch.Tensor) -> torch.Tensor:
    """`sum_i x_i * fanout_i` through `modules`, for `x` `[N, ...]`."""
    for m in modules:
        x = _structural(m, x)
    return x.double().sum()


def _to_time_first(x: torch.Tensor, in_dims: int, time_first: bool) -> torch.Tensor:
    if x.dim() == in_dims + 2 and not time_first:
        return x.transpose(0, 1)  # DataLoader batches of [T, C, H, W] samples: [B, T, ...]
    return x


@torch.no_grad()
def _walk(model: nn.Module, rows: list[_Row], x: torch.Tensor) -> None:
    """One forward pass through `model.layers`, adding this batch's counts to `rows`."""
    by_synapse = {id(r.synapse): r for r in rows}
    by_lif = {r.lif_name: r for r in rows}
    spikes = None
    for name, module in model.layers.named_children():
        row = by_synapse.get(id(module))
        if row is not None:
            _count_synapse(row, module, x, spikes)
        x = module(x)
        if name in by_lif:
            spikes = x
            row = by_lif[name]
            counts = x.double().sum(dim=(0, 1))
            row.spike_counts = counts if row.spike_counts is None else row.spike_counts + counts


def _count_synapse(row: _Row, module: nn.Module, x: torch.Tensor, spikes) -> None:
    static = isinstance(module, Encoding) and x.dim() == module.in_dims + 1
    batch = x.shape[0] if static else x.shape[1]
    steps = 1 if static else x.shape[0]
    one = torch.ones((1, *x.shape[1 if static else 2 :]), dtype=x.dtype, device=x.device)
    dense = _count([module], one) * batch
    row.totals["ann_macs"] += dense
    if spikes is None:  # the encoding layer: analog input
        row.totals["macs"] += dense * steps
        return
    row.totals["sops"] += _count([*row.path, module], spikes.flatten(0, 1))
    if any(isinstance(m, NeuNorm) for m in row.path):
        row.totals["macs"] += dense * steps  # the auxiliary neurons' analog term


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's parameters (CPU for a model without any)."""
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def _collect(model: nn.Module, loader, batches: int | None, time_first: bool):
    """Run `model` over `loader`: the filled rows, the number of samples and of steps."""
    rows = _plan(model.layers)
    if not rows:
        raise ValueError("stats: the model has no conv or linear layer")
    device = model_device(model)
    was_training = model.training
    model.eval()
    samples, steps = 0, 0
    try:
        for i, batch in enumerate(loader):
            if batches is not None and i >= batches:
                break
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            x = torch.as_tensor(x).to(device)
            x = _to_time_first(x, len(model.in_shape), time_first)
            static = x.dim() == len(model.in_shape) + 1
            samples += x.shape[0] if static else x.shape[1]
            steps = model.T if static else x.shape[0]
            _walk(model, rows, x)
    finally:
        model.train(was_training)
    if samples == 0:
        raise ValueError("stats: the loader gave no batch")
    return rows, samples, steps


def stats(
    model: nn.Module,
    loader,
    batches: int | None = None,
    energy_ac_pj: float = 0.9,
    energy_mac_pj: float = 4.6,
    time_first: bool = False,
) -> dict:
    """Per-layer firing and operation counts of `model` (an `stbp.SNN`) over `loader`.

    `loader` yields `(x, y)` or `x` with x static `[B, C, H, W]` or a sequence `[B, T, ...]`
    (`[T, B, ...]` when `time_first`); `batches` limits how many are used. Returns a dict
    with `layers` (one dict per weighted layer), `total` and `energy` (see module docstring);
    operation counts are per sample.
    """
    rows, samples, steps = _collect(model, loader, batches, time_first)
    return _summary(rows, samples, steps, energy_ac_pj, energy_mac_pj)


def neuron_rates(
    model: nn.Module, loader, batches: int | None = None, time_first: bool = False
) -> dict[str, torch.Tensor]:
    """Firing rate of every neuron (spikes per step, averaged over the samples), flattened,
    keyed by LIF layer name."""
    rows, samples, steps = _collect(model, loader, batches, time_first)
    return {
        r.lif_name: r.spike_counts.flatten().float() / (samples * steps)
        for r in rows
        if r.spike_counts is not None
    }


def _layer_summary(row: _Row, samples: int, steps: int) -> dict:
    counts = row.spike_counts
    neurons = int(counts.numel()) if counts is not None else 0
    per_neuron = counts.flatten() / (samples * steps) if counts is not None else None
    return {
        "layer": row.name,
        "neurons": neurons,
        "params": row.params,
        "rate": float(per_neuron.mean()) if neurons else 0.0,
        "silent": float((per_neuron == 0).double().mean()) if neurons else 0.0,
        "saturated": float((per_neuron == 1).double().mean()) if neurons else 0.0,
        **{k: float(v) / samples for k, v in row.totals.items()},
    }


def _summary(rows: list[_Row], samples: int, steps: int, ac_pj: float, mac_pj: float) -> dict:
    layers = [_layer_summary(r, samples, steps) for r in rows]
    total = {
        k: sum(layer[k] for layer in layers)
        for k in ("neurons", "params", "sops", "macs", "ann_macs")
    }
    snn_pj = total["sops"] * ac_pj + total["macs"] * mac_pj
    ann_pj = total["ann_macs"] * mac_pj
    energy = {
        "ac_pj": ac_pj,
        "mac_pj": mac_pj,
        "source": ENERGY_SOURCE,
        "snn_uj": snn_pj * 1e-6,
        "ann_uj": ann_pj * 1e-6,
        "snn_over_ann": snn_pj / ann_pj if ann_pj else float("nan"),
    }
    return {"samples": samples, "T": steps, "layers": layers, "total": total, "energy": energy}


# ---------------------------------------------------------------------------------- output


def _si(v: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= scale:
            return f"{v / scale:.2f}{unit}"
    return f"{v:.0f}" if v == int(v) else f"{v:.2f}"


def format_table(result: dict) -> str:
    """The `stats` result as a plain-text table with the energy estimate below it."""
    head = ("layer", "neurons", "params", "rate", "silent", "satur.", "SOPs", "MACs", "ANN MACs")
    lines = [
        [
            r["layer"],
            _si(r["neurons"]),
            _si(r["params"]),
            f"{r['rate']:.3f}",
            f"{r['silent']:.1%}",
            f"{r['saturated']:.1%}",
            _si(r["sops"]),
            _si(r["macs"]),
            _si(r["ann_macs"]),
        ]
        for r in result["layers"]
    ]
    t = result["total"]
    lines.append(
        [
            "total",
            _si(t["neurons"]),
            _si(t["params"]),
            "",
            "",
            "",
            _si(t["sops"]),
            _si(t["macs"]),
            _si(t["ann_macs"]),
        ]
    )
    widths = [max(len(str(x)) for x in col) for col in zip(head, *lines, strict=True)]
    fmt = lambda row: "  ".join(  # noqa: E731
        str(c).ljust(w) if i == 0 else str(c).rjust(w)
        for i, (c, w) in enumerate(zip(row, widths, strict=True))
    )
    e = result["energy"]
    text = [
        f"{result['samples']} samples, T = {result['T']}; operations per sample",
        fmt(head),
        "  ".join("-" * w for w in widths),
        *map(fmt, lines[:-1]),
        "  ".join("-" * w for w in widths),
        fmt(lines[-1]),
        "",
        f"energy per sample: SNN {e['snn_uj']:.3f} uJ (SOPs x {e['ac_pj']} pJ + MACs x "
        f"{e['mac_pj']} pJ), ANN twin {e['ann_uj']:.3f} uJ (MACs x {e['mac_pj']} pJ): "
        f"ratio {e['snn_over_ann']:.3f}",
        f"per-operation energies: {e['source']}",
    ]
    return "\n".join(text)


# ---------------------------------------------------------------------------------- loading


def load_run(path: str | Path) -> tuple[nn.Module, dict]:
    """`(model in eval mode, checkpoint dict)` from a training checkpoint."""
    from stbp.checkpoint import load_checkpoint, model_from_state

    state = load_checkpoint(path)
    return model_from_state(state, path), state


def eval_dataset(model: nn.Module, state: dict, data_dir: str | Path | None = None,
                 cache_dir: str | Path | None = None):  # fmt: skip
    """The test set of the checkpoint's config (`data_dir` overrides its data folder); the
    embedded MNIST test digits for a 1x28x28 network whose checkpoint holds no config."""
    config = state.get("config")
    if config:
        from stbp.datasets import stored_test_set

        return stored_test_set(config, data_dir, cache_dir)
    if tuple(model.in_shape) == (1, 28, 28):
        from stbp.data import MNIST10k

        return MNIST10k(train=False)
    raise ValueError("the checkpoint holds no config, so its data set is unknown")


# ---------------------------------------------------------------------------------- CLI


def friendly(func):
    """Wrap a sub-command so errors a user can act on print as one line (exit code 2)."""

    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except (ValueError, FileNotFoundError, ModuleNotFoundError) as err:
            print(f"stbp {args.command}: error: {err}", file=sys.stderr)
            return 2

    return run


def register(subparsers) -> None:
    """Add `stbp stats` to the CLI."""
    p = subparsers.add_parser(
        "stats",
        help="per-layer firing, synaptic operations and energy of a checkpoint",
        description="Per-layer firing rates, SOPs against ANN MACs, and an energy estimate.",
    )
    p.add_argument("--checkpoint", required=True, help="checkpoint file (.pt)")
    p.add_argument("--data-dir", default=None, help="data folder (default: the checkpoint's)")
    p.add_argument("--cache-dir", default=None, help="frame cache folder (default: the run's)")
    p.add_argument("--batches", type=int, default=10, help="batches to run (default 10)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--energy-ac", type=float, default=0.9, help="pJ per accumulate (0.9)")
    p.add_argument("--energy-mac", type=float, default=4.6, help="pJ per MAC (4.6)")
    p.add_argument("--json", default=None, help="also write the result to this JSON file")
    p.set_defaults(func=friendly(_cli))


def _cli(args: argparse.Namespace) -> int:
    model, state = load_run(args.checkpoint)
    data = eval_dataset(model, state, args.data_dir, args.cache_dir)
    loader = torch.utils.data.DataLoader(data, batch_size=args.batch_size)
    result = stats(model, loader, args.batches, args.energy_ac, args.energy_mac)
    print(format_table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}")
    return 0

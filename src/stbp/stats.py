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

Operations and energy need the paper's structure: an `stbp.SNN` whose `layers` run one after
the other through modules whose connectivity `_structural` knows. Any other `nn.Module` with
`stbp.LIF` layers (your own network) gets one row per LIF layer with its firing only, and a
note saying why the operations are not counted.

Synapse layers that report the input density they saw and the path they ran
(`last_input_density`, `last_path`: `stbp.layers.Temporal` with event-driven synapses) get
their mean density and the fraction of calls per path.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from stbp.layers import Encoding, SeqDropout, Temporal
from stbp.models import SNN
from stbp.neunorm import NeuNorm
from stbp.neuron import LIF
from stbp.record import (
    input_shape,
    layer_root,
    lif_layers,
    model_device,
    run_model,
    sample_dims,
)

ENCODER = "encode"  # the child of `SNN.layers` that turns a static input into spikes, if any

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
    # running sums, tensors on the model's device until the summary (no sync per batch)
    totals: dict = field(default_factory=lambda: dict(sops=0.0, macs=0.0, ann_macs=0.0))


def _weighted(module: nn.Module) -> bool:
    return any(isinstance(m, (nn.Conv2d, nn.Linear)) for m in module.modules())


def _plan(layers: nn.Sequential) -> list[_Row]:
    """Group the network's children into rows, one per weighted layer."""
    rows: list[_Row] = []
    pending: list[nn.Module] = []
    for name, module in layers.named_children():
        if name == ENCODER:
            continue  # its output is spikes: the first synapse counts SOPs on them
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


_COUNTABLE = (
    nn.Conv2d,
    nn.Linear,
    nn.AvgPool2d,
    nn.MaxPool2d,
    nn.Flatten,
    NeuNorm,
    SeqDropout,
    nn.Dropout,
    nn.Identity,
)


def _uncountable(module: nn.Module) -> nn.Module | None:
    """The first module inside `module` whose connectivity `_structural` does not know."""
    if isinstance(module, Temporal):
        return _uncountable(module.module)
    if isinstance(module, nn.Sequential):
        return next((u for u in map(_uncountable, module) if u is not None), None)
    return None if isinstance(module, _COUNTABLE) else module


def _why_not_counted(model: nn.Module) -> str | None:
    """None when the operations of `model` can be counted, else why not (said in the output)."""
    if not isinstance(model, SNN):
        return f"{type(model).__name__} is not an stbp.SNN"
    rows = _plan(model.layers)
    if not rows:
        return "the network has no conv or linear layer"
    for row in rows:
        for module in (*row.path, row.synapse):
            unknown = _uncountable(module)
            if unknown is not None:
                return f"stats cannot count operations through {type(unknown).__name__}"
    return None


def _to_time_first(x: torch.Tensor, in_dims: int, time_first: bool) -> torch.Tensor:
    if x.dim() == in_dims + 2 and not time_first:
        return x.transpose(0, 1)  # DataLoader batches of [T, C, H, W] samples: [B, T, ...]
    return x


@dataclass
class _InputLog:
    """What one synapse layer reported of its input over the calls stats made."""

    calls: int = 0
    density_sum: float = 0.0
    densities: int = 0
    paths: Counter = field(default_factory=Counter)

    def add(self, density, path) -> None:
        self.calls += 1
        if density is not None:
            self.density_sum += float(density)
            self.densities += 1
        if path is not None:
            self.paths[str(path)] += 1

    def summary(self) -> dict:
        """Mean input density (None if never reported) and the fraction of calls per path."""
        return {
            "calls": self.calls,
            "input_density": self.density_sum / self.densities if self.densities else None,
            "paths": {p: n / self.calls for p, n in sorted(self.paths.items())},
        }


class _Probe:
    """Forward hooks gathering, over the batches stats runs, each LIF layer's spike counts
    and the input density and path each synapse layer reports (`last_input_density`,
    `last_path`, read with `getattr`: only layers that set them are listed)."""

    def __init__(self, model: nn.Module):
        self.lifs = lif_layers(model)
        self.counts: dict[str, torch.Tensor] = {}
        self.updates: dict[str, int] = {}  # updates of each neuron: steps x samples
        self.steps = 0
        self.inputs: dict[str, _InputLog] = {}
        self._hooks = [
            m.register_forward_hook(partial(self._count_spikes, name))
            for name, m in self.lifs.items()
        ]
        self._hooks += [
            m.register_forward_hook(partial(self._log_input, name))
            for name, m in layer_root(model).named_modules()
            if name
        ]

    def _count_spikes(self, name: str, _module, _inputs, out: torch.Tensor) -> None:
        counts = out.double().sum(dim=(0, 1))  # running sums stay on the device: no sync
        self.counts[name] = counts + self.counts[name] if name in self.counts else counts
        self.updates[name] = self.updates.get(name, 0) + out.shape[0] * out.shape[1]
        self.steps = out.shape[0]

    def _log_input(self, name: str, module: nn.Module, _inputs, _out) -> None:
        density = getattr(module, "last_input_density", None)
        path = getattr(module, "last_path", None)
        if density is not None or path is not None:
            self.inputs.setdefault(name, _InputLog()).add(density, path)

    def rates(self) -> dict[str, torch.Tensor]:
        """Each LIF layer's per-neuron firing rates (spikes per step), flattened."""
        return {n: c.flatten().float() / self.updates[n] for n, c in self.counts.items()}

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()


@torch.no_grad()
def _walk(model: nn.Module, rows: list[_Row], x: torch.Tensor) -> None:
    """One forward pass through `model.layers`, adding this batch's operations to `rows`."""
    by_synapse = {id(r.synapse): r for r in rows}
    lif_names = {r.lif_name for r in rows}
    spikes = None
    for name, module in model.layers.named_children():
        row = by_synapse.get(id(module))
        if row is not None:
            _count_synapse(row, module, x, spikes)
        x = module(x)
        if name in lif_names or name == ENCODER:
            spikes = x


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


@dataclass
class _Collected:
    rows: list[_Row] | None  # None: operations not counted, for the reason `why_not`
    why_not: str | None
    probe: _Probe
    samples: int


@torch.no_grad()
def _collect(model: nn.Module, loader, batches: int | None, time_first: bool) -> _Collected:
    """Run `model` over `loader` with the probe's hooks, and the paper's operation counts
    where they can be made."""
    why_not = _why_not_counted(model)
    rows = _plan(model.layers) if why_not is None else None
    probe = _Probe(model)
    if not probe.lifs:
        probe.remove()
        raise ValueError(f"stats: {type(model).__name__} has no stbp.LIF layer")
    device, dims = model_device(model), sample_dims(model)
    was_training = model.training
    model.eval()
    samples = 0
    try:
        for i, batch in enumerate(loader):
            if batches is not None and i >= batches:
                break
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            x = _to_time_first(torch.as_tensor(x).to(device), dims, time_first)
            samples += x.shape[0] if x.dim() == dims + 1 else x.shape[1]
            if rows is None:
                run_model(model, x)
            else:
                _walk(model, rows, x)
    finally:
        model.train(was_training)
        probe.remove()
    if samples == 0:
        raise ValueError("stats: the loader gave no batch")
    return _Collected(rows, why_not, probe, samples)


def stats(
    model: nn.Module,
    loader,
    batches: int | None = None,
    energy_ac_pj: float = 0.9,
    energy_mac_pj: float = 4.6,
    time_first: bool = False,
) -> dict:
    """Per-layer firing and operation counts of `model` over `loader`.

    `model`: an `stbp.SNN`, or any `nn.Module` with `stbp.LIF` layers (firing only, see the
    module docstring). `loader` yields `(x, y)` or `x` with x static `[B, C, H, W]` or a
    sequence `[B, T, ...]` (`[T, B, ...]` when `time_first`); `batches` limits how many are
    used. Returns a dict with `structure` ("sequential": one row per weighted layer, with
    operations; "generic": one row per LIF layer), `layers`, `synapses` (the layers that
    reported their input density and path), `total`, and `energy` (None for "generic", with
    a `note` saying why); operation counts are per sample.
    """
    c = _collect(model, loader, batches, time_first)
    inputs = {name: log.summary() for name, log in c.probe.inputs.items()}
    synapses = [{"layer": name, **summary} for name, summary in inputs.items()]
    if c.rows is None:
        params = sum(p.numel() for p in model.parameters())
        return _generic_summary(c.probe, c.samples, params, c.why_not, synapses)
    result = _summary(c.rows, c.probe, c.samples, energy_ac_pj, energy_mac_pj)
    for layer in result["layers"]:
        layer.update(inputs.get(layer["layer"], {}))
    return {**result, "synapses": synapses}


def neuron_rates(
    model: nn.Module, loader, batches: int | None = None, time_first: bool = False
) -> dict[str, torch.Tensor]:
    """Firing rate of every neuron (spikes per step, averaged over the samples), flattened,
    keyed by LIF layer name (`lif_layers`)."""
    return _collect(model, loader, batches, time_first).probe.rates()


def _firing(counts: torch.Tensor | None, updates: int) -> dict:
    """Neurons, mean rate and the fractions of silent and saturated neurons of one layer."""
    if counts is None:
        return {"neurons": 0, "rate": 0.0, "silent": 0.0, "saturated": 0.0}
    per_neuron = counts.flatten() / updates
    return {
        "neurons": int(counts.numel()),
        "rate": float(per_neuron.mean()),
        "silent": float((per_neuron == 0).double().mean()),
        "saturated": float((per_neuron == 1).double().mean()),
    }


def _layer_summary(row: _Row, probe: _Probe, samples: int) -> dict:
    counts = probe.counts.get(row.lif_name)
    return {
        "layer": row.name,
        **_firing(counts, probe.updates.get(row.lif_name, 1)),
        "params": row.params,
        **{k: float(v) / samples for k, v in row.totals.items()},
    }


def _summary(rows: list[_Row], probe: _Probe, samples: int, ac_pj: float, mac_pj: float) -> dict:
    layers = [_layer_summary(r, probe, samples) for r in rows]
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
    return {
        "samples": samples,
        "T": probe.steps,
        "structure": "sequential",
        "layers": layers,
        "total": total,
        "energy": energy,
    }


def _generic_summary(
    probe: _Probe, samples: int, params: int, why_not: str | None, synapses: list[dict]
) -> dict:
    layers = [
        {"layer": name, **_firing(probe.counts.get(name), probe.updates.get(name, 1))}
        for name in probe.lifs
    ]
    return {
        "samples": samples,
        "T": probe.steps,
        "structure": "generic",
        "layers": layers,
        "synapses": synapses,
        "total": {"neurons": sum(layer["neurons"] for layer in layers), "params": params},
        "energy": None,
        "note": (
            f"SOPs, MACs and energy are not counted: {why_not}; they are counted for the "
            "paper's layer sequence (networks of stbp.build)"
        ),
    }


# ---------------------------------------------------------------------------------- output


def _si(v: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= scale:
            return f"{v / scale:.2f}{unit}"
    return f"{v:.0f}" if v == int(v) else f"{v:.2f}"


def _density_text(density: float | None) -> str:
    return "-" if density is None else f"{density:.1%}"


def _path_text(paths: dict[str, float]) -> str:
    """`sparse` or `dense` when every call ran it, else each path's share of the calls."""
    if not paths:
        return "-"
    if len(paths) == 1 and next(iter(paths.values())) == 1:
        return next(iter(paths))
    return "/".join(f"{path} {share:.0%}" for path, share in paths.items())


def _grid(head: tuple, lines: list[list], total: list | None = None) -> list[str]:
    """A plain-text table: the first column left-aligned, the others right-aligned; `total`
    below a second rule."""
    everything = [head, *lines, *([total] if total else [])]
    widths = [max(len(str(x)) for x in col) for col in zip(*everything, strict=True)]
    fmt = lambda row: "  ".join(  # noqa: E731
        str(c).ljust(w) if i == 0 else str(c).rjust(w)
        for i, (c, w) in enumerate(zip(row, widths, strict=True))
    )
    rule = "  ".join("-" * w for w in widths)
    return [fmt(head), rule, *map(fmt, lines), *([rule, fmt(total)] if total else [])]


def _firing_cells(r: dict) -> list[str]:
    return [f"{r['rate']:.3f}", f"{r['silent']:.1%}", f"{r['saturated']:.1%}"]


def format_table(result: dict) -> str:
    """The `stats` result as a plain-text table with the energy estimate below it (for a
    generic network: the firing per LIF layer, the synapse inputs, and a note)."""
    if result.get("structure") == "generic":
        return _generic_table(result)
    inputs = any("paths" in r for r in result["layers"])
    head = ("layer", "neurons", "params", "rate", "silent", "satur.", "SOPs", "MACs", "ANN MACs")
    head += ("in density", "path") if inputs else ()
    lines = []
    for r in result["layers"]:
        cells = [r["layer"], _si(r["neurons"]), _si(r["params"]), *_firing_cells(r)]
        cells += [_si(r["sops"]), _si(r["macs"]), _si(r["ann_macs"])]
        if inputs:
            cells += [_density_text(r.get("input_density")), _path_text(r.get("paths", {}))]
        lines.append(cells)
    t = result["total"]
    total = ["total", _si(t["neurons"]), _si(t["params"]), "", "", ""]
    total += [_si(t["sops"]), _si(t["macs"]), _si(t["ann_macs"])] + ["", ""] * inputs
    e = result["energy"]
    text = [
        f"{result['samples']} samples, T = {result['T']}; operations per sample",
        *_grid(head, lines, total),
        "",
        f"energy per sample: SNN {e['snn_uj']:.3f} uJ (SOPs x {e['ac_pj']} pJ + MACs x "
        f"{e['mac_pj']} pJ), ANN twin {e['ann_uj']:.3f} uJ (MACs x {e['mac_pj']} pJ): "
        f"ratio {e['snn_over_ann']:.3f}",
        f"per-operation energies: {e['source']}",
    ]
    if inputs:
        text.append(_INPUTS_LEGEND)
    return "\n".join(text)


_INPUTS_LEGEND = (
    "in density: mean fraction of nonzero inputs per call; path: the synapse path that ran "
    "(share of calls when both did)"
)


def _generic_table(result: dict) -> str:
    head = ("layer", "neurons", "rate", "silent", "satur.")
    lines = [[r["layer"], _si(r["neurons"]), *_firing_cells(r)] for r in result["layers"]]
    total = ["total", _si(result["total"]["neurons"]), "", "", ""]
    text = [
        f"{result['samples']} samples, T = {result['T']}; firing per LIF layer; "
        f"{_si(result['total']['params'])} parameters",
        *_grid(head, lines, total),
    ]
    if result["synapses"]:
        rows = [
            [s["layer"], str(s["calls"]), _density_text(s["input_density"]), _path_text(s["paths"])]
            for s in result["synapses"]
        ]
        text += ["", *_grid(("synapse", "calls", "in density", "path"), rows), _INPUTS_LEGEND]
    text += ["", f"note: {result['note']}"]
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
    if input_shape(model) == (1, 28, 28):
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

"""Pictures of a network at work: spike rasters for one input, firing-rate histograms.

Both are plain matplotlib figures (no pyplot state), saved as PNG next to the checkpoint by
`stbp plot raster` and `stbp plot rates`.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from stbp.layers import Voting
from stbp.neuron import LIF
from stbp.stats import eval_dataset, friendly, load_run, model_device, neuron_rates


def _lif_layers(model: nn.Module, names: list[str] | None) -> dict[str, LIF]:
    """The LIF layers to show, by name (`conv1` means `lif_conv1`); all when `names` is None."""
    lifs = {n: m for n, m in model.layers.named_children() if isinstance(m, LIF)}
    if names is None:
        return lifs
    chosen = {}
    for name in names:
        key = name if name in lifs else f"lif_{name}"
        if key not in lifs:
            raise ValueError(f"no LIF layer {name!r}; choose from: {', '.join(lifs)}")
        chosen[key] = lifs[key]
    return chosen


MAX_ROWS = 300  # neurons a raster panel shows at most: 2 pixels a row at 100 dpi
ROW_INCHES = 0.02
SEPARATED_ROWS = 60  # white lines between rows only while rows are tall enough to keep them


@torch.no_grad()
def record_spikes(
    model: nn.Module, x: torch.Tensor, layers: list[str] | None = None
) -> dict[str, torch.Tensor]:
    """Spikes `[T, neurons]` of the chosen LIF layers for one sample `x` (static `[C, H, W]`
    or a sequence `[T, C, H, W]`), on the model's device (`x` is moved there)."""
    chosen = _lif_layers(model, layers)
    spikes: dict[str, torch.Tensor] = {}
    hooks = [
        m.register_forward_hook(
            lambda _m, _i, out, name=name: spikes.__setitem__(name, out[:, 0].flatten(1))
        )
        for name, m in chosen.items()
    ]
    was_training = model.training
    model.eval()
    try:
        batch = _as_batch(model, x).to(model_device(model))
        sequence = batch.dim() == len(model.in_shape) + 2
        model(batch, T=batch.shape[0] if sequence else None)  # the recording's own length
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return spikes


def _as_batch(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    n = len(model.in_shape)
    if x.dim() == n:
        return x.unsqueeze(0)
    if x.dim() == n + 1:
        return x.unsqueeze(1)
    raise ValueError(
        f"expected one sample [{', '.join(map(str, model.in_shape))}] or "
        f"[T, ...] of it, got {list(x.shape)}"
    )


def _frame_image(frame: torch.Tensor) -> tuple[np.ndarray, dict]:
    """An image array and imshow options for one input frame `[C, H, W]`."""
    f = frame.detach().float().cpu()
    if f.shape[0] == 2:  # event frame: OFF channel 0, ON channel 1
        diff = (f[1] - f[0]).numpy()
        lim = max(float(np.abs(diff).max()), 1e-9)
        return diff, {"cmap": "coolwarm", "vmin": -lim, "vmax": lim}
    if f.shape[0] == 3:
        f = (f - f.min()) / max(float(f.max() - f.min()), 1e-9)
        return f.permute(1, 2, 0).numpy(), {}
    return f[0].numpy(), {"cmap": "gray_r"}


def _draw_input(sub, x: torch.Tensor, static: bool, width: float, height: float) -> None:
    """The input image, or each input frame titled by its step, at the top of the subfigure
    `sub` (`width` x `height` inches); the subfigure's own title says "input"."""
    frames = [x] if static else list(x)
    cols = math.ceil(math.sqrt(len(frames)))
    rows = math.ceil(len(frames) / cols)
    cell = width / cols + (0 if static else 0.2)  # a square image and its title
    spare = max(0.1, height - 0.4 - rows * cell)
    grid = sub.add_gridspec(rows + 1, cols, height_ratios=[*([cell] * rows), spare])
    for i, frame in enumerate(frames):
        ax = sub.add_subplot(grid[i // cols, i % cols])
        image, opts = _frame_image(frame)
        ax.imshow(image, **opts)
        ax.set_xticks([])
        ax.set_yticks([])
        if not static:
            ax.set_title(f"t={i}", fontsize=7, pad=2)
    sub.suptitle("input (every step)" if static else "input frames", fontsize=9)


def _rows_shown(name: str, total: int, neurons: int, voters: tuple | None) -> int:
    if voters is not None and name == voters[0]:
        return total  # the voting layer whole, grouped by class
    return min(neurons, total, MAX_ROWS)


def raster_figure(
    model: nn.Module,
    x: torch.Tensor,
    layers: list[str] | None = None,
    neurons: int = 40,
    title: str = "",
) -> Figure:
    """Spike raster of the chosen LIF layers for one sample, its input frames beside it.

    Each panel shows up to `neurons` neurons of a layer (at most the layer's size and
    `MAX_ROWS`, so that every row stays visible), evenly spaced over the layer; the voting
    layer is shown whole, its neurons grouped by the class they vote for."""
    if neurons < 1:
        raise ValueError(f"neurons must be at least 1 (neurons shown per layer), got {neurons}")
    spikes = record_spikes(model, x, layers)
    static = x.dim() == len(model.in_shape)
    voters = _voting_lif(model)
    rows = {name: _rows_shown(name, s.shape[1], neurons, voters) for name, s in spikes.items()}
    heights = [max(1.5, 0.5 + ROW_INCHES * r) for r in rows.values()]
    size = (7.5, 0.6 + sum(heights))
    fig = Figure(figsize=size, layout="constrained")
    left, right = fig.subfigures(1, 2, width_ratios=[1, 3])
    _draw_input(left, x, static, size[0] / 4, size[1])
    axes = right.subplots(len(spikes), 1, sharex=True, height_ratios=heights, squeeze=False)
    for ax, (name, s) in zip(axes[:, 0], spikes.items(), strict=True):
        _draw_raster(ax, name, s, rows[name], separators=voters is None or name != voters[0])
        if voters is not None and name == voters[0]:
            _label_classes(ax, voters[1])
    axes[-1, 0].set_xlabel("time step t")
    events = x.shape[-3] == 2
    note = "\ninput: ON events red, OFF events blue" if events else ""
    fig.suptitle((title or "spike raster") + note, fontsize=10)
    return fig


def _voting_lif(model: nn.Module) -> tuple[str, Voting] | None:
    """The LIF layer feeding the voting layer, and the voting layer."""
    children = list(model.layers.named_children())
    for (name, before), (_, after) in zip(children, children[1:], strict=False):
        if isinstance(before, LIF) and isinstance(after, Voting):
            return name, after
    return None


def _label_classes(ax, vote: Voting) -> None:
    bounds = np.arange(1, vote.num_classes) * vote.votes - 0.5
    ax.hlines(bounds, -0.5, ax.get_xlim()[1], color="tab:red", lw=0.6)
    ax.set_yticks(
        np.arange(vote.num_classes) * vote.votes + (vote.votes - 1) / 2,
        [str(c) for c in range(vote.num_classes)],
        fontsize=7,
    )
    ax.set_ylabel("voters of class")


def _draw_raster(ax, name: str, s: torch.Tensor, rows: int, separators: bool = True) -> None:
    """`rows` neurons of one layer's spikes, evenly spaced over it, as a neuron x time grid:
    a black cell is a spike."""
    steps, total = s.shape
    idx = np.unique(np.linspace(0, total - 1, min(rows, total)).round().astype(int))
    grid = s[:, idx].T.float().cpu().numpy()
    ax.imshow(
        grid,
        cmap="Greys",
        vmin=0,
        vmax=1,
        aspect="auto",
        interpolation="nearest",
        origin="lower",
        extent=(-0.5, steps - 0.5, -0.5, len(idx) - 0.5),
    )
    ax.vlines(
        np.arange(steps - 1) + 0.5, -0.5, len(idx) - 0.5, color="white", lw=min(2.0, 60 / steps)
    )
    if separators and len(idx) <= SEPARATED_ROWS:
        ax.hlines(np.arange(len(idx) - 1) + 0.5, -0.5, steps - 0.5, color="white", lw=0.4)
    ax.set_xticks(range(steps))
    ax.set_ylabel("neuron")
    rate = float(s.float().mean())
    shown = f"{len(idx)} of {total:,} neurons shown" if len(idx) < total else f"{total} neurons"
    ax.set_title(f"{name}: {shown}, rate {rate:.3f}", fontsize=9, loc="left")


def rates_figure(rates: dict[str, torch.Tensor], title: str = "") -> Figure:
    """Histogram of per-neuron firing rates, one panel per layer (from `stats.neuron_rates`)."""
    cols = min(3, len(rates))
    rows = math.ceil(len(rates) / cols)
    fig = Figure(figsize=(3.3 * cols, 2.6 * rows + 0.4), layout="constrained")
    bins = np.linspace(0, 1, 21)
    for i, (name, r) in enumerate(rates.items()):
        ax = fig.add_subplot(rows, cols, i + 1)
        r = r.cpu().numpy()
        ax.hist(r, bins=bins, weights=np.full(r.size, 100 / r.size), color="tab:blue")
        silent, saturated = float((r == 0).mean()), float((r == 1).mean())
        ax.set_title(
            f"{name}\nmean {r.mean():.3f}, silent {silent:.0%}, saturated {saturated:.0%}",
            fontsize=9,
        )
        ax.set_xlabel("firing rate (spikes per step)")
        ax.set_ylabel("neurons (%)")
        ax.set_xlim(0, 1)
    fig.suptitle(title or "firing rates per layer", fontsize=11)
    return fig


# ---------------------------------------------------------------------------------- CLI


def register(subparsers) -> None:
    """Add `stbp plot raster` and `stbp plot rates` to the CLI."""
    plot = subparsers.add_parser("plot", help="spike raster or firing-rate histogram (PNG)")
    kinds = plot.add_subparsers(dest="plot", required=True, metavar="KIND")
    raster = kinds.add_parser("raster", help="spike raster of one input")
    rates = kinds.add_parser("rates", help="histogram of per-neuron firing rates per layer")
    for p in (raster, rates):
        p.add_argument("--checkpoint", required=True, help="checkpoint file (.pt)")
        p.add_argument("--data-dir", default=None, help="data folder (default: the checkpoint's)")
        p.add_argument("--cache-dir", default=None, help="frame cache folder (default: the run's)")
        p.add_argument("--out", default=None, help="PNG path (default: next to the checkpoint)")
    raster.add_argument("--sample", type=int, default=0, help="index in the test set")
    raster.add_argument(
        "--layers", default=None, help="comma-separated LIF layers, e.g. conv1,fc1 (default: all)"
    )
    raster.add_argument(
        "--neurons",
        type=_at_least_one,
        default=40,
        help=f"neurons shown per layer (default 40; at most the layer's size and {MAX_ROWS})",
    )
    raster.set_defaults(func=friendly(_cli_raster))
    rates.add_argument("--batches", type=int, default=10, help="batches to run (default 10)")
    rates.add_argument("--batch-size", type=int, default=32)
    rates.set_defaults(func=friendly(_cli_rates))


def _at_least_one(text: str) -> int:
    """An argparse type: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return value


def _load(args: argparse.Namespace):
    model, state = load_run(args.checkpoint)
    return model, eval_dataset(model, state, args.data_dir, args.cache_dir)


def _save(fig: Figure, args: argparse.Namespace, default_name: str) -> int:
    out = Path(args.out) if args.out else Path(args.checkpoint).parent / default_name
    fig.savefig(out, dpi=100)
    print(f"wrote {out}")
    return 0


def _cli_raster(args: argparse.Namespace) -> int:
    model, data = _load(args)
    if not 0 <= args.sample < len(data):
        raise ValueError(
            f"--sample {args.sample} is out of range: the test set has {len(data)} samples"
        )
    x, label = data[args.sample]
    layers = args.layers.split(",") if args.layers else None
    fig = raster_figure(
        model,
        torch.as_tensor(x),
        layers,
        args.neurons,
        title=f"sample {args.sample} (label {label})",
    )
    return _save(fig, args, f"raster_sample{args.sample}.png")


def _cli_rates(args: argparse.Namespace) -> int:
    model, data = _load(args)
    loader = torch.utils.data.DataLoader(data, batch_size=args.batch_size)
    rates = neuron_rates(model, loader, args.batches)
    n = min(len(data), args.batches * args.batch_size)
    return _save(
        rates_figure(rates, title=f"firing rates per layer ({n} test samples)"), args, "rates.png"
    )

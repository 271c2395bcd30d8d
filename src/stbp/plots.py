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
from stbp.record import Recording, layer_root, record, sample_dims
from stbp.stats import eval_dataset, friendly, load_run, neuron_rates

MAX_ROWS = 300  # neurons a raster panel shows at most: 2 pixels a row at 100 dpi
ROW_INCHES = 0.02
SEPARATED_ROWS = 60  # white lines between rows only while rows are tall enough to keep them


def record_spikes(
    model: nn.Module, x: torch.Tensor, layers: list[str] | None = None
) -> dict[str, torch.Tensor]:
    """Spikes `[T, neurons]` of the chosen LIF layers for one sample: `stbp.record(model, x,
    layers).spikes` (kept for code written before `stbp.record`)."""
    return record(model, x, layers).spikes


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


POTENTIAL_INCHES = 1.3  # height of a membrane potential panel


def raster_figure(
    model: nn.Module,
    x: torch.Tensor,
    layers: list[str] | None = None,
    neurons: int = 40,
    title: str = "",
    potentials: int = 0,
) -> Figure:
    """Spike raster of the chosen LIF layers for one sample, its input frames beside it.

    Each panel shows up to `neurons` neurons of a layer (at most the layer's size and
    `MAX_ROWS`, so that every row stays visible), evenly spaced over the layer; the voting
    layer is shown whole, its neurons grouped by the class they vote for. With `potentials`
    = k > 0, a panel under each raster traces the membrane potential `u[t]` of k of the
    layer's neurons (the most active ones) against its threshold."""
    if neurons < 1:
        raise ValueError(f"neurons must be at least 1 (neurons shown per layer), got {neurons}")
    if potentials < 0:
        raise ValueError(f"potentials must be >= 0 (neurons traced per layer), got {potentials}")
    rec = record(model, x, layers, potentials=potentials > 0)
    static = x.dim() == sample_dims(model)
    voters = _voting_lif(model)
    rows = {name: _rows_shown(name, s.shape[1], neurons, voters) for name, s in rec.spikes.items()}
    heights = []
    for r in rows.values():
        heights += [max(1.5, 0.5 + ROW_INCHES * r)] + [POTENTIAL_INCHES] * (potentials > 0)
    size = (7.5, 0.6 + sum(heights))
    fig = Figure(figsize=size, layout="constrained")
    left, right = fig.subfigures(1, 2, width_ratios=[1, 3])
    _draw_input(left, x, static, size[0] / 4, size[1])
    grid = right.subplots(len(heights), 1, sharex=True, height_ratios=heights, squeeze=False)
    axes = iter(grid)
    for name, s in rec.spikes.items():
        ax = next(axes)[0]
        _draw_raster(ax, name, s, rows[name], separators=voters is None or name != voters[0])
        if voters is not None and name == voters[0]:
            _label_classes(ax, voters[1])
        if potentials > 0:
            _draw_potentials(next(axes)[0], name, rec, potentials)
    grid[-1, 0].set_xlabel("time step t")
    events = x.dim() >= 3 and x.shape[-3] == 2
    note = "\ninput: ON events red, OFF events blue" if events else ""
    fig.suptitle((title or "spike raster") + note, fontsize=10)
    return fig


def _voting_lif(model: nn.Module) -> tuple[str, Voting] | None:
    """The LIF layer feeding a voting layer in a Sequential, and the voting layer (names as
    `lif_layers` gives them)."""
    for prefix, seq in layer_root(model).named_modules():
        if not isinstance(seq, nn.Sequential):
            continue
        children = list(seq.named_children())
        for (name, before), (_, after) in zip(children, children[1:], strict=False):
            if isinstance(before, LIF) and isinstance(after, Voting):
                return (f"{prefix}.{name}" if prefix else name), after
    return None


def _traced(spikes: torch.Tensor, u: torch.Tensor, count: int) -> np.ndarray:
    """Indices of `count` neurons worth watching: those that fire at some steps but not at
    all of them first (nearest half the steps first), then the highest potentials."""
    steps = spikes.shape[0]
    fired = spikes.float().sum(0).cpu().numpy()
    peak = u.float().amax(0).cpu().numpy()
    crossing = (fired > 0) & (fired < steps)
    order = np.lexsort((-peak, np.abs(fired - steps / 2), ~crossing))  # last key sorts first
    return np.sort(order[: min(count, len(order))])


def _draw_potentials(ax, name: str, rec: Recording, count: int) -> None:
    """`u[t]` of `count` neurons of one layer, a dot where a neuron spiked, and the threshold
    as a dashed line (one per neuron when their thresholds differ)."""
    s, u, th = rec.spikes[name], rec.potentials[name], rec.thresholds[name]
    idx = _traced(s, u, count)
    steps = np.arange(u.shape[0])
    for i in idx:
        trace = u[:, i].float().cpu().numpy()
        (line,) = ax.plot(steps, trace, lw=1, label=f"#{i}")
        fired = s[:, i].cpu().numpy() > 0
        ax.plot(steps[fired], trace[fired], "o", ms=3.5, color=line.get_color())
        if not bool((th[idx] == th[idx[0]]).all()):
            ax.axhline(float(th[i]), color=line.get_color(), ls="--", lw=0.8)
    if bool((th[idx] == th[idx[0]]).all()):
        ax.axhline(float(th[idx[0]]), color="tab:red", ls="--", lw=0.8, label="threshold")
    ax.set_ylabel("u[t]")
    ax.set_title(
        f"{name}: membrane potential u[t] of {len(idx)} neurons (dots: spikes)",
        fontsize=9,
        loc="left",
    )
    ax.legend(fontsize=6, loc="best", ncol=len(idx) + 1, framealpha=0.7)


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
    raster.add_argument(
        "--potentials",
        type=_at_least_one,
        nargs="?",
        const=3,
        default=0,
        metavar="N",
        help="also trace the membrane potential u[t] of N neurons per layer (default N: 3)",
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
        potentials=args.potentials,
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

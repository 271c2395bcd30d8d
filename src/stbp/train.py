"""Algorithm 2 of the paper: training an SNN with STBP, as the `stbp train` command.

Each step (`train_step`) runs the network over the T steps of the time window (forward:
Algorithm 1 in every LIF layer, the voting layer's rates as class scores), takes the loss
between the voted rates and the one-hot labels, back-propagates through space and time
(`loss.backward()`) and updates the weights. Around it: a run folder with the resolved config,
per-epoch metrics and curves, atomic checkpoints with exact resume, bf16 autocast, and data
parallelism under `torchrun`. `stbp eval` and `stbp configs` are registered here too.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

import stbp
from stbp import checkpoint as ck
from stbp import distributed as dd
from stbp.config import (
    ConfigError,
    config_names,
    describe,
    in_shape,
    load_config,
    make_dataset,
    to_toml,
)
from stbp.config import make_datasets as make_datasets  # the data sets of a config
from stbp.data import FormatError
from stbp.models import SNN
from stbp.neuron import LIFParameters

__all__ = [
    "Diverged",
    "evaluate",
    "make_datasets",
    "make_dataset",
    "make_model",
    "register",
    "run_training",
]

CHECK_EVERY = 10  # steps between NaN checks and progress-bar updates


class Diverged(RuntimeError):
    """The loss became NaN or infinite."""


# ---------------------------------------------------------------- model, optimizer, schedule


def make_model(config: dict, in_shape: tuple[int, ...]) -> SNN:
    """The network of `[model]`, for inputs of `in_shape`, with the window `[data] T`."""
    m = config["model"]
    lif = LIFParameters(float(m["decay"]), float(m["threshold"]), m["surrogate"], float(m["width"]))
    kwargs = dict(
        T=config["data"]["T"],
        neunorm=m["neunorm"],
        dropout=float(m["dropout"]),
        lif=lif,
        votes=m["votes"],
    )
    if m["spec"]:
        return stbp.build(m["spec"], tuple(m["in_shape"] or in_shape), **kwargs)
    if m["network"] not in stbp.PAPER_NETWORKS:
        raise ConfigError(
            f"unknown network {m['network']!r}; choose one of: " + ", ".join(stbp.PAPER_NETWORKS)
        )
    model = stbp.paper_network(m["network"], **kwargs)
    if tuple(model.in_shape) != tuple(in_shape):
        raise ConfigError(
            f"network {m['network']!r} takes inputs {model.in_shape}, but the "
            f"data set gives {tuple(in_shape)}; check [data] size"
        )
    return model


def make_optimizer(model: nn.Module, optim: dict) -> torch.optim.Optimizer:
    """Adam on every parameter, or SGD with momentum: `lr` on conv (and NeuNorm) parameters,
    `lr_fc` on fully connected ones (as in the authors' released code). Both run their update
    as one fused kernel where PyTorch has one for the device (CPU and CUDA do)."""
    if optim["optimizer"] == "adam":
        return _fused(torch.optim.Adam, model.parameters(), lr=optim["lr"],
                      weight_decay=optim["weight_decay"])
    fc = {id(p) for m in model.modules() if isinstance(m, nn.Linear) for p in m.parameters()}
    groups = [
        {"params": [p for p in model.parameters() if id(p) not in fc], "lr": optim["lr"]},
        {"params": [p for p in model.parameters() if id(p) in fc], "lr": optim["lr_fc"]},
    ]
    return _fused(torch.optim.SGD, [g for g in groups if g["params"]],
                  momentum=optim["momentum"], weight_decay=optim["weight_decay"])


def _fused(optimizer: type, params, **kwargs) -> torch.optim.Optimizer:
    params = list(params)
    try:
        return optimizer(params, fused=True, **kwargs)
    except RuntimeError:  # no fused kernel for this device or dtype
        return optimizer(params, **kwargs)


def make_schedule(optimizer, optim: dict, steps_per_epoch: int, epochs: int):
    """A per-step learning-rate schedule: cosine to 0 over the run, step, or constant."""
    total = max(1, steps_per_epoch * epochs)
    if optim["schedule"] == "cosine":
        factor = lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total) / total))  # noqa: E731
    elif optim["schedule"] == "step":
        every = optim["step_epochs"] * steps_per_epoch
        factor = lambda step: optim["gamma"] ** (step // every)  # noqa: E731
    else:
        factor = lambda step: 1.0  # noqa: E731
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


LOSSES = {"mse": stbp.rate_mse_loss, "ce": stbp.rate_ce_loss}


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto` becomes bf16 where `device` computes it natively (CUDA with bf16, CPUs with
    AVX512-BF16 or AMX), else fp32; elsewhere bf16 is emulated and slower than fp32."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        native = torch.cuda.is_bf16_supported()
    else:
        checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        native = any(getattr(torch.cpu, name, lambda: False)() for name in checks)
    return "bf16" if native else "fp32"


def autocast(device: torch.device, precision: str):
    """bf16 autocast (CPU or CUDA) for `precision == "bf16"`, else nothing."""
    if precision != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


# ------------------------------------------------------------------------------- the run


@dataclass
class Run:
    """Everything one training run carries from epoch to epoch."""

    config: dict
    ctx: dd.Context
    out: Path
    model: SNN
    net: nn.Module  # the model, wrapped in DistributedDataParallel under torchrun
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    train_batches: dd.Batches
    test_set: torch.utils.data.Dataset
    steps_per_epoch: int
    epoch: int = 0  # epochs completed
    history: list = field(default_factory=list)
    best: dict = field(default_factory=lambda: {"acc": -1.0, "epoch": 0})
    seconds: float = 0.0  # training time of the completed epochs

    def epoch_batches(self, epoch: int) -> list:
        r = self.config["run"]
        batches = dd.epoch_batches(
            len(self.train_batches.dataset),
            self.config["optim"]["batch_size"],
            r["seed"],
            epoch,
            self.ctx.world,
        )
        return batches[: self.steps_per_epoch]


def default_out(config: dict, resume: bool) -> Path:
    """`runs/<config>-<timestamp>`, or with `resume` the newest such folder."""
    name = config["run"]["name"]
    if resume:
        found = sorted(Path("runs").glob(f"{name}-*/last.pt"))
        if not found:
            raise ConfigError(f"--resume: no runs/{name}-*/last.pt to resume; pass --out DIR")
        return found[-1].parent
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{name}-{stamp}"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_run(config: dict, ctx: dd.Context, out: str | Path | None, resume: bool) -> Run:
    """Data, model, optimizer and schedule of a fresh or resumed run."""
    out = Path(out) if out else dd.broadcast_object(ctx, default_out(config, resume))
    last = out / "last.pt"
    state = None
    if resume:
        state = ck.load_checkpoint(last)
    seed_everything(config["run"]["seed"])
    train_set, test_set = make_datasets(config)
    model = make_model(config, in_shape(train_set)).to(ctx.device)
    optim = config["optim"]
    optimizer = make_optimizer(model, optim)
    batches = dd.Batches(train_set, config, ctx, train=True)
    run = Run(config, ctx, out, model, model, optimizer, None, batches, test_set, 0)
    run.steps_per_epoch = config["run"]["max_steps_per_epoch"] or len(train_set)
    run.steps_per_epoch = len(run.epoch_batches(0))  # at most the number of batches
    run.schedule = make_schedule(optimizer, optim, run.steps_per_epoch, config["run"]["epochs"])
    if state is not None:
        _restore(run, state, last)
    elif optim["calibrate_rate"] > 0:
        _calibrate(run)
    if ctx.distributed:
        ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        run.net = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    return run


def _calibrate(run: Run) -> None:
    """`calibrate_` on the first global batch (the same on every process)."""
    whole = dd.Context(0, 1, run.ctx.device)
    loader = dd.Batches(run.train_batches.dataset, run.config, whole, train=False)
    x, _ = next(loader(run.epoch_batches(0)[:1]))
    stbp.calibrate_(run.model, x, rate=run.config["optim"]["calibrate_rate"])


def _restore(run: Run, state: dict, path: Path) -> None:
    ck.check_same_network(state, run.model.build_args, path)
    ck.load_weights(run.model, state["model"], path)
    run.optimizer.load_state_dict(state["optimizer"])
    run.schedule.load_state_dict(state["schedule"])
    run.epoch, run.history, run.best = state["epoch"], state["history"], state["best"]
    run.seconds = state["seconds"]
    ck.set_rng_states(state["rng"])


# ------------------------------------------------------------------------- Algorithm 2


def train_step(run: Run, x: torch.Tensor, labels: torch.Tensor):
    """One step of Algorithm 2: forward over the time window, rate loss, STBP backward,
    update. Returns the (detached) loss and the number of correct predictions."""
    with autocast(run.ctx.device, run.config["run"]["precision"]):
        scores = run.net(x)
    loss = LOSSES[run.config["optim"]["loss"]](scores.float(), labels)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    run.optimizer.step()
    run.schedule.step()
    return loss.detach(), (scores.argmax(1) == labels).sum()


def train_one_epoch(run: Run, epoch: int) -> dict:
    """One pass over the training set; returns train loss and accuracy (over all processes)."""
    run.net.train()
    cfg = run.config
    batches = run.epoch_batches(epoch)
    generator = torch.Generator().manual_seed(cfg["run"]["seed"] * 7919 + epoch + run.ctx.rank)
    totals = torch.zeros(3, dtype=torch.float64, device=run.ctx.device)  # loss sum, correct, n
    pending: list[torch.Tensor] = []
    start = time.perf_counter()
    bar = tqdm(
        total=len(batches),
        desc=f"epoch {epoch + 1}/{cfg['run']['epochs']}",
        disable=None if run.ctx.is_main else True,
        leave=False,
        dynamic_ncols=True,
    )
    for step, (x, y) in enumerate(run.train_batches(batches, generator)):
        loss, correct = train_step(run, x, y)
        totals += torch.stack(
            [
                loss.double() * len(y),
                correct.double(),
                torch.tensor(float(len(y)), dtype=torch.float64, device=loss.device),
            ]
        )
        pending.append(loss)
        if len(pending) == CHECK_EVERY or step == len(batches) - 1:
            _check_finite(run, epoch, step, pending)
            pending = []
            _update_bar(bar, step, totals, start, run.ctx.world)
    bar.close()
    totals = dd.all_sum(run.ctx, totals)
    return {"train_loss": float(totals[0] / totals[2]), "train_acc": float(totals[1] / totals[2])}


def _check_finite(run: Run, epoch: int, step: int, losses: list[torch.Tensor]) -> None:
    stacked = torch.stack(losses)
    if bool(torch.isfinite(stacked).all()):
        return
    bad = step - len(losses) + 1 + int((~torch.isfinite(stacked)).nonzero()[0])
    kept = f"{run.out / 'last.pt'} (epoch {run.epoch})" if run.epoch else "no checkpoint yet"
    raise Diverged(
        f"the loss became {float(stacked[bad - step + len(losses) - 1])} at epoch "
        f"{epoch + 1}, step {bad + 1}; stopped. Last good checkpoint: {kept}"
    )


def _update_bar(bar, step: int, totals: torch.Tensor, start: float, world: int) -> None:
    if bar.disable:
        return
    loss, correct, n = totals.tolist()
    rate = n * world / max(time.perf_counter() - start, 1e-9)
    bar.set_postfix(loss=f"{loss / n:.4f}", acc=f"{100 * correct / n:.2f}%", sps=f"{rate:.0f}")
    bar.update(step + 1 - bar.n)


@torch.no_grad()
def evaluate(
    model: SNN, dataset, config: dict, ctx: dd.Context | None = None, precision: str | None = None
) -> dict:
    """Test loss, accuracy and mean firing rate per LIF layer (model.eval(), no_grad)."""
    ctx = ctx or dd.Context(device=next(model.parameters()).device)
    precision = precision or config["run"]["precision"]
    model.eval()
    batches = dd.eval_batches(len(dataset), config["run"]["eval_batch_size"], ctx)
    loader = dd.Batches(dataset, config, dd.Context(0, 1, ctx.device), train=False)
    names = [n for n, m in model.named_modules() if isinstance(m, stbp.LIF)]
    totals = torch.zeros(3 + len(names), dtype=torch.float64, device=ctx.device)
    for x, y in loader(batches):
        with autocast(ctx.device, precision):
            scores = model(x).float()
        loss = LOSSES[config["optim"]["loss"]](scores, y)
        rates = list(stbp.firing_rates(model).values())
        totals += torch.tensor(
            [
                float(loss) * len(y),
                float((scores.argmax(1) == y).sum()),
                len(y),
                *(r * len(y) for r in rates),
            ],
            dtype=torch.float64,
            device=ctx.device,
        )
    totals = dd.all_sum(ctx, totals).tolist()
    n = max(totals[2], 1)
    metrics = {"test_loss": totals[0] / n, "test_acc": totals[1] / n}
    for name, total in zip(names, totals[3:], strict=True):
        metrics[f"rate_{name.removeprefix('layers.')}"] = total / n
    return metrics


def train_epochs(run: Run) -> dict:
    """Algorithm 2 over the epochs of the config, from `run.epoch` on; returns the summary."""
    if run.ctx.is_main:
        run.out.mkdir(parents=True, exist_ok=True)
        (run.out / "config.toml").write_text(to_toml(run.config))
    for epoch in range(run.epoch, run.config["run"]["epochs"]):
        start = time.perf_counter()
        row = {"epoch": epoch + 1, **train_one_epoch(run, epoch)}
        row.update(evaluate(run.model, run.test_set, run.config, run.ctx))
        row["epoch_seconds"] = time.perf_counter() - start
        row["lr"] = run.optimizer.param_groups[0]["lr"]
        run.seconds += row["epoch_seconds"]
        run.epoch, run.history = epoch + 1, [*run.history, row]
        improved = row["test_acc"] > run.best["acc"]
        if improved:
            run.best = {"acc": row["test_acc"], "epoch": epoch + 1}
        if run.ctx.is_main:
            _save(run, improved)
            _print_epoch(run, row)
    return summary(run)


def _save(run: Run, improved: bool) -> None:
    state = {
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "schedule": run.schedule.state_dict(),
        "epoch": run.epoch,
        "rng": ck.rng_states(),
        "build_args": run.model.build_args,
        "config": run.config,
        "history": run.history,
        "best": run.best,
        "seconds": run.seconds,
    }
    ck.save_atomic(state, run.out / "last.pt")
    if improved:
        ck.save_atomic(state, run.out / "best.pt")
    ck.write_run_files(run.out, run.history, summary(run))


def _print_epoch(run: Run, row: dict) -> None:
    print(
        f"epoch {row['epoch']}/{run.config['run']['epochs']}: train loss {row['train_loss']:.4f}"
        f" acc {100 * row['train_acc']:.2f}% | test loss {row['test_loss']:.4f} acc "
        f"{100 * row['test_acc']:.2f}% | {row['epoch_seconds']:.1f} s",
        flush=True,
    )


def summary(run: Run) -> dict:
    """What `summary.json` records about a run."""
    return {
        "config": run.config["run"]["name"],
        "best_test_acc": run.best["acc"],
        "best_epoch": run.best["epoch"],
        "epochs": run.epoch,
        "final_test_acc": run.history[-1]["test_acc"] if run.history else None,
        "total_seconds": run.seconds,
        "parameters": sum(p.numel() for p in run.model.parameters()),
        "device": str(run.ctx.device),
        "processes": run.ctx.world,
        "precision": run.config["run"]["precision"],
        "torch_version": torch.__version__,
        "seed": run.config["run"]["seed"],
        "out": str(run.out),
        "rank": run.ctx.rank,
    }


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


def run_training(config: dict, out: str | Path | None = None, resume: bool = False) -> dict:
    """Train as `config` says (Algorithm 2) in `out`; return the run's summary."""
    ctx = dd.setup(config["run"]["device"])
    config["run"]["precision"] = resolve_precision(config["run"]["precision"], ctx.device)
    if ctx.device.type == "cpu":
        reuse_freed_memory()
    try:
        return train_epochs(make_run(config, ctx, out, resume))
    finally:
        dd.teardown(ctx)


# --------------------------------------------------------------------------- the commands


def resolve_config(args: argparse.Namespace) -> dict:
    """The config file with the command-line flags applied over it."""
    config = load_config(args.config)
    overrides = {
        ("run", "epochs"): args.epochs,
        ("run", "seed"): args.seed,
        ("run", "device"): args.device,
        ("run", "precision"): args.precision,
        ("run", "max_steps_per_epoch"): args.max_steps_per_epoch,
        ("data", "T"): args.T,
        ("data", "dir"): args.data_dir and str(args.data_dir),
        ("model", "neunorm"): args.neunorm,
        ("optim", "batch_size"): args.batch_size,
    }
    for (table, key), value in overrides.items():
        if value is not None:
            config[table][key] = value
    return config


def _cmd_train(args: argparse.Namespace) -> int:
    result = run_training(resolve_config(args), args.out, args.resume)
    if result["rank"] == 0:
        print(
            f"best test accuracy {100 * result['best_test_acc']:.2f}% at epoch "
            f"{result['best_epoch']} ({result['total_seconds']:.0f} s); run folder: "
            f"{result['out']}"
        )
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    state = ck.load_checkpoint(args.checkpoint)
    config = state["config"]
    if args.data_dir:
        config["data"]["dir"] = str(args.data_dir)
    device = dd.pick_device(args.device)
    model = ck.load_model(args.checkpoint, device)
    precision = resolve_precision(args.precision or config["run"]["precision"], device)
    metrics = evaluate(
        model, make_dataset(config, train=False), config, dd.Context(device=device), precision
    )
    print(
        f"{args.checkpoint}: {config['run']['name']}, epoch {state['epoch']}: test loss "
        f"{metrics['test_loss']:.4f}, accuracy {100 * metrics['test_acc']:.2f}%"
    )
    for key, value in metrics.items():
        if key.startswith("rate_"):
            print(f"  firing rate {key[5:]}: {value:.4f}")
    return 0


def _cmd_configs(args: argparse.Namespace) -> int:
    names = config_names()
    width = max(map(len, names))
    for name in names:
        print(f"{name:<{width}}  {describe(name)}")
    return 0


USER_ERRORS = (ConfigError, ck.CheckpointError, FormatError, FileNotFoundError, Diverged)


def _friendly(func):
    """Print the errors a user can act on as one line instead of a traceback."""

    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except USER_ERRORS as err:
            print(f"stbp {args.command}: error: {err}", file=sys.stderr)
            return 1 if isinstance(err, Diverged) else 2

    return run


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `train`, `eval` and `configs` to the `stbp` command line."""
    p = subparsers.add_parser("train", help="train a network (one config per paper experiment)")
    p.add_argument("--config", required=True, help="a shipped config name or a .toml path")
    p.add_argument("--data-dir", type=Path, help="data folder (overrides [data] dir)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, help="global batch size")
    p.add_argument("--T", type=int, help="time window (steps)")
    p.add_argument("--neunorm", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--device", choices=("cpu", "cuda", "auto"))
    p.add_argument("--precision", choices=("fp32", "bf16", "auto"))
    p.add_argument("--seed", type=int)
    p.add_argument("--max-steps-per-epoch", type=int, help="cut epochs short (smoke runs)")
    p.add_argument("--out", type=Path, help="run folder (default runs/<config>-<timestamp>)")
    p.add_argument("--resume", action="store_true", help="continue from <out>/last.pt")
    p.set_defaults(func=_friendly(_cmd_train))

    p = subparsers.add_parser("eval", help="evaluate a checkpoint on its config's test set")
    p.add_argument("--checkpoint", required=True, type=Path)
    p.add_argument("--data-dir", type=Path, help="data folder (overrides the stored config)")
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto")
    p.add_argument(
        "--precision", choices=("fp32", "bf16", "auto"), help="default: the training run's"
    )
    p.set_defaults(func=_friendly(_cmd_eval))

    p = subparsers.add_parser("configs", help="list the shipped experiment configs")
    p.set_defaults(func=_friendly(_cmd_configs))

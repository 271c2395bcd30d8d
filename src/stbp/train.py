"""Algorithm 2 of the paper: training an SNN with STBP.

Each step (`train_step`) runs the network over the T steps of the time window (forward:
Algorithm 1 in every LIF layer, the voting layer's rates as class scores), takes the loss
between the voted rates and the one-hot labels, back-propagates through space and time
(`loss.backward()`) and updates the weights. `train_one_epoch` runs the steps of one epoch
from any step on (so that a run resumes inside an epoch), and `evaluate` measures a model on
a validation or test set. The run folder, checkpoints and commands live in `stbp.runs`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn

import stbp
from stbp import distributed as dd
from stbp.config import ConfigError, ModelSettings, OptimSettings, Settings
from stbp.datasets import Splits
from stbp.devices import autocast
from stbp.models import SNN
from stbp.neuron import LIFParameters

__all__ = [
    "Diverged",
    "Progress",
    "Trainer",
    "augmentation_generator",
    "evaluate",
    "make_model",
    "make_optimizer",
    "make_schedule",
    "train_one_epoch",
    "train_step",
]

CHECK_EVERY = 10  # steps between NaN checks (the loop's only host-device sync)


class Diverged(RuntimeError):
    """The loss or a parameter became NaN or infinite."""


# ---------------------------------------------------------------- model, optimizer, schedule


def make_model(
    model: ModelSettings, T: int, in_shape: tuple[int, ...], encoding: str = "analog"
) -> nn.Module:
    """The network of `[model]` with the window `T`, for data of shape `in_shape` presented
    by `encoding` (`[data] encoding`); `[model] factory` builds your own network instead."""
    if model.factory:
        from stbp import factory

        return factory.make_model(model, T, in_shape, encoding)
    lif = LIFParameters(float(model.decay), float(model.threshold), model.surrogate,
                        float(model.width))  # fmt: skip
    kwargs = dict(T=T, neunorm=model.neunorm, dropout=float(model.dropout), lif=lif,
                  votes=model.votes, dropout_mask=model.dropout_mask,
                  neunorm_reading=model.neunorm_reading, reset=model.reset,
                  detach_reset=model.detach_reset, learn_decay=model.learn_decay,
                  learn_threshold=model.learn_threshold, per_channel=model.per_channel,
                  encoding=encoding)  # fmt: skip
    if model.spec:
        shape = tuple(model.in_shape or in_shape)
        net, where = stbp.build(model.spec, shape, **kwargs), "[model] in_shape"
    else:
        net, where = stbp.paper_network(model.network, **kwargs), f"network {model.network!r}"
    if tuple(net.in_shape) != tuple(in_shape):
        raise ConfigError(
            f"{where} takes inputs {list(net.in_shape)}, but the data set gives "
            f"{list(in_shape)}; check [data] size and [model] in_shape"
        )
    return net


def make_optimizer(model: nn.Module, optim: OptimSettings) -> torch.optim.Optimizer:
    """Adam on every parameter, or SGD with momentum: `lr` on conv (and NeuNorm) parameters,
    `lr_fc` on fully connected ones (as in the authors' released CIFAR-10 code). Both run their
    update as one fused kernel where PyTorch has one for the device (CPU and CUDA do)."""
    if optim.optimizer == "adam":
        return _fused(torch.optim.Adam, model.parameters(), lr=optim.lr,
                      weight_decay=optim.weight_decay)  # fmt: skip
    fc = {id(p) for m in model.modules() if isinstance(m, nn.Linear) for p in m.parameters()}
    groups = [
        {"params": [p for p in model.parameters() if id(p) not in fc], "lr": optim.lr},
        {"params": [p for p in model.parameters() if id(p) in fc], "lr": optim.lr_fc},
    ]
    return _fused(torch.optim.SGD, [g for g in groups if g["params"]],
                  momentum=optim.momentum, weight_decay=optim.weight_decay)  # fmt: skip


def _fused(optimizer: type, params, **kwargs) -> torch.optim.Optimizer:
    """`optimizer(params, fused=True, **kwargs)`, or the plain one where there is no fused
    kernel for the device or dtype (RuntimeError) or no `fused` argument at all (TypeError, as
    SGD in older torch)."""
    params = list(params)
    try:
        return optimizer(params, fused=True, **kwargs)
    except (RuntimeError, TypeError):
        return optimizer(params, **kwargs)


def make_schedule(optimizer, optim: OptimSettings, steps_per_epoch: int, epochs: int):
    """A per-step learning-rate schedule: cosine to 0 over the run, step, or constant."""
    total = max(1, steps_per_epoch * epochs)
    if optim.schedule == "cosine":
        factor = lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total) / total))  # noqa: E731
    elif optim.schedule == "step":
        every = optim.step_epochs * steps_per_epoch
        factor = lambda step: optim.gamma ** (step // every)  # noqa: E731
    else:
        factor = lambda step: 1.0  # noqa: E731
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


LOSSES = {"mse": stbp.rate_mse_loss, "ce": stbp.rate_ce_loss}


# ------------------------------------------------------------------------------- the run


@dataclass
class Progress:
    """Where a run stands: what a checkpoint stores besides the weights and optimizer."""

    epoch: int = 0  # epochs completed
    step: int = 0  # steps completed inside epoch `epoch` (a mid-epoch checkpoint), else 0
    totals: list = field(default_factory=lambda: [0.0, 0.0, 0.0])  # loss sum, correct, n
    epoch_seconds: float = 0.0  # time spent so far inside the unfinished epoch
    generator: torch.Tensor | None = None  # the epoch's augmentation RNG state, mid-epoch
    history: list = field(default_factory=list)
    best: dict = field(default_factory=lambda: {"acc": -1.0, "epoch": 0})
    seconds: float = 0.0  # training time of the completed epochs

    def end_epoch(self, row: dict) -> bool:
        """Record a finished epoch's row; whether it is the best so far (`select`)."""
        self.seconds += row["epoch_seconds"]
        self.epoch, self.step, self.totals = row["epoch"], 0, [0.0, 0.0, 0.0]
        self.epoch_seconds, self.generator = 0.0, None
        self.history = [*self.history, row]
        improved = select(row) > self.best["acc"]
        if improved:
            self.best = {"acc": select(row), "epoch": row["epoch"]}
        return improved


@dataclass
class Trainer:
    """Everything Algorithm 2 needs from epoch to epoch."""

    settings: Settings
    ctx: dd.Context
    model: SNN
    net: nn.Module  # the model, wrapped in DistributedDataParallel under torchrun
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    splits: Splits
    progress: Progress = field(default_factory=Progress)

    def __post_init__(self):
        s = self.settings
        self.loader = dd.Batches(self.splits.train_set, s.data, s.run.workers, self.ctx, True)
        self.steps_per_epoch = len(self.epoch_batches(0))

    def epoch_batches(self, epoch: int) -> list:
        """The global index batches of training epoch `epoch` (0-based)."""
        s = self.settings
        positions = dd.epoch_batches(len(self.splits.train), s.optim.batch_size, s.run.seed,
                                     epoch, self.ctx.world)  # fmt: skip
        if s.run.max_steps_per_epoch:
            positions = positions[: s.run.max_steps_per_epoch]
        return [self.splits.train[p] for p in positions]

    def loss(self, scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return LOSSES[self.settings.optim.loss](scores.float(), labels)


# ------------------------------------------------------------------------- Algorithm 2


def train_step(trainer: Trainer, x: torch.Tensor, labels: torch.Tensor):
    """One step of Algorithm 2: forward over the time window, rate loss, STBP backward,
    update. Returns the (detached) loss and the number of correct predictions."""
    with autocast(trainer.ctx.device, trainer.settings.run.precision):
        scores = trainer.net(x)
    loss = trainer.loss(scores, labels)
    trainer.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    trainer.optimizer.step()
    trainer.schedule.step()
    return loss.detach(), (scores.argmax(1) == labels).sum()


class StepHook(Protocol):
    """What the run folder passes to the loop to save mid-epoch checkpoints and report."""

    def due(self, steps_done: int) -> bool:
        """Whether to check and call the hook after this step (besides every CHECK_EVERY)."""

    def __call__(self, epoch: int, steps_done: int, totals: torch.Tensor,
                 generator: torch.Generator) -> None:  # fmt: skip
        """Called after a checked step with the epoch's running totals and RNG."""


def train_one_epoch(trainer: Trainer, epoch: int, on_checked_step: StepHook | None = None) -> dict:
    """One pass over the training set, from step `progress.step` on (0, or where a mid-epoch
    checkpoint stopped); returns train loss and accuracy over all processes."""
    trainer.net.train()
    p, seed = trainer.progress, trainer.settings.run.seed
    batches = trainer.epoch_batches(epoch)
    generator = augmentation_generator(seed, epoch, trainer.ctx.rank)
    if p.step and p.generator is not None:
        generator.set_state(p.generator)
    totals = torch.tensor(p.totals, dtype=torch.float64, device=trainer.ctx.device)
    pending: list[torch.Tensor] = []
    for step, (x, y) in enumerate(trainer.loader(batches[p.step :], generator), p.step):
        loss, correct = train_step(trainer, x, y)
        totals[0] += loss.double() * len(y)
        totals[1] += correct
        totals[2] += len(y)
        pending.append(loss)
        due = on_checked_step is not None and on_checked_step.due(step + 1)
        if len(pending) == CHECK_EVERY or step == len(batches) - 1 or due:
            check_finite(trainer, epoch, step, pending)
            pending = []
            if on_checked_step is not None:
                on_checked_step(epoch, step + 1, totals, generator)
    totals = dd.all_sum(trainer.ctx, totals).tolist()
    return {"train_loss": totals[0] / totals[2], "train_acc": totals[1] / totals[2]}


def augmentation_generator(seed: int, epoch: int, rank: int) -> torch.Generator:
    """The generator of the training augmentation of epoch `epoch` on process `rank`: seeded by
    (seed, epoch) on rank 0, as a single process always was, and by (seed, epoch, rank) on the
    others, so that processes and epochs do not share a stream."""
    return torch.Generator().manual_seed(dd.rank_seed(seed * 7919 + epoch, rank))


def check_finite(trainer: Trainer, epoch: int, step: int, losses: list[torch.Tensor]) -> None:
    """`Diverged` if one of the last losses or a parameter is NaN or infinite (one sync)."""
    params = [q for q in trainer.model.parameters()]
    sums = torch.stack([q.detach().float().sum() for q in params])
    values = torch.cat([torch.stack(losses).float(), sums])
    if bool(torch.isfinite(values).all()):
        return
    p, first = trainer.progress, step - len(losses) + 1
    kept = f"last.pt (epoch {p.epoch}" + (f", step {p.step})" if p.step else ")")
    kept = kept if p.epoch or p.step else "no checkpoint yet"
    bad = (~torch.isfinite(values)).nonzero()[0].item()
    if bad < len(losses):
        what = f"the loss became {values[bad].item()} at epoch {epoch + 1}, step {first + bad + 1}"
    else:
        names = [n for n, _ in trainer.model.named_parameters()]
        broken = [names[i] for i in (~torch.isfinite(sums)).nonzero()[:, 0].tolist()]
        more = f" (and {len(broken) - 1} more)" if len(broken) > 1 else ""
        what = (f"parameter {broken[0]}{more} became {sums[bad - len(losses)].item()} at epoch "
                f"{epoch + 1}, steps {first + 1}-{step + 1}")  # fmt: skip
    raise Diverged(f"{what}; stopped. Last good checkpoint: {kept}")


@torch.no_grad()
def evaluate(model: SNN, dataset, loss: str, indices: torch.Tensor | None = None,
             batch_size: int = 500, ctx: dd.Context | None = None,
             precision: str = "fp32") -> dict:  # fmt: skip
    """Loss, accuracy and mean firing rate per LIF layer on `dataset` (or the samples
    `indices` of it), in eval mode, without gradients; sums on the device, one sync."""
    ctx = ctx or dd.Context(device=next(model.parameters()).device)
    model.eval()
    indices = torch.arange(len(dataset)) if indices is None else indices
    batches = dd.eval_batches(indices, batch_size, ctx)
    loader = dd.Batches(dataset, None, 0, dd.Context(0, 1, ctx.device), train=False)
    lifs = {n.removeprefix("layers."): m for n, m in model.named_modules()
            if isinstance(m, stbp.LIF)}  # fmt: skip
    totals = torch.zeros(3 + len(lifs), dtype=torch.float64, device=ctx.device)
    for x, y in loader(batches):
        with autocast(ctx.device, precision):
            scores = model(x).float()
        rates = [m.last_rate.to(totals.device, torch.float64) for m in lifs.values()]
        totals += torch.stack([
            LOSSES[loss](scores, y).double() * len(y), (scores.argmax(1) == y).sum().double(),
            torch.full((), float(len(y)), dtype=torch.float64, device=ctx.device),
            *(r * len(y) for r in rates),
        ])  # fmt: skip
    totals = dd.all_sum(ctx, totals).tolist()
    n = max(totals[2], 1)
    metrics = {"loss": totals[0] / n, "acc": totals[1] / n}
    metrics.update({f"rate_{name}": t / n for name, t in zip(lifs, totals[3:], strict=True)})
    return metrics


def run_epoch(trainer: Trainer, epoch: int, on_checked_step: StepHook | None = None) -> dict:
    """Train epoch `epoch` (from where the progress stands), then measure it on the
    validation and test sets; returns the epoch's row of the history."""
    start = time.perf_counter() - trainer.progress.epoch_seconds
    row = {"epoch": epoch + 1, **train_one_epoch(trainer, epoch, on_checked_step)}
    s, splits = trainer.settings, trainer.splits
    common = dict(loss=s.optim.loss, batch_size=s.run.eval_batch_size, ctx=trainer.ctx,
                  precision=s.run.precision)  # fmt: skip
    if len(splits.val):
        val = evaluate(trainer.model, splits.train_set, indices=splits.val, **common)
        row.update(val_loss=val["loss"], val_acc=val["acc"])
    test = evaluate(trainer.model, splits.test_set, **common)
    row.update(test_loss=test.pop("loss"), test_acc=test.pop("acc"), **test)
    row["epoch_seconds"] = time.perf_counter() - start
    row["lr"] = trainer.optimizer.param_groups[0]["lr"]
    return row


def select(row: dict) -> float:
    """The accuracy that selects the best epoch: validation's, or test's without one."""
    return row.get("val_acc", row["test_acc"])

"""The bookkeeping around Algorithm 2: run folders, checkpoints, resuming and the summary.

A run folder holds `config.toml` (the resolved config), `run.json` (when and how the run
started), `last.pt` and `best.pt` (atomic checkpoints), `metrics.csv`, `curves.png` and
`summary.json`. A new run never writes into a folder that holds another run (unless told to
`overwrite` it), and a lock keeps two processes out of one folder. `last.pt` is written at
the end of every epoch and, inside an epoch, every `[run] checkpoint_every` steps or
`checkpoint_minutes` minutes and on Ctrl-C, so a run killed at any point resumes from its
last checkpoint and, on a CPU, ends bit-identical to an uninterrupted run. Under torchrun a
checkpoint holds every process's random states (and its running totals inside an epoch), and
each process restores its own.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import re
import signal
import sys
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import stbp
from stbp import checkpoint as ck
from stbp import distributed as dd
from stbp import factory
from stbp.config import ConfigError, Settings, absolute_paths, to_toml
from stbp.datasets import Splits, in_shape, make_splits
from stbp.devices import deterministic, resolve_precision, reuse_freed_memory
from stbp.models import SNN
from stbp.train import (
    CHECK_EVERY,
    Progress,
    Trainer,
    make_model,
    make_optimizer,
    make_schedule,
    run_epoch,
)

RUN_FILES = ("config.toml", "run.json", "last.pt", "best.pt", "metrics.csv", "curves.png",
             "summary.json")  # fmt: skip
PROGRESS_SECONDS = 30.0  # a plain progress line this often when the output is not a terminal

# Keys that may differ between a checkpoint's config and the config it is resumed with.
RESUMABLE_CHANGES = {
    "run": {"name", "description", "epochs", "device", "precision", "eval_batch_size", "workers",
            "checkpoint_every", "checkpoint_minutes", "deterministic"},
    "data": {"dir", "cache_dir", "strict"},
}  # fmt: skip


class RunFolderError(ConfigError):
    """A run folder cannot be used as asked; the message says why and what to do."""


class Interrupted(Exception):
    """Ctrl-C: the run stopped. Args: (where it saved, or None if it could not; the folder)."""


# ------------------------------------------------------------------------------ the folder


class RunFolder:
    """One run's folder and its lock."""

    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()
        self._lock = None

    def __str__(self) -> str:
        return str(self.path)

    @property
    def last(self) -> Path:
        return self.path / "last.pt"

    def holds_run(self) -> bool:
        return any((self.path / name).exists() for name in RUN_FILES)

    def lock(self) -> None:
        """Hold `.lock` in the folder while the run is in it (released when the process
        ends, however it ends)."""
        self.path.mkdir(parents=True, exist_ok=True)
        handle = open(self.path / ".lock", "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            owner = handle.read().strip() or "?"
            handle.close()
            raise RunFolderError(
                f"{self.path} is in use by another stbp run (pid {owner}); wait for it to end "
                "or pass another --out"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._lock = handle

    def release(self) -> None:
        """Let go of the lock; a folder left with nothing but it (a run that failed before
        writing anything) is removed."""
        if self._lock is None:
            return
        if not self.holds_run():
            (self.path / ".lock").unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                self.path.rmdir()
        self._lock.close()
        self._lock = None

    def check_usable(self, resume: bool, overwrite: bool) -> None:
        """Refuse a file, a folder holding another run (unless `resume` or `overwrite`), and
        `resume` where there is no run."""
        if self.path.exists() and not self.path.is_dir():
            raise RunFolderError(f"--out {self.path} is a file, not a folder")
        if resume:
            if not (self.path / "config.toml").is_file() and not self.last.is_file():
                raise RunFolderError(f"--resume: {self.path} holds no run to resume")
        elif self.holds_run() and not overwrite:
            raise RunFolderError(
                f"{self.path} already holds a run ({self._describe()}); pass --resume to "
                "continue it, --overwrite to replace it, or another --out"
            )

    def _describe(self) -> str:
        try:
            summary = json.loads((self.path / "summary.json").read_text())
            return f"config {summary['config']!r}, {summary['epochs']} epochs done"
        except (OSError, ValueError, KeyError):
            return "no finished epoch"

    def clear(self) -> None:
        """Remove the files of the run the folder holds (`--overwrite`)."""
        for name in RUN_FILES:
            (self.path / name).unlink(missing_ok=True)

    def write_start(self, config: dict, resumed: bool = False) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "config.toml").write_text(to_toml(config))
        record = {"config": config["run"]["name"], "started": _now(), "resumed": resumed,
                  "stbp_version": stbp.__version__, "command": sys.argv}  # fmt: skip
        if not resumed or not (self.path / "run.json").exists():
            (self.path / "run.json").write_text(json.dumps(record, indent=2) + "\n")

    def started(self) -> str:
        """When the run started, by its own record (`run.json`)."""
        try:
            return json.loads((self.path / "run.json").read_text())["started"]
        except (OSError, ValueError, KeyError):
            mtime = (self.path / "config.toml").stat().st_mtime
            return datetime.fromtimestamp(mtime, timezone.utc).isoformat()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def new_folder(name: str, root: Path = Path("runs")) -> RunFolder:
    """`runs/<config>-<timestamp>` (with a `-2`, `-3`, ... suffix if that exists)."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    path, n = root / f"{name}-{stamp}", 1
    while path.exists():
        n += 1
        path = root / f"{name}-{stamp}-{n}"
    return RunFolder(path)


def latest_folder(name: str, root: Path = Path("runs")) -> RunFolder:
    """The newest run of config `name` under `runs/`, by the runs' own start records."""
    pattern = re.compile(rf"{re.escape(name)}-\d{{8}}-\d{{6}}(-\d+)?")
    found = [RunFolder(p) for p in root.glob(f"{name}-*") if pattern.fullmatch(p.name)
             and (p / "config.toml").is_file()]  # fmt: skip
    if not found:
        raise RunFolderError(f"--resume: no run of config {name!r} under {root}/; pass --out DIR")
    return max(found, key=RunFolder.started)


# ---------------------------------------------------------------------- checkpoint state


def rank_states(trainer: Trainer) -> list[dict] | None:
    """Every process's RNG states, epoch generator state and running totals (what differs
    between processes), in rank order on rank 0, `None` on the others. Under torchrun a
    collective: every process calls it at the same step."""
    p = trainer.progress
    mine = {"rng": ck.rng_states(trainer.ctx.device), "generator": p.generator,
            "totals": list(p.totals)}  # fmt: skip
    return dd.gather_object(trainer.ctx, mine)


def checkpoint_state(trainer: Trainer, config: dict, ranks: list[dict] | None = None) -> dict:
    """What `last.pt` and `best.pt` hold; `ranks` from `rank_states` (default: this process's
    own, for a single process)."""
    p = trainer.progress
    ranks = ranks if ranks is not None else rank_states(trainer)
    state = {
        "model": trainer.model.state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "schedule": trainer.schedule.state_dict(),
        "epoch": p.epoch,
        "step": p.step,
        "partial": {"totals": ranks[0]["totals"], "seconds": p.epoch_seconds,
                    "generator": ranks[0]["generator"]} if p.step else None,
        "rng": ranks[0]["rng"],
        **ck.network_entries(trainer.model),  # build_args, or a factory network's record
        "config": config,
        "history": p.history,
        "best": p.best,
        "seconds": p.seconds,
    }  # fmt: skip
    if len(ranks) > 1:
        state["ranks"] = ranks
    return state


def restore(trainer: Trainer, state: dict, path: Path) -> None:
    ck.check_same_network(state, trainer.model, path)
    ck.load_weights(trainer.model, state["model"], path)
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.schedule.load_state_dict(state["schedule"])
    ctx = trainer.ctx
    mine = own_rank_states(state, ctx, path)
    trainer.progress = Progress(
        epoch=state["epoch"], step=state.get("step", 0),
        totals=list(mine["totals"]) if mine else [0.0, 0.0, 0.0],
        epoch_seconds=(state.get("partial") or {}).get("seconds", 0.0),
        generator=mine["generator"] if mine else None,
        history=state["history"], best=state["best"], seconds=state["seconds"],
    )  # fmt: skip
    if mine is not None:
        with warnings.catch_warnings():
            if not ctx.is_main:  # the same words from every process would say nothing more
                warnings.simplefilter("ignore", ck.RNGStateWarning)
            ck.set_rng_states(mine["rng"], ctx.device)


def own_rank_states(state: dict, ctx: dd.Context, path: Path) -> dict | None:
    """This process's entry of `rank_states` in a checkpoint, or `None` when the checkpoint
    has none for its rank (it then keeps the fresh states of `rank_seed`). An `RNGStateWarning`
    when the run resumes with another number of processes than it saved with."""
    partial = state.get("partial") or {}
    saved = state.get("ranks") or [{"rng": state["rng"], "generator": partial.get("generator"),
                                    "totals": partial.get("totals", [0.0, 0.0, 0.0])}]  # fmt: skip
    if len(saved) != ctx.world and ctx.is_main:
        kept = min(len(saved), ctx.world)
        warnings.warn(
            f"{path} was saved by {len(saved)} process(es) and resumes with {ctx.world}: "
            f"ranks 0..{kept - 1} restore their own random states, "
            + ("the others start from fresh ones" if ctx.world > kept else
               f"the states of ranks {kept}..{len(saved) - 1} are left out")
            + "; the run goes on, but not as an uninterrupted run would",
            ck.RNGStateWarning,
            stacklevel=2,
        )  # fmt: skip
    return saved[ctx.rank] if ctx.rank < len(saved) else None


def setting_differences(stored: dict, config: dict) -> list[str]:
    """The settings of `config` that the stored config (a checkpoint's or a run folder's) has
    otherwise, leaving out those a resume may change (`RESUMABLE_CHANGES`)."""
    diffs = []
    for table, values in config.items():
        for key, value in values.items():
            old = stored.get(table, {}).get(key, value)
            if old != value and key not in RESUMABLE_CHANGES.get(table, set()):
                diffs.append(f"[{table}] {key}: {old!r} vs {value!r}")
    return diffs


def check_resumable(stored: dict, config: dict, path: Path) -> None:
    """`CheckpointError` listing the settings that differ from the checkpoint's and matter."""
    diffs = setting_differences(stored, config)
    if diffs:
        raise ck.CheckpointError(
            f"{path} was trained with other settings ({'; '.join(diffs)}); resume with the "
            f"run's own config (--config {path.parent / 'config.toml'}) or use another --out"
        )


# ------------------------------------------------------------------------------- the run


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_trainer(settings: Settings, ctx: dd.Context, splits: Splits) -> Trainer:
    """The model (initialised from `[run] seed`, the same on every process), optimizer and
    schedule of a run; then every process but rank 0 reseeds with `rank_seed`, so that the
    processes draw different dropout masks."""
    seed_everything(settings.run.seed)
    model = make_model(
        settings.model, settings.data.T, in_shape(splits.train_set), settings.data.encoding
    )
    check_classes(model, splits)
    model = model.to(ctx.device)
    optimizer = make_optimizer(model, settings.optim)
    trainer = Trainer(settings, ctx, model, model, optimizer, None, splits)
    trainer.schedule = make_schedule(optimizer, settings.optim, trainer.steps_per_epoch,
                                     settings.run.epochs)  # fmt: skip
    if ctx.rank:
        seed_everything(dd.rank_seed(settings.run.seed, ctx.rank))
    return trainer


def check_classes(model: torch.nn.Module, splits: Splits) -> None:
    """`ConfigError` if the network gives fewer class scores than the training set has
    classes (its labels 0..N-1): a network of `[model] factory`, or one of the paper's
    notation (10 classes)."""
    labels = getattr(splits.train_set, "labels", None)
    if labels is None or not len(labels):
        return
    classes = int(torch.as_tensor(labels).max()) + 1
    record = factory.factory_args(model)
    if record is not None and record["outputs"] < classes:
        raise ConfigError(
            f"[model] factory = {record['factory']!r} gives {record['outputs']} class scores, "
            f"but the training set has {classes} classes (labels 0..{classes - 1}); pass the "
            "number of classes in [model] factory_kwargs"
        )
    if isinstance(model, SNN) and model.num_classes < classes:
        raise ConfigError(
            f"the network [model] {model.spec!r} votes for {model.num_classes} classes, but the "
            f"training set has {classes} (labels 0..{classes - 1}); train a network of your "
            "own with that many class scores ([model] factory)"
        )


def calibrate(trainer: Trainer) -> None:
    """`calibrate_` on the first global batch (the same on every process). A network of your
    own (`[model] factory`) is left as its factory initialised it: `calibrate_` walks the
    synapse-LIF pairs of stbp's own networks (`SNN.layers`)."""
    s = trainer.settings
    if not isinstance(trainer.model, SNN):
        return
    whole = dd.Context(0, 1, trainer.ctx.device)
    loader = dd.Batches(trainer.splits.train_set, s.data, s.run.workers, whole, train=False)
    x, _ = next(loader(trainer.epoch_batches(0)[:1]))
    stbp.calibrate_(trainer.model, x, rate=s.optim.calibrate_rate)


class Checkpointer:
    """Called by the training loop after checked steps: reports progress, saves mid-epoch
    checkpoints when due, and stops the run on Ctrl-C after saving."""

    def __init__(self, trainer: Trainer, folder: RunFolder, config: dict):
        self.trainer, self.folder, self.config = trainer, folder, config
        self.main = trainer.ctx.is_main
        self.saved_step, self.saved_at = trainer.progress.step, time.monotonic()
        self.interrupted = False
        self.bar = None
        self.reported_at = time.monotonic()
        self.agreed = (-1, False)  # (steps done, rank 0's verdict) of the last `agree`

    def due(self, steps_done: int) -> bool:
        run = self.trainer.settings.run
        every = run.checkpoint_every and steps_done - self.saved_step >= run.checkpoint_every
        return bool(every or self.late(steps_done) or self.interrupted)

    def late(self, steps_done: int) -> bool:
        """Whether `checkpoint_minutes` have passed since the last save. Under torchrun saving
        is a collective and the processes' clocks differ, so rank 0's clock decides for all,
        every `CHECK_EVERY` steps (one broadcast, next to the NaN check's sync)."""
        minutes = self.trainer.settings.run.checkpoint_minutes
        if not minutes:
            return False
        late = time.monotonic() - self.saved_at >= 60 * minutes
        ctx = self.trainer.ctx
        if not ctx.distributed:
            return late
        if steps_done % CHECK_EVERY:
            return False
        if self.agreed[0] != steps_done:  # `due` is asked twice at a checked step
            self.agreed = (steps_done, dd.agree(ctx, late))
        return self.agreed[1]

    def __call__(self, epoch: int, steps_done: int, totals: torch.Tensor, generator) -> None:
        if self.main:
            self._report(epoch, steps_done, totals)
        if not self.due(steps_done) or steps_done == self.trainer.steps_per_epoch:
            return
        p = self.trainer.progress
        p.step, p.totals, p.generator = steps_done, totals.tolist(), generator.get_state()
        p.epoch_seconds = time.perf_counter() - self.epoch_start
        ranks = rank_states(self.trainer)  # every process, at the same step
        if self.main:
            ck.save_atomic(checkpoint_state(self.trainer, self.config, ranks), self.folder.last)
        self.saved_step, self.saved_at = steps_done, time.monotonic()
        if self.interrupted:
            raise Interrupted(f"epoch {epoch + 1}, step {steps_done}", str(self.folder))

    def start_epoch(self, epoch: int) -> None:
        self.epoch_start = time.perf_counter() - self.trainer.progress.epoch_seconds
        self.saved_step = self.trainer.progress.step
        self.agreed = (-1, False)
        if self.main:
            total = self.trainer.steps_per_epoch
            epochs = self.trainer.settings.run.epochs
            self.bar = tqdm(total=total, initial=self.trainer.progress.step, leave=False,
                            desc=f"epoch {epoch + 1}/{epochs}", dynamic_ncols=True,
                            disable=None)  # fmt: skip

    def end_epoch(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.saved_step = 0

    def _report(self, epoch: int, steps_done: int, totals: torch.Tensor) -> None:
        loss, correct, n = totals.tolist()
        if self.bar is not None and not self.bar.disable:
            self.bar.set_postfix(loss=f"{loss / max(n, 1):.4f}", acc=f"{100 * correct / n:.2f}%")
            self.bar.update(steps_done - self.bar.n)
        elif time.monotonic() - self.reported_at >= PROGRESS_SECONDS:
            self.reported_at = time.monotonic()
            print(f"epoch {epoch + 1}/{self.trainer.settings.run.epochs}, step {steps_done}/"
                  f"{self.trainer.steps_per_epoch}: loss {loss / max(n, 1):.4f}, accuracy "
                  f"{100 * correct / max(n, 1):.2f}%", flush=True)  # fmt: skip


def train_epochs(trainer: Trainer, folder: RunFolder, config: dict) -> dict:
    """Algorithm 2 over the epochs of the config, from where the run stands; returns the
    summary. Ctrl-C stops it after saving (`Interrupted`)."""
    hook = Checkpointer(trainer, folder, config)
    p = trainer.progress
    with _ctrl_c(hook, enabled=not trainer.ctx.distributed):
        for epoch in range(p.epoch, trainer.settings.run.epochs):
            hook.start_epoch(epoch)
            row = run_epoch(trainer, epoch, hook)
            hook.end_epoch()
            improved = p.end_epoch(row)
            ranks = rank_states(trainer)  # every process
            if trainer.ctx.is_main:
                _save_epoch(trainer, folder, config, improved, ranks)
                print_epoch(trainer, row)
            if hook.interrupted:
                raise Interrupted(f"the end of epoch {epoch + 1}", str(folder))
    return summary(trainer, folder)


class _ctrl_c:
    """The first Ctrl-C asks the loop to save and stop; a second one stops at once."""

    def __init__(self, hook: Checkpointer, enabled: bool):
        self.hook, self.enabled = hook, enabled

    def _handler(self, signum, frame):
        self.hook.interrupted = True
        signal.signal(signal.SIGINT, self.previous)

    def __enter__(self):
        if self.enabled:
            self.previous = signal.signal(signal.SIGINT, self._handler)

    def __exit__(self, *exc):
        if self.enabled:
            signal.signal(signal.SIGINT, self.previous)


def _save_epoch(trainer: Trainer, folder: RunFolder, config: dict, improved: bool,
                ranks: list[dict]) -> None:  # fmt: skip
    state = checkpoint_state(trainer, config, ranks)
    ck.save_atomic(state, folder.last)
    if improved:
        ck.save_atomic(state, folder.path / "best.pt")
    ck.write_run_files(folder.path, trainer.progress.history, summary(trainer, folder))


def print_epoch(trainer: Trainer, row: dict) -> None:
    val = f" | val acc {100 * row['val_acc']:.2f}%" if "val_acc" in row else ""
    print(
        f"epoch {row['epoch']}/{trainer.settings.run.epochs}: train loss {row['train_loss']:.4f}"
        f" acc {100 * row['train_acc']:.2f}%{val} | test loss {row['test_loss']:.4f} acc "
        f"{100 * row['test_acc']:.2f}% | {row['epoch_seconds']:.1f} s",
        flush=True,
    )


def summary(trainer: Trainer, folder: RunFolder) -> dict:
    """What `summary.json` records about a run."""
    s, p = trainer.settings, trainer.progress
    chosen = p.history[p.best["epoch"] - 1] if p.best["epoch"] else {}
    return {
        "config": s.run.name,
        "selection": "val" if len(trainer.splits.val) else "test",
        "selected_epoch": p.best["epoch"],
        "val_acc": chosen.get("val_acc"),
        "test_acc_at_selection": chosen.get("test_acc"),
        "final_test_acc": p.history[-1]["test_acc"] if p.history else None,
        "epochs": p.epoch,
        "split": trainer.splits.record(s.data),
        "network": s.model.factory or s.model.spec or s.model.network,
        "neunorm": s.model.neunorm,
        "T": s.data.T,
        "total_seconds": p.seconds,
        "parameters": sum(q.numel() for q in trainer.model.parameters()),
        "device": str(trainer.ctx.device),
        "processes": trainer.ctx.world,
        "precision": s.run.precision,
        "deterministic": s.run.deterministic,
        "torch_version": torch.__version__,
        "stbp_version": stbp.__version__,
        "seed": s.run.seed,
        "out": str(folder.path),
    }


def _pick_folder(config: dict, ctx: dd.Context, out, resume: bool) -> RunFolder:
    if out:
        return RunFolder(out)
    name = config["run"]["name"]
    path = (latest_folder(name) if resume else new_folder(name)).path if ctx.is_main else None
    return RunFolder(dd.broadcast_object(ctx, path))


def _open(folder: RunFolder, ctx: dd.Context, resume: bool, overwrite: bool) -> dict | None:
    """Check and lock the folder (rank 0); the checkpoint to resume from, if any."""
    error = None
    if ctx.is_main:
        try:
            folder.check_usable(resume, overwrite)
            folder.lock()
            if overwrite and not resume:
                folder.clear()
        except RunFolderError as err:
            error = err
    error = dd.broadcast_object(ctx, error)
    if error is not None:
        raise error
    if resume and folder.last.is_file():
        return ck.load_checkpoint(folder.last)
    if resume and ctx.is_main:
        print(f"no checkpoint in {folder} yet: starting the run from the beginning", flush=True)
    return None


def run_training(config: dict, out: str | Path | None = None, resume: bool = False,
                 overwrite: bool = False) -> dict:  # fmt: skip
    """Train as `config` says (Algorithm 2) in the run folder `out`; return the summary. With
    `[run] deterministic`, under `stbp.devices.deterministic` (put back afterwards)."""
    with deterministic(config["run"].get("deterministic", False)):
        return _run_training(config, out, resume, overwrite)


def _run_training(config: dict, out, resume: bool, overwrite: bool) -> dict:
    ctx = dd.setup(config["run"]["device"])
    config = absolute_paths(config)
    config["run"]["precision"] = resolve_precision(config["run"]["precision"], ctx.device)
    if ctx.device.type == "cpu":
        reuse_freed_memory()
    folder = _pick_folder(config, ctx, out, resume)
    try:
        state = _open(folder, ctx, resume, overwrite)
        if state is not None:
            check_resumable(state["config"], config, folder.last)
        settings = Settings.of(config)
        trainer = make_trainer(settings, ctx, make_splits(settings.data, settings.run.name))
        if state is not None:
            restore(trainer, state, folder.last)
            _explain_resume(trainer, state, ctx)
        elif settings.optim.calibrate_rate > 0:
            calibrate(trainer)
        if ctx.is_main:
            folder.write_start(config, resumed=state is not None)
        if ctx.distributed:
            ids = [ctx.device.index] if ctx.device.type == "cuda" else None
            trainer.net = torch.nn.parallel.DistributedDataParallel(trainer.model, device_ids=ids)
        return train_epochs(trainer, folder, config)
    except KeyboardInterrupt:  # a second Ctrl-C, or one before training started
        raise Interrupted(None, str(folder)) from None
    finally:
        folder.release()
        dd.teardown(ctx)


def _explain_resume(trainer: Trainer, state: dict, ctx: dd.Context) -> None:
    """Say what a resume will do when that is not simply 'carry on'; a longer cosine
    schedule takes its learning rate at once (on every process)."""
    p, epochs = trainer.progress, trainer.settings.run.epochs
    before = state["config"]["run"]["epochs"]
    if p.epoch >= epochs:
        message = (f"the run has already trained {p.epoch} of {epochs} epochs: nothing to do "
                   f"(pass --epochs N with N > {p.epoch} to train further)")  # fmt: skip
    elif epochs != before and trainer.settings.optim.schedule == "cosine":
        lr = trainer.optimizer.param_groups[0]["lr"]
        trainer.schedule.last_epoch -= 1
        trainer.schedule.step()  # the learning rate of the new cosine at this step
        new_lr = trainer.optimizer.param_groups[0]["lr"]
        message = (f"the cosine schedule now spans {epochs} epochs instead of {before}: the "
                   f"learning rate goes from {lr:.3g} to {new_lr:.3g} and decays to 0 at the "
                   "new end")  # fmt: skip
    else:
        return
    if ctx.is_main:
        print(message, flush=True)

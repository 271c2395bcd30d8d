"""Seeded sweeps of `stbp train` runs, shared by `time_window.py` and `neunorm_ablation.py`.

A sweep is a list of `Run`s: one `python -m stbp train --config C --out ROOT/NAME [flags]`
each, so every run is an ordinary run folder that `stbp results` reads. Runs go `--jobs` at a
time as separate processes, each with `OMP_NUM_THREADS = cores // jobs`, their output in
`ROOT/NAME/train.log`. A sweep is resumable: a run whose `summary.json` says all its epochs
are done is reused, an unfinished one is continued with `--resume`, and a folder holding a
run of other settings is refused. The table groups the finished runs by `Run.group` (one row
per T, per variant, ...): test accuracy at the validation-selected epoch (mean ± sample std
and min–max over seeds), final-epoch test accuracy, seconds per epoch, number of seeds.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import torch

from stbp.commands import flag_words, resolve_config
from stbp.config import ConfigError, absolute_paths, tomllib
from stbp.results import COLUMNS, ResultsError, run_row
from stbp.runs import setting_differences

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
LOG_NAME = "train.log"
POLL_SECONDS = 0.5
INTERRUPTED = (130, -signal.SIGINT)  # exit status of an `stbp train` stopped by Ctrl-C


class SweepError(ValueError):
    """A run folder or an option cannot be used as asked; the message says which and why."""


@dataclass(frozen=True)
class Run:
    """One `stbp train` run of the sweep: its table row, seed, folder, config and flags.

    `flags` are `stbp train` options by their `argparse` name (`stbp.config.FLAG_KEYS`:
    "T", "seed", "epochs", "data_dir", "max_steps_per_epoch", ...); "epochs" is required."""

    group: str
    seed: int
    folder: Path
    config: str
    flags: dict = field(default_factory=dict)
    cost: float = 1.0  # relative time of the run: the costliest start first
    env: dict = field(default_factory=dict)  # environment variables of this run (STBP_SPARSE)

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def epochs(self) -> int:
        return self.flags["epochs"]

    def expected_config(self) -> dict:
        """The config `stbp train` resolves for this run (file + flags), data paths absolute."""
        return absolute_paths(resolve_config(argparse.Namespace(config=self.config, **self.flags)))


# -------------------------------------------------------------------------- command lines


def train_command(run: Run, resume: bool) -> list[str]:
    """`python -m stbp train --config ... [flags] --out FOLDER [--resume]`."""
    words = [sys.executable, "-m", "stbp", "train", "--config", run.config, *flag_words(run.flags)]
    return [*words, "--out", str(run.folder), *(["--resume"] if resume else [])]


# ------------------------------------------------------------------------- run folders


def epochs_done(folder: Path) -> int:
    """Finished epochs by the folder's `summary.json` (0 without one)."""
    try:
        return int(run_row(folder)["epochs"] or 0)
    except ResultsError:
        return 0


def run_state(run: Run) -> str:
    """'done' (all epochs finished), 'resume' (a run to continue) or 'new' (nothing there);
    `SweepError` for a folder holding a run of other settings or of more epochs."""
    config_file = run.folder / "config.toml"
    if not config_file.is_file():
        return "resume" if (run.folder / "last.pt").is_file() else "new"
    try:
        stored = tomllib.loads(config_file.read_text())
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise SweepError(f"{config_file}: cannot be read ({err}); remove {run.folder}") from None
    diffs = setting_differences(stored, run.expected_config())
    if diffs:
        raise SweepError(
            f"{run.folder} holds a run with other settings ({'; '.join(diffs)}); pass another "
            "--out or remove that folder"
        )
    done = epochs_done(run.folder)
    if done > run.epochs:
        raise SweepError(
            f"{run.folder} holds {done} finished epochs, more than --epochs {run.epochs}; pass "
            f"--epochs {done} or another --out"
        )
    return "done" if done == run.epochs else "resume"


# -------------------------------------------------------------------------------- running


def threads_per_run(jobs: int) -> int:
    return max(1, (os.cpu_count() or 1) // jobs)


def _last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "(no log)"
    return lines[-1][-300:] if lines else "(empty log)"


class Runner:
    """Runs the unfinished runs `jobs` at a time; collects the ones that failed."""

    def __init__(self, jobs: int):
        self.jobs, self.threads = jobs, threads_per_run(jobs)
        self.env = {**os.environ, "OMP_NUM_THREADS": str(self.threads)}
        self.running: dict[subprocess.Popen, tuple[Run, float]] = {}
        self.failed: list[str] = []
        self.interrupted = False

    def start(self, run: Run, resume: bool) -> None:
        run.folder.mkdir(parents=True, exist_ok=True)
        log = open(run.folder / LOG_NAME, "a")
        command = train_command(run, resume)
        variables = {**run.env, "OMP_NUM_THREADS": self.threads}
        settings = " ".join(f"{k}={v}" for k, v in variables.items())
        log.write(f"\n$ {settings} {shlex.join(command)}\n")
        log.flush()
        env = {**self.env, **run.env}
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        self.running[process] = (run, time.monotonic())
        how = "resumed" if resume else "started"
        print(f"{run.name}: {how} (log: {run.folder / LOG_NAME})", flush=True)

    def reap(self) -> None:
        for process in [p for p in self.running if p.poll() is not None]:
            run, started = self.running.pop(process)
            seconds = time.monotonic() - started
            if process.returncode == 0:
                print(f"{run.name}: finished in {seconds:.0f} s", flush=True)
            elif process.returncode in INTERRUPTED:  # Ctrl-C reached the run, not us
                self.interrupted = True
                print(f"{run.name}: interrupted after {seconds:.0f} s", flush=True)
            else:
                line = _last_line(run.folder / LOG_NAME)
                self.failed.append(f"{run.name}: exit {process.returncode}: {line}")
                print(f"{run.name}: FAILED after {seconds:.0f} s: {line}", flush=True)

    def run_all(self, todo: list[tuple[Run, bool]]) -> None:
        """Run `(run, resume)` pairs. On Ctrl-C (ours, or one that stopped a run) start no
        other run, wait for those in progress (each saves its checkpoint and stops) and
        raise `KeyboardInterrupt`."""
        queue = deque(todo)
        try:
            while queue or self.running:
                while queue and len(self.running) < self.jobs and not self.interrupted:
                    self.start(*queue.popleft())
                time.sleep(POLL_SECONDS)
                self.reap()
                if self.interrupted and not self.running:
                    raise KeyboardInterrupt
        except KeyboardInterrupt:
            print("interrupted: waiting for the runs in progress to save and stop", flush=True)
            for process in self.running:
                process.wait()
            raise


# ---------------------------------------------------------------------------- the table


def mean_epoch_seconds(folder: Path) -> float | None:
    """The mean of `metrics.csv`'s `epoch_seconds` (training + evaluation of each epoch)."""
    try:
        with open(folder / "metrics.csv", newline="") as f:
            seconds = [float(row["epoch_seconds"]) for row in csv.DictReader(f)]
    except (OSError, KeyError, ValueError):
        return None
    return statistics.fmean(seconds) if seconds else None


def log_threads(folder: Path) -> str:
    """The OMP_NUM_THREADS of the run's last start, from its `train.log` ('?' if unknown)."""
    try:
        text = (folder / LOG_NAME).read_text()
        starts = re.findall(r"^\$ (?:\S+=\S+ )*?OMP_NUM_THREADS=(\d+) ", text, re.M)
    except OSError:
        starts = []
    return starts[-1] if starts else "?"


def run_result(run: Run) -> dict:
    """`stbp.results.run_row` of the run's folder, with its group, mean epoch seconds and
    threads."""
    return {"group": run.group, **run_row(run.folder),
            "mean_epoch_seconds": mean_epoch_seconds(run.folder),
            "threads": log_threads(run.folder)}  # fmt: skip


def group_row(group: str, results: list[dict]) -> dict:
    """One table row: statistics over the seeds of a group (accuracies in %)."""
    selected = [100 * r["test_acc_at_selection"] for r in results]
    final = [100 * r["final_test_acc"] for r in results]
    seconds = [r["mean_epoch_seconds"] for r in results if r["mean_epoch_seconds"] is not None]
    return {
        "group": group,
        "seeds": len(results),
        "seed_list": " ".join(str(r["seed"]) for r in results),
        "selected_epochs": " ".join(str(r["selected_epoch"]) for r in results),
        "selected_test_acc_mean": statistics.fmean(selected),
        "selected_test_acc_std": statistics.stdev(selected) if len(selected) > 1 else None,
        "selected_test_acc_min": min(selected),
        "selected_test_acc_max": max(selected),
        "final_test_acc_mean": statistics.fmean(final),
        "epoch_seconds_mean": statistics.fmean(seconds) if seconds else None,
    }


def table_rows(results: list[dict], groups: list[str]) -> list[dict]:
    """`group_row` of each group (in `groups` order) that has at least one finished run."""
    rows = []
    for group in groups:
        members = [r for r in results if r["group"] == group]
        if members:
            rows.append(group_row(group, members))
    return rows


def _number(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def markdown_table(rows: list[dict], group_title: str) -> str:
    head = (f"| {group_title} | test acc at val-selected epoch, mean ± std (%) | min–max (%) "
            "| final-epoch test acc, mean (%) | s / epoch (train + eval) | seeds |")  # fmt: skip
    lines = [head, "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        spread = f" ± {_number(r['selected_test_acc_std'])}" if r["seeds"] > 1 else ""
        lines.append(
            f"| {r['group']} | {_number(r['selected_test_acc_mean'])}{spread} "
            f"| {_number(r['selected_test_acc_min'])}–{_number(r['selected_test_acc_max'])} "
            f"| {_number(r['final_test_acc_mean'])} | {_number(r['epoch_seconds_mean'], 1)} "
            f"| {r['seeds']} |"
        )
    return "\n".join(lines)


def write_csv(rows: list[dict], path: Path, fieldnames: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fieldnames)
        writer.writeheader()
        writer.writerows(rows)


# ------------------------------------------------------------------------ the whole sweep


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def machine() -> str:
    return f"{cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}"


def int_list(text: str, low: int = 0) -> list[int]:
    """`0,1,2` -> [0, 1, 2]: distinct whole numbers >= `low` (an `argparse` type)."""
    try:
        values = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        values = []
    if not values or min(values) < low or len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(
            f"expected distinct whole numbers >= {low}, separated by commas, got {text!r}"
        )
    return values


def positive(text: str) -> int:
    """A whole number >= 1 (an `argparse` type)."""
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return int(text)


def add_sweep_arguments(parser: argparse.ArgumentParser, name: str, csv_name: str) -> None:
    """The options both benchmarks share; runs under `runs/bench-<name>`, the table in
    `benchmarks/results/<csv_name>.csv`."""
    parser.add_argument("--seeds", type=int_list, default=[0, 1, 2], help="default 0,1,2")
    parser.add_argument("--jobs", type=positive, default=2,
                        help="runs at a time, each with OMP_NUM_THREADS = cores // jobs "
                        "(default 2)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=Path("runs") / f"bench-{name}",
                        help=f"runs root folder (default runs/bench-{name})")  # fmt: skip
    parser.add_argument("--csv", type=Path, default=RESULTS / f"{csv_name}.csv",
                        help=f"table CSV (default benchmarks/results/{csv_name}.csv; the runs "
                        "go to the same name with -runs)")  # fmt: skip
    parser.add_argument("--max-steps-per-epoch", type=positive,
                        help="cut every epoch short (smoke runs only)")  # fmt: skip
    parser.add_argument("--table-only", action="store_true",
                        help="train nothing: read the run folders and print the table")  # fmt: skip


TABLE_FIELDS = ["group", "seeds", "seed_list", "selected_epochs", "selected_test_acc_mean",
                "selected_test_acc_std", "selected_test_acc_min", "selected_test_acc_max",
                "final_test_acc_mean", "epoch_seconds_mean"]  # fmt: skip


@dataclass
class Sweep:
    """A benchmark's runs and how to report them."""

    name: str  # file names: benchmarks/results/<name>.csv
    runs: list[Run]
    group_title: str  # the first column: "T", "NeuNorm"
    notes: list[str] = field(default_factory=list)  # lines printed under the table

    def train(self, jobs: int) -> list[str]:
        """Train the unfinished runs; the problems (folders refused, runs failed)."""
        todo, problems = [], []
        for run in self.runs:
            try:
                state = run_state(run)
            except SweepError as err:
                problems.append(str(err))
                continue
            if state == "done":
                print(f"{run.name}: done already ({run.epochs} epochs), reused", flush=True)
            else:
                todo.append((run, state == "resume"))
        todo.sort(key=lambda pair: -pair[0].cost)  # the long runs first: less idle tail
        runner = Runner(jobs)
        print(f"{len(todo)} of {len(self.runs)} runs to train, {jobs} at a time, "
              f"OMP_NUM_THREADS={runner.threads} each", flush=True)  # fmt: skip
        runner.run_all(todo)
        return problems + runner.failed

    def finished(self) -> tuple[list[dict], list[str]]:
        """The results of the runs whose epochs are all done (with the settings asked for);
        one line per other run."""
        results, missing = [], []
        for run in self.runs:
            try:
                state = run_state(run)
            except SweepError as err:
                missing.append(str(err))
                continue
            if state == "done":
                results.append(run_result(run))
            else:
                missing.append(f"{run.name}: {epochs_done(run.folder)} of {run.epochs} epochs done")
        return results, missing

    def report(self, results: list[dict], csv_path: Path) -> None:
        groups = list(dict.fromkeys(run.group for run in self.runs))
        rows = table_rows(results, groups)
        print()
        print(markdown_table(rows, self.group_title) if rows else "no finished run yet")
        for line in self.notes + describe_runs(results):
            print(line)
        if rows:
            write_csv(rows, csv_path, TABLE_FIELDS)
            runs_path = csv_path.with_name(csv_path.stem + "-runs.csv")
            write_csv(results, runs_path, ["group", *COLUMNS, "mean_epoch_seconds", "threads"])
            print(f"CSV: {csv_path} (table), {runs_path} (one row per run)")


def describe_runs(results: list[dict]) -> list[str]:
    """Lines saying how the finished runs selected, split, computed and were timed."""
    if not results:
        return []
    lines = []
    on_test = [r["run"] for r in results if r["selection"] != "val"]
    if on_test:
        lines.append(f"WARNING: selected on the test split, not validation: {', '.join(on_test)}")
    lines.append(
        "split (train/val/test): " + _distinct(results, lambda r: f"{r['data']} {r['split']}")
    )
    lines.append(f"precision: {_distinct(results, lambda r: r['precision'])}; epochs per run: "
                 f"{_distinct(results, lambda r: r['epochs'])}; OMP_NUM_THREADS per run: "
                 f"{_distinct(results, lambda r: r['threads'])}")  # fmt: skip
    lines.append(
        "s / epoch: the mean over the epochs of metrics.csv's epoch_seconds, which stbp train "
        "records as the epoch's training plus its validation and test evaluation (epoch 1 "
        "also holds torch.compile's warm-up), averaged over the seeds"
    )
    return lines


def _distinct(results: list[dict], value) -> str:
    return ", ".join(sorted({str(value(r)) for r in results}))


def main(sweep: Sweep, args: argparse.Namespace, prepare=None) -> int:
    """Train (unless `--table-only`; `prepare()` first, e.g. to write the data), print the
    table, the command, the machine, the date and the wall time; 0 if every run is done."""
    start, started_at = time.monotonic(), datetime.now().astimezone()
    command = shlex.join(sys.orig_argv)
    print(f"command: {command}\nmachine: {machine()}", flush=True)
    try:
        for run in sweep.runs:
            run.expected_config()
    except ConfigError as err:
        print(f"{sweep.name}: error: {err}", file=sys.stderr)
        return 2
    problems = []
    try:
        if not args.table_only:
            if prepare is not None:
                prepare()
            problems = sweep.train(args.jobs)
            sweep.notes.append(f"trained with --jobs {args.jobs}: {args.jobs} runs at a time")
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume", file=sys.stderr)
        return 130
    except SweepError as err:
        print(f"{sweep.name}: error: {err}", file=sys.stderr)
        return 2
    results, missing = sweep.finished()
    sweep.report(results, args.csv)
    for line in problems + missing:
        print(f"not in the table: {line}")
    print(f"command: {command}")
    print(f"machine: {machine()}")
    print(f"date: {started_at.isoformat(timespec='seconds')}; wall time "
          f"{time.monotonic() - start:.0f} s")  # fmt: skip
    return 0 if not problems and not missing else 1

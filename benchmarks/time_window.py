"""The narrowed rate-coding window: test accuracy and time per epoch against T, on the digits.

    python benchmarks/time_window.py [--T 1,2,4,6,8,12] [--seeds 0,1,2] [--epochs N]
                                     [--jobs 2] [--out runs/bench-time-window] [--table-only]

One `python -m stbp train --config demo --T T --seed S --epochs E --out ROOT/T<T>-seed<S>`
per (T, seed): the demo's recipe on the embedded digits (`32C3(Enc)-AP2-64C3-AP2-256FC-Voting`,
Adam 2e-3 with cosine decay, batch 50, shifts of up to 2 px, dropout 0.3, calibration,
precision `auto`; `--epochs` defaults to the config's 15), everything as the config says but T
(the steps each image is presented for) and the seed. The best epoch is chosen on the seeded,
stratified validation split (`[data] val_fraction` 0.1: 7,200 / 800 / 2,000 train/val/test).

The table, one row per T: test accuracy at the validation-selected epoch (mean ± sample std
over the seeds, and min–max), final-epoch test accuracy (mean), seconds per epoch (the mean of
`metrics.csv`'s `epoch_seconds`: the epoch's training plus its validation and test evaluation,
as `stbp train` records it) and the number of seeds. Printed as Markdown and written to
`benchmarks/results/time_window.csv` (`time_window-runs.csv`: one row per run). Runs go
`--jobs` at a time, each with `OMP_NUM_THREADS = cores // jobs`; a finished run is reused and
an unfinished one resumed, so rerunning the command after an interruption carries on
(see `sweep.py`). `--table-only` trains nothing.
"""

from __future__ import annotations

import argparse
import sys

import sweep  # benchmarks/sweep.py

from stbp.config import ConfigError, load_config

T_VALUES = "1,2,4,6,8,12"


def make_runs(args: argparse.Namespace) -> list[sweep.Run]:
    epochs = args.epochs or load_config(args.config)["run"]["epochs"]
    runs = []
    for T in args.T:
        for seed in args.seeds:
            flags = {"T": T, "seed": seed, "epochs": epochs,
                     "max_steps_per_epoch": args.max_steps_per_epoch}  # fmt: skip
            folder = args.out / f"T{T}-seed{seed}"
            runs.append(sweep.Run(str(T), seed, folder, args.config, flags, cost=T))
    return runs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--T", type=lambda text: sweep.int_list(text, low=1),
                        default=sweep.int_list(T_VALUES), help=f"default {T_VALUES}")  # fmt: skip
    parser.add_argument("--epochs", type=sweep.positive, help="default: the config's (15)")
    parser.add_argument("--config", default="demo", help="a config on the digits (default demo)")
    sweep.add_sweep_arguments(parser, "time-window", "time_window")
    args = parser.parse_args()
    try:
        runs = make_runs(args)
    except ConfigError as err:
        parser.error(str(err))
    notes = [f"config: {args.config}, everything as it says but T and the seed"]
    bench = sweep.Sweep("time_window", runs, "T", notes)
    return sweep.main(bench, args)


if __name__ == "__main__":
    sys.exit(main())

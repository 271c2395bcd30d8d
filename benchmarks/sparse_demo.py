"""The demo end to end with and without the event-driven synapses (issue 17).

    python benchmarks/sparse_demo.py [--seeds 0,1,2] [--epochs 15] [--jobs 2] [--table-only]

Two variants of `stbp train --config demo`, everything else as the config says:

    dense   STBP_SPARSE=0: the dense synapses of earlier versions
    sparse  the default: each spike-input synapse runs event-driven where its measured input
            density is below the crossover stored for its shape (`stbp.sparse.dispatch`)

Each run is `STBP_SPARSE=... python -m stbp train --config demo --seed S --epochs E --out
ROOT/<variant>-seed<S>`, validation-selected. Run the two variants side by side (`--jobs 2`,
the default, starts the dense and the sparse run of a seed together) so that both see the
same machine. The table (as `time_window.py`'s): test accuracy at the validation-selected
epoch, final-epoch test accuracy, seconds per epoch (training + evaluation, as `stbp train`
records them), seeds; written to `benchmarks/results/sparse_demo.csv`. Resumable, and
`--table-only`, as described in `sweep.py`.
"""

from __future__ import annotations

import argparse
import sys

import sweep  # benchmarks/sweep.py

VARIANTS = {  # name: (environment, table label)
    "dense": ({"STBP_SPARSE": "0"}, "dense (STBP_SPARSE=0)"),
    "sparse": ({}, "event-driven where it wins (default)"),
}


def make_runs(args: argparse.Namespace) -> list[sweep.Run]:
    runs = []
    for seed in args.seeds:  # a seed's two variants next to each other: they run together
        for variant, (env, label) in VARIANTS.items():
            flags = {"seed": seed, "epochs": args.epochs,
                     "max_steps_per_epoch": args.max_steps_per_epoch}  # fmt: skip
            folder = args.out / f"{variant}-seed{seed}"
            runs.append(sweep.Run(label, seed, folder, "demo", flags, cost=-seed, env=env))
    return runs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=sweep.positive, default=15, help="default 15 (the demo's)")
    sweep.add_sweep_arguments(parser, "sparse-demo", "sparse_demo")
    args = parser.parse_args()
    notes = ["config: demo, everything as it says but the seed and STBP_SPARSE"]
    bench = sweep.Sweep("sparse_demo", make_runs(args), "synapses", notes)
    return sweep.main(bench, args)


if __name__ == "__main__":
    sys.exit(main())

"""NeuNorm ablation on emulated N-MNIST: without NeuNorm, with our reading, with SpikingJelly's.

    python benchmarks/neunorm_ablation.py [--count 2000] [--data-dir DIR] [--seeds 0,1,2]
                                          [--epochs N] [--jobs 2] [--table-only]

Three variants of the `nmnist-emulated` config (`32C3(Enc)-32C3-AP2-64C3-64C3-AP2-256FC-Voting`
on T = 10 frames of 2x34x34, Adam 2e-3 with cosine decay, batch 50, shifts of up to 2 px,
dropout 0.3, precision `auto`), everything else as the config says:

    off           [model] neunorm = false
    stbp          [model] neunorm = true, neunorm_reading = "stbp"          (ours, the default)
    spikingjelly  [model] neunorm = true, neunorm_reading = "spikingjelly"  (SpikingJelly's)

(the two readings: `stbp.neunorm`'s docstring). Each variant's merged config is written to
`ROOT/configs/<config>-neunorm-<variant>.toml`, and each run is
`python -m stbp train --config THAT.toml --data-dir DIR --seed S --epochs E
--out ROOT/<variant>-seed<S>`, validation-selected (`[data] val_fraction` 0.1).

Data: `--count` emulated recordings (default 2,000: 1,600 train / 400 test, the 8k/2k
proportion of the full 10,000), written to `--data-dir` (default `data/nmnist-emulated-<count>`)
by `stbp.data.emulate.write_emulated_nmnist` if the folder holds none; a folder holding another
number of recordings is refused.

Epochs: the default, 3, is ours and a compromise. Measured on the 2-core AMD EPYC (no
AVX512-BF16, so `auto` is fp32), one thread a run, the machine shared with other jobs: a
training step of this network takes about 5 s without NeuNorm and 6 s with it (in a timing
loop and in `stbp train` smoke runs two at a time alike), so one epoch of the 1,440 training
recordings (29 steps) plus the evaluation of the 160 validation and 400 test recordings takes
about 2.7 min without NeuNorm and 3.2 min with it. A run of ~3 minutes would thus be a single
epoch, which tells the variants apart by how fast they start rather than where they go, and
leaves the validation split nothing to choose; 3 epochs give it a few to choose from, at
~9-11 min a run with start-up, ~50 min for the 9 runs with `--jobs 2` (plus ~2 min to emulate
the recordings once). `--epochs 1` gives the 3-minute runs; longer runs compare better.

The table, one row per variant: as in `time_window.py` (test accuracy at the
validation-selected epoch, mean ± sample std and min–max over the seeds; final-epoch test
accuracy; seconds per epoch, training + evaluation as `stbp train` records them; seeds),
printed as Markdown and written to `benchmarks/results/neunorm_ablation.csv`. Resumable, and
`--table-only`, as described in `sweep.py`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import sweep  # benchmarks/sweep.py

from stbp.config import ConfigError, load_config, merge, to_toml
from stbp.data.emulate import NMNIST_FILES, existing_recordings, write_emulated_nmnist

EPOCHS = 3  # see the module docstring
COUNT = 2000
VARIANTS = {  # name: (neunorm, neunorm_reading, table label)
    "off": (False, "stbp", "off"),
    "stbp": (True, "stbp", "on, our reading (stbp)"),
    "spikingjelly": (True, "spikingjelly", "on, SpikingJelly's reading"),
}


def variant_config(base: str, variant: str) -> dict:
    """`base` with NeuNorm set as `variant` says, named `<base>-neunorm-<variant>`."""
    neunorm, reading, label = VARIANTS[variant]
    config = load_config(base)
    name = f"{config['run']['name']}-neunorm-{variant}"
    change = {"run": {"name": name, "description": f"NeuNorm ablation: {label}, from {base}"},
              "model": {"neunorm": neunorm, "neunorm_reading": reading}}  # fmt: skip
    return merge(config, change)


def write_config(config: dict, folder: Path) -> Path:
    """`config` as `folder/<name>.toml` (rewritten only when its text changes)."""
    path = folder / f"{config['run']['name']}.toml"
    text = to_toml(config)
    if not path.is_file() or path.read_text() != text:
        folder.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return path


def make_runs(args: argparse.Namespace) -> list[sweep.Run]:
    runs = []
    for variant in args.variants:
        config = write_config(variant_config(args.config, variant), args.out / "configs")
        for seed in args.seeds:
            flags = {"data_dir": args.data_dir, "seed": seed, "epochs": args.epochs,
                     "max_steps_per_epoch": args.max_steps_per_epoch}  # fmt: skip
            folder = args.out / f"{variant}-seed{seed}"
            cost = 1.2 if VARIANTS[variant][0] else 1.0  # NeuNorm: ~20% longer steps
            runs.append(sweep.Run(VARIANTS[variant][2], seed, folder, str(config), flags, cost))
    return runs


def ensure_recordings(folder: Path, count: int) -> None:
    """Emulate `count` N-MNIST recordings into `folder` unless it holds them already;
    `SweepError` if it holds another number of them."""
    found = len(existing_recordings(folder, NMNIST_FILES))
    if found == count:
        print(f"data: {folder} holds {count} emulated N-MNIST recordings, reused", flush=True)
        return
    if found:
        raise sweep.SweepError(
            f"--data-dir {folder} holds {found} emulated N-MNIST recordings, not --count "
            f"{count}; pass --count {found}, another --data-dir, or rewrite it with: stbp "
            f"emulate-nmnist --out {folder} --count {count} --overwrite"
        )
    start = time.monotonic()
    print(f"data: emulating {count} N-MNIST recordings into {folder}", flush=True)
    try:
        write_emulated_nmnist(folder, count)
    except (ValueError, OSError) as err:
        raise sweep.SweepError(f"--data-dir {folder}: {err}") from None
    print(f"data: done in {time.monotonic() - start:.0f} s", flush=True)


def variant_list(text: str) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    if not names or any(v not in VARIANTS for v in names) or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(
            f"expected distinct variants from {', '.join(VARIANTS)} separated by commas, "
            f"got {text!r}"
        )
    return names


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=sweep.positive, default=COUNT,
                        help=f"emulated recordings, 80%% train (default {COUNT})")  # fmt: skip
    parser.add_argument("--data-dir", type=Path,
                        help="their folder (default data/nmnist-emulated-<count>)")  # fmt: skip
    parser.add_argument("--epochs", type=sweep.positive, default=EPOCHS,
                        help=f"default {EPOCHS} (see the docstring)")  # fmt: skip
    parser.add_argument("--variants", type=variant_list, default=list(VARIANTS),
                        help=f"default {','.join(VARIANTS)}")  # fmt: skip
    parser.add_argument("--config", default="nmnist-emulated", help="default nmnist-emulated")
    sweep.add_sweep_arguments(parser, "neunorm-ablation", "neunorm_ablation")
    args = parser.parse_args()
    args.data_dir = args.data_dir or Path("data") / f"nmnist-emulated-{args.count}"
    try:
        runs = make_runs(args)
    except ConfigError as err:
        parser.error(str(err))
    notes = [f"config: {args.config}, everything as it says but NeuNorm and the seed; data: "
             f"{args.data_dir} ({args.count} emulated recordings)"]  # fmt: skip
    bench = sweep.Sweep("neunorm_ablation", runs, "NeuNorm", notes)
    return sweep.main(bench, args, prepare=lambda: ensure_recordings(args.data_dir, args.count))


if __name__ == "__main__":
    sys.exit(main())

"""The `stbp train`, `stbp eval` and `stbp configs` commands."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from stbp import checkpoint as ck
from stbp import distributed as dd
from stbp.config import (
    DEFAULTS,
    FLAG_KEYS,
    ConfigError,
    config_names,
    describe,
    flag_name,
    load_config,
    validate,
)
from stbp.data import FormatError
from stbp.datasets import stored_test_set
from stbp.devices import resolve_precision
from stbp.encoders import IntensityError
from stbp.runs import Interrupted, run_training
from stbp.train import Diverged, evaluate


def resolve_config(args: argparse.Namespace) -> dict:
    """The config file with the command-line flags applied over it, checked as a whole."""
    config = load_config(args.config)
    for dest, (table, key) in FLAG_KEYS.items():
        value = getattr(args, dest, None)
        if value is not None:
            config[table][key] = str(value) if isinstance(value, Path) else value
    validate(config, f"{args.config} with the command-line flags")
    return config


def flag_words(flags: dict) -> list[str]:
    """`stbp train` options for values by argparse name (`--T 4`, `--no-neunorm`)."""
    words = []
    for dest, value in flags.items():
        if value is None:
            continue
        flag = flag_name(dest)
        if isinstance(value, bool):
            words.append(flag if value else "--no-" + flag[2:])
        else:
            words += [flag, str(value)]
    return words


def _resume_command(args: argparse.Namespace, out: str) -> str:
    flags = {dest: getattr(args, dest, None) for dest in FLAG_KEYS}
    words = ["stbp", "train", "--config", str(args.config), *flag_words(flags)]
    return shlex.join([*words, "--out", out, "--resume"])


def _cmd_train(args: argparse.Namespace) -> int:
    try:
        result = run_training(resolve_config(args), args.out, args.resume, args.overwrite)
    except Interrupted as stop:
        where, folder = stop.args
        saved = f"saved {folder}/last.pt at {where}" if where else "stopped without saving"
        print(f"stbp train: interrupted; {saved}. Resume with: {_resume_command(args, folder)}",
              file=sys.stderr)  # fmt: skip
        return 130
    if dd.rank() == 0 and result["epochs"]:
        chosen = "validation" if result["selection"] == "val" else "test (no validation split)"
        print(
            f"selected epoch {result['selected_epoch']} by {chosen} accuracy: test accuracy "
            f"{100 * result['test_acc_at_selection']:.2f}% (final epoch "
            f"{100 * result['final_test_acc']:.2f}%; {result['total_seconds']:.0f} s); "
            f"run folder: {result['out']}"
        )
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    state = ck.load_checkpoint(args.checkpoint)
    config = state.get("config") or DEFAULTS
    device = dd.pick_device(args.device)
    model = ck.model_from_state(state, args.checkpoint, device)
    precision = resolve_precision(args.precision or config["run"]["precision"], device)
    test_set = stored_test_set(config, args.data_dir, args.cache_dir)
    metrics = evaluate(model, test_set, config["optim"]["loss"],
                       batch_size=config["run"]["eval_batch_size"],
                       ctx=dd.Context(device=device), precision=precision)  # fmt: skip
    print(
        f"{args.checkpoint}: {config['run']['name']}, epoch {state.get('epoch', '?')}: test loss "
        f"{metrics['loss']:.4f}, accuracy {100 * metrics['acc']:.2f}%"
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


USER_ERRORS = (
    ConfigError, ck.CheckpointError, FormatError, FileNotFoundError, Diverged, IntensityError
)


def friendly(func):
    """Print the errors a user can act on as one line instead of a traceback."""

    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except USER_ERRORS as err:
            print(f"stbp {args.command}: error: {err}", file=sys.stderr)
            return 1 if isinstance(err, Diverged) else 2
        except KeyboardInterrupt:
            print(f"stbp {args.command}: interrupted", file=sys.stderr)
            return 130

    return run


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `train`, `eval` and `configs` to the `stbp` command line."""
    p = subparsers.add_parser("train", help="train a network (one config per paper experiment)")
    p.add_argument("--config", required=True, help="a shipped config name or a .toml path")
    p.add_argument("--data-dir", type=Path, help="data folder (overrides [data] dir)")
    p.add_argument("--cache-dir", type=Path, help="frame cache folder (overrides [data] cache_dir)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, help="global batch size")
    p.add_argument("--T", type=int, help="time window (steps)")
    p.add_argument("--val-fraction", type=float,
                   help="validation split carved from the training part (0: select on test)")
    p.add_argument("--neunorm", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--model", metavar="PACKAGE.MODULE:FUNCTION",
                   help="your own network: a function returning an nn.Module ([model] factory)")
    p.add_argument("--device", choices=("cpu", "cuda", "auto"))
    p.add_argument("--precision", choices=("fp32", "bf16", "auto"))
    p.add_argument("--seed", type=int)
    p.add_argument("--max-steps-per-epoch", type=int, help="cut epochs short (smoke runs)")
    p.add_argument("--checkpoint-every", type=int, help="also save last.pt every N steps")
    p.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=None,
                   help="repeatable CUDA runs: deterministic algorithms, TF32 off (slower)")
    p.add_argument("--out", type=Path, help="run folder (default runs/<config>-<timestamp>)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true",
                      help="continue the run in --out (default: the config's newest run)")
    mode.add_argument("--overwrite", action="store_true",
                      help="replace the run that --out holds")
    p.set_defaults(func=friendly(_cmd_train))

    p = subparsers.add_parser("eval", help="evaluate a checkpoint on its config's test set")
    p.add_argument("--checkpoint", required=True, type=Path)
    p.add_argument("--data-dir", type=Path, help="data folder (overrides the stored config)")
    p.add_argument("--cache-dir", type=Path, help="frame cache folder (overrides the stored one)")
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto")
    p.add_argument(
        "--precision", choices=("fp32", "bf16", "auto"), help="default: the training run's"
    )
    p.set_defaults(func=friendly(_cmd_eval))

    p = subparsers.add_parser("configs", help="list the shipped experiment configs")
    p.set_defaults(func=friendly(_cmd_configs))

"""Checkpoints, written atomically and loaded safely, and the other files of a run folder.

A checkpoint is a dict of tensors and plain Python values only (model, optimizer and
scheduler states, epoch, RNG states, `build_args` and the config), so it loads with
`torch.load(weights_only=True)`, which runs no pickled code. Saving writes a temporary file
in the same folder, fsyncs it and renames it over the target: a crash leaves either the old
or the new checkpoint, never a broken one.

`write_run_files` rewrites `metrics.csv`, `curves.png` and `summary.json` from the history
kept in the checkpoint, so they always agree with `last.pt`.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
from pathlib import Path

import numpy as np
import torch

from stbp.models import SNN, rebuild

FORMAT = "stbp-checkpoint-1"


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not fit; the message names the file."""


def save_atomic(state: dict, path: str | Path) -> None:
    """`torch.save(state)` to `path` through a temporary file, fsync and rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save({"format": FORMAT, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # not possible on every platform
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint with `weights_only=True`; `CheckpointError` naming the file if the
    file is missing, corrupt or not an stbp checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated zip, bad pickle, disallowed global, ...
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path}: not a readable checkpoint ({first_line})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an stbp checkpoint (no {FORMAT!r} marker)")
    return state


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> SNN:
    """Rebuild the network stored in a checkpoint and load its weights (in eval mode)."""
    state = load_checkpoint(path, map_location)
    model = rebuild(state["build_args"])
    load_weights(model, state["model"], path)
    return model.to(map_location).eval()


def load_weights(model: torch.nn.Module, weights: dict, path: str | Path) -> None:
    """`model.load_state_dict(weights)`, with a message naming the file on a mismatch."""
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        raise CheckpointError(
            f"{path}: the weights do not fit this network ({str(err).splitlines()[0]} ...)"
        ) from None


def check_same_network(state: dict, build_args: dict, path: str | Path) -> None:
    """`CheckpointError` if the checkpoint holds another network than `build_args`."""
    stored = state.get("build_args", {})
    diff = [k for k in sorted(set(stored) | set(build_args)) if stored.get(k) != build_args.get(k)]
    if diff:
        details = "; ".join(f"{k}: {stored.get(k)!r} vs {build_args.get(k)!r}" for k in diff)
        raise CheckpointError(
            f"{path} holds a different network than this config ({details}); "
            "use another --out folder or the config it was trained with"
        )


def rng_states() -> dict:
    """Python, numpy, torch and CUDA RNG states, as weights_only-loadable values."""
    np_state = np.random.get_state()
    states = {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    """Restore what `rng_states` saved."""
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    name, key, *rest = states["numpy"]
    np.random.set_state((name, key.numpy(), *rest))
    torch.set_rng_state(states["torch"].cpu())
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in states["cuda"]])


def write_run_files(out: Path, history: list[dict], summary: dict) -> None:
    """`metrics.csv` (one row per epoch), `curves.png` and `summary.json` in `out`."""
    if history:
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=list(history[-1]))
        writer.writeheader()
        writer.writerows(history)
        _write_text_atomic(out / "metrics.csv", text.getvalue())
        plot_curves(history, out / "curves.png")
    _write_text_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def plot_curves(history: list[dict], path: Path) -> None:
    """Loss and accuracy per epoch, train and test, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, what in zip(axes, ("loss", "acc"), strict=True):
        for split in ("train", "test"):
            ax.plot(epochs, [row[f"{split}_{what}"] for row in history], "o-", label=split)
        ax.set_xlabel("epoch")
        ax.set_ylabel("accuracy" if what == "acc" else "loss")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)

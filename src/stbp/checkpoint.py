"""Checkpoints, written atomically and loaded safely, and the other files of a run folder.

A checkpoint is a dict of tensors and plain Python values only (model, optimizer and
scheduler states, epoch, RNG states, the config, and what rebuilds the network: `build_args`
for stbp's own networks, `factory` (`stbp.factory`'s record: the function's name, its keyword
arguments, T, the input shape) for a network of your own), so it loads with
`torch.load(weights_only=True)`, which runs no pickled code. Saving writes a temporary file
in the same folder, fsyncs it and renames it over the target: a crash leaves either the old
or the new checkpoint, never a broken one. Saving also stores a SHA-256 `checksum` of the
whole state (every tensor's bytes and every plain value, in a canonical order); loading
recomputes it and refuses a file whose bytes changed since. A checkpoint written before
checksums existed loads with a `CheckpointWarning`.

`write_run_files` rewrites `metrics.csv`, `curves.png` and `summary.json` from the history
kept in the checkpoint, so they always agree with `last.pt`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import random
import re
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from stbp import factory
from stbp.models import rebuild

FORMAT = "stbp-checkpoint-1"
CHECKSUM_KEY = "checksum"
_PLAIN = (bool, int, float, complex, str, bytes, type(None), torch.dtype, torch.device)


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not fit; the message names the file."""


class CheckpointWarning(UserWarning):
    """A checkpoint loads but cannot be verified (written before checksums existed)."""


def save_atomic(state: dict, path: str | Path) -> None:
    """`torch.save(state)` to `path` through a temporary file, fsync and rename, with the
    state's `checksum` added."""
    path = Path(path)
    state = {"format": FORMAT, **{k: v for k, v in state.items() if k != CHECKSUM_KEY}}
    state[CHECKSUM_KEY] = checksum(state)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
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


def checksum(state: dict) -> str:
    """`"sha256:<hex>"` over `state` without its `checksum` entry: dict keys sorted, every
    tensor's dtype, shape and bytes, every plain value's type and repr (one pass).

    `TypeError` naming the entry for a value that is neither a tensor nor a plain value (it
    could not be loaded with `weights_only=True` anyway)."""
    digest = hashlib.sha256()
    _feed(digest, {k: v for k, v in state.items() if k != CHECKSUM_KEY}, "state")
    return f"sha256:{digest.hexdigest()}"


def _feed(digest, value, where: str) -> None:
    """Add `value` to `digest`, tagged by kind so that different structures never collide."""
    if isinstance(value, torch.Tensor):
        data = value.detach().cpu().contiguous().reshape(-1)
        digest.update(f"T{data.dtype}{tuple(value.shape)}{data.numel()};".encode())
        digest.update(data.view(torch.uint8).numpy())
    elif isinstance(value, dict):
        digest.update(f"D{len(value)};".encode())
        for key in sorted(value, key=lambda k: (type(k).__name__, repr(k))):
            _feed(digest, key, where)
            _feed(digest, value[key], f"{where}[{key!r}]")
    elif isinstance(value, (list, tuple)):  # a list and a tuple of the same items agree
        digest.update(f"L{len(value)};".encode())
        for i, item in enumerate(value):
            _feed(digest, item, f"{where}[{i}]")
    elif type(value) in _PLAIN:  # exactly: numpy.float64 is a float but does not load
        text = repr(value)
        digest.update(f"V{type(value).__name__}{len(text)};{text}".encode())
    else:
        raise TypeError(
            f"checkpoint entry {where} is a {type(value).__module__}.{type(value).__qualname__}; "
            "a checkpoint holds tensors, dicts, lists, tuples and plain Python values only"
        )


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint with `weights_only=True` and verify its checksum (the returned dict
    has no `checksum` entry). `CheckpointError` naming the file if it is missing, unreadable,
    corrupt or not an stbp checkpoint; `CheckpointWarning` if it has no checksum."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated zip, bad pickle, disallowed global, ...
        raise CheckpointError(f"{path}: not a readable checkpoint ({_reason(err)})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an stbp checkpoint (no {FORMAT!r} marker)")
    _verify(state, path)
    return state


def _verify(state: dict, path: Path) -> None:
    """Check and remove the stored checksum."""
    stored = state.pop(CHECKSUM_KEY, None)
    if stored is None:
        warnings.warn(
            f"{path} has no checksum (written by an older stbp): it loads, but a corrupt "
            "file cannot be told from a good one",
            CheckpointWarning,
            stacklevel=3,
        )
        return
    try:
        actual = checksum(state)
    except TypeError as err:
        raise CheckpointError(f"{path}: {err}") from None
    if actual != stored:
        raise CheckpointError(f"{path}: checksum mismatch: the file is corrupt")


def _reason(err: Exception) -> str:
    """Why torch.load failed, in one line, without torch's advice to load with
    `weights_only=False` (which would run code from the file)."""
    text = str(err).strip()
    if "weights only load failed" in text.lower() or "weights_only" in text:
        found = re.search(r"GLOBAL ([\w.]+)", text)
        what = f" ({found.group(1)})" if found else ""
        return f"it holds Python objects{what} besides tensors and plain values"
    return _first_line(err)


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the network stored in a checkpoint and load its weights (in eval mode). A
    network of your own is built again by importing and calling its factory (code of your
    environment, named in the file: load checkpoints you trust)."""
    return model_from_state(load_checkpoint(path, map_location), path, map_location)


def model_from_state(
    state: dict, path: str | Path, map_location: str | torch.device = "cpu"
) -> nn.Module:
    """The network of a loaded checkpoint `state` (from `load_checkpoint(path)`), with its
    weights, in eval mode; `CheckpointError` naming `path` if an entry is missing or wrong,
    or if the factory of a network of your own cannot be imported or called here."""
    if "model" not in state:
        raise CheckpointError(f"{path}: no 'model' entry; it holds: {', '.join(state)}")
    if "factory" in state:
        model = _rebuild_factory(state["factory"], path)
    elif "build_args" in state:
        try:
            model = rebuild(state["build_args"])
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            what = f"{type(err).__name__}: {err}"
            raise CheckpointError(
                f"{path}: its 'build_args' do not describe a network ({what})"
            ) from None
    else:
        raise CheckpointError(
            f"{path}: no 'build_args' entry (nor 'factory'); it holds: {', '.join(state)}"
        )
    load_weights(model, state["model"], path)
    return model.to(map_location).eval()


def _rebuild_factory(record, path: str | Path) -> nn.Module:
    try:
        return factory.rebuild(record)
    except factory.FactoryError as err:
        raise CheckpointError(f"{path}: its network cannot be built again here: {err}") from None
    except (KeyError, TypeError, AttributeError) as err:
        what = f"{type(err).__name__}: {err}"
        raise CheckpointError(
            f"{path}: its 'factory' entry does not describe a network ({what})"
        ) from None


def network_entries(model: nn.Module) -> dict:
    """What a checkpoint stores to build `model` again: `{"factory": record}` for a network
    of `stbp.factory`, else `{"build_args": model.build_args}` (stbp's own networks)."""
    record = factory.factory_args(model)
    if record is not None:
        return {"factory": record}
    return {"build_args": model.build_args}


def load_weights(model: torch.nn.Module, weights: dict, path: str | Path) -> None:
    """`model.load_state_dict(weights)`, with a message naming the file on a mismatch."""
    try:
        model.load_state_dict(weights)
    except (RuntimeError, TypeError, AttributeError) as err:
        raise CheckpointError(
            f"{path}: the weights do not fit this network ({_first_line(err)} ...)"
        ) from None


def check_same_network(state: dict, network: nn.Module | dict, path: str | Path) -> None:
    """`CheckpointError` if the checkpoint holds another network than `network` (a model, or
    the `build_args` of one of stbp's own): another factory, other factory kwargs, T or input
    shape, or other `build_args`."""
    from stbp.models import complete_build_args

    entries = {"build_args": network} if isinstance(network, dict) else network_entries(network)
    if ("factory" in state) != ("factory" in entries):
        raise CheckpointError(
            f"{path} holds a network built from {_origin(state)}, this config asks for one "
            f"from {_origin(entries)}; use another --out folder or the config it was trained with"
        )
    if "factory" in state:
        stored, wanted = dict(state["factory"]), dict(entries["factory"])
    else:
        stored = complete_build_args(state.get("build_args", {}))
        wanted = entries["build_args"]
    diff = [k for k in sorted(set(stored) | set(wanted)) if stored.get(k) != wanted.get(k)]
    if diff:
        details = "; ".join(f"{k}: {stored.get(k)!r} vs {wanted.get(k)!r}" for k in diff)
        raise CheckpointError(
            f"{path} holds a different network than this config ({details}); "
            "use another --out folder or the config it was trained with"
        )


def _origin(entries: dict) -> str:
    if "factory" in entries:
        return f"the factory {entries['factory'].get('factory')!r}"
    return "stbp's notation ([model] network or spec)"


class RNGStateWarning(CheckpointWarning):
    """A saved RNG state cannot be restored where the run resumes (another device, another
    number of processes): the run goes on, but its random numbers differ from an
    uninterrupted run's from there on."""


def rng_states(device: str | torch.device | None = None) -> dict:
    """Python, numpy and torch RNG states, as weights_only-loadable values, and the CUDA
    generator's state of the training `device` when it is a CUDA device (`None`: the current
    CUDA device, if there is one). Other GPUs' generators are not saved: a process trains on
    one device, and a resume may see fewer GPUs."""
    np_state = np.random.get_state()
    states = {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    index = _cuda_index(device)
    if index is not None:
        states["cuda"] = torch.cuda.get_rng_state(index)
    return states


def set_rng_states(states: dict, device: str | torch.device | None = None) -> None:
    """Restore what `rng_states` saved; the CUDA state goes to the training `device` (`None`:
    the current CUDA device, if there is one).

    A CUDA state with nowhere to go (the run resumes on the CPU) or a CUDA device without a
    saved state (the run trained on the CPU) is left out with an `RNGStateWarning`. Older
    checkpoints hold one state per GPU the saving process saw; the first is restored (a
    single process, and rank 0, trained on `cuda:0`)."""
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    name, key, *rest = states["numpy"]
    np.random.set_state((name, key.numpy(), *rest))
    torch.set_rng_state(states["torch"].cpu())
    saved, index = states.get("cuda"), _cuda_index(device)
    if isinstance(saved, (list, tuple)):  # earlier stbp: one state per GPU the process saw
        saved = saved[0] if saved else None
    if saved is not None and index is not None:
        torch.cuda.set_rng_state(saved.cpu(), index)
    elif saved is not None:
        warnings.warn(
            "the checkpoint's CUDA RNG state is not restored: the run now trains on the CPU, "
            "so its random numbers differ from the saved run's",
            RNGStateWarning,
            stacklevel=2,
        )
    elif index is not None:
        warnings.warn(
            f"the checkpoint holds no CUDA RNG state (it was saved by a run on the CPU): "
            f"cuda:{index} keeps the generator seeded at the start, so random numbers on the "
            "GPU (dropout masks) differ from an uninterrupted run's",
            RNGStateWarning,
            stacklevel=2,
        )


def _cuda_index(device: str | torch.device | None) -> int | None:
    """The CUDA device index of `device` (`None`: the current one), or `None` if `device` is
    not a CUDA device or torch sees none."""
    if device is None:
        return torch.cuda.current_device() if torch.cuda.is_available() else None
    device = torch.device(device)
    if device.type != "cuda":
        return None
    return device.index if device.index is not None else torch.cuda.current_device()


def write_run_files(
    out: Path, history: list[dict], summary: dict, selected_epoch: int | None = None
) -> None:
    """`metrics.csv` (one row per epoch), `curves.png` and `summary.json` in `out`. The
    curves mark `selected_epoch` (default: the summary's `selected_epoch`, if any)."""
    if selected_epoch is None:
        selected_epoch = summary.get("selected_epoch")
    if history:
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=list(history[-1]))
        writer.writeheader()
        writer.writerows(history)
        _write_text_atomic(out / "metrics.csv", text.getvalue())
        plot_curves(history, out / "curves.png", selected_epoch)
    _write_text_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


CURVE_SPLITS = (("train", "o-", "C0"), ("val", "s-", "C1"), ("test", "^--", "C2"))


def plot_curves(history: list[dict], path: Path, selected_epoch: int | None = None) -> None:
    """`curves_figure(history, selected_epoch)` saved to `path` as PNG (atomically)."""
    fig = curves_figure(history, selected_epoch)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.png")
    fig.savefig(tmp, dpi=100)
    os.replace(tmp, path)


def curves_figure(history: list[dict], selected_epoch: int | None = None):
    """Loss and accuracy (%) per epoch side by side: train, validation (when the rows have
    `val_loss`/`val_acc`) and test, with a dotted line at `selected_epoch` if given.

    A `matplotlib.figure.Figure` of its own: the pyplot backend of the caller (a notebook's,
    say) is left alone."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    epochs = [row["epoch"] for row in history]
    fig = Figure(figsize=(9, 3.5), layout="constrained")
    for ax, what in zip(fig.subplots(1, 2), ("loss", "acc"), strict=True):
        scale = 100 if what == "acc" else 1
        for split, style, color in CURVE_SPLITS:
            key = f"{split}_{what}"
            points = [
                (row["epoch"], row[key] * scale) for row in history if row.get(key) is not None
            ]
            if points:
                ax.plot(*zip(*points, strict=True), style, color=color, label=split, ms=4)
        if selected_epoch is not None:
            ax.axvline(
                selected_epoch, color="0.4", ls=":", label=f"selected (epoch {selected_epoch})"
            )
        ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)  # room for one epoch's point
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.set_xlabel("epoch")
        ax.set_ylabel("accuracy (%)" if what == "acc" else "loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return fig

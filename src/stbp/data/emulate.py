"""Offline emulated event recordings of the embedded MNIST digits, written as real files.

A digit is moved in front of an emulated event camera along the three saccades of the N-MNIST
recording protocol (Orchard et al. 2015): three straight 100 ms movements around a triangle,
back to the start. Each pixel keeps a reference log intensity and emits an ON (OFF) event every
time its log intensity rises (falls) by more than its contrast threshold since the last event;
thresholds vary from pixel to pixel, and event times get a little jitter. The results are
written in the official formats and folder layouts, so `NMNIST` and `CIFAR10DVS` read them
through the same readers as the real data sets:

- `stbp emulate-nmnist --out DIR`: N-MNIST `.bin` files in `DIR/{Train,Test}/<digit>/`, on a
  34x34 sensor, train and test taken from the seeded 8k/2k split of `MNIST10k`;
- `stbp emulate-dvs --out DIR`: AEDAT 2.0 DVS128 files of upscaled digits in the CIFAR10-DVS
  layout `DIR/<class name>/`, digit d filed under the d-th CIFAR-10 class name.

A folder that already holds recordings of the layout is refused unless `--overwrite`
(`overwrite=True`), which first removes those files (and only those), so that the folder never
holds more recordings than asked for.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from . import aedat, nmnist
from .event_datasets import CIFAR10DVS_CLASSES
from .events import make_events
from .mnist10k import N_TRAIN, load_mnist10k, split_indices


@dataclass(frozen=True)
class Camera:
    """An emulated event camera looking at a digit that moves around a saccade triangle.

    `vertices` are the (x, y) offsets in sensor pixels of the digit's top-left corner at the
    corners of the triangle; the digit is drawn `scale` times its 28-pixel size.
    """

    sensor_size: tuple[int, int]  # (height, width)
    scale: float
    vertices: tuple[tuple[float, float], ...]
    threshold: float  # mean contrast threshold, in log intensity
    threshold_spread: float = 0.1  # relative pixel-to-pixel spread of the threshold
    saccade_us: int = 100_000
    step_us: int = 1_000
    jitter_us: float = 200.0
    dark: float = 0.1  # intensity of the background relative to a full-white stroke


NMNIST_CAMERA = Camera((34, 34), 1.0, ((0.0, 6.0), (3.0, 0.0), (6.0, 6.0)), threshold=0.4)
DVS_CAMERA = Camera((128, 128), 3.5, ((3.0, 27.0), (15.0, 3.0), (27.0, 27.0)), threshold=1.2)


def saccade_offsets(camera: Camera) -> np.ndarray:
    """The digit's (x, y) offset at every time step: smooth moves between triangle corners."""
    steps = camera.saccade_us // camera.step_us
    ease = (1 - np.cos(np.pi * np.arange(steps) / steps)) / 2  # slow at the ends, fast mid-way
    corners = np.array(camera.vertices + camera.vertices[:1])
    moves = [a + ease[:, None] * (b - a) for a, b in zip(corners[:-1], corners[1:], strict=True)]
    return np.concatenate(moves + [corners[-1:]])


def render(image: np.ndarray, camera: Camera, offsets: np.ndarray) -> np.ndarray:
    """Bilinear samples `[S, H, W]` of the image (values in [0, 1]) at S offsets, zero outside."""
    height, width = camera.sensor_size
    padded = np.pad(image, 1)
    rows = (np.arange(height) - offsets[:, 1:2]) / camera.scale + 1  # [S, H]
    cols = (np.arange(width) - offsets[:, 0:1]) / camera.scale + 1  # [S, W]
    r = np.clip(rows, 0, image.shape[0])[:, :, None]
    c = np.clip(cols, 0, image.shape[1])[:, None, :]
    r0, c0 = np.floor(r).astype(np.int64), np.floor(c).astype(np.int64)
    fr, fc = r - r0, c - c0
    top = padded[r0, c0] * (1 - fc) + padded[r0, c0 + 1] * fc
    bottom = padded[r0 + 1, c0] * (1 - fc) + padded[r0 + 1, c0 + 1] * fc
    return top * (1 - fr) + bottom * fr


def emulate_events(image: np.ndarray, camera: Camera, rng: np.random.Generator) -> np.ndarray:
    """Events (x, y = row from the top, p, t in µs) of a uint8 digit moving past the camera."""
    image = image.astype(np.float64) / 255.0
    offsets = saccade_offsets(camera)
    log_frames = np.concatenate(
        [np.log(render(image, camera, chunk) + camera.dark) for chunk in np.split(
            offsets, range(50, len(offsets), 50))]
    ).reshape(len(offsets), -1)  # fmt: skip
    threshold = camera.threshold * (1 + camera.threshold_spread * rng.standard_normal(
        log_frames.shape[1])).clip(0.5, None)  # fmt: skip
    reference = log_frames[0] + (rng.random(log_frames.shape[1]) - 0.5) * threshold
    pixels, times, polarity = [], [], []
    for step in range(1, len(log_frames)):
        before, now = log_frames[step - 1], log_frames[step]
        change = now - reference
        count = np.floor(np.abs(change) / threshold).astype(np.int64)
        fired = np.flatnonzero(count)
        if not len(fired):
            continue
        n = count[fired]
        pix = np.repeat(fired, n)
        k = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n) + 1  # 1..n for each pixel
        sign = np.sign(change[pix])
        level = reference[pix] + k * sign * threshold[pix]
        slope = now[pix] - before[pix]
        frac = np.clip((level - before[pix]) / np.where(slope == 0, 1, slope), 0, 1)
        pixels.append(pix)
        times.append((step - 1 + frac) * camera.step_us)
        polarity.append(sign > 0)
        reference[fired] += n * np.sign(change[fired]) * threshold[fired]
    return _to_events(pixels, times, polarity, camera, rng)


def _to_events(pixels, times, polarity, camera: Camera, rng: np.random.Generator) -> np.ndarray:
    if not pixels:
        return make_events(*([np.zeros(0, np.int64)] * 4))
    pix, p = np.concatenate(pixels), np.concatenate(polarity)
    t = np.concatenate(times) + rng.normal(0, camera.jitter_us, len(pix))
    t = np.rint(t - min(t.min(), 0)).astype(np.int64)
    order = np.argsort(t, kind="stable")
    width = camera.sensor_size[1]
    return make_events(pix[order] % width, pix[order] // width, p[order], t[order])


def _nmnist_job(job: tuple) -> None:
    path, image, seed, index = job
    events = emulate_events(image, NMNIST_CAMERA, np.random.default_rng([seed, index]))
    nmnist.write_nmnist(path, events)


def _dvs_job(job: tuple) -> None:
    path, image, seed, index = job
    events = emulate_events(image, DVS_CAMERA, np.random.default_rng([seed, index]))
    events["y"] = DVS_CAMERA.sensor_size[0] - 1 - events["y"]  # jAER: y = 0 is the bottom row
    aedat.write_aedat(path, events)


class EmulatorError(ValueError):
    """A setting of an emulator is out of range, or its output folder cannot be used."""


NMNIST_FILES = tuple(f"{part}/{digit}/*.bin" for part in ("Train", "Test") for digit in range(10))
DVS_FILES = tuple(f"{name}/*.aedat" for name in CIFAR10DVS_CLASSES)
PARAMETERS = {"out": "out", "count": "count", "workers": "workers", "overwrite": "overwrite=True"}
FLAGS = {"out": "--out", "count": "--count", "workers": "--workers", "overwrite": "--overwrite"}


# The most files each emulator can write from the 10,000 embedded digits: one per digit for
# N-MNIST; for DVS, where the first `count % 10` classes get one file more than the others,
# ten times the rarest digit's count (863 fives) plus one for each class before it (0-4).
MAX_NMNIST_COUNT = 10_000
MAX_DVS_COUNT = 8_635


def existing_recordings(out: str | Path, patterns: tuple[str, ...]) -> list[Path]:
    """The files of the emulator's layout (`NMNIST_FILES` or `DVS_FILES`) already in `out`."""
    out = Path(out).expanduser()
    return sorted(f for pattern in patterns for f in out.glob(pattern) if f.is_file())


def remove_recordings(out: str | Path, patterns: tuple[str, ...]) -> int:
    """Delete the files of the emulator's layout in `out`, then the folders that held them if
    that left them empty; return how many files were deleted. Nothing else is touched."""
    out = Path(out).expanduser()
    files = existing_recordings(out, patterns)
    for f in files:
        f.unlink()
    folders = {parent for f in files for parent in f.relative_to(out).parents if parent.parts}
    for folder in sorted(folders, key=lambda f: len(f.parts), reverse=True):
        if not any((out / folder).iterdir()):
            (out / folder).rmdir()
    return len(files)


def check_settings(
    out: Path,
    count: int,
    workers: int | None,
    limit: int,
    patterns: tuple[str, ...],
    overwrite: bool,
    names: dict[str, str],
) -> list[Path]:
    """Refuse a count outside 1..`limit`, fewer than one worker, an `out` that cannot be a
    folder, or earlier recordings (files matching `patterns`) in `out` without `overwrite`;
    return those recordings. `names` spells the settings in messages (`PARAMETERS`, `FLAGS`)."""
    if not 1 <= count <= limit:
        raise EmulatorError(f"{names['count']} must be in 1..{limit}, got {count}")
    if workers is not None and workers < 1:
        raise EmulatorError(f"{names['workers']} must be at least 1, got {workers}")
    existing = next((p for p in (out, *out.parents) if p.exists()), out)
    if existing.exists() and not existing.is_dir():
        where = "is a file" if existing == out else f"cannot be created: {existing} is a file"
        raise EmulatorError(f"{names['out']} {out} {where}, not a folder")
    old = existing_recordings(out, patterns)
    if old and not overwrite:
        raise EmulatorError(
            f"{names['out']} {out} already holds {len(old)} recordings of the emulator's layout "
            f"(e.g. {old[0].relative_to(out)}); add {names['overwrite']} to remove them first, "
            "or choose an empty folder"
        )
    return old


def write_emulated_nmnist(out: str | Path, count: int = 10_000, seed: int = 0,
                          workers: int | None = None, overwrite: bool = False) -> int:  # fmt: skip
    """Write `count` (1..10,000) emulated N-MNIST files (80% from MNIST10k's train split) to
    `out` (`~` expanded); return count. With `overwrite`, earlier recordings there are removed
    first; without it, a folder holding some is an `EmulatorError`."""
    out = Path(out).expanduser()
    check_settings(out, count, workers, MAX_NMNIST_COUNT, NMNIST_FILES, overwrite, PARAMETERS)
    remove_recordings(out, NMNIST_FILES)
    images, labels = load_mnist10k()
    train_idx, test_idx = split_indices(len(labels), N_TRAIN, seed)
    n_train = round(count * N_TRAIN / len(labels))
    jobs = []
    for folder, chosen in (("Train", train_idx[:n_train]), ("Test", test_idx[: count - n_train])):
        for i in chosen:
            path = out / folder / str(labels[i]) / f"{i:05d}.bin"
            jobs.append((path, images[i], seed, int(i)))
    return _run(jobs, _nmnist_job, workers)


def write_emulated_dvs(out: str | Path, count: int = 1_000, seed: int = 0,
                       workers: int | None = None, overwrite: bool = False) -> int:  # fmt: skip
    """Write `count` (1..8,635) emulated DVS128 AEDAT 2.0 files in the CIFAR10-DVS layout to
    `out` (`~` expanded); return count. `overwrite` as in `write_emulated_nmnist`.

    The classes get equal shares (the first `count % 10` one more), drawn at random (seeded).
    """
    out = Path(out).expanduser()
    check_settings(out, count, workers, MAX_DVS_COUNT, DVS_FILES, overwrite, PARAMETERS)
    remove_recordings(out, DVS_FILES)
    images, labels = load_mnist10k()
    order = np.random.default_rng(seed).permutation(len(labels))
    jobs = []
    for digit, name in enumerate(CIFAR10DVS_CLASSES):
        chosen = order[labels[order] == digit][: count // 10 + (digit < count % 10)]
        for k, i in enumerate(chosen):
            path = out / name / f"cifar10_{name}_{k}.aedat"
            jobs.append((path, images[i], seed, int(i)))
    return _run(jobs, _dvs_job, workers)


def _run(jobs: list[tuple], work, workers: int | None) -> int:
    for folder in {job[0].parent for job in jobs}:
        folder.mkdir(parents=True, exist_ok=True)
    workers = max(1, min(workers or os.cpu_count() or 1, 8, len(jobs)))
    with tqdm(total=len(jobs), desc="emulating", unit="file", disable=None) as bar:
        if workers == 1:
            for job in jobs:
                work(job)
                bar.update()
        else:
            with ProcessPoolExecutor(workers) as pool:
                for _ in pool.map(work, jobs, chunksize=max(1, len(jobs) // (workers * 16))):
                    bar.update()
    return len(jobs)


EMULATORS = {  # command: (default count, largest count, writer, files, what it writes)
    "emulate-nmnist": (10_000, MAX_NMNIST_COUNT, write_emulated_nmnist, NMNIST_FILES,
                       "N-MNIST"),
    "emulate-dvs": (1_000, MAX_DVS_COUNT, write_emulated_dvs, DVS_FILES, "DVS128"),
}  # fmt: skip


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `emulate-nmnist` and `emulate-dvs` sub-commands."""
    for name, what in (
        ("emulate-nmnist", "N-MNIST .bin files (official folder layout)"),
        ("emulate-dvs", "AEDAT 2.0 DVS128 files (CIFAR10-DVS folder layout)"),
    ):
        default, limit = EMULATORS[name][:2]
        parser = subparsers.add_parser(name, help=f"write emulated {what} from the embedded digits")
        parser.add_argument("--out", required=True, type=Path, help="folder to write into")
        parser.add_argument(
            "--count", type=int, default=default, help=f"files, 1..{limit} (default {default})"
        )
        parser.add_argument("--seed", type=int, default=0, help="split and noise seed (default 0)")
        parser.add_argument("--workers", type=int, default=None, help="processes (default: cores)")
        parser.add_argument(
            "--overwrite", action="store_true",
            help="first remove the recordings an earlier run left in --out",
        )  # fmt: skip
        parser.set_defaults(func=_one_line_errors(_cmd_emulate))


def _one_line_errors(command: Callable[[argparse.Namespace], int]):
    """Print a bad setting or an unusable folder as one line on stderr and exit 2."""

    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except (ValueError, OSError) as err:
            print(f"stbp {args.command}: error: {err}", file=sys.stderr)
            return 2

    return run


def _cmd_emulate(args: argparse.Namespace) -> int:
    _, limit, write, files, what = EMULATORS[args.command]
    out = args.out.expanduser()
    old = check_settings(out, args.count, args.workers, limit, files, args.overwrite, FLAGS)
    if old:
        removed = remove_recordings(out, files)
        print(f"removed {removed} earlier emulated {what} recordings from {out}")
    n = write(out, args.count, args.seed, args.workers)
    print(f"wrote {n} emulated {what} recordings to {out}")
    return 0

"""A disk cache of event frames: each recording is converted once, later runs load the frames.

An entry is one `.npz` per recording, named after the file and keyed by the framing
parameters (T, split mode, output size, binary). It also records the source file's size and
modification time. Entries are written to a temporary file and renamed into place, so an
interrupted conversion never leaves a half-written entry; an entry that cannot be read, or
whose source or parameters changed, is rebuilt rather than trusted. Entries get the normal
file mode (0666 less the umask), so a cache in a shared folder serves every user of it.

Building the cache (and `check_recordings`, the same pass without writing) reads every
recording once in worker processes and reports, rather than raises on, the files it cannot
use, unless `strict`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .errors import FormatError, SkippedEventsWarning
from .events import read_recording
from .frames import check_framing, events_to_frames, frame_size

CACHE_VERSION = 1
Reader = Callable[[str | Path], np.ndarray]


def default_workers() -> int:
    return min(os.cpu_count() or 1, 8)


@dataclass
class BuildReport:
    """What a pass over the recordings found.

    `refused` maps each source that could not be used (as the string given) to its error, in
    source order; `skipped` holds the warnings of readers that left records out of a file.
    """

    converted: int = 0
    refused: dict[str, Exception] = field(default_factory=dict)
    skipped: list[SkippedEventsWarning] = field(default_factory=list)


def frame_params(
    sensor_size: tuple[int, int],
    T: int,
    split: str = "time",
    size: int | tuple[int, int] | None = None,
    binary: bool = False,
) -> dict:
    """The framing parameters of `events_to_frames`, as a cache entry records them."""
    check_framing(T, split, size)
    return {
        "T": int(T),
        "sensor_size": [int(n) for n in sensor_size],
        "split": split,
        "size": list(frame_size(size, sensor_size)),
        "binary": bool(binary),
    }


class FrameCache:
    """Frames `[T, 2, H, W]` of event recordings, cached on disk under `folder`.

    `reader(path)` returns an event array; the frames are `events_to_frames(events, T,
    sensor_size, split, size, binary)`. A recording without events is a `FormatError`.
    """

    def __init__(
        self,
        folder: str | Path,
        reader: Reader,
        sensor_size: tuple[int, int],
        T: int,
        split: str = "time",
        size: int | tuple[int, int] | None = None,
        binary: bool = False,
    ):
        self.reader = reader
        self.params = frame_params(sensor_size, T, split, size, binary)
        h, w = self.params["size"]
        tag = f"T{T}-{split}-{h}x{w}" + ("-binary" if binary else "")
        self.folder = Path(folder).expanduser() / tag

    def entry(self, source: str | Path) -> Path:
        """The cache file of one recording."""
        source = Path(source).expanduser().resolve()
        digest = hashlib.sha1(str(source).encode()).hexdigest()[:16]
        return self.folder / f"{source.stem}-{digest}.npz"

    def load(self, source: str | Path) -> np.ndarray:
        """Frames of `source`: from its entry if valid, else converted now and cached."""
        frames = self._read_entry(source)
        if frames is None:
            frames = frame_recording(self.reader, source, self.params)
            _write_entry(self.entry(source), source, frames, self.params)
        return frames

    def build(
        self,
        sources: Sequence[str | Path],
        workers: int | None = None,
        progress: bool = True,
        strict: bool = False,
    ) -> BuildReport:
        """Convert every source without an entry, in parallel worker processes.

        A source that cannot be read or has no events gets no entry and is listed in the
        report's `refused`; with `strict` its error is raised instead (and the pass stops).
        """
        jobs = [
            (self.reader, str(s), str(self.entry(s)), self.params)
            for s in sources
            if not self.entry(s).exists()
        ]
        if jobs:
            self.folder.mkdir(parents=True, exist_ok=True)
        return _run(_convert_job, jobs, workers, progress, strict, "framing")

    def _read_entry(self, source: str | Path) -> np.ndarray | None:
        try:
            with np.load(self.entry(source), allow_pickle=False) as archive:
                meta = json.loads(str(archive["meta"]))
                frames = archive["frames"]
        except Exception:  # missing, truncated or otherwise unreadable: rebuild
            return None
        expected = _meta(source, self.params)
        h, w = self.params["size"]
        if meta != expected or frames.shape != (self.params["T"], 2, h, w):
            return None
        return frames


def check_recordings(
    reader: Reader,
    sources: Sequence[str | Path],
    params: dict,
    workers: int | None = None,
    progress: bool = True,
    strict: bool = False,
) -> BuildReport:
    """Read and frame every source once (`params` from `frame_params`) without caching, to
    find the ones that cannot be used; same report and `strict` as `FrameCache.build`."""
    jobs = [(reader, str(s), None, params) for s in sources]
    return _run(_convert_job, jobs, workers, progress, strict, "checking")


def _run(task, jobs: list[tuple], workers, progress: bool, strict: bool, desc: str):
    """Run `task` on every job (in `workers` processes), gathering a `BuildReport`."""
    report = BuildReport()
    if not jobs:
        return report
    workers = min(workers or default_workers(), len(jobs))
    pool = ProcessPoolExecutor(workers) if workers > 1 else None
    bar = tqdm(total=len(jobs), desc=desc, unit="file", disable=None if progress else True)
    try:
        chunk = max(1, len(jobs) // (workers * 16))
        outcomes = pool.map(task, jobs, chunksize=chunk) if pool else map(task, jobs)
        for job, (error, skipped) in zip(jobs, outcomes, strict=True):
            bar.update()
            report.skipped += skipped
            if error is None:
                report.converted += 1 if job[2] is not None else 0
            elif strict:
                raise error
            else:
                report.refused[job[1]] = error
    finally:
        bar.close()
        if pool:
            pool.shutdown(cancel_futures=True)  # strict or interrupted: drop the queued jobs
    return report


def _convert_job(job: tuple) -> tuple[Exception | None, list[SkippedEventsWarning]]:
    """Frame one source (and write its entry unless the entry is None); return (the error
    that made the source unusable or None, the reader's skipped-records warnings)."""
    reader, source, entry, params = job
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            frames, error = frame_recording(reader, source, params), None
        except (FormatError, OSError) as err:  # OSError: permissions, vanished file...
            error = err
        except ValueError as err:  # a reader or framing error that does not name the file
            error = FormatError(source, 0, str(err))
    skipped = [w.message for w in caught if isinstance(w.message, SkippedEventsWarning)]
    for w in caught:
        if not isinstance(w.message, SkippedEventsWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if error is None and entry is not None:
        _write_entry(Path(entry), source, frames, params)
    return error, skipped


def frame_recording(reader: Reader, source: str | Path, params: dict) -> np.ndarray:
    """Frames of one recording (`params` from `frame_params`), in the smallest integer type
    that holds the counts; a recording without events is a `FormatError`."""
    frames = events_to_frames(
        read_recording(reader, source),
        params["T"],
        tuple(params["sensor_size"]),
        params["split"],
        tuple(params["size"]),
        params["binary"],
    )
    return frames.astype(np.min_scalar_type(int(frames.max(initial=0))))


def _meta(source: str | Path, params: dict) -> dict:
    stat = os.stat(Path(source).expanduser())
    return {
        "version": CACHE_VERSION,
        "source_bytes": stat.st_size,
        "source_mtime_ns": stat.st_mtime_ns,
        **params,
    }


def _write_entry(entry: Path, source: str | Path, frames: np.ndarray, params: dict) -> None:
    write_atomic(entry, frames, _meta(source, params))


def write_atomic(entry: Path, frames: np.ndarray, meta: dict) -> None:
    """Write an entry to a temporary file in the same folder, then rename it into place.

    The temporary file is created with mode 0666, which the umask trims as for any new file
    (0644 under the usual umask 022), not `tempfile`'s private 0600.
    """
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = entry.with_name(f"{entry.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(f, frames=frames, meta=np.array(json.dumps(meta)))
        os.replace(tmp, entry)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise

"""A disk cache of event frames: each recording is converted once, later runs load the frames.

An entry is one `.npz` per recording, named after the file and keyed by the framing
parameters (T, split mode, output size, binary). It also records the source file's size and
modification time. Entries are written to a temporary file and renamed into place, so an
interrupted conversion never leaves a half-written entry; an entry that cannot be read, or
whose source or parameters changed, is rebuilt rather than trusted.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .frames import events_to_frames

CACHE_VERSION = 1


def default_workers() -> int:
    return min(os.cpu_count() or 1, 8)


class FrameCache:
    """Frames `[T, 2, H, W]` of event recordings, cached on disk under `folder`.

    `reader(path)` returns an event array; the frames are `events_to_frames(events, T,
    sensor_size, split, size, binary)`.
    """

    def __init__(
        self,
        folder: str | Path,
        reader: Callable[[str | Path], np.ndarray],
        sensor_size: tuple[int, int],
        T: int,
        split: str = "time",
        size: int | tuple[int, int] | None = None,
        binary: bool = False,
    ):
        self.reader = reader
        self.params = {
            "T": int(T),
            "sensor_size": list(sensor_size),
            "split": split,
            "size": list(_pair(size or sensor_size)),
            "binary": bool(binary),
        }
        h, w = self.params["size"]
        tag = f"T{T}-{split}-{h}x{w}" + ("-binary" if binary else "")
        self.folder = Path(folder) / tag

    def entry(self, source: str | Path) -> Path:
        """The cache file of one recording."""
        source = Path(source).resolve()
        digest = hashlib.sha1(str(source).encode()).hexdigest()[:16]
        return self.folder / f"{source.stem}-{digest}.npz"

    def load(self, source: str | Path) -> np.ndarray:
        """Frames of `source`: from its entry if valid, else converted now and cached."""
        frames = self._read_entry(source)
        if frames is None:
            frames = _convert((self.reader, str(source), str(self.entry(source)), self.params))
        return frames

    def build(
        self, sources: Sequence[str | Path], workers: int | None = None, progress: bool = True
    ) -> int:
        """Convert every source without an entry, in parallel; return how many were converted."""
        jobs = [
            (self.reader, str(s), str(self.entry(s)), self.params)
            for s in sources
            if not self.entry(s).exists()
        ]
        if not jobs:
            return 0
        self.folder.mkdir(parents=True, exist_ok=True)
        workers = min(workers or default_workers(), len(jobs))
        bar = tqdm(total=len(jobs), desc="framing", unit="file", disable=None if progress else True)
        with bar:
            if workers == 1:
                for job in jobs:
                    _convert(job)
                    bar.update()
            else:
                with ProcessPoolExecutor(workers) as pool:
                    chunk = max(1, len(jobs) // (workers * 16))
                    for _ in pool.map(_convert_quiet, jobs, chunksize=chunk):
                        bar.update()
        return len(jobs)

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


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _meta(source: str | Path, params: dict) -> dict:
    stat = os.stat(source)
    return {
        "version": CACHE_VERSION,
        "source_bytes": stat.st_size,
        "source_mtime_ns": stat.st_mtime_ns,
        **params,
    }


def _convert(job: tuple) -> np.ndarray:
    reader, source, entry, params = job
    frames = events_to_frames(
        reader(source),
        params["T"],
        tuple(params["sensor_size"]),
        params["split"],
        tuple(params["size"]),
        params["binary"],
    )
    frames = frames.astype(np.min_scalar_type(int(frames.max(initial=0))))
    write_atomic(Path(entry), frames, _meta(source, params))
    return frames


def _convert_quiet(job: tuple) -> None:
    _convert(job)  # return nothing, so the frames do not travel back from the worker


def write_atomic(entry: Path, frames: np.ndarray, meta: dict) -> None:
    """Write an entry to a temporary file in the same folder, then rename it into place."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=entry.parent, prefix=entry.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(f, frames=frames, meta=np.array(json.dumps(meta)))
        os.replace(tmp, entry)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise

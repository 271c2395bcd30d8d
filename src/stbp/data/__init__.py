"""Data: event-file readers, events to frames, a frame cache, data sets and emulators.

`EventFrames` frames any data set that yields `(events, label)` (Tonic's interface).

The data path runs one way: file -> events (numpy structured array x, y, p, t) -> frames
`[T, 2, H, W]` -> Dataset sample -> batch `[T, B, C, H, W]`.
"""

from .aedat import read_aedat, write_aedat
from .cache import BuildReport, FrameCache
from .cifar10 import CIFAR10, read_cifar10_batch
from .errors import FormatError, SkippedEventsWarning, SkippedFilesWarning
from .event_datasets import CIFAR10DVS, NMNIST, EventRecordings
from .event_frames import EventFrames, SampleError
from .events import EVENT_DTYPE, make_events
from .frames import events_to_frames
from .layout import DataFolderError
from .mnist10k import MNIST10k
from .nmnist import read_nmnist, write_nmnist

__all__ = [
    "BuildReport",
    "CIFAR10",
    "CIFAR10DVS",
    "EVENT_DTYPE",
    "DataFolderError",
    "EventFrames",
    "EventRecordings",
    "FormatError",
    "FrameCache",
    "MNIST10k",
    "NMNIST",
    "SampleError",
    "SkippedEventsWarning",
    "SkippedFilesWarning",
    "events_to_frames",
    "make_events",
    "read_aedat",
    "read_cifar10_batch",
    "read_nmnist",
    "write_aedat",
    "write_nmnist",
]

"""Event data sets leave out the recordings they cannot use, say which and why, keep `files`
and `labels` aligned, raise with strict=True, and report DVS128 special events once."""

import shutil
import struct
import warnings
from pathlib import Path

import pytest

from stbp.data import (
    CIFAR10DVS,
    NMNIST,
    DataFolderError,
    EventRecordings,
    FormatError,
    read_nmnist,
)
from stbp.data.errors import SkippedEventsWarning, SkippedFilesWarning

SAMPLE = Path(__file__).parent / "data" / "nmnist_03263.bin"
HEADER = b"#!AER-DAT2.0\r\n"


def nmnist_folder(root: Path) -> dict[str, Path]:
    """Train/0..3 with three good recordings and two bad ones, in the order NMNIST lists them."""
    layout = {"0/a.bin": "good", "0/b.bin": "truncated", "1/c.bin": "good",
              "2/d.bin": "no events", "3/e.bin": "good"}  # fmt: skip
    paths = {}
    for name, kind in layout.items():
        path = root / "Train" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if kind == "good":
            shutil.copy(SAMPLE, path)
        elif kind == "truncated":
            path.write_bytes(SAMPLE.read_bytes()[:12])
        else:
            path.write_bytes(bytes([0, 240, 0, 0, 0]) * 2)  # two timestamp-overflow markers
        paths[name[2]] = path
    return paths


@pytest.mark.parametrize("cache", [True, False])
def test_bad_recordings_are_left_out_of_files_and_labels_and_listed(tmp_path, cache):
    paths = nmnist_folder(tmp_path)
    with pytest.warns(SkippedFilesWarning) as caught:
        data = NMNIST(tmp_path, T=2, cache=cache, cache_dir=tmp_path / "c", workers=2)
    assert data.files == [paths["a"], paths["c"], paths["e"]] and data.labels == [0, 1, 3]
    assert len(data) == 3 and [data[i][1] for i in range(3)] == [0, 1, 3]
    assert list(data.refused) == [str(paths["b"]), str(paths["d"])]
    message = str(caught[0].message)
    assert message.startswith("left out 2 of 5 recordings that cannot be used")
    assert f"\n  {paths['b']}: at byte 10: truncated record: 2 of 5 bytes" in message
    assert f"\n  {paths['d']}: at byte 10: the file ends without a single event" in message
    assert len(caught) == 1


def test_strict_raises_the_first_bad_recording(tmp_path):
    paths = nmnist_folder(tmp_path)
    for cache in (True, False):
        with pytest.raises(FormatError, match=f"^{paths['b']}: at byte 10: truncated record"):
            NMNIST(tmp_path, T=2, cache=cache, cache_dir=tmp_path / "c", workers=2, strict=True)


def test_every_recording_bad_is_a_clear_error(tmp_path):
    (tmp_path / "Test" / "7").mkdir(parents=True)
    for name in ("x.bin", "y.bin"):
        (tmp_path / "Test" / "7" / name).write_bytes(b"\x01")
    with pytest.raises(DataFolderError, match="none of the 2 recordings can be used:\n  .*x.bin"):
        NMNIST(tmp_path, train=False, cache=False, workers=1)


def refuse_most(path):
    if not Path(path).name.startswith("good"):
        raise FormatError(path, 0, "not a recording")
    return read_nmnist(SAMPLE)


def test_a_long_list_shows_ten_files_then_how_many_more(tmp_path):
    files = [tmp_path / f"bad{i:02d}.bin" for i in range(25)]
    files.insert(17, tmp_path / "good.bin")
    with pytest.warns(SkippedFilesWarning) as caught:
        data = EventRecordings(files, range(26), refuse_most, (34, 34), T=2, workers=1)
    assert data.files == [tmp_path / "good.bin"] and data.labels == [17]
    lines = str(caught[0].message).splitlines()
    assert lines[0].startswith("left out 25 of 26 recordings")
    assert lines[1:] == [
        f"  {tmp_path}/bad{i:02d}.bin: at byte 0: not a recording" for i in range(10)
    ] + ["  and 15 more"]


def test_files_and_labels_must_pair_up(tmp_path):
    with pytest.raises(ValueError, match="2 files but 1 labels"):
        EventRecordings([tmp_path / "a", tmp_path / "b"], [0], read_nmnist, (34, 34), T=2)


def aedat_with_sync_events(path: Path, n_sync: int) -> None:
    records = [(5 << 8 | 3 << 1, 10), (6 << 8 | 3 << 1 | 1, 20)] + [(0x8000, 30)] * n_sync
    path.write_bytes(HEADER + b"".join(struct.pack(">II", a, t) for a, t in records))


@pytest.mark.parametrize("cache", [True, False])
def test_special_events_are_reported_once_per_data_set(tmp_path, cache):
    (tmp_path / "ship").mkdir()
    for k in range(3):  # two for training: read in two worker processes
        aedat_with_sync_events(tmp_path / "ship" / f"cifar10_ship_{k}.aedat", n_sync=k + 2)
    kwargs = dict(T=2, split="random-9:1", cache=cache, cache_dir=tmp_path / "c", workers=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = CIFAR10DVS(tmp_path, train=True, **kwargs)
        frames, label = data[0]
    assert [w.category for w in caught] == [SkippedEventsWarning]
    expected = {str(path): int(path.stem[-1]) + 2 for path in data.files}
    assert len(expected) == 2 and caught[0].message.counts == expected
    assert str(caught[0].message).startswith(
        f"{sum(expected.values())} records that are not events were left out of 2 of 2 recordings"
    )
    assert label == 8 and frames.sum() == 2 and frames[:, 1].sum() == 1  # one ON, one OFF
    if cache:  # a cached recording is not read again, and says nothing again
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            CIFAR10DVS(tmp_path, train=True, **kwargs)

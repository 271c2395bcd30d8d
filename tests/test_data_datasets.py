"""NMNIST and CIFAR10DVS on emulated files; splits; settings; missing folders; `~` paths."""

import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from stbp.cli import main
from stbp.data import CIFAR10DVS, NMNIST, DataFolderError
from stbp.data.event_datasets import CIFAR10DVS_CLASSES, split_recordings
from stbp.data.mnist10k import load_mnist10k, split_indices

SAMPLE = Path(__file__).parent / "data" / "nmnist_03263.bin"
ONE_EVENT_AEDAT = b"#!AER-DAT2.0\r\n" + struct.pack(">II", 5 << 8 | 3 << 1, 7)


@pytest.fixture(scope="module")
def nmnist_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("nmnist")
    assert main(["emulate-nmnist", "--out", str(root), "--count", "10", "--workers", "1"]) == 0
    return root


@pytest.fixture(scope="module")
def dvs_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("dvs")
    assert main(["emulate-dvs", "--out", str(root), "--count", "20", "--workers", "2"]) == 0
    return root


def test_emulated_nmnist_layout_follows_the_mnist10k_split(nmnist_root):
    _, labels = load_mnist10k()
    train_idx, test_idx = split_indices(10_000, 8_000, seed=0)
    for folder, idx in (("Train", train_idx[:8]), ("Test", test_idx[:2])):
        files = sorted(
            p.relative_to(nmnist_root / folder) for p in (nmnist_root / folder).rglob("*.bin")
        )
        assert files == sorted(type(files[0])(str(labels[i]), f"{i:05d}.bin") for i in idx)


def test_nmnist_reads_emulated_files_through_the_cache(nmnist_root, tmp_path):
    data = NMNIST(nmnist_root, train=True, T=5, cache_dir=tmp_path / "c", workers=2)
    assert len(data) == 8 and len(list((tmp_path / "c").rglob("*.npz"))) == 8
    frames, label = data[0]
    assert frames.shape == (5, 2, 34, 34) and frames.dtype == torch.float32
    assert 0 <= label <= 9 and frames.sum() > 1000
    uncached = NMNIST(nmnist_root, train=True, T=5, cache=False)
    torch.testing.assert_close(uncached[3][0], data[3][0])
    assert len(NMNIST(nmnist_root, train=False, T=5, cache=False)) == 2


def test_nmnist_default_cache_lives_under_the_root(nmnist_root):
    NMNIST(nmnist_root, train=False, T=2, workers=1)
    assert len(list((nmnist_root / "stbp-frames").rglob("*.npz"))) == 2


def test_cifar10dvs_reads_emulated_files_end_to_end(dvs_root, tmp_path):
    train = CIFAR10DVS(dvs_root, train=True, T=4, split="random-9:1", cache_dir=tmp_path, workers=2)
    test = CIFAR10DVS(dvs_root, train=False, T=4, split="random-9:1", cache_dir=tmp_path)
    assert len(train) == len(test) == 10  # 2 files per class: at least one is for test
    frames, label = test[0]
    assert frames.shape == (4, 2, 42, 42) and label == 0 and frames.sum() > 1000


@pytest.mark.parametrize("split", ["random-9:1", "first-100-test"])
def test_cifar10dvs_splits_are_disjoint_stratified_and_cover_every_file(tmp_path, split):
    for name in CIFAR10DVS_CLASSES:
        (tmp_path / name).mkdir()
        for k in range(130):
            (tmp_path / name / f"cifar10_{name}_{k}.aedat").write_bytes(ONE_EVENT_AEDAT)
    train = CIFAR10DVS(tmp_path, train=True, T=1, split=split, cache=False, workers=1)
    test = CIFAR10DVS(tmp_path, train=False, T=1, split=split, cache=False, workers=1)
    assert not set(train.files) & set(test.files)
    assert len(set(train.files) | set(test.files)) == 1300
    per_class = np.bincount(test.labels, minlength=10)
    assert (per_class == (13 if split == "random-9:1" else 100)).all()
    if split == "first-100-test":
        names = {p.name for p in test.files if p.parent.name == "cat"}
        assert names == {f"cifar10_cat_{k}.aedat" for k in range(100)}


def test_first_100_test_refuses_classes_without_training_files(tmp_path):
    for name, n in (("airplane", 101), ("cat", 100), ("dog", 20)):
        (tmp_path / name).mkdir()
        for k in range(n):
            (tmp_path / name / f"cifar10_{name}_{k}.aedat").touch()
    for train in (True, False):
        with pytest.raises(DataFolderError) as err:
            CIFAR10DVS(tmp_path, train=train, split="first-100-test", cache=False)
        message = str(err.value)
        assert f"in {tmp_path}: automobile/ has 0, bird/ has 0, cat/ has 100" in message
        assert "dog/ has 20" in message and "airplane" not in message
        assert "needs more than 100" in message


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(frame_split="space"), "frame_split must be one of 'time', 'number', got 'space'"),
        (dict(T=0), "T (time bins) must be an integer of at least 1, got 0"),
        (dict(T=2.5), "T (time bins) must be an integer of at least 1, got 2.5"),
        (dict(size=0), "size (output frame size) must be None, an integer of at least 1"),
        (dict(size=(42, -1)), "size (output frame size) must be None"),
    ],
)
def test_bad_settings_are_one_clear_error_before_any_file_is_read(tmp_path, kwargs, words):
    for dataset in (NMNIST, CIFAR10DVS):
        with pytest.raises(ValueError) as err:
            dataset(tmp_path / "not-even-there", **kwargs)
        assert not isinstance(err.value, DataFolderError) and words in str(err.value)


def test_bad_cifar10dvs_split_names_the_choices(tmp_path):
    with pytest.raises(ValueError, match="split must be one of 'random-9:1', 'first-100-test'"):
        CIFAR10DVS(tmp_path / "not-even-there", split="half")


def test_random_split_is_seeded():
    a, b = split_recordings(1000, "random-9:1", 0), split_recordings(1000, "random-9:1", 0)
    c = split_recordings(1000, "random-9:1", 1)
    assert np.array_equal(a[1], b[1]) and not np.array_equal(a[1], c[1]) and len(a[1]) == 100
    with pytest.raises(ValueError, match="first-100-test"):
        split_recordings(10, "half", 0)


def test_missing_or_empty_folders_say_what_was_expected(tmp_path):
    with pytest.raises(DataFolderError) as err:
        NMNIST(tmp_path / "nowhere")
    assert str(err.value).startswith(
        f"data folder {tmp_path}/nowhere/Train does not exist; "
        f"expected inside {tmp_path}/nowhere: {{Train,Test}}/{{0..9}}/*.bin"
    )
    assert "Train/{Train" not in str(err.value)
    (tmp_path / "Train" / "3").mkdir(parents=True)
    (tmp_path / "Train" / "3" / "notes.txt").touch()
    with pytest.raises(DataFolderError, match="no .bin files"):
        NMNIST(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataFolderError) as err:
        CIFAR10DVS(tmp_path / "empty")
    assert str(err.value) == (
        f"data folder {tmp_path}/empty is empty; expected inside {tmp_path}/empty: "
        "{airplane,automobile,bird,cat,deer,dog,frog,horse,ship,truck}/*.aedat"
    )


def test_root_and_cache_dir_expand_the_home_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "nm" / "Test" / "4").mkdir(parents=True)
    shutil.copy(SAMPLE, tmp_path / "nm" / "Test" / "4" / "a.bin")
    data = NMNIST("~/nm", train=False, T=2, cache_dir="~/frames", workers=1)
    assert data.files == [tmp_path / "nm" / "Test" / "4" / "a.bin"] and data.labels == [4]
    assert len(list((tmp_path / "frames").rglob("*.npz"))) == 1
    assert data[0][0].sum() > 0
    NMNIST("~/nm", train=False, T=2, workers=1)  # the default cache: under the expanded root
    assert len(list((tmp_path / "nm" / "stbp-frames").rglob("*.npz"))) == 1
    with pytest.raises(DataFolderError, match=f"data folder {tmp_path}/nowhere "):
        CIFAR10DVS("~/nowhere")

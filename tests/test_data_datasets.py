"""NMNIST and CIFAR10DVS on emulated files; splits; missing folders; the emulate commands."""

import numpy as np
import pytest
import torch

from stbp.cli import main
from stbp.data import CIFAR10DVS, NMNIST, DataFolderError
from stbp.data.event_datasets import CIFAR10DVS_CLASSES, split_recordings
from stbp.data.mnist10k import load_mnist10k, split_indices


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
            (tmp_path / name / f"cifar10_{name}_{k}.aedat").touch()
    train = CIFAR10DVS(tmp_path, train=True, split=split, cache=False)
    test = CIFAR10DVS(tmp_path, train=False, split=split, cache=False)
    assert not set(train.files) & set(test.files)
    assert len(set(train.files) | set(test.files)) == 1300
    per_class = np.bincount(test.labels, minlength=10)
    assert (per_class == (13 if split == "random-9:1" else 100)).all()
    if split == "first-100-test":
        names = {p.name for p in test.files if p.parent.name == "cat"}
        assert names == {f"cifar10_cat_{k}.aedat" for k in range(100)}


def test_random_split_is_seeded():
    a, b = split_recordings(1000, "random-9:1", 0), split_recordings(1000, "random-9:1", 0)
    c = split_recordings(1000, "random-9:1", 1)
    assert np.array_equal(a[1], b[1]) and not np.array_equal(a[1], c[1]) and len(a[1]) == 100
    with pytest.raises(ValueError, match="first-100-test"):
        split_recordings(10, "half", 0)


def test_missing_or_empty_folders_say_what_was_expected(tmp_path):
    with pytest.raises(
        DataFolderError, match=r"Train does not exist.*\{Train,Test\}/\{0..9\}/\*.bin"
    ):
        NMNIST(tmp_path / "nowhere")
    (tmp_path / "Train" / "3").mkdir(parents=True)
    (tmp_path / "Train" / "3" / "notes.txt").touch()
    with pytest.raises(DataFolderError, match="no .bin files"):
        NMNIST(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataFolderError, match="is empty.*airplane,automobile"):
        CIFAR10DVS(tmp_path / "empty")

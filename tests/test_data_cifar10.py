"""CIFAR-10 python batches: restricted unpickling, bad files, the data set and augmentation."""

import os
import pickle

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stbp.data import CIFAR10, DataFolderError, FormatError, read_cifar10_batch
from stbp.data.cifar10 import MEAN, STD, random_crop_flip

FUZZ = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def batch_bytes(n=4, seed=0):
    rng = np.random.default_rng(seed)
    batch = {
        b"batch_label": b"testing batch",
        b"labels": [int(v) for v in rng.integers(0, 10, n)],
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [b"img_%d.png" % i for i in range(n)],
    }
    return pickle.dumps(batch, protocol=2), batch


def test_reads_a_batch_as_written(tmp_path):
    data, batch = batch_bytes()
    (tmp_path / "data_batch_1").write_bytes(data)
    images, labels = read_cifar10_batch(tmp_path / "data_batch_1")
    assert images.shape == (4, 3, 32, 32) and images.dtype == np.uint8
    np.testing.assert_array_equal(images.reshape(4, -1), batch[b"data"])
    assert labels.tolist() == batch[b"labels"]


def test_reads_a_python2_style_pickle(tmp_path):
    # The official files were written by Python 2 with numpy 1: `numpy.core.multiarray`.
    data = batch_bytes()[0].replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"cnumpy.core.multiarray\n_reconstruct" in data
    (tmp_path / "b").write_bytes(data)
    assert read_cifar10_batch(tmp_path / "b")[0].shape == (4, 3, 32, 32)


class Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_crafted_pickle_does_not_run_code(tmp_path, protocol):
    marker = tmp_path / "pwned"
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({"data": Exploit(marker)}, protocol=protocol))
    with pytest.raises(FormatError, match="not allowed") as err:
        read_cifar10_batch(path)
    assert str(path) in str(err.value) and err.value.offset > 0
    assert not marker.exists()


@pytest.mark.parametrize(
    "content, words",
    [
        (b"", "empty file"),
        (b"\x80\x02}q\x00(X\x04\x00", "not a valid pickle"),
        (pickle.dumps([1, 2], protocol=2), "expected a dict"),
        (pickle.dumps({"data": np.zeros((2, 10), np.uint8), "labels": [0, 1]}, 2), "rows have 10"),
        (pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 11]}, 2), "in 0..9"),
        (pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [0]}, 2), "2 integers"),
    ],
)
def test_bad_batches_name_file_and_problem(tmp_path, content, words):
    path = tmp_path / "test_batch"
    path.write_bytes(content)
    with pytest.raises(FormatError, match=words) as err:
        read_cifar10_batch(path)
    assert str(path) in str(err.value) and "at byte" in str(err.value)


@FUZZ
@given(
    st.integers(0, 20_000),
    st.lists(st.tuples(st.integers(0, 20_000), st.integers(0, 7)), max_size=3),
)
def test_fuzz_truncated_and_bit_flipped_batch(tmp_path, cut, flips):
    data = bytearray(batch_bytes(n=6)[0][:cut])
    for pos, bit in flips:
        if pos < len(data):
            data[pos] ^= 1 << bit
    path = tmp_path / "fuzzed"
    path.write_bytes(bytes(data))
    try:
        images, labels = read_cifar10_batch(path)
    except FormatError as err:
        assert str(path) in str(err)
    else:
        assert images.shape[1:] == (3, 32, 32) and ((labels >= 0) & (labels <= 9)).all()


def write_folder(root, n=4):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        (folder / name).write_bytes(batch_bytes(n, seed=i)[0])


def test_dataset_normalises_test_images_without_augmentation(tmp_path):
    write_folder(tmp_path)
    train, test = CIFAR10(tmp_path, train=True), CIFAR10(tmp_path, train=False)
    assert len(train) == 20 and len(test) == 4
    image, label = test[0]
    raw = torch.from_numpy(batch_bytes(4, seed=5)[1][b"data"][0].reshape(3, 32, 32)).float() / 255
    expected = (raw - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
    torch.testing.assert_close(image, expected)
    assert label == batch_bytes(4, seed=5)[1][b"labels"][0]
    assert train.augment and not test.augment


def test_random_crop_flip_is_a_padded_window_maybe_flipped():
    torch.manual_seed(0)
    image = torch.arange(3 * 8 * 8, dtype=torch.float32).view(3, 8, 8) + 1
    padded = torch.nn.functional.pad(image, (4,) * 4)
    for _ in range(20):
        out = random_crop_flip(image, padding=4)
        windows = [padded[:, r : r + 8, c : c + 8] for r in range(9) for c in range(9)]
        assert any(torch.equal(out, w) or torch.equal(out, w.flip(-1)) for w in windows)


def test_missing_folder_says_what_was_expected(tmp_path):
    with pytest.raises(DataFolderError, match="cifar-10-batches-py.*data_batch_1"):
        CIFAR10(tmp_path)

"""CIFAR-10 python batches: restricted unpickling, bad files, the data set and augmentation."""

import io
import os
import pickle
import pickletools
import struct
import types

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stbp.data import CIFAR10, DataFolderError, FormatError, read_cifar10_batch
from stbp.data.cifar10 import (
    AUTHORS_STD,
    DATASET_STD,
    MEAN,
    STD,
    _check_opcodes,
    random_crop_flip,
)

_core = getattr(np, "_core", None) or np.core

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


def official_batch(n=4, seed=0, numpy_labels=False):
    """A batch holding what the official files hold: data uint8 [N, 3072], labels, names."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    return {
        b"batch_label": b"training batch 1 of 5",
        b"labels": list(labels) if numpy_labels else [int(v) for v in labels],
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [b"img_%d.png" % i for i in range(n)],
    }


def assert_reads_back(path, batch):
    images, labels = read_cifar10_batch(path)
    np.testing.assert_array_equal(images.reshape(len(images), -1), batch[b"data"])
    assert labels.tolist() == [int(v) for v in batch[b"labels"]] and labels.dtype == np.int64


@pytest.mark.parametrize("numpy_labels", [False, True])
@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_reads_batches_pickled_by_this_numpy(tmp_path, protocol, numpy_labels):
    batch = official_batch(numpy_labels=numpy_labels)
    path = tmp_path / "data_batch_1"
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=protocol)
    assert_reads_back(path, batch)


NUMPY1_MODULES = {
    _core.multiarray._reconstruct: "numpy.core.multiarray",
    _core.numeric._frombuffer: "numpy.core.numeric",
    _core.multiarray.scalar: "numpy.core.multiarray",
}


class Numpy1Pickler(pickle._Pickler):
    """Python's own pickler, naming numpy's reconstructors as numpy 1.x does (numpy.core.*)."""

    def save_global(self, obj, name=None):
        module = NUMPY1_MODULES.get(obj)
        if module is None:
            return super().save_global(obj, name)
        if self.proto >= 4:  # the strings are memoised, so a later global may BINGET them
            self.save(module)
            self.save(obj.__name__)
            self.write(pickle.STACK_GLOBAL)
        else:
            self.write(pickle.GLOBAL + f"{module}\n{obj.__name__}\n".encode())
        self.memoize(obj)

    dispatch = dict(pickle._Pickler.dispatch)
    dispatch[types.FunctionType] = save_global  # _frombuffer is a Python function


class Python2Pickler(Numpy1Pickler):
    """Also writes str and bytes as Python 2 str (BINSTRING), as the official files hold them."""

    dispatch = dict(Numpy1Pickler.dispatch)

    def save_python2_str(self, obj):
        data = obj if isinstance(obj, bytes) else obj.encode("latin1")
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[bytes] = save_python2_str
    dispatch[str] = save_python2_str


def pickled_with(pickler, obj, protocol):
    buffer = io.BytesIO()
    pickler(buffer, protocol=protocol).dump(obj)
    return buffer.getvalue()


@pytest.mark.parametrize("numpy_labels", [False, True])
@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_reads_batches_pickled_by_numpy_1(tmp_path, protocol, numpy_labels):
    batch = official_batch(numpy_labels=numpy_labels)
    data = pickled_with(Numpy1Pickler, batch, protocol)
    assert b"numpy.core." in data and b"numpy._core" not in data
    (tmp_path / "b").write_bytes(data)
    assert_reads_back(tmp_path / "b", batch)


def test_reads_a_python2_numpy1_batch_like_the_official_files(tmp_path):
    batch = official_batch(n=5)
    data = pickled_with(Python2Pickler, batch, 2)
    assert b"cnumpy.core.multiarray\n_reconstruct" in data and b"U\x04data" in data
    (tmp_path / "b").write_bytes(data)
    assert_reads_back(tmp_path / "b", batch)


def test_memoised_strings_name_the_global_a_stack_global_imports(tmp_path):
    # numpy 2, protocol 4 pickles 'numpy' once, memoises it and fetches it back for dtype
    data = pickle.dumps(official_batch(), protocol=4)
    ops = [op.name for op, _, _ in pickletools.genops(data)]
    assert "BINGET" in ops and ops.count("STACK_GLOBAL") == 3
    _check_opcodes(tmp_path / "b", data)  # no error


def memoised_os_system(command: str) -> tuple[bytes, int]:
    """A protocol-4 pickle calling os.system, whose names come from the memo; the last two
    strings it pushes are 'numpy' and 'dtype'. Returns the bytes and STACK_GLOBAL's offset."""

    def text(s):
        return b"\x8c" + bytes([len(s)]) + s.encode()

    head = b"\x80\x04" + text("os") + b"\x94" + text("system") + b"\x94" + b"00"
    head += text("numpy") + text("dtype") + b"00"  # pushed and popped again
    head += b"h\x00h\x01"  # BINGET 0, BINGET 1
    return head + b"\x93" + text(command) + b"\x85R.", len(head)


def test_memoised_malicious_global_is_refused_at_its_byte(tmp_path):
    marker = tmp_path / "pwned"
    data, offset = memoised_os_system(f"touch {marker}")
    path = tmp_path / "data_batch_1"
    path.write_bytes(data)
    with pytest.raises(FormatError, match="references os.system, which is not allowed") as err:
        read_cifar10_batch(path)
    assert err.value.offset == offset and str(path) in str(err.value)
    assert not marker.exists()


def test_stack_global_on_names_that_are_not_strings_is_refused(tmp_path):
    data = b"\x80\x04K\x01K\x02\x93."  # BININT1 1, BININT1 2, STACK_GLOBAL
    (tmp_path / "b").write_bytes(data)
    with pytest.raises(FormatError, match="name is not a string") as err:
        read_cifar10_batch(tmp_path / "b")
    assert err.value.offset == 6


class Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
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


def test_missing_folder_shows_the_layout_under_the_root_given(tmp_path):
    with pytest.raises(DataFolderError) as err:
        CIFAR10(tmp_path)
    message = str(err.value)
    assert f"{tmp_path}/cifar-10-batches-py does not exist" in message
    assert f"expected inside {tmp_path}: cifar-10-batches-py/{{data_batch_1 " in message
    assert "cifar-10-batches-py/cifar-10-batches-py" not in message


def test_missing_batch_file_is_named(tmp_path):
    write_folder(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataFolderError, match="has no data_batch_3; expected inside"):
        CIFAR10(tmp_path, train=True)
    assert len(CIFAR10(tmp_path, train=False)) == 4


def test_std_choice_normalises_with_the_dataset_or_the_authors_std(tmp_path):
    write_folder(tmp_path)
    raw = torch.from_numpy(batch_bytes(4, seed=5)[1][b"data"][1].reshape(3, 32, 32)).float() / 255
    mean = torch.tensor(MEAN).view(3, 1, 1)
    for choice, std in (("dataset", DATASET_STD), ("authors", AUTHORS_STD)):
        ds = CIFAR10(tmp_path, train=False, std=choice)
        torch.testing.assert_close(ds[1][0], (raw - mean) / torch.tensor(std).view(3, 1, 1))
        torch.testing.assert_close(ds.std, torch.tensor(std).view(3, 1, 1))
    assert AUTHORS_STD == (0.2023, 0.1994, 0.2010) and DATASET_STD == STD


def test_unknown_std_choice_names_the_allowed_values(tmp_path):
    write_folder(tmp_path)
    with pytest.raises(ValueError, match="std must be one of dataset, authors, got 'imagenet'"):
        CIFAR10(tmp_path, std="imagenet")


def test_labels_are_one_int_per_sample_and_home_is_expanded(tmp_path, monkeypatch):
    write_folder(tmp_path / "data")
    monkeypatch.setenv("HOME", str(tmp_path))
    train = CIFAR10("~/data", train=True)
    expected = [v for i in range(5) for v in batch_bytes(4, seed=i)[1][b"labels"]]
    assert train.labels.tolist() == expected and train.labels.dtype == torch.int64
    assert read_cifar10_batch("~/data/cifar-10-batches-py/test_batch")[0].shape[0] == 4

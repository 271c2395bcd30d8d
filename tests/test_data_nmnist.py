"""N-MNIST reader: the real sample, files written here, bad files and fuzzing."""

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stbp.data import FormatError, make_events, read_nmnist, write_nmnist

SAMPLE = Path(__file__).parent / "data" / "nmnist_03263.bin"
FUZZ = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def record(x, y, p, t):
    return bytes([x, y, (p << 7) | (t >> 16), (t >> 8) & 0xFF, t & 0xFF])


def test_real_sample_matches_its_published_figures():
    events = read_nmnist(SAMPLE)
    assert len(events) == 5999
    assert (events["p"] == 1).sum() == 2948 and (events["p"] == 0).sum() == 3051
    assert events["t"].min() == 520 and events["t"].max() == 303_458
    assert events["x"].min() >= 0 and events["x"].max() == 33 and events["y"].max() == 33
    assert events["t"].dtype == np.int64


def test_hand_written_records_decode_exactly(tmp_path):
    path = tmp_path / "a.bin"
    path.write_bytes(record(3, 4, 1, 0x7ABCDE) + record(33, 0, 0, 0x7ABCDF))
    events = read_nmnist(path)
    assert events.tolist() == [(3, 4, 1, 0x7ABCDE), (33, 0, 0, 0x7ABCDF)]


def test_overflow_marker_is_dropped_and_shifts_later_timestamps(tmp_path):
    path = tmp_path / "overflow.bin"
    path.write_bytes(record(1, 1, 1, 100) + record(0, 240, 0, 0) + record(2, 2, 0, 50))
    events = read_nmnist(path)
    assert events["t"].tolist() == [100, 50 + 2**13]
    assert events["x"].tolist() == [1, 2]


def test_overflow_rule_is_credited_to_the_python_readers_not_the_matlab_one():
    from stbp.data import nmnist

    doc = nmnist.__doc__
    assert "as the data set's MATLAB reader does" not in doc
    assert "eventvision.py" in doc and "read_mnist_file" in doc
    assert "Read_Ndataset.m" in doc and "no overflow rule" in doc


def test_recording_of_overflow_records_only_names_the_file(tmp_path):
    path = tmp_path / "no_events.bin"
    path.write_bytes(record(0, 240, 0, 0) * 3)
    with pytest.raises(FormatError, match="without a single event") as err:
        read_nmnist(path)
    assert str(path) in str(err.value) and err.value.offset == 15


def test_home_is_expanded_when_reading_and_writing(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    events = make_events([1, 2], [3, 4], [1, 0], [10, 20])
    write_nmnist("~/r.bin", events)
    assert (tmp_path / "r.bin").exists()
    np.testing.assert_array_equal(read_nmnist("~/r.bin"), events)


def test_write_then_read_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    t = np.sort(rng.integers(0, 2**23, 500))
    events = make_events(
        rng.integers(0, 34, 500), rng.integers(0, 34, 500), rng.integers(0, 2, 500), t
    )
    write_nmnist(tmp_path / "r.bin", events)
    np.testing.assert_array_equal(read_nmnist(tmp_path / "r.bin"), events)


@pytest.mark.parametrize(
    "content, offset, words",
    [
        (b"", 0, "empty file"),
        (record(1, 1, 1, 5) + b"\x01\x02", 5, "truncated record: 2 of 5"),
        (record(1, 1, 1, 5) + record(34, 1, 1, 6), 5, "outside the 34x34 sensor"),
        (record(1, 1, 1, 5) + record(1, 35, 1, 6), 5, "outside the 34x34 sensor"),
        (record(1, 1, 1, 9) + record(1, 1, 1, 5) + record(1, 1, 0, 3), 5, "goes backwards"),
    ],
)
def test_bad_files_name_file_offset_and_problem(tmp_path, content, offset, words):
    path = tmp_path / "bad.bin"
    path.write_bytes(content)
    with pytest.raises(FormatError) as err:
        read_nmnist(path)
    assert str(path) in str(err.value) and f"at byte {offset}:" in str(err.value)
    assert words in str(err.value) and err.value.offset == offset
    assert isinstance(err.value, ValueError)


def assert_valid_or_format_error(path):
    try:
        events = read_nmnist(path)
    except FormatError as err:
        assert str(path) in str(err)
        return
    assert (events["x"] < 34).all() and (events["y"] < 34).all()
    assert set(np.unique(events["p"])) <= {0, 1}
    assert (np.diff(events["t"]) >= 0).all()


@FUZZ
@given(st.binary(max_size=200))
def test_fuzz_random_bytes(tmp_path, data):
    path = tmp_path / "fuzz.bin"
    path.write_bytes(data)
    assert_valid_or_format_error(path)


@FUZZ
@given(
    st.integers(0, 29_995),
    st.lists(st.tuples(st.integers(0, 29_994), st.integers(0, 7)), max_size=4),
)
def test_fuzz_truncated_and_bit_flipped_real_sample(tmp_path, cut, flips):
    data = bytearray(SAMPLE.read_bytes()[:cut])
    for pos, bit in flips:
        if pos < len(data):
            data[pos] ^= 1 << bit
    path = tmp_path / "flipped.bin"
    path.write_bytes(bytes(data))
    assert_valid_or_format_error(path)

"""AEDAT 2.0 (DVS128) reader: written files, the address layout, bad files and fuzzing."""

import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stbp.data import FormatError, make_events, read_aedat, write_aedat

HEADER = b"#!AER-DAT2.0\r\n# This is a raw AE data file\r\n"
FUZZ = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def body(*pairs):
    return b"".join(struct.pack(">II", a, t) for a, t in pairs)


def test_dvs128_address_layout_and_orientation(tmp_path):
    # address = y << 8 | column << 1 | p; x = 127 - column (jAER's DVS128 convention)
    path = tmp_path / "a.aedat"
    path.write_bytes(HEADER + body((5 << 8 | 0 << 1 | 1, 10), (127 << 8 | 127 << 1 | 0, 12)))
    assert read_aedat(path).tolist() == [(127, 5, 1, 10), (0, 127, 0, 12)]


def test_write_then_read_round_trips(tmp_path):
    rng = np.random.default_rng(1)
    n = 400
    events = make_events(
        rng.integers(0, 128, n), rng.integers(0, 128, n), rng.integers(0, 2, n),
        np.sort(rng.integers(0, 2**32, n)),
    )  # fmt: skip
    write_aedat(tmp_path / "r.aedat", events)
    np.testing.assert_array_equal(read_aedat(tmp_path / "r.aedat"), events)


def test_header_only_file_has_no_events(tmp_path):
    (tmp_path / "h.aedat").write_bytes(HEADER)
    assert len(read_aedat(tmp_path / "h.aedat")) == 0


@pytest.mark.parametrize(
    "content, offset, words",
    [
        (b"", 0, "empty file"),
        (body((2, 1)), 0, "supported AEDAT versions: 2.0"),  # headerless = AEDAT 1.0
        (b"#!AER-DAT3.1\r\n#!END-HEADER\r\n", 9, "version '3.1' is not supported"),
        (b"#!AER-DAT4.0\r\n", 9, "version '4.0' is not supported"),
        (b"#!AER-DAT1.0\r\n", 9, "supported versions: 2.0"),
        (b"#!AER-DAT2.0\r\n# unterminated", 14, "does not end with a newline"),
        (HEADER + body((2, 1)) + b"\x00\x00\x00", len(HEADER) + 8, "truncated record: 3 of 8"),
        (HEADER + body((2, 1), (0x8000, 2)), len(HEADER) + 8, "not a DVS128 polarity event"),
        (HEADER + body((2, 5), (4, 7), (6, 6)), len(HEADER) + 16, "goes backwards"),
    ],
)
def test_bad_files_name_file_offset_and_problem(tmp_path, content, offset, words):
    path = tmp_path / "bad.aedat"
    path.write_bytes(content)
    with pytest.raises(FormatError) as err:
        read_aedat(path)
    message = str(err.value)
    assert str(path) in message and f"at byte {offset}:" in message and words in message


def assert_valid_or_format_error(path):
    try:
        events = read_aedat(path)
    except FormatError as err:
        assert str(path) in str(err)
        return
    assert ((events["x"] >= 0) & (events["x"] < 128) & (events["y"] < 128)).all()
    assert (np.diff(events["t"]) >= 0).all()


@FUZZ
@given(st.binary(max_size=120))
def test_fuzz_random_bytes_after_a_valid_header(tmp_path, data):
    path = tmp_path / "fuzz.aedat"
    path.write_bytes(HEADER + data)
    assert_valid_or_format_error(path)


@FUZZ
@given(st.binary(max_size=60))
def test_fuzz_random_bytes(tmp_path, data):
    path = tmp_path / "fuzz.aedat"
    path.write_bytes(data)
    assert_valid_or_format_error(path)


@FUZZ
@given(st.integers(0, 200), st.lists(st.tuples(st.integers(0, 199), st.integers(0, 7)), max_size=4))
def test_fuzz_truncated_and_bit_flipped_file(tmp_path, cut, flips):
    events = make_events(np.arange(20) % 128, np.arange(20), np.arange(20) % 2, np.arange(20) * 10)
    write_aedat(tmp_path / "ok.aedat", events)
    data = bytearray((tmp_path / "ok.aedat").read_bytes()[:cut])
    for pos, bit in flips:
        if pos < len(data):
            data[pos] ^= 1 << bit
    path = tmp_path / "flipped.aedat"
    path.write_bytes(bytes(data))
    assert_valid_or_format_error(path)

"""AEDAT 2.0 (DVS128) reader: written files, the address layout, bad files and fuzzing."""

import struct
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stbp.data import FormatError, make_events, read_aedat, write_aedat
from stbp.data.errors import SkippedEventsWarning

HEADER = b"#!AER-DAT2.0\r\n# This is a raw AE data file\r\n"
FUZZ = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def body(*pairs):
    return b"".join(struct.pack(">II", a, t) for a, t in pairs)


def test_dvs128_address_layout_and_orientation(tmp_path):
    # address = y << 8 | column << 1 | bit0; x = 127 - column, ON = bit0 clear (jAER's DVS128)
    path = tmp_path / "a.aedat"
    path.write_bytes(HEADER + body((5 << 8 | 0 << 1 | 1, 10), (127 << 8 | 127 << 1 | 0, 12)))
    assert read_aedat(path).tolist() == [(127, 5, 0, 10), (0, 127, 1, 12)]


def jaer_dvs128(address):
    """jAER's DVS128 Extractor (DVS128.java): x, y and type (1 = ON) of a raw address."""
    return 127 - ((address & 0xFE) >> 1), (address & 0x7F00) >> 8, (1 - address) & 1


def test_polarity_and_pixel_match_jaers_dvs128_extractor(tmp_path):
    addresses = np.random.default_rng(0).integers(0, 0x8000, 300)
    path = tmp_path / "j.aedat"
    path.write_bytes(HEADER + body(*((int(a), i) for i, a in enumerate(addresses))))
    events = read_aedat(path)
    expected = [(*jaer_dvs128(int(a)), i) for i, a in enumerate(addresses)]
    assert events.tolist() == expected
    assert (events["p"] == 1 - (addresses & 1)).all()  # SpikingJelly: p = 1 - (a & 1)


def test_written_on_events_clear_address_bit_0(tmp_path):
    write_aedat(tmp_path / "w.aedat", make_events([3, 4], [7, 8], [1, 0], [0, 5]))
    data = (tmp_path / "w.aedat").read_bytes()
    words = np.frombuffer(data[data.rindex(b"\n") + 1 :], ">u4").reshape(-1, 2)
    assert [jaer_dvs128(int(a)) for a in words[:, 0]] == [(3, 7, 1), (4, 8, 0)]
    assert words[0, 0] & 1 == 0 and words[1, 0] & 1 == 1


def test_special_events_are_skipped_counted_and_named(tmp_path):
    path = tmp_path / "sync.aedat"
    path.write_bytes(HEADER + body((2 << 8, 1), (0x8000, 2), (3 << 8 | 1, 3), (0x80000004, 4)))
    with pytest.warns(SkippedEventsWarning, match=f"{path}: skipped 2 special events") as caught:
        events = read_aedat(path)
    assert events.tolist() == [(127, 2, 1, 1), (127, 3, 0, 3)]
    assert caught[0].message.counts == {str(path): 2}


def test_a_file_without_special_events_gives_no_warning(tmp_path):
    path = tmp_path / "plain.aedat"
    path.write_bytes(HEADER + body((2 << 8, 1)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(read_aedat(path)) == 1


def test_write_then_read_round_trips(tmp_path):
    rng = np.random.default_rng(1)
    n = 400
    events = make_events(
        rng.integers(0, 128, n), rng.integers(0, 128, n), rng.integers(0, 2, n),
        np.sort(rng.integers(0, 2**32, n)),
    )  # fmt: skip
    write_aedat(tmp_path / "r.aedat", events)
    np.testing.assert_array_equal(read_aedat(tmp_path / "r.aedat"), events)


def test_header_only_or_only_special_events_is_refused(tmp_path):
    path = tmp_path / "h.aedat"
    path.write_bytes(HEADER)
    with pytest.raises(FormatError, match=f"{path}: at byte {len(HEADER)}: no polarity events"):
        read_aedat(path)
    path.write_bytes(HEADER + body((0x8000, 1)))
    with pytest.raises(FormatError, match=r"no polarity events after the header \(only 1 special"):
        read_aedat(path)


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
        (HEADER + body((2, 1), (0x10002, 2)), len(HEADER) + 8, "0x00010002 is not a DVS128 addr"),
        (HEADER + body((0x7FFF0000, 1)), len(HEADER), "bits 16-30 are set"),
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

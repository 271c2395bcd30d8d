"""events_to_frames: exact counts on hand-made events."""

import numpy as np
import pytest

from stbp.data import events_to_frames, make_events


def events(rows):
    x, y, p, t = np.array(rows).T
    return make_events(x, y, p, t)


EVENTS = events([(0, 0, 1, 0), (1, 0, 0, 10), (1, 0, 0, 20), (3, 2, 1, 95), (3, 2, 1, 99)])


def test_time_split_counts_each_event_in_its_bin():
    frames = events_to_frames(EVENTS, T=2, sensor_size=(3, 4), split="time")
    assert frames.shape == (2, 2, 3, 4) and frames.sum() == 5
    # span 0..99 -> bins [0, 50) and [50, 100)
    assert frames[0, 1, 0, 0] == 1 and frames[0, 0, 0, 1] == 2
    assert frames[1, 1, 2, 3] == 2 and frames[1].sum() == 2


def test_number_split_gives_equal_event_counts():
    frames = events_to_frames(EVENTS, T=5, sensor_size=(3, 4), split="number")
    assert frames.reshape(5, -1).sum(1).tolist() == [1, 1, 1, 1, 1]
    assert frames[4, 1, 2, 3] == 1 and frames[2, 0, 0, 1] == 1


def test_binary_clips_counts():
    frames = events_to_frames(EVENTS, T=1, sensor_size=(3, 4), binary=True)
    assert frames.max() == 1 and frames.sum() == 3


def test_downsampling_sums_the_pixels_of_each_output_pixel():
    ev = events([(0, 0, 1, 0), (127, 127, 0, 1), (3, 0, 1, 2), (2, 0, 1, 3), (127, 0, 1, 4)])
    frames = events_to_frames(ev, T=1, sensor_size=(128, 128), size=42)
    assert frames.shape == (1, 2, 42, 42)
    # output column = x * 42 // 128: x = 0, 2 -> 0, x = 3 -> 0, x = 127 -> 41
    assert frames[0, 1, 0, 0] == 3 and frames[0, 1, 0, 41] == 1 and frames[0, 0, 41, 41] == 1


def test_no_events_gives_empty_frames_and_bad_arguments_raise():
    assert not events_to_frames(EVENTS[:0], T=3, sensor_size=(3, 4)).any()
    with pytest.raises(ValueError, match="split must be one of 'time', 'number', got 'space'"):
        events_to_frames(EVENTS, T=2, sensor_size=(3, 4), split="space")
    with pytest.raises(ValueError, match="size .* at least 1"):
        events_to_frames(EVENTS, T=2, sensor_size=(3, 4), size=0)
    with pytest.raises(ValueError, match="outside"):
        events_to_frames(EVENTS, T=2, sensor_size=(2, 2))


def test_numpy_integer_settings_are_accepted():
    frames = events_to_frames(EVENTS, T=np.int64(2), sensor_size=(3, 4), size=np.int64(2))
    assert frames.shape == (2, 2, 2, 2) and frames.sum() == 5

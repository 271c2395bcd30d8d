"""EventFrames on a Tonic-shaped data set: frames equal `events_to_frames`, bad samples left
out and listed, a cache that a second construction reads, Tonic's polarity and sensor
conventions; and `[data] factory`: its call convention, its errors, a short training run."""

import sys
import warnings

import numpy as np
import pytest
import torch

from stbp.cli import main
from stbp.config import DEFAULTS, ConfigError, DataSettings, merge, to_toml
from stbp.data import (
    DataFolderError,
    EventFrames,
    SampleError,
    SkippedFilesWarning,
    events_to_frames,
    make_events,
)
from stbp.datasets import make_splits, stored_test_set

WIDTH, HEIGHT = 20, 12  # not square: Tonic's (width, height) order must not be swapped
TONIC_DTYPE = np.dtype([("x", np.int16), ("y", np.int16), ("t", np.int64), ("p", bool)])


def random_events(seed: int, n: int = 60, width: int = WIDTH, height: int = HEIGHT):
    rng = np.random.default_rng(seed)
    t = np.sort(rng.integers(0, 5000, n))
    return make_events(rng.integers(0, width, n), rng.integers(0, height, n),
                       rng.integers(0, 2, n), t)  # fmt: skip


class ToyEvents:
    """A Tonic-shaped data set: `(events, label)` items and a `sensor_size` of (W, H, P);
    counts how often each sample is read."""

    sensor_size = (WIDTH, HEIGHT, 2)

    def __init__(self, items):
        self.items = list(items)
        self.reads = [0] * len(self.items)

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        self.reads[index] += 1
        return self.items[index]


def toy(n: int = 6, broken: int | None = 3) -> ToyEvents:
    items = [(random_events(i), i % 3) for i in range(n)]
    if broken is not None:
        items[broken] = (random_events(broken)[["x", "y", "t"]], 0)  # no polarity field
    return ToyEvents(items)


def frames_of(data: EventFrames) -> list[np.ndarray]:
    return [data[i][0].numpy() for i in range(len(data))]


@pytest.mark.parametrize("cache", [False, True])
@pytest.mark.parametrize(
    "options",
    [dict(), dict(split="number", size=(6, 10), binary=True)],
    ids=["plain", "number-resized-binary"],
)
def test_frames_equal_events_to_frames(tmp_path, cache, options):
    dataset = toy(broken=None)
    data = EventFrames(dataset, T=4, cache_dir=tmp_path if cache else None, workers=1,
                       **options)  # fmt: skip
    assert data.labels == [0, 1, 2, 0, 1, 2] and data.sensor_size == (WIDTH, HEIGHT, 2)
    for i, (frames, label) in enumerate(data):
        events = dataset.items[i][0]
        expected = events_to_frames(events, 4, (HEIGHT, WIDTH), **options)
        assert frames.dtype == torch.float32 and label == i % 3
        np.testing.assert_array_equal(frames.numpy(), expected)


def test_a_broken_sample_is_left_out_and_listed(tmp_path):
    with pytest.warns(SkippedFilesWarning) as caught:
        data = EventFrames(toy(), T=4, cache_dir=tmp_path, workers=2)
    assert data.indices == [0, 1, 2, 4, 5] and data.labels == [0, 1, 2, 1, 2]
    assert list(data.refused) == [3] and isinstance(data.refused[3], SampleError)
    message = str(caught[0].message)
    assert message.startswith("left out 1 of 6 samples of ToyEvents that cannot be used")
    assert "\n  sample 3: the events have no field p (they have x, y, t)" in message
    assert len(caught) == 1


def test_strict_raises_the_broken_sample(tmp_path):
    for cache_dir in (None, tmp_path):
        with pytest.raises(SampleError, match="^sample 3: the events have no field p"):
            EventFrames(toy(), T=4, cache_dir=cache_dir, workers=1, strict=True)


def test_no_usable_sample_is_a_clear_error():
    dataset = ToyEvents([(np.zeros(3), 0), (make_events([], [], [], []), 1)])
    with pytest.raises(DataFolderError, match="none of the 2 samples can be used:\n  sample 0: "
                       "events must be a numpy structured array .* got ndarray\n  sample 1: "
                       "no events"):  # fmt: skip
        EventFrames(dataset, T=2, workers=1)


def test_a_second_construction_reads_the_cache(tmp_path):
    first = toy()
    with pytest.warns(SkippedFilesWarning):
        built = EventFrames(first, T=4, cache_dir=tmp_path, workers=1)
    assert first.reads == [3, 1, 1, 1, 1, 2]  # fingerprint: sample 0 twice and the last
    again = toy()  # the same data, a new object: only the key's samples are read again
    with pytest.warns(SkippedFilesWarning, match="sample 3"):  # no entry: tried again
        cached = EventFrames(again, T=4, cache_dir=tmp_path, workers=1)
    assert again.reads == [2, 0, 0, 1, 0, 1]
    assert cached.labels == built.labels and cached.indices == built.indices
    loaded = frames_of(cached)
    assert again.reads == [2, 0, 0, 1, 0, 1]  # the frames come from the cache
    for a, b in zip(loaded, frames_of(built), strict=True):
        np.testing.assert_array_equal(a, b)
    other = EventFrames(toy(n=5, broken=None), T=4, cache_dir=tmp_path, workers=1)
    assert len(list(tmp_path.iterdir())) == 2 and len(other) == 5  # another key, its own folder


def test_a_stale_or_corrupt_entry_is_framed_again(tmp_path):
    dataset = toy(broken=None)
    data = EventFrames(dataset, T=4, cache_dir=tmp_path, workers=1)
    expected = frames_of(data)
    entry = data.folder / "2.npz"
    entry.write_bytes(b"PK not an entry")
    np.testing.assert_array_equal(data[2][0].numpy(), expected[2])
    assert dataset.reads[2] == 2  # read again and rewritten
    np.testing.assert_array_equal(data[2][0].numpy(), expected[2])
    assert dataset.reads[2] == 2


def test_a_random_transform_cannot_be_cached(tmp_path):
    class Jittered(ToyEvents):
        def __getitem__(self, index):
            events, label = super().__getitem__(index)
            events = events.copy()
            events["t"] += np.random.randint(0, 1000)
            return events, label

    dataset = Jittered(toy(broken=None).items)
    with pytest.raises(ValueError, match="different sample 0 each time .* cache_dir=None"):
        EventFrames(dataset, T=4, cache_dir=tmp_path)
    assert len(EventFrames(dataset, T=4, workers=1)) == 6  # framed on the fly: allowed


@pytest.mark.parametrize("kind", ["bool", "minus-one"])
def test_tonic_polarities_read_as_off_on(kind):
    ours = toy(broken=None)
    tonic_items = []
    for events, label in ours.items:
        converted = np.empty(len(events), dtype=TONIC_DTYPE)  # Tonic's field order: x, y, t, p
        for name in ("x", "y", "t"):
            converted[name] = events[name]
        converted["p"] = events["p"] == 1
        if kind == "minus-one":
            converted = converted.astype([("x", int), ("y", int), ("t", int), ("p", int)])
            converted["p"] = np.where(events["p"] == 1, 1, -1)
        tonic_items.append((converted, np.int64(label)))
    expected = frames_of(EventFrames(ours, T=3, workers=1))
    for a, b in zip(frames_of(EventFrames(ToyEvents(tonic_items), T=3, workers=1)), expected,
                    strict=True):  # fmt: skip
        np.testing.assert_array_equal(a, b)


def test_other_polarities_are_refused():
    events = random_events(0).astype([("x", int), ("y", int), ("p", int), ("t", int)])
    events["p"][:3] = [-1, 0, 1]
    with pytest.warns(SkippedFilesWarning, match=r"sample 1: polarities \{-1, 0, 1\}: expected"):
        data = EventFrames(ToyEvents([(random_events(1), 0), (events, 1)]), T=2, workers=1)
    assert data.indices == [0]


def test_unsorted_and_fractional_timestamps():
    events = random_events(5)
    shuffled = events[np.random.default_rng(0).permutation(len(events))]
    split = dict(T=4, split="number", workers=1)
    np.testing.assert_array_equal(
        EventFrames(ToyEvents([(shuffled, 0)]), **split)[0][0].numpy(),
        EventFrames(ToyEvents([(events, 0)]), **split)[0][0].numpy(),
    )
    seconds = np.zeros(4, dtype=[("x", int), ("y", int), ("p", int), ("t", float)])
    seconds["t"] = [0.1, 0.35, 0.6, 0.85]  # equal steps: one event per bin
    frames = EventFrames(ToyEvents([(seconds, 0)]), T=4, workers=1)[0][0]
    assert frames.sum(dim=(1, 2, 3)).tolist() == [1, 1, 1, 1]


def test_sensor_size_in_tonic_order_given_or_found(tmp_path):
    events = random_events(0, width=7, height=5)
    no_size = [(events, 0), (random_events(1, width=6, height=9), 1)]
    data = EventFrames(ToyEvents([(events, 0)]), T=2, sensor_size=(30, 10), workers=1)
    assert data[0][0].shape == (2, 2, 10, 30) and data.sensor_size == (30, 10, 2)

    class NoSize(ToyEvents):
        sensor_size = None  # as tonic.datasets.NCALTECH101

    found = EventFrames(NoSize(no_size), T=2, cache_dir=tmp_path, workers=1)
    assert found.sensor_size == (7, 9, 2) and found[1][0].shape == (2, 2, 9, 7)
    again = NoSize(no_size)
    EventFrames(again, T=2, cache_dir=tmp_path, workers=1)
    assert again.reads == [2, 1]  # the fingerprint only: no scan, no framing
    with pytest.warns(SkippedFilesWarning, match="sample 1: event at x=.* outside the 7x5"):
        EventFrames(ToyEvents(no_size), T=2, sensor_size=(7, 5, 2), workers=1)
    with pytest.raises(ValueError, match=r"sensor_size must be \(width, height\) .* got \(34,\)"):
        EventFrames(ToyEvents(no_size), T=2, sensor_size=(34,))


def test_labels_must_be_class_indices():
    items = [(random_events(0), torch.tensor(2)), (random_events(1), "cat")]
    with pytest.warns(SkippedFilesWarning, match="sample 1: label 'cat' is not a class index"):
        data = EventFrames(ToyEvents(items), T=2, workers=1)
    assert data.labels == [2]


def test_bad_framing_settings_are_refused_before_reading():
    dataset = toy()
    with pytest.raises(ValueError, match="split must be one of 'time', 'number'"):
        EventFrames(dataset, T=2, split="count")
    assert dataset.reads == [0] * 6


# ------------------------------------------------------------------------ [data] factory

FACTORY = """
import numpy as np
from stbp.data import EventFrames, make_events

class Toy:
    sensor_size = (20, 12, 2)

    def __init__(self, train, n):
        rng = np.random.default_rng(0 if train else 1)
        self.items = []
        for i in range(n):
            t = np.sort(rng.integers(0, 5000, 60))
            xs, ys, ps = rng.integers(0, 20, 60), rng.integers(0, 12, 60), rng.integers(0, 2, 60)
            self.items.append((make_events(xs, ys, ps, t), i % 2))

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]

CALLS = []

def make(train, T, n=8, data_dir=None):
    CALLS.append(dict(train=train, T=T, n=n, data_dir=data_dir))
    return EventFrames(Toy(train, n), T, workers=1)

def unwrapped(train, T):
    return Toy(train, 4)

NOT_A_FUNCTION = 3
"""


@pytest.fixture
def factory_module(tmp_path, monkeypatch):
    """A module `toy_data_<n>` importable from `tmp_path` (a new name per test)."""
    name = f"toy_data_{abs(hash(str(tmp_path)))}"
    (tmp_path / f"{name}.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def settings(**data) -> DataSettings:
    return DataSettings(**{"T": 4, "val_fraction": 0.25, **data})


def test_factory_makes_the_splits(factory_module, tmp_path):
    data = settings(factory=f"{factory_module}:make", factory_kwargs={"n": 8},
                    dir=str(tmp_path))  # fmt: skip
    splits = make_splits(data)
    assert len(splits.train) == 6 and len(splits.val) == 2 and len(splits.test_set) == 8
    assert splits.train_set[0][0].shape == (4, 2, HEIGHT, WIDTH)
    calls = sys.modules[factory_module].CALLS
    assert calls == [dict(train=True, T=4, n=8, data_dir=tmp_path),
                     dict(train=False, T=4, n=8, data_dir=tmp_path)]  # fmt: skip
    record = splits.record(data)
    assert record["name"] == f"factory {factory_module}:make" and record["T"] == 4
    config = merge(DEFAULTS, {"data": {"factory": data.factory, "factory_kwargs": {"n": 5},
                                       "T": 4}})  # fmt: skip
    assert len(stored_test_set(config)) == 5  # what `stbp eval` rebuilds


@pytest.mark.parametrize(
    "factory, kwargs, message",
    [
        ("no-colon", {}, "is not of the form 'package.module:function'"),
        ("toy_data_missing_module:make", {}, "module 'toy_data_missing_module' cannot be imported"),
        ("{m}:nope", {}, "module '{m}' .* has no 'nope'"),
        ("{m}:NOT_A_FUNCTION", {}, "'NOT_A_FUNCTION' is not a function"),
        ("{m}:make", {"size": 3}, "cannot call .* unexpected keyword argument 'size'"),
        ("{m}:make", {"T": 3}, "factory_kwargs may not set T"),
        ("{m}:unwrapped", {}, "returned a Toy without `labels` .* stbp.data.EventFrames"),
    ],
)
def test_factory_errors_are_one_config_error(factory_module, factory, kwargs, message):
    data = settings(factory=factory.format(m=factory_module), factory_kwargs=kwargs)
    with pytest.raises(ConfigError, match=message.format(m=factory_module)):
        make_splits(data)


def test_factory_frames_must_match_the_time_window(factory_module, monkeypatch):
    module = __import__(factory_module)
    monkeypatch.setattr(module, "make", lambda train, T: module.EventFrames(
        module.Toy(train, 4), T + 1, workers=1))  # fmt: skip
    with pytest.raises(ConfigError, match=r"T = \[data\] T = 4; sample 0 .* \(5, 2, 12, 20\)"):
        make_splits(settings(factory=f"{factory_module}:make"))


def test_factory_training_and_test_frames_must_have_one_shape(factory_module, monkeypatch):
    module = __import__(factory_module)

    def make(train, T):  # the test set on a wider sensor
        return module.EventFrames(module.Toy(train, 4), T, (20 if train else 24, 12), workers=1)

    monkeypatch.setattr(module, "make", make)
    with pytest.raises(ConfigError, match=r"training frames are \(2, 12, 20\) .* \(2, 12, 24\)"):
        make_splits(settings(factory=f"{factory_module}:make"))


def test_stbp_train_and_eval_with_a_data_factory(factory_module, tmp_path):
    config = {
        "run": {"epochs": 1, "max_steps_per_epoch": 2, "device": "cpu", "workers": 0,
                "eval_batch_size": 8},
        "data": {"factory": f"{factory_module}:make", "factory_kwargs": {"n": 8}, "T": 4,
                 "val_fraction": 0.0},
        "model": {"network": "", "spec": "8C3(Enc)-AP2-16FC-Voting"},
        "optim": {"batch_size": 4},
    }  # fmt: skip
    (tmp_path / "factory.toml").write_text(to_toml(merge(DEFAULTS, config)))
    out = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["train", "--config", str(tmp_path / "factory.toml"), "--out", str(out)]) == 0
        assert main(["eval", "--checkpoint", str(out / "last.pt"), "--device", "cpu"]) == 0

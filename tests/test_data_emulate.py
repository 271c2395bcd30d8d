"""Emulated recordings look like the real N-MNIST sample and keep each format's orientation."""

from pathlib import Path

import numpy as np

from stbp.data import read_aedat, read_nmnist
from stbp.data.emulate import (
    NMNIST_CAMERA,
    _dvs_job,
    emulate_events,
    write_emulated_dvs,
    write_emulated_nmnist,
)
from stbp.data.mnist10k import load_mnist10k

SAMPLE = Path(__file__).parent / "data" / "nmnist_03263.bin"


def test_emulated_nmnist_statistics_are_close_to_the_real_recording():
    real = read_nmnist(SAMPLE)
    images, _ = load_mnist10k()
    fakes = [
        emulate_events(images[i], NMNIST_CAMERA, np.random.default_rng(i))
        for i in range(0, 10_000, 1000)
    ]
    counts = np.array([len(e) for e in fakes])
    on_fraction = np.mean([e["p"].mean() for e in fakes])
    assert 0.5 * len(real) < counts.mean() < 1.5 * len(real)
    assert abs(on_fraction - real["p"].mean()) < 0.05
    for e in fakes:
        assert 250_000 < e["t"].max() - e["t"].min() < 320_000
        assert (np.diff(e["t"]) >= 0).all() and e["x"].max() < 34 and e["y"].max() < 34


def test_emulation_is_deterministic_for_a_seed(tmp_path):
    write_emulated_nmnist(tmp_path / "a", count=5, seed=3, workers=1)
    write_emulated_nmnist(tmp_path / "b", count=5, seed=3, workers=2)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.bin"))
    assert len(files) == 5
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()


def test_orientation_nmnist_rows_from_top_and_dvs_in_jaer_convention(tmp_path):
    image = np.zeros((28, 28), np.uint8)
    image[:6, 8:20] = 255  # a bar at the top of the digit
    nmnist_events = emulate_events(image, NMNIST_CAMERA, np.random.default_rng(0))
    assert nmnist_events["y"].mean() < 34 / 3  # N-MNIST: y counts rows from the top

    _dvs_job((tmp_path / "bar.aedat", image, 0, 0))
    assert read_aedat(tmp_path / "bar.aedat")["y"].mean() > 128 * 2 / 3  # jAER: y = 0 at bottom


def test_emulated_dvs_files_fill_the_cifar10dvs_classes(tmp_path):
    assert write_emulated_dvs(tmp_path, count=12, workers=1) == 12
    counts = sorted(len(list(d.glob("*.aedat"))) for d in tmp_path.iterdir())
    assert counts == [1] * 8 + [2] * 2

"""Emulated recordings look like the real N-MNIST sample and keep each format's orientation;
the `stbp emulate-*` commands refuse bad settings and stale folders in one line."""

from pathlib import Path

import numpy as np
import pytest

from stbp.cli import main
from stbp.data import read_aedat, read_nmnist
from stbp.data.emulate import (
    MAX_DVS_COUNT,
    MAX_NMNIST_COUNT,
    NMNIST_CAMERA,
    EmulatorError,
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


def run_cli(capsys, *argv):
    """`stbp ARGV` through the real entry point: (exit code, stdout, stderr)."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    "command, count, limit",
    [
        ("emulate-nmnist", "-5", MAX_NMNIST_COUNT),
        ("emulate-nmnist", "0", MAX_NMNIST_COUNT),
        ("emulate-nmnist", "20000", MAX_NMNIST_COUNT),
        ("emulate-dvs", "-1", MAX_DVS_COUNT),
        ("emulate-dvs", str(MAX_DVS_COUNT + 1), MAX_DVS_COUNT),
    ],
)
def test_count_outside_its_range_is_one_line_naming_the_flag(
    tmp_path, capsys, command, count, limit
):
    code, _, err = run_cli(capsys, command, "--out", str(tmp_path / "o"), "--count", count)
    assert code == 2
    assert err == f"stbp {command}: error: --count must be in 1..{limit}, got {count}\n"
    assert not (tmp_path / "o").exists()


def test_largest_counts_are_what_the_embedded_digits_allow():
    _, labels = load_mnist10k()
    per_class = np.bincount(labels, minlength=10)

    def fits(count):
        shares = [count // 10 + (d < count % 10) for d in range(10)]
        return all(share <= n for share, n in zip(shares, per_class, strict=True))

    assert MAX_NMNIST_COUNT == len(labels)
    assert fits(MAX_DVS_COUNT) and not fits(MAX_DVS_COUNT + 1)


def test_out_that_is_a_file_or_under_a_file_is_one_line(tmp_path, capsys):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("not a folder")
    code, _, err = run_cli(capsys, "emulate-nmnist", "--out", str(a_file), "--count", "2")
    assert (
        code == 2 and err == f"stbp emulate-nmnist: error: --out {a_file} is a file, not a folder\n"
    )
    code, _, err = run_cli(capsys, "emulate-dvs", "--out", str(a_file / "sub"), "--count", "2")
    assert code == 2 and err == (
        f"stbp emulate-dvs: error: --out {a_file / 'sub'} cannot be created: {a_file} is a file, "
        "not a folder\n"
    )


@pytest.mark.parametrize("workers", ["0", "-2"])
def test_workers_below_one_are_refused(tmp_path, capsys, workers):
    code, _, err = run_cli(capsys, "emulate-nmnist", "--out", str(tmp_path), "--workers", workers)
    assert code == 2
    assert err == f"stbp emulate-nmnist: error: --workers must be at least 1, got {workers}\n"


def bin_files(root):
    return sorted(p.relative_to(root) for p in root.rglob("*.bin"))


def test_rerun_into_a_folder_with_recordings_needs_overwrite(tmp_path, capsys):
    out = tmp_path / "emu"
    args = ("emulate-nmnist", "--out", str(out), "--workers", "1", "--count")
    assert run_cli(capsys, *args, "5")[0] == 0
    first = bin_files(out)
    assert len(first) == 5

    code, stdout, err = run_cli(capsys, *args, "3")
    assert code == 2 and stdout == "" and len(err.splitlines()) == 1
    assert err.startswith(f"stbp emulate-nmnist: error: --out {out} already holds 5 recordings")
    assert "add --overwrite to remove them first" in err
    assert bin_files(out) == first

    keep = out / first[0].parent / "my-notes.txt"  # not the emulator's: left alone
    keep.write_text("mine")
    (out / "stbp-frames").mkdir()
    code, stdout, _ = run_cli(capsys, *args, "3", "--overwrite")
    assert code == 0
    assert f"removed 5 earlier emulated N-MNIST recordings from {out}" in stdout
    assert len(bin_files(out)) == 3 and keep.read_text() == "mine"
    assert (out / "stbp-frames").is_dir()


def test_overwrite_removes_the_old_dvs_tree_and_its_empty_folders(tmp_path, capsys):
    args = ("emulate-dvs", "--out", str(tmp_path), "--workers", "1", "--count")
    assert run_cli(capsys, *args, "2")[0] == 0
    assert sorted(d.name for d in tmp_path.iterdir()) == ["airplane", "automobile"]
    assert run_cli(capsys, *args, "1")[0] == 2
    code, stdout, _ = run_cli(capsys, *args, "1", "--overwrite")
    assert code == 0 and "removed 2 earlier emulated DVS128 recordings" in stdout
    assert [p.relative_to(tmp_path).parts[0] for p in tmp_path.rglob("*.aedat")] == ["airplane"]
    assert not (tmp_path / "automobile").exists()


def test_library_refuses_the_same_settings_naming_its_parameters(tmp_path):
    with pytest.raises(EmulatorError, match=r"^count must be in 1\.\.10000, got 0$"):
        write_emulated_nmnist(tmp_path, count=0)
    with pytest.raises(EmulatorError, match="^workers must be at least 1, got 0$"):
        write_emulated_dvs(tmp_path, count=1, workers=0)
    write_emulated_nmnist(tmp_path, count=2, workers=1)
    with pytest.raises(EmulatorError, match="add overwrite=True to remove them first"):
        write_emulated_nmnist(tmp_path, count=1, workers=1)
    assert write_emulated_nmnist(tmp_path, count=1, workers=1, overwrite=True) == 1
    assert len(bin_files(tmp_path)) == 1


def test_home_is_expanded_in_out(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    code, stdout, _ = run_cli(capsys, "emulate-nmnist", "--out", "~/emu", "--count", "2",
                              "--workers", "1")  # fmt: skip
    assert code == 0 and f"to {tmp_path / 'emu'}" in stdout
    assert len(bin_files(tmp_path / "emu")) == 2 and not (tmp_path / "~").exists()

"""Tests of the benchmark sweeps' bookkeeping (benchmarks/sweep.py; no training)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import sweep  # noqa: E402
from neunorm_ablation import VARIANTS, ensure_recordings, variant_config  # noqa: E402
from time_window import make_runs  # noqa: E402

from stbp.config import to_toml


def demo_run(folder: Path, epochs: int = 2, T: int = 4) -> sweep.Run:
    return sweep.Run("4", 0, folder, "demo", {"T": T, "seed": 0, "epochs": epochs})


def fake_run_folder(run: sweep.Run, epochs_done: int, config: dict | None = None) -> None:
    """The files `stbp train` leaves, as far as the sweep reads them."""
    run.folder.mkdir(parents=True)
    (run.folder / "config.toml").write_text(to_toml(config or run.expected_config()))
    summary = {"config": "demo", "epochs": epochs_done, "selection": "val", "selected_epoch": 1,
               "val_acc": 0.5, "test_acc_at_selection": 0.4, "final_test_acc": 0.45,
               "seed": run.seed, "T": 4}  # fmt: skip
    (run.folder / "summary.json").write_text(json.dumps(summary))
    rows = "epoch,epoch_seconds\n" + "".join(f"{e + 1},{10 + e}\n" for e in range(epochs_done))
    (run.folder / "metrics.csv").write_text(rows)


def test_flag_words_spell_stbp_train_options():
    flags = {"T": 4, "seed": 0, "max_steps_per_epoch": None, "neunorm": False,
             "data_dir": Path("d"), "max_steps": 5}  # fmt: skip
    words = sweep.flag_words(flags)
    assert words == ["--T", "4", "--seed", "0", "--no-neunorm", "--data-dir", "d",
                     "--max-steps", "5"]  # fmt: skip


def test_train_command_resumes_only_when_asked(tmp_path):
    run = demo_run(tmp_path / "T4-seed0")
    fresh, again = sweep.train_command(run, False), sweep.train_command(run, True)
    assert fresh[1:6] == ["-m", "stbp", "train", "--config", "demo"]
    assert fresh[-2:] == ["--out", str(run.folder)] and "--resume" not in fresh
    assert again == [*fresh, "--resume"]


def test_run_state_new_resume_done(tmp_path):
    assert sweep.run_state(demo_run(tmp_path / "empty")) == "new"
    half = demo_run(tmp_path / "half", epochs=2)
    fake_run_folder(half, epochs_done=1)
    assert sweep.run_state(half) == "resume"
    done = demo_run(tmp_path / "done", epochs=2)
    fake_run_folder(done, epochs_done=2)
    assert sweep.run_state(done) == "done"


def test_run_state_refuses_more_epochs_and_other_settings(tmp_path):
    longer = demo_run(tmp_path / "longer", epochs=2)
    fake_run_folder(longer, epochs_done=3)
    with pytest.raises(sweep.SweepError, match="3 finished epochs, more than --epochs 2"):
        sweep.run_state(longer)
    other = demo_run(tmp_path / "other")
    fake_run_folder(other, 2, demo_run(other.folder, T=6).expected_config())
    with pytest.raises(sweep.SweepError, match=r"\[data\] T: 6 vs 4"):
        sweep.run_state(other)


def test_a_smoke_run_is_not_taken_for_a_full_one(tmp_path):
    full = demo_run(tmp_path / "run", epochs=1)
    smoke = sweep.Run("4", 0, full.folder, "demo", {**full.flags, "max_steps_per_epoch": 5})
    fake_run_folder(full, 1, smoke.expected_config())
    with pytest.raises(sweep.SweepError, match="max_steps_per_epoch: 5 vs 0"):
        sweep.run_state(full)


def test_table_statistics_over_seeds(tmp_path):
    results = [{"group": "4", "seed": s, "selected_epoch": e, "test_acc_at_selection": a,
                "final_test_acc": f, "mean_epoch_seconds": t}
               for s, e, a, f, t in [(0, 3, 0.98, 0.97, 10.0), (1, 2, 0.99, 0.99, 12.0),
                                     (2, 3, 0.97, 0.98, None)]]  # fmt: skip
    row = sweep.table_rows(results, ["1", "4"])
    assert len(row) == 1 and row[0]["seeds"] == 3
    assert row[0]["selected_test_acc_mean"] == pytest.approx(98.0)
    assert row[0]["selected_test_acc_std"] == pytest.approx(1.0)
    assert (row[0]["selected_test_acc_min"], row[0]["selected_test_acc_max"]) == (97.0, 99.0)
    assert row[0]["final_test_acc_mean"] == pytest.approx(98.0)
    assert row[0]["epoch_seconds_mean"] == pytest.approx(11.0)
    assert "| 4 | 98.00 ± 1.00 | 97.00–99.00 | 98.00 | 11.0 | 3 |" in sweep.markdown_table(row, "T")
    single = sweep.group_row("1", results[:1])
    assert single["selected_test_acc_std"] is None
    assert "| 1 | 98.00 | 98.00–98.00 |" in sweep.markdown_table([single], "T")


def test_finished_reads_done_runs_and_lists_the_rest(tmp_path):
    done, half = demo_run(tmp_path / "done", epochs=2), demo_run(tmp_path / "half", epochs=2)
    fake_run_folder(done, 2)
    fake_run_folder(half, 1)
    (done.folder / sweep.LOG_NAME).write_text("\n$ OMP_NUM_THREADS=1 python -m stbp train\n")
    results, missing = sweep.Sweep("t", [done, half], "T").finished()
    assert [r["run"] for r in results] == [str(done.folder)]
    assert results[0]["mean_epoch_seconds"] == pytest.approx(10.5)
    assert results[0]["threads"] == "1"
    assert missing == ["half: 1 of 2 epochs done"]


def test_time_window_runs_take_the_config_epochs_by_default(tmp_path):
    args = argparse.Namespace(T=[1, 12], seeds=[0, 1], epochs=None, config="demo",
                              max_steps_per_epoch=None, out=tmp_path)  # fmt: skip
    runs = make_runs(args)
    assert [r.name for r in runs] == ["T1-seed0", "T1-seed1", "T12-seed0", "T12-seed1"]
    assert {r.epochs for r in runs} == {15}  # stbp/configs/demo.toml
    assert runs[2].expected_config()["data"]["T"] == 12


def test_ablation_variants_set_neunorm_and_its_reading():
    configs = {v: variant_config("nmnist-emulated", v)["model"] for v in VARIANTS}
    assert not configs["off"]["neunorm"]
    assert configs["stbp"]["neunorm"] and configs["stbp"]["neunorm_reading"] == "stbp"
    jelly = configs["spikingjelly"]
    assert jelly["neunorm"] and jelly["neunorm_reading"] == "spikingjelly"


def test_ablation_refuses_a_data_folder_of_another_size(tmp_path):
    (tmp_path / "Train" / "3").mkdir(parents=True)
    (tmp_path / "Train" / "3" / "00001.bin").write_bytes(b"")
    with pytest.raises(sweep.SweepError, match="holds 1 emulated N-MNIST recordings, not"):
        ensure_recordings(tmp_path, 2000)
    ensure_recordings(tmp_path, 1)  # the right number: reused, nothing written
    assert len(list(tmp_path.rglob("*.bin"))) == 1


@pytest.mark.parametrize("text", ["", "a", "0,0", "-1"])
def test_seed_lists_are_checked(text):
    with pytest.raises(argparse.ArgumentTypeError):
        sweep.int_list(text)

"""Run folders: never overwritten, locked while in use, resumed by name and time; the
validation split, the summary's protocol fields, `stbp results`, NaN weights, progress lines."""

import json
import os

import numpy as np
import pytest
import torch

import stbp.runs as runs
from stbp import checkpoint as ck
from stbp.cli import main
from stbp.config import ConfigError, DataSettings, load_config, merge, to_toml
from stbp.data.mnist10k import load_mnist10k, split_indices
from stbp.data.splits import stratified_split
from stbp.datasets import make_splits
from stbp.results import run_row
from stbp.runs import RunFolder, RunFolderError, latest_folder, run_training
from stbp.train import Diverged

TINY = {
    "run": {"epochs": 1, "device": "cpu", "max_steps_per_epoch": 2, "eval_batch_size": 100,
            "precision": "fp32"},
    "data": {"T": 2, "n_train": 9800},
    "model": {"spec": "8C3(Enc)-AP2-16FC-Voting"},
    "optim": {"batch_size": 8},
}  # fmt: skip


def tiny(**tables):
    config = merge(load_config("demo"), TINY)
    return merge(config, tables)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "done"
    return out, run_training(tiny(), out)


# ---------------------------------------------------------------- the split and the record


def test_train_val_and_test_never_share_a_digit():
    data = DataSettings(n_train=8000, val_fraction=0.1, split_seed=3)
    splits = make_splits(data)
    train_part, test_part = split_indices(10_000, 8000, seed=3)  # indices into the 10k digits
    trained, validated = train_part[splits.train.numpy()], train_part[splits.val.numpy()]
    sets = [set(trained), set(validated), set(test_part)]
    assert sum(map(len, sets)) == 10_000 and len(set.union(*sets)) == 10_000
    assert abs(len(validated) - 800) <= 5 and len(test_part) == 2000
    labels = load_mnist10k()[1]
    per_class = np.bincount(labels[validated], minlength=10) / np.bincount(labels[train_part])
    assert np.allclose(per_class, 0.1, atol=0.002)  # stratified


def test_the_validation_split_is_seeded():
    labels = np.repeat(np.arange(3), 20)
    a, b = stratified_split(labels, 0.25, seed=1), stratified_split(labels, 0.25, seed=1)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[1], stratified_split(labels, 0.25, seed=2)[1])
    assert len(stratified_split(labels, 0.0, seed=1)[1]) == 0


def test_the_summary_records_the_protocol(finished):
    out, summary = finished
    stored = json.loads((out / "summary.json").read_text())
    assert stored["selection"] == "val" and stored["selected_epoch"] == 1
    row = ck.load_checkpoint(out / "best.pt")["history"][0]
    assert stored["val_acc"] == row["val_acc"]
    assert stored["test_acc_at_selection"] == row["test_acc"] == stored["final_test_acc"]
    assert stored["split"] == {"name": "mnist10k", "seed": 0, "train": 8820, "val": 980,
                               "test": 200}  # fmt: skip
    assert stored["T"] == 2 and stored["network"] == "8C3(Enc)-AP2-16FC-Voting"


def test_without_a_validation_split_the_test_set_selects_and_says_so(tmp_path, capsys):
    summary = run_training(tiny(data={"val_fraction": 0.0}), tmp_path / "run")
    assert summary["selection"] == "test" and summary["val_acc"] is None
    assert summary["split"]["val"] == 0
    assert "val_acc" not in ck.load_checkpoint(tmp_path / "run" / "last.pt")["history"][0]


def test_results_prints_one_row_per_run(finished, tmp_path, capsys):
    out, summary = finished
    csv_path = tmp_path / "rows.csv"
    assert main(["results", str(out), str(tmp_path / "none"), "--csv", str(csv_path)]) == 0
    captured = capsys.readouterr()
    assert "skipped" in captured.err and "none: no summary.json" in captured.err
    assert f"{100 * summary['test_acc_at_selection']:.2f}" in captured.out
    assert csv_path.read_text().splitlines()[0].startswith("run,config,data,split,network")
    assert main(["results", str(out), "--markdown"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("| run | config |") and len(table) == 3
    row = run_row(out)
    assert row["selection"] == "val" and row["split"] == "8820/980/200 seed 0"
    assert main(["results", str(tmp_path / "none")]) == 2


# ------------------------------------------------------------------------- run folders


def test_a_new_run_never_replaces_a_finished_one(finished, capsys):
    out, _ = finished
    before = (out / "best.pt").read_bytes()
    config = out / "config.toml"
    assert main(["train", "--config", str(config), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "already holds a run (config 'demo', 1 epochs done)" in err and "--overwrite" in err
    assert (out / "best.pt").read_bytes() == before


def test_overwrite_replaces_the_run(tmp_path):
    out = tmp_path / "run"
    run_training(tiny(), out)
    (out / "best.pt").write_bytes(b"old")
    run_training(tiny(run={"seed": 1}), out, overwrite=True)
    assert ck.load_checkpoint(out / "best.pt")["config"]["run"]["seed"] == 1


def test_a_folder_in_use_is_refused(tmp_path):
    holder = RunFolder(tmp_path / "run")
    holder.lock()
    try:
        in_use = rf"in use by another stbp run \(pid {os.getpid()}\)"
        with pytest.raises(RunFolderError, match=in_use):
            run_training(tiny(), tmp_path / "run")
    finally:
        holder.release()
    run_training(tiny(), tmp_path / "run")  # free again


def test_out_naming_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert main(["train", "--config", "demo", "--out", str(tmp_path / "file")]) == 2
    assert "--out " + str(tmp_path / "file") + " is a file, not a folder" in capsys.readouterr().err


def test_resume_takes_the_newest_run_of_exactly_that_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name, started in (("demo-20261201-000000", "2026-12-01T00:00:00"),
                          ("demo-20261130-000000", "2026-12-02T00:00:00"),  # renamed, newer
                          ("demo-deep-20261203-000000", "2026-12-03T00:00:00"),
                          ("demo-old", "2026-12-04T00:00:00")):  # fmt: skip
        folder = tmp_path / "runs" / name
        folder.mkdir(parents=True)
        (folder / "config.toml").write_text("")
        (folder / "run.json").write_text(json.dumps({"started": started}))
    assert latest_folder("demo").path.name == "demo-20261130-000000"
    with pytest.raises(RunFolderError, match="no run of config 'cifarnet'"):
        latest_folder("cifarnet")


def test_resume_says_when_there_is_nothing_to_do_and_how_a_cosine_run_extends(tmp_path, capsys):
    out = tmp_path / "run"
    run_training(tiny(), out)
    capsys.readouterr()
    run_training(tiny(), out, resume=True)
    assert "already trained 1 of 1 epochs: nothing to do" in capsys.readouterr().out
    run_training(tiny(run={"epochs": 2}), out, resume=True)
    assert "the cosine schedule now spans 2 epochs instead of 1" in capsys.readouterr().out
    state = ck.load_checkpoint(out / "last.pt")
    assert state["epoch"] == 2 and state["history"][1]["lr"] == 0.0


def test_data_paths_are_expanded_and_stored_absolute(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    config = tiny(data={"dir": "~/data", "cache_dir": "~/cache"})
    run_training(config, "~/run")
    stored = load_config(str(tmp_path / "run" / "config.toml"))
    assert stored["data"]["dir"] == str(tmp_path / "data")
    assert stored["data"]["cache_dir"] == str(tmp_path / "cache")


# ------------------------------------------------------------------ silently wrong numbers


def test_nan_weights_stop_the_run_although_the_loss_stays_finite(tmp_path, monkeypatch):
    real = runs.make_trainer

    def poisoned(*args):
        trainer = real(*args)
        with torch.no_grad():
            trainer.model.layers.fc1.module[1].weight[0, 0] = float("nan")
        return trainer

    monkeypatch.setattr(runs, "make_trainer", poisoned)
    with pytest.raises(Diverged, match=r"parameter layers\.\S+ \(and \d+ more\) became nan at "
                       "epoch 1, steps 1-2; stopped. Last good checkpoint: no checkpoint yet"):
        run_training(tiny(optim={"calibrate_rate": 0.0}), tmp_path / "run")


def test_progress_lines_when_the_output_is_not_a_terminal(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(runs, "PROGRESS_SECONDS", 0.0)
    run_training(tiny(run={"max_steps_per_epoch": 20}), tmp_path / "run")
    out = capsys.readouterr().out
    assert "epoch 1/1, step 10/20: loss" in out and "epoch 1/1, step 20/20" in out


def test_a_mid_epoch_checkpoint_holds_the_step_and_the_epoch_so_far(tmp_path, monkeypatch):
    saved = []
    real = ck.save_atomic
    monkeypatch.setattr(ck, "save_atomic", lambda state, path: (saved.append(state),
                                                                real(state, path)))  # fmt: skip
    run_training(tiny(run={"max_steps_per_epoch": 5, "checkpoint_every": 2}), tmp_path / "run")
    mid = [s for s in saved if s["step"]]
    assert [s["step"] for s in mid] == [2, 4] and mid[0]["epoch"] == 0
    assert mid[1]["partial"]["totals"][2] == 4 * 8 and mid[1]["partial"]["seconds"] > 0
    assert mid[0]["partial"]["generator"].dtype == torch.uint8


@pytest.mark.parametrize("flags, words", [
    (["--T", "0"], "[data] T (--T) = 0; allowed: 1 <= T"),
    (["--batch-size", "-5"], "[optim] batch_size (--batch-size) = -5; allowed: 1 <= batch_size"),
    (["--epochs", "-3"], "[run] epochs (--epochs) = -3; allowed: 1 <= epochs"),
    (["--max-steps-per-epoch", "-150"], "max_steps_per_epoch (--max-steps-per-epoch) = -150"),
    (["--val-fraction", "1"], "(--val-fraction) = 1.0; allowed: 0 <= val_fraction < 1"),
])  # fmt: skip
def test_bad_flags_are_one_line_naming_the_setting(flags, words, capsys, tmp_path):
    assert main(["train", "--config", "demo", "--out", str(tmp_path / "r"), *flags]) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err and len(err.splitlines()) == 1
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("table, key, value, words", [
    ("model", "width", 0.0, "width = 0.0; allowed: 0 < width"),
    ("model", "surrogate", "rectangle", "choose one of: rect, triangle, sigmoid, atan"),
    ("data", "frame_split", "Time", "frame_split = 'Time'; choose one of: time, number"),
    ("data", "split", "random-8:2", "choose one of: random-9:1, first-100-test"),
    ("model", "spec", "32C3-XX-Voting", "[model] spec = '32C3-XX-Voting': bad layer 'XX'"),
    ("model", "dropout", 1.5, "dropout = 1.5; allowed: 0 <= dropout < 1"),
    ("model", "votes", 0, "votes = 0; allowed: 1 <= votes"),
    ("model", "decay", 5.0, "decay = 5.0; allowed: 0 <= decay <= 1"),
    ("run", "eval_batch_size", 0, "eval_batch_size = 0; allowed: 1 <= eval_batch_size"),
    ("optim", "lr", -1.0, "lr = -1.0; allowed: 0 < lr"),
    ("data", "n_train", 10000, "n_train = 10000; allowed: 1 <= n_train <= 9999"),
    ("model", "in_shape", [1, 28], "in_shape = [1, 28]; expected [C, H, W]"),
])  # fmt: skip
def test_bad_config_values_are_refused_naming_the_file(tmp_path, table, key, value, words):
    path = tmp_path / "bad.toml"
    path.write_text(to_toml({table: {key: value}}))
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert words in str(info.value) and "bad.toml" in str(info.value)


def test_an_input_shape_that_does_not_fit_the_data_is_refused(tmp_path):
    config = tiny(model={"spec": "8C3(Enc)-AP2-16FC-Voting", "in_shape": [2, 34, 34]})
    with pytest.raises(ConfigError, match=r"\[model\] in_shape takes inputs \[2, 34, 34\], but "
                       r"the data set gives \[1, 28, 28\]"):  # fmt: skip
        run_training(config, tmp_path / "run")



def test_a_run_that_fails_before_writing_anything_leaves_no_folder(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--config", "nmnist", "--data-dir", str(tmp_path / "none"), "--out", str(out)]
    assert main(args) == 2
    assert "expected inside" in capsys.readouterr().err and not out.exists()


def test_a_paper_network_with_fewer_classes_than_the_data_is_refused():
    from types import SimpleNamespace

    from stbp import build
    from stbp.datasets import Splits

    model = build("4C3(Enc)-AP2-8FC-Voting", (2, 8, 8), T=2)

    def splits(classes: int) -> Splits:
        data = SimpleNamespace(labels=list(range(classes)))
        return Splits(data, torch.arange(classes), torch.arange(0), data)

    with pytest.raises(ConfigError, match="votes for 10 classes, but the training set has 11"):
        runs.check_classes(model, splits(11))
    runs.check_classes(model, splits(10))

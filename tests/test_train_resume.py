"""Exact resume: a run killed with SIGKILL mid-epoch and resumed ends bit-identical (CPU)."""

import json
import os
import subprocess
import sys
import time

import torch

from stbp import checkpoint as ck
from stbp.config import load_config, merge, to_toml

ENV = {**os.environ, "STBP_COMPILE": "0"}
EPOCHS = 3


def write_config(path):
    config = merge(load_config("demo"), {
        "run": {"epochs": EPOCHS, "device": "cpu", "max_steps_per_epoch": 25, "precision": "fp32"},
        "data": {"T": 2, "n_train": 9600, "augment_shift": 2},
        "model": {"spec": "8C3(Enc)-AP2-16FC-Voting", "dropout": 0.5},
        "optim": {"batch_size": 16},
    })  # fmt: skip
    path.write_text(to_toml(config))
    return path


def train(config, out, *extra):
    cmd = [sys.executable, "-m", "stbp", "train", "--config", str(config), "--out", str(out)]
    return subprocess.Popen([*cmd, *extra], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)  # fmt: skip


def stored_epoch(path):
    try:
        return ck.load_checkpoint(path)["epoch"]
    except ck.CheckpointError:
        return 0


def files_of_epoch(out):
    """The epoch whose files were all written (summary.json is written last)."""
    try:
        return json.loads((out / "summary.json").read_text())["epochs"]
    except (OSError, ValueError):
        return 0


def kill_mid_epoch(process, out):
    """SIGKILL `process` just after it finished writing epoch 1 (so, early in epoch 2)."""
    while files_of_epoch(out) < 1:
        assert process.poll() is None, process.stdout.read().decode()
        time.sleep(0.02)
    time.sleep(0.1)
    process.kill()
    process.wait()


def test_killed_and_resumed_run_ends_bit_identical(tmp_path):
    config = write_config(tmp_path / "tiny.toml")
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    first = train(config, reference)
    second = train(config, killed)
    kill_mid_epoch(second, killed)
    assert second.returncode == -9
    assert stored_epoch(killed / "last.pt") == 1  # it died in epoch 2
    assert first.wait() == 0, first.stdout.read().decode()
    resumed = train(config, killed, "--resume")
    assert resumed.wait() == 0, resumed.stdout.read().decode()
    a, b = ck.load_checkpoint(reference / "last.pt"), ck.load_checkpoint(killed / "last.pt")
    assert a["epoch"] == b["epoch"] == EPOCHS
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    assert a["history"][-1]["test_acc"] == b["history"][-1]["test_acc"]
    assert (killed / "metrics.csv").read_text().count("\n") == EPOCHS + 1

"""Exact resume: a run killed (SIGKILL) or interrupted (Ctrl-C) at a random step of any epoch,
then resumed, ends bit-identical to an uninterrupted run (CPU)."""

import os
import random
import signal

import pytest
import torch
from conftest import checkpoint_position, start_training, stop_at

from stbp import checkpoint as ck
from stbp.config import load_config, merge, to_toml

ENV = {**os.environ, "STBP_COMPILE": "0", "OMP_NUM_THREADS": "1"}
EPOCHS, STEPS = 3, 25


def write_config(path):
    config = merge(load_config("demo"), {
        "run": {"epochs": EPOCHS, "device": "cpu", "max_steps_per_epoch": STEPS,
                "precision": "fp32", "checkpoint_every": 1},
        "data": {"T": 2, "n_train": 9600, "augment_shift": 2},
        "model": {"spec": "8C3(Enc)-AP2-16FC-Voting", "dropout": 0.5},
        "optim": {"batch_size": 16},
    })  # fmt: skip
    path.write_text(to_toml(config))
    return path


def train(config, out, *extra):
    return start_training(config, out, *extra, env=ENV)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    folder = tmp_path_factory.mktemp("reference")
    config = write_config(folder / "tiny.toml")
    done = train(config, folder / "run")
    assert done.wait() == 0, done.communicate()
    return config, ck.load_checkpoint(folder / "run" / "last.pt")


@pytest.mark.parametrize("sig, epoch", [(signal.SIGKILL, 1), (signal.SIGKILL, 3),
                                        (signal.SIGINT, 2)])  # fmt: skip
def test_stopped_at_a_random_step_and_resumed_ends_bit_identical(reference, tmp_path, sig, epoch):
    config, expected = reference
    step = random.Random(f"{sig}{epoch}").randrange(1, STEPS - 2)
    out = tmp_path / "run"
    process = train(config, out)
    _, err = stop_at(process, out, epoch, step, sig)
    if sig == signal.SIGINT:  # one line: where it stopped, what it saved, how to resume
        assert process.returncode == 130 and "Traceback" not in err, err
        assert f"interrupted; saved {out}/last.pt at epoch {epoch}, step" in err
        assert f"Resume with: stbp train --config {config} --out {out} --resume" in err
    else:
        assert process.returncode == -9
    epochs, steps = checkpoint_position(out / "last.pt")
    assert (epochs, 0) == (epoch - 1, 0) and steps >= step  # it died inside that epoch
    resumed = train(config, out, "--resume")
    assert resumed.wait() == 0, resumed.communicate()
    got = ck.load_checkpoint(out / "last.pt")
    assert got["epoch"] == EPOCHS
    for name, tensor in expected["model"].items():
        assert torch.equal(tensor, got["model"][name]), name
    for a, b in zip(expected["history"], got["history"], strict=True):
        assert {k: v for k, v in a.items() if k != "epoch_seconds"} == {
            k: v for k, v in b.items() if k != "epoch_seconds"
        }
    assert (out / "metrics.csv").read_text().count("\n") == EPOCHS + 1


def test_a_run_killed_before_its_first_checkpoint_starts_afresh_on_resume(tmp_path):
    config = merge(load_config(str(write_config(tmp_path / "tiny.toml"))),
                   {"run": {"epochs": 1}})  # fmt: skip
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.toml").write_text(to_toml(config))  # what a run killed at once leaves
    (tmp_path / "one.toml").write_text(to_toml(config))
    done = train(tmp_path / "one.toml", out, "--resume")
    stdout, stderr = done.communicate(timeout=300)
    assert done.returncode == 0, stderr
    assert f"no checkpoint in {out} yet: starting the run from the beginning" in stdout
    assert checkpoint_position(out / "last.pt") == (1, 0)

"""Data parallelism: 2 gloo processes under torchrun match one process with the same batch,
and a killed run of 2 processes resumes to the same weights as an uninterrupted one."""

import os
import subprocess
import sys
import time

import torch
from conftest import checkpoint_position

from stbp import checkpoint as ck
from stbp.config import load_config, merge, to_toml
from stbp.distributed import Context, epoch_batches, eval_batches, shard

ENV = {**os.environ, "STBP_COMPILE": "0"}


def test_shards_of_a_global_batch_cover_it_once():
    (batch,) = epoch_batches(10, 10, seed=0, epoch=0, world=2)[:1]
    parts = [shard(batch, Context(rank, 2)) for rank in range(2)]
    assert torch.equal(torch.cat(parts), batch)
    assert all(len(b) % 3 == 0 for b in epoch_batches(20, 7, seed=0, epoch=0, world=3))


def test_eval_parts_cover_the_test_set_once():
    parts = [torch.cat(eval_batches(11, 4, Context(rank, 2))) for rank in range(2)]
    assert torch.equal(torch.cat(parts), torch.arange(11))


def test_two_gloo_processes_match_one_process(tmp_path):
    config = merge(load_config("demo"), {
        "run": {"epochs": 1, "device": "cpu", "max_steps_per_epoch": 4, "eval_batch_size": 50,
                "precision": "fp32"},  # bf16 rounds differently on half batches
        "data": {"T": 2, "n_train": 9800, "augment_shift": 0},
        "model": {"spec": "8C3(Enc)-AP2-16FC-Voting", "dropout": 0.0},  # masks differ by rank
        "optim": {"batch_size": 16},
    })  # fmt: skip
    path = tmp_path / "tiny.toml"
    path.write_text(to_toml(config))
    train = ["-m", "stbp", "train", "--config", str(path), "--out"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    for cmd in ([*torchrun, *train, str(tmp_path / "ddp")],
                [sys.executable, *train, str(tmp_path / "single")]):  # fmt: skip
        done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
    ddp, single = (ck.load_checkpoint(tmp_path / name / "last.pt") for name in ("ddp", "single"))
    assert ddp["epoch"] == single["epoch"] == 1
    for name, tensor in single["model"].items():
        torch.testing.assert_close(ddp["model"][name], tensor, atol=1e-5, rtol=1e-4)
    assert ddp["history"][0]["test_acc"] == single["history"][0]["test_acc"]
    assert abs(ddp["history"][0]["train_loss"] - single["history"][0]["train_loss"]) < 1e-5


def test_a_killed_ddp_run_resumes_bit_identical(tmp_path):
    """Dropout and augmentation draw different numbers on each process; every process's
    states are saved at every step and each restores its own."""
    config = merge(load_config("demo"), {
        "run": {"epochs": 2, "device": "cpu", "max_steps_per_epoch": 20, "eval_batch_size": 100,
                "precision": "fp32", "checkpoint_every": 1},
        "data": {"T": 2, "n_train": 9800, "augment_shift": 2, "val_fraction": 0.0},
        "model": {"spec": "8C3(Enc)-AP2-16FC-Voting", "dropout": 0.5},
        "optim": {"batch_size": 16},
    })  # fmt: skip
    path = tmp_path / "tiny.toml"
    path.write_text(to_toml(config))
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                "-m", "stbp", "train", "--config", str(path), "--out"]  # fmt: skip
    done = subprocess.run([*torchrun, str(tmp_path / "whole")], env=ENV, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = tmp_path / "stopped"
    run = subprocess.Popen([*torchrun, str(out)], env=ENV, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)  # fmt: skip
    while checkpoint_position(out / "last.pt") < (0, 3):
        assert run.poll() is None
        time.sleep(0.01)
    run.terminate()  # torchrun stops its processes wherever they are
    run.wait(timeout=60)
    stopped = ck.load_checkpoint(out / "last.pt")
    assert (stopped["epoch"], 0) < (2, stopped["step"])  # it stopped before the end
    mine = [entry["totals"] for entry in stopped["ranks"]]
    assert len(mine) == 2 and mine[0] != mine[1] and stopped["partial"]["totals"] == mine[0]
    done = subprocess.run([*torchrun, str(out), "--resume"], env=ENV, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    whole, resumed = (ck.load_checkpoint(p / "last.pt") for p in (tmp_path / "whole", out))
    for name, tensor in whole["model"].items():
        assert torch.equal(tensor, resumed["model"][name]), name
    for a, b in zip(whole["history"], resumed["history"], strict=True):
        a.pop("epoch_seconds"), b.pop("epoch_seconds")
        assert a == b
    torch_states = [entry["rng"]["torch"] for entry in resumed["ranks"]]
    assert not torch.equal(*torch_states)  # each process drew from its own seed

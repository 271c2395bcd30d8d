"""Training (Algorithm 2): the run folder, eval, NaN stop, and one step of every config."""

import csv
import json
import math

import pytest
import torch

from stbp import PAPER_NETWORKS
from stbp import checkpoint as ck
from stbp.cli import main
from stbp.config import Settings, config_names, load_config, merge, to_toml
from stbp.devices import resolve_precision
from stbp.runs import run_training
from stbp.train import make_model

TINY_SPEC = "8C3(Enc)-AP2-16FC-Voting"


def tiny_config(**tables):
    """The demo on a tiny net and a few hundred digits (test split: the last 100)."""
    base = {
        "run": {"epochs": 2, "device": "cpu", "max_steps_per_epoch": 4, "eval_batch_size": 50,
                "precision": "fp32"},
        "data": {"T": 2, "n_train": 9900},
        "model": {"spec": TINY_SPEC},
        "optim": {"batch_size": 8},
    }
    for table, values in tables.items():
        base[table] = {**base.get(table, {}), **values}
    return merge(load_config("demo"), base)


def test_a_run_leaves_its_folder(tmp_path):
    out = tmp_path / "run"
    summary = run_training(tiny_config(), out)
    assert {p.name for p in out.iterdir()} >= {
        "config.toml", "metrics.csv", "last.pt", "best.pt", "curves.png", "summary.json",
    }  # fmt: skip
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc",
                "epoch_seconds", "lr"):  # fmt: skip
        assert math.isfinite(float(rows[-1][key]))
    assert any(k.startswith("rate_lif_") for k in rows[-1])
    stored = json.loads((out / "summary.json").read_text())
    assert stored == json.loads(json.dumps(summary)) and stored["seed"] == 0
    assert stored["parameters"] > 0 and stored["torch_version"] == torch.__version__
    state = ck.load_checkpoint(out / "last.pt")
    assert state["epoch"] == 2 and set(state["rng"]) >= {"python", "numpy", "torch"}
    assert float(rows[-1]["lr"]) == 0.0  # cosine decay reaches 0 at the end of the run


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_eval_command_reports_the_test_accuracy(tmp_path, capsys, precision):
    """By default in the precision the run trained and chose its checkpoints in."""
    out = tmp_path / "run"
    summary = run_training(tiny_config(run={"precision": precision}), out)
    assert main(["eval", "--checkpoint", str(out / "last.pt"), "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert f"accuracy {100 * summary['final_test_acc']:.2f}%" in text
    assert "firing rate lif_fc1" in text


def test_eval_of_a_corrupt_checkpoint_is_one_clear_line(tmp_path, capsys):
    (tmp_path / "last.pt").write_bytes(b"not a checkpoint")
    assert main(["eval", "--checkpoint", str(tmp_path / "last.pt")]) == 2
    err = capsys.readouterr().err
    assert "last.pt: not a readable checkpoint" in err and "Traceback" not in err


def test_unknown_config_and_missing_data_are_one_clear_line(tmp_path, capsys):
    assert main(["train", "--config", "nope"]) == 2
    assert "unknown config 'nope'" in capsys.readouterr().err
    assert main(["train", "--config", "nmnist", "--data-dir", str(tmp_path / "none"),
                 "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "none" in err and "does not exist" in err and "Traceback" not in err


def test_resume_refuses_a_checkpoint_of_other_settings(tmp_path):
    """Settings that change the network, the data or the optimizer are named, not crashed on."""
    out = tmp_path / "run"
    run_training(tiny_config(run={"epochs": 1}), out)
    other = tiny_config(run={"epochs": 2}, model={"spec": "8C3(Enc)-AP2-32FC-Voting"})
    with pytest.raises(ck.CheckpointError, match=r"last.pt was trained with other settings "
                       r"\(\[model\] spec: '8C3\(Enc\)-AP2-16FC-Voting' vs"):  # fmt: skip
        run_training(other, out, resume=True)
    with pytest.raises(ck.CheckpointError, match=r"\(\[data\] T: 2 vs 3\)"):
        run_training(tiny_config(run={"epochs": 2}, data={"T": 3}), out, resume=True)
    with pytest.raises(ck.CheckpointError, match=r"\[optim\] optimizer: 'adam' vs 'sgd'"):
        run_training(tiny_config(run={"epochs": 2}, optim={"optimizer": "sgd"}), out, resume=True)


def test_nan_loss_stops_with_epoch_and_step_and_keeps_the_last_checkpoint(tmp_path, monkeypatch,
                                                                          capsys):  # fmt: skip
    out = tmp_path / "run"
    run_training(tiny_config(run={"epochs": 1}), out)
    before = (out / "last.pt").read_bytes()
    import stbp.train as train_module

    real = train_module.LOSSES["mse"]
    calls = {"n": 0}

    def poisoned(scores, labels):
        calls["n"] += 1
        loss = real(scores, labels)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setitem(train_module.LOSSES, "mse", poisoned)
    code = main(["train", "--config", str(out / "config.toml"), "--out", str(out), "--resume",
                 "--epochs", "2"])  # fmt: skip
    assert code == 1
    err = capsys.readouterr().err
    assert "nan at epoch 2, step 3" in err and "last.pt (epoch 1)" in err
    assert (out / "last.pt").read_bytes() == before


# ------------------------------------------------------------ every config, one step


def write_cifar10(root, n=4):
    import pickle

    import numpy as np

    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"labels": [int(v) for v in rng.integers(0, 10, n)],
                 b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8)}  # fmt: skip
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    return root


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from stbp.data.emulate import write_emulated_dvs, write_emulated_nmnist

    root = tmp_path_factory.mktemp("tiny-data")
    write_emulated_nmnist(root / "nmnist", count=20, workers=1)
    write_emulated_dvs(root / "dvs", count=20, workers=1)
    write_cifar10(root / "cifar10")
    return {"nmnist": root / "nmnist", "cifar10-dvs": root / "dvs", "cifar10": root / "cifar10"}


CONFIGS = config_names()  # every shipped config


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_builds_its_network_with_and_without_neunorm(name):
    config = load_config(name)
    for neunorm in (False, True):
        config["model"]["neunorm"] = neunorm
        shape = config["model"]["in_shape"] or PAPER_NETWORKS[config["model"]["network"]][1]
        model = make_model(Settings.of(config).model, config["data"]["T"], tuple(shape))
        assert any("alpha" in k for k in model.state_dict()) == neunorm
        assert model.build_args["T"] == config["data"]["T"]


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_trains_one_step_on_tiny_data(name, tiny_data, tmp_path):
    config = load_config(name)
    kind = config["data"]["dataset"]
    config["data"]["dir"] = str(tiny_data.get(kind, ""))
    config["data"].update(T=2, n_train=9996)
    config["model"].update(spec=TINY_SPEC, in_shape=[], neunorm=True)
    config["optim"]["batch_size"] = 2
    config["run"].update(epochs=1, max_steps_per_epoch=1, device="cpu", workers=0)
    summary = run_training(config, tmp_path / name)
    state = ck.load_checkpoint(tmp_path / name / "last.pt")
    assert state["epoch"] == 1 and summary["parameters"] > 0
    assert math.isfinite(state["history"][0]["train_loss"])


def test_freed_memory_is_reused_unless_told_not_to(monkeypatch):
    import sys

    from stbp.devices import reuse_freed_memory

    monkeypatch.setenv("STBP_MALLOC", "default")
    assert reuse_freed_memory() is False
    monkeypatch.delenv("STBP_MALLOC")
    assert reuse_freed_memory() is sys.platform.startswith("linux")
    big = torch.ones(64, 2**20)  # 256 MB: served from the heap now, and freed back to it
    assert float(big.sum()) == 64 * 2**20


def test_auto_precision_is_bf16_only_where_the_cpu_computes_it(monkeypatch):
    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu) == "fp32" and resolve_precision("bf16", cpu) == "bf16"
    for avx512_bf16, amx, expected in ((False, False, "fp32"), (True, False, "bf16"),
                                       (False, True, "bf16")):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v)
        assert resolve_precision("auto", cpu) == expected


def test_auto_precision_on_cuda_counts_only_native_bf16(monkeypatch):
    """Emulated bf16 (T4, V100, RTX 20xx) is slower than fp32: `auto` must not pick it."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                        lambda including_emulation=True: including_emulation)  # fmt: skip
    assert resolve_precision("auto", torch.device("cuda")) == "fp32"


def test_cache_dir_flag_puts_the_frame_cache_there(tiny_data, tmp_path, capsys):
    config = load_config("nmnist-emulated")
    config["run"].update(epochs=1, max_steps_per_epoch=1, device="cpu", workers=0)
    config["data"].update(T=2)
    config["model"].update(spec=TINY_SPEC, in_shape=[])
    (tmp_path / "c.toml").write_text(to_toml(config))
    cache, out = tmp_path / "frames", tmp_path / "run"
    assert main(["train", "--config", str(tmp_path / "c.toml"), "--data-dir",
                 str(tiny_data["nmnist"]), "--cache-dir", str(cache), "--out", str(out)]) == 0
    before = sorted(p.name for p in cache.rglob("*.npz"))
    assert len(before) == 20  # every recording of the tiny set, train and test
    assert main(["eval", "--checkpoint", str(out / "last.pt"), "--device", "cpu",
                 "--cache-dir", str(cache)]) == 0  # fmt: skip
    assert sorted(p.name for p in cache.rglob("*.npz")) == before  # read there, nothing new

"""Your own network (`[model] factory`): built and checked, trained, killed and resumed
bit-identical, evaluated, under two processes, and the shipped ResNet example."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import checkpoint_position, start_training, stop_at

from stbp import checkpoint as ck
from stbp import factory
from stbp.cli import main
from stbp.config import ConfigError, ModelSettings, load_config, merge, to_toml
from stbp.factory import FactoryError
from stbp.runs import run_training
from stbp.train import make_model

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "STBP_COMPILE": "0", "OMP_NUM_THREADS": "1", "STBP_SPARSE": "0"}
MODULE = "tiny_factory_nets"  # written into the test's folder, imported from there
SOURCE = '''
"""Small networks of one's own for the factory tests."""
import torch
from torch import nn

import stbp
from stbp.blocks import TDBatchNorm
from stbp.layers import Encoding, SeqDropout, Temporal, Voting

CALLS = []


class Tiny(nn.Module):
    def __init__(self, T, in_shape, num_classes, width, dropout):
        super().__init__()
        c, h, w = in_shape
        self.conv = Encoding(nn.Conv2d(c, width, 3, 2, padding=1), T, 3)
        self.norm = TDBatchNorm(width)
        self.lif = stbp.LIF()
        self.pool = Temporal(nn.AvgPool2d(2))
        self.drop = SeqDropout(dropout)
        self.fc = Temporal(nn.Linear(width * (h // 4) * (w // 4), num_classes * 2))
        self.norm_fc = TDBatchNorm(num_classes * 2)
        self.lif_fc = stbp.LIF()
        self.vote = Voting(num_classes, 2)

    def forward(self, x):
        h = self.drop(self.pool(self.lif(self.norm(self.conv(x)))).flatten(2))
        return self.vote(self.lif_fc(self.norm_fc(self.fc(h))))


def tiny(T, in_shape, num_classes=10, width=4, dropout=0.0):
    CALLS.append({"T": T, "in_shape": in_shape, "num_classes": num_classes, "width": width})
    return Tiny(T, in_shape, num_classes, width, dropout)


def frames_only(T, in_shape):
    """Takes [T, B, C, H, W] only (a static batch fails in its first line)."""
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(in_shape[0], 10)

        def forward(self, x):
            assert x.dim() == 5, "frames only"
            return self.fc(x.mean(dim=(0, 3, 4)))
    return Net()


def seen_input(T, in_shape):
    """Records what reaches it."""
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(in_shape[0], 10)
            self.seen = []

        def forward(self, x):
            self.seen.append(x)
            return self.fc(x.mean(dim=(0, 3, 4)))
    return Net()


def not_a_module(T, in_shape):
    return 3


def per_step_scores(T, in_shape):
    return nn.Sequential(nn.Flatten(2), nn.LazyLinear(10))  # [T, B, 10], not [B, 10]


def broken(T, in_shape):
    raise RuntimeError("out of ideas")


no_function = 42
'''


@pytest.fixture
def nets(tmp_path, monkeypatch):
    """The module `tiny_factory_nets` in the test's folder, which is the current one."""
    (tmp_path / f"{MODULE}.py").write_text(SOURCE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield __import__(MODULE)
    sys.modules.pop(MODULE, None)


def settings(name="tiny", **kwargs):
    return ModelSettings(factory=f"{MODULE}:{name}", factory_kwargs=kwargs)


# ------------------------------------------------------------------------ building


def test_the_factory_gets_T_in_shape_and_its_kwargs(nets):
    net = factory.make_model(settings(width=3, num_classes=7), 5, [1, 28, 28])
    assert nets.CALLS[-1] == {"T": 5, "in_shape": (1, 28, 28), "num_classes": 7, "width": 3}
    assert net.factory_args == {"factory": f"{MODULE}:tiny", "kwargs": {"width": 3,
                                "num_classes": 7}, "T": 5, "in_shape": [1, 28, 28],
                                "encoding": "analog", "outputs": 7}  # fmt: skip
    assert net(torch.rand(2, 1, 28, 28)).shape == (2, 7)


def test_train_make_model_builds_the_factory_network(nets):
    net = make_model(settings(), 3, (1, 28, 28))
    assert isinstance(net, nets.Tiny) and net.factory_args["T"] == 3


def test_the_dummy_batch_changes_neither_the_network_nor_the_random_numbers(nets):
    torch.manual_seed(0)
    net = factory.make_model(settings(dropout=0.5), 3, (1, 28, 28))
    after = torch.get_rng_state()
    torch.manual_seed(0)
    nets.tiny(T=3, in_shape=(1, 28, 28), dropout=0.5)
    assert torch.equal(after, torch.get_rng_state())
    assert net.training and int(net.norm.num_batches_tracked) == 0
    assert torch.equal(net.norm.running_mean, torch.zeros(4))


def test_a_network_of_frames_is_checked_on_frames(nets):
    net = factory.make_model(settings("frames_only"), 4, (2, 8, 8))
    assert net.factory_args["outputs"] == 10


def test_a_non_analog_encoding_puts_the_encoder_in_front(nets):
    net = factory.make_model(settings("seen_input"), 4, (1, 6, 6), encoding="bernoulli")
    assert isinstance(net, factory.Encoded) and net.factory_args["encoding"] == "bernoulli"
    net.network.seen.clear()
    net(torch.rand(3, 1, 6, 6))
    (x,) = net.network.seen
    assert x.shape == (4, 3, 1, 6, 6) and set(x.unique().tolist()) <= {0.0, 1.0}
    frames = torch.rand(4, 3, 1, 6, 6)
    net(frames)
    assert net.network.seen[-1] is frames  # sequences pass through


@pytest.mark.parametrize("name, kwargs, words", [
    ("", {}, "not of the form 'package.module:function'"),
    ("a:b:c", {}, "not of the form"),
    ("not_there_at_all:f", {}, "module 'not_there_at_all' cannot be imported (ModuleNotFoundError"),
    (f"{MODULE}:nope", {}, f"module '{MODULE}' ("),
    (f"{MODULE}:no_function", {}, "'no_function' is not a function"),
    (f"{MODULE}:broken", {}, "failed: RuntimeError: out of ideas"),
    (f"{MODULE}:tiny", {"depth": 3}, "TypeError: tiny() got an unexpected keyword argument"),
    (f"{MODULE}:tiny", {"T": 3}, "may not set T: stbp passes T"),
    (f"{MODULE}:not_a_module", {}, "returned a builtins.int, not a torch.nn.Module"),
    (f"{MODULE}:per_step_scores", {}, "does not map a batch to class scores [2, num_classes]"),
])  # fmt: skip
def test_a_factory_that_cannot_be_used_is_one_clear_error(nets, name, kwargs, words):
    with pytest.raises(FactoryError) as caught:
        factory.build(name, kwargs, 3, (1, 28, 28))
    message = str(caught.value)
    assert words in message and "\n" not in message and "[model] factory" in message
    assert isinstance(caught.value, ConfigError)


def test_scores_of_another_width_than_num_classes_are_refused(nets, monkeypatch):
    monkeypatch.setattr(nets, "tiny", lambda T, in_shape, num_classes: nets.Tiny(
        T, in_shape, 10, 4, 0.0))  # fmt: skip
    with pytest.raises(FactoryError, match=r"\[2, 12\]: static input \[2, 1, 28, 28\] gave "
                                           r"shape \[2, 10\]"):  # fmt: skip
        factory.build(f"{MODULE}:tiny", {"num_classes": 12}, 3, (1, 28, 28))


# ------------------------------------------------------------------------ checkpoints


def test_a_checkpoint_stores_the_factory_and_rebuilds_it(nets, tmp_path):
    net = factory.make_model(settings(width=3), 2, (1, 28, 28))
    state = {"model": net.state_dict(), **ck.network_entries(net)}
    assert "build_args" not in state and state["factory"]["kwargs"] == {"width": 3}
    ck.save_atomic(state, tmp_path / "net.pt")
    loaded = ck.load_model(tmp_path / "net.pt")
    x = torch.rand(3, 1, 28, 28)
    torch.testing.assert_close(loaded(x), net.eval()(x))
    ck.check_same_network(ck.load_checkpoint(tmp_path / "net.pt"), net, tmp_path / "net.pt")


def test_a_factory_not_importable_at_load_time_is_one_clear_error(nets, tmp_path):
    net = factory.make_model(settings(), 2, (1, 28, 28))
    ck.save_atomic({"model": net.state_dict(), **ck.network_entries(net)}, tmp_path / "n.pt")
    (tmp_path / f"{MODULE}.py").unlink()
    sys.modules.pop(MODULE)
    with pytest.raises(ck.CheckpointError, match=rf"{tmp_path / 'n.pt'}: its network cannot be "
                       rf"built again here: .*module '{MODULE}' cannot be imported"):  # fmt: skip
        ck.load_model(tmp_path / "n.pt")


def test_check_same_network_compares_factory_and_kwargs(nets, tmp_path):
    stored = {"factory": factory.make_model(settings(width=3), 2, (1, 28, 28)).factory_args}
    other = factory.make_model(settings(width=5), 2, (1, 28, 28))
    with pytest.raises(ck.CheckpointError, match=r"different network .*kwargs: \{'width': 3\} vs "
                                                 r"\{'width': 5\}"):  # fmt: skip
        ck.check_same_network(stored, other, tmp_path / "last.pt")
    snn = make_model(ModelSettings(spec="8C3(Enc)-AP2-16FC-Voting"), 2, (1, 28, 28))
    with pytest.raises(ck.CheckpointError, match=r"built from the factory .* asks for one from "
                                                 r"stbp's notation"):  # fmt: skip
        ck.check_same_network(stored, snn, tmp_path / "last.pt")


# ------------------------------------------------------------------------ training


def tiny_config(**tables):
    """The demo's data (test split: the last 100 digits) on the tiny factory network."""
    base = {
        "run": {"epochs": 2, "device": "cpu", "max_steps_per_epoch": 6, "eval_batch_size": 50,
                "precision": "fp32", "checkpoint_every": 1},
        "data": {"T": 2, "n_train": 9900, "val_fraction": 0.0, "augment_shift": 2},
        "model": {"factory": f"{MODULE}:tiny", "factory_kwargs": {"width": 4, "dropout": 0.3}},
        "optim": {"batch_size": 8},
    }  # fmt: skip
    for table, values in tables.items():
        base[table] = {**base.get(table, {}), **values}
    return merge(load_config("demo"), base)


def test_a_factory_network_trains_and_evaluates(nets, tmp_path, capsys):
    out = tmp_path / "run"
    summary = run_training(tiny_config(run={"epochs": 1}), out)
    assert summary["network"] == f"{MODULE}:tiny" and summary["epochs"] == 1
    state = ck.load_checkpoint(out / "last.pt")
    assert state["factory"]["factory"] == f"{MODULE}:tiny" and "build_args" not in state
    assert state["config"]["model"]["factory_kwargs"] == {"width": 4, "dropout": 0.3}
    assert int(state["model"]["norm.num_batches_tracked"]) == 6  # not the dummy batch
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(out / "last.pt"), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert f"accuracy {100 * summary['final_test_acc']:.2f}%" in printed
    assert "firing rate lif:" in printed and "firing rate lif_fc:" in printed


def test_too_few_class_scores_for_the_data_are_refused(nets, tmp_path):
    config = tiny_config(model={"factory_kwargs": {"num_classes": 4}})
    with pytest.raises(ConfigError, match="gives 4 class scores, but the training set has 10"):
        run_training(config, tmp_path / "run")


def train(config: Path, out: Path, *extra: str) -> subprocess.Popen:
    """`stbp train` in the folder of `config` (where the factory's module lies)."""
    return start_training(config, out, *extra, env=ENV, cwd=config.parent)


def test_a_killed_factory_run_resumes_bit_identical(tmp_path):
    (tmp_path / f"{MODULE}.py").write_text(SOURCE)
    config = tmp_path / "tiny.toml"
    config.write_text(to_toml(tiny_config()))
    stop_at(train(config, tmp_path / "stopped"), tmp_path / "stopped", 2, 2, signal.SIGKILL)
    assert checkpoint_position(tmp_path / "stopped" / "last.pt") < (2, 0)
    resumed, whole = (
        train(config, tmp_path / "stopped", "--resume"),
        train(config, tmp_path / "whole"),
    )
    for process in (resumed, whole):
        assert process.wait() == 0, process.communicate()
    expected, got = (ck.load_checkpoint(tmp_path / name / "last.pt")
                     for name in ("whole", "stopped"))  # fmt: skip
    assert got["epoch"] == 2 and got["factory"] == expected["factory"]
    for name, tensor in expected["model"].items():
        assert torch.equal(tensor, got["model"][name]), name
    for a, b in zip(expected["history"], got["history"], strict=True):
        assert {k: v for k, v in a.items() if k != "epoch_seconds"} == {
            k: v for k, v in b.items() if k != "epoch_seconds"
        }


# ------------------------------------------------------------------------ the example


def test_the_resnet_example_trains_from_the_repository_root(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    config = tiny_config(run={"epochs": 1, "max_steps_per_epoch": 3, "checkpoint_every": 0},
                         model={"factory": "examples.resnet_factory:resnet",
                                "factory_kwargs": {"widths": [4, 8]}})  # fmt: skip
    summary = run_training(config, tmp_path / "run")
    state = ck.load_checkpoint(tmp_path / "run" / "last.pt")
    assert summary["epochs"] == 1 and state["factory"]["kwargs"] == {"widths": [4, 8]}
    assert any(k.startswith("stages.1.shortcut.") for k in state["model"])
    again = ck.model_from_state(state, tmp_path / "run" / "last.pt")
    assert again(torch.rand(2, 1, 28, 28)).shape == (2, 10)

"""`--deterministic`: the settings for repeatable CUDA runs are on while a run trains, recorded
in its config, and put back afterwards (the process, pytest's included, is left as it was)."""

import os

import pytest
import torch

import stbp.runs as runs
import stbp.train as train
from stbp.cli import main
from stbp.config import load_config, merge
from stbp.devices import deterministic

cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul


def settings() -> dict:
    return {
        "algorithms": torch.are_deterministic_algorithms_enabled(),
        "warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
        "cudnn_deterministic": cudnn.deterministic,
        "cudnn_benchmark": cudnn.benchmark,
        "matmul_tf32": matmul.allow_tf32,
        "cudnn_tf32": cudnn.allow_tf32,
        "cublas": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    }


DETERMINISTIC = {"algorithms": True, "warn_only": True, "cudnn_deterministic": True,
                 "cudnn_benchmark": False, "matmul_tf32": False, "cudnn_tf32": False,
                 "cublas": ":4096:8"}  # fmt: skip


@pytest.fixture
def fast_settings(monkeypatch):
    """The opposite of every deterministic setting, put back by monkeypatch afterwards."""
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = settings()
    cudnn.benchmark, matmul.allow_tf32, cudnn.allow_tf32 = True, True, True
    yield settings()
    cudnn.benchmark, matmul.allow_tf32, cudnn.allow_tf32 = (
        before["cudnn_benchmark"], before["matmul_tf32"], before["cudnn_tf32"]
    )  # fmt: skip


def test_the_settings_hold_inside_the_block_and_are_put_back(fast_settings):
    with deterministic(True):
        assert settings() == DETERMINISTIC
    assert settings() == fast_settings


def test_they_are_put_back_when_the_block_fails(fast_settings):
    with pytest.raises(RuntimeError, match="boom"), deterministic(True):
        raise RuntimeError("boom")
    assert settings() == fast_settings


def test_off_changes_nothing(fast_settings):
    with deterministic(False):
        assert settings() == fast_settings


def test_a_cublas_workspace_set_by_the_user_is_kept(fast_settings, monkeypatch):
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    with deterministic(True):
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"


def test_flags_set_through_the_fp32_precision_api_are_put_back(fast_settings):
    cudnn.conv.fp32_precision = "tf32"
    cudnn.rnn.fp32_precision = "ieee"  # the legacy cudnn.allow_tf32 cannot be read now
    try:
        with deterministic(True):
            assert not cudnn.allow_tf32 and cudnn.conv.fp32_precision != "tf32"
        assert (cudnn.conv.fp32_precision, cudnn.rnn.fp32_precision) == ("tf32", "ieee")
    finally:
        cudnn.allow_tf32 = True  # back to a state both APIs read


TINY = {
    "run": {"epochs": 1, "device": "cpu", "max_steps_per_epoch": 2, "eval_batch_size": 100,
            "precision": "fp32", "deterministic": True},
    "data": {"T": 2, "n_train": 9800},
    "model": {"spec": "8C3(Enc)-AP2-16FC-Voting"},
    "optim": {"batch_size": 8},
}  # fmt: skip


def test_a_deterministic_run_trains_under_the_settings_and_records_them(tmp_path, monkeypatch,
                                                                        fast_settings):  # fmt: skip
    seen = []
    step = train.train_step

    def recording_step(*args):
        seen.append(settings())
        return step(*args)

    monkeypatch.setattr(train, "train_step", recording_step)
    out = tmp_path / "run"
    summary = runs.run_training(merge(load_config("demo"), TINY), out)
    assert seen and all(s == DETERMINISTIC for s in seen)
    assert settings() == fast_settings
    assert "deterministic = true" in (out / "config.toml").read_text()
    assert summary["deterministic"] is True


def test_the_flag_sets_the_key_and_may_change_on_resume(tmp_path, monkeypatch, fast_settings):
    calls = []
    monkeypatch.setattr(
        "stbp.commands.run_training", lambda config, *a: calls.append(config) or {"epochs": 0}
    )
    assert main(["train", "--config", "demo", "--deterministic", "--out", str(tmp_path)]) == 0
    assert main(["train", "--config", "demo", "--no-deterministic", "--out", str(tmp_path)]) == 0
    assert [c["run"]["deterministic"] for c in calls] == [True, False]
    assert runs.setting_differences(calls[0], calls[1]) == []  # a resume may turn it on or off

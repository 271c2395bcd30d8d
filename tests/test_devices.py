"""stbp on every device present: a short training run, the compiled kernels against their
references, a training loop whose only host-device syncs are the NaN check and the end of the
epoch, and the fused optimizer's fallback.

Each test takes the `device` fixture (tests/conftest.py): it runs on the CPU, and on CUDA
where there is a CUDA device (listed as skipped elsewhere). On CUDA the tests train with the
compiled kernels, the path `stbp train` takes there.
"""

import json
import math
import warnings

import pytest
import torch
from torch import nn

from stbp import distributed as dd
from stbp import kernels, train
from stbp.cli import main
from stbp.config import OptimSettings, Settings, load_config, merge
from stbp.datasets import make_splits
from stbp.neunorm import neunorm, neunorm_reference
from stbp.neuron import LIFParameters, lif_reference, lif_with_count
from stbp.runs import make_trainer, run_training

TINY_SPEC = "8C3(Enc)-AP2-16FC-Voting"


def tiny_config(device: str, precision: str = "fp32", steps: int = 2, **model) -> dict:
    """The demo's recipe on a tiny net, a few steps, T = 2; the last 100 digits as test set,
    no validation split (one evaluation per epoch)."""
    return merge(load_config("demo"), {
        "run": {"epochs": 1, "device": device, "precision": precision,
                "max_steps_per_epoch": steps, "eval_batch_size": 50},
        "data": {"T": 2, "n_train": 9900, "val_fraction": 0.0},
        "model": {"spec": TINY_SPEC, **model},
        "optim": {"batch_size": 8, "calibrate_rate": 0.0},
    })  # fmt: skip


@pytest.fixture
def compiled(monkeypatch):
    """The compiled kernels on, from a clean slate: Dynamo's caches emptied (so that variants
    compiled by earlier tests do not count towards its recompile limit) and stbp's own table
    of compiled kernels and fallback state fresh."""
    import torch._dynamo

    monkeypatch.setenv("STBP_COMPILE", "1")
    monkeypatch.setattr(kernels, "_COMPILED", {})
    monkeypatch.setattr(kernels, "_STATE", {"failed": False})
    monkeypatch.setattr(kernels, "_OVER_LIMIT", set())
    torch._dynamo.reset()


def _compile_on_cuda(device: torch.device, monkeypatch) -> None:
    # The eager kernels on the CPU keep the suite fast; on CUDA the compiled ones are what
    # `stbp train` runs (Triton).
    if device.type == "cuda":
        monkeypatch.setenv("STBP_COMPILE", "1")


def _assert_ran_compiled(caught: list, *names: str) -> None:
    """Every kernel of `names` ran compiled: none fell back to eager, none hit the recompile
    limit, and stbp.kernels warned of neither."""
    messages = [str(w.message) for w in caught]
    assert not kernels.failed(), "torch.compile fell back to eager"
    assert not [m for m in messages if "torch.compile failed" in m or "stbp kernel" in m]
    assert not kernels._OVER_LIMIT
    assert sorted(k.__name__ for k in kernels._COMPILED) == sorted(names)


# ------------------------------------------------------------------------- training runs


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_one_epoch_trains_and_evaluates_on_each_device(device, precision, tmp_path, capsys,
                                                        monkeypatch):  # fmt: skip
    _compile_on_cuda(device, monkeypatch)
    out = tmp_path / "run"
    summary = run_training(tiny_config(device.type, precision), out)
    assert summary["device"].startswith(device.type) and summary["precision"] == precision
    assert summary["epochs"] == 1 and math.isfinite(summary["final_test_acc"])
    assert main(["eval", "--checkpoint", str(out / "last.pt"), "--device", device.type]) == 0
    assert f"accuracy {100 * summary['final_test_acc']:.2f}%" in capsys.readouterr().out


# ------------------------------------------------------------------- the compiled kernels


def test_compiled_lif_forward_and_backward_match_the_reference(device, compiled):
    g = torch.Generator().manual_seed(1)
    x_ref = (torch.randn(5, 2, 3, generator=g, dtype=torch.float64) * 0.6 + 0.3).requires_grad_()
    grad_out = torch.randn(x_ref.shape, generator=g, dtype=torch.float64)
    p = LIFParameters(0.2, 0.5, "triangle", 1.0)
    ref = lif_reference(x_ref, p)  # float64, per step, on the CPU
    (g_ref,) = torch.autograd.grad(ref, x_ref, grad_out)
    x = x_ref.detach().to(device).requires_grad_()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        spikes, count = lif_with_count(x, *p)
        (grad,) = torch.autograd.grad(spikes, x, grad_out.to(device))
    _assert_ran_compiled(caught, "scan_forward", "scan_backward")
    assert spikes.device.type == device.type and ref.sum() > 0
    assert torch.equal(spikes.cpu(), ref) and count.item() == ref.sum().item()
    torch.testing.assert_close(grad.cpu(), g_ref, rtol=0, atol=1e-12)


def test_compiled_neunorm_forward_and_backward_match_the_reference(device, compiled):
    g = torch.Generator().manual_seed(2)
    o_ref = (torch.rand(4, 2, 3, 5, 5, generator=g, dtype=torch.float64) < 0.3).double()
    alpha_ref = torch.rand(3, 5, 5, generator=g, dtype=torch.float64) - 0.3
    grad_out = torch.randn(o_ref.shape, generator=g, dtype=torch.float64)
    for t in (o_ref, alpha_ref):
        t.requires_grad_()
    ref = neunorm_reference(o_ref, alpha_ref, k=0.8)
    grads_ref = torch.autograd.grad(ref, (o_ref, alpha_ref), grad_out)
    o, alpha = (t.detach().to(device).requires_grad_() for t in (o_ref, alpha_ref))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = neunorm(o, alpha, k=0.8)
        grads = torch.autograd.grad(out, (o, alpha), grad_out.to(device))
    _assert_ran_compiled(caught, "neunorm_forward", "neunorm_backward")
    torch.testing.assert_close(out.cpu(), ref, rtol=0, atol=1e-12)
    for a, b in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(a.cpu(), b, rtol=0, atol=1e-12)


# ------------------------------------------------------------------- host-device syncs


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize(
    "compile_kernels, precision", [(True, "fp32"), (True, "bf16"), (False, "fp32")],
    ids=["compiled-fp32", "compiled-bf16", "eager-fp32"],
)  # fmt: skip
def test_training_steps_sync_only_at_the_nan_check(compile_kernels, precision, monkeypatch):
    """Under `torch.cuda.set_sync_debug_mode("error")` every host-device sync raises. From
    the first batch of an epoch to its end, the loop may sync only in `check_finite` (every
    CHECK_EVERY steps and after the last) and in the epoch's final sum of the totals."""
    monkeypatch.setenv("STBP_COMPILE", "1" if compile_kernels else "0")
    config = tiny_config("cuda", precision, steps=12, neunorm=True, dropout=0.3)
    settings = Settings.of(config)
    ctx = dd.Context(device=torch.device("cuda"))
    trainer = make_trainer(settings, ctx, make_splits(settings.data, "sync-check"))
    train.train_one_epoch(trainer, 0)  # warm-up: compiles, creates the optimizer's state

    checked, real_check, real_sum, loader = [], train.check_finite, dd.all_sum, trainer.loader

    def check_finite(trainer, epoch, step, losses):
        torch.cuda.set_sync_debug_mode(0)
        try:
            real_check(trainer, epoch, step, losses)
        finally:
            torch.cuda.set_sync_debug_mode("error")
        checked.append(step)

    def all_sum(ctx, values):
        torch.cuda.set_sync_debug_mode(0)  # the end of the epoch: its one reduction
        return real_sum(ctx, values)

    def batches_under_sync_errors(batches, generator=None):
        torch.cuda.set_sync_debug_mode("error")  # from the first batch on
        yield from loader(batches, generator)

    monkeypatch.setattr(train, "check_finite", check_finite)
    monkeypatch.setattr(dd, "all_sum", all_sum)
    monkeypatch.setattr(trainer, "loader", batches_under_sync_errors)
    try:
        row = train.train_one_epoch(trainer, 1)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert checked == [train.CHECK_EVERY - 1, 11]
    assert math.isfinite(row["train_loss"])


# ----------------------------------------------------------------- the fused optimizers


class SGDWithoutFused(torch.optim.SGD):
    """SGD as torch 2.2 has it: no `fused` argument."""

    def __init__(self, params, **kwargs):
        if "fused" in kwargs:
            raise TypeError("SGD.__init__() got an unexpected keyword argument 'fused'")
        super().__init__(params, **kwargs)


def test_an_optimizer_without_a_fused_argument_falls_back_to_the_plain_one(monkeypatch):
    monkeypatch.setattr(torch.optim, "SGD", SGDWithoutFused)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2, 3))
    optimizer = train.make_optimizer(model, OptimSettings(optimizer="sgd"))
    assert isinstance(optimizer, SGDWithoutFused)
    assert not optimizer.param_groups[0].get("fused")
    assert [g["lr"] for g in optimizer.param_groups] == [1e-3, 0.01]  # conv, FC


def test_the_fused_optimizer_is_used_where_torch_has_it():
    model = nn.Linear(2, 3)
    for name in ("adam", "sgd"):
        optimizer = train.make_optimizer(model, OptimSettings(optimizer=name))
        assert optimizer.param_groups[0]["fused"] is True


# ------------------------------------------------------------- benchmarks/gpu_check.py


@pytest.fixture
def gpu_check(monkeypatch):
    """benchmarks/gpu_check.py as a module (its bookkeeping: no check is run for real)."""
    import importlib
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    return importlib.import_module("gpu_check")


def test_gpu_check_runs_every_check_asked_for_although_one_crashes(gpu_check, monkeypatch,
                                                                   tmp_path, capsys):  # fmt: skip
    def crash(env):
        raise RuntimeError("simulated crash")

    monkeypatch.setitem(gpu_check.CHECKS, "synapses", crash)
    monkeypatch.setitem(gpu_check.CHECKS, "syncs", lambda env: gpu_check.Outcome("n/a", "-"))
    monkeypatch.setitem(gpu_check.CHECKS, "kernels", lambda env: gpu_check.verdict(True, "ok"))
    only = "synapses,syncs,kernels"
    assert gpu_check.main(["--device", "cpu", "--only", only, "--out", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "| synapses | fail | 0 | RuntimeError: simulated crash |" in out
    assert out.rstrip().endswith("gpu_check: 1 passed, 1 failed")
    record = json.loads((tmp_path / "gpu_check.json").read_text())
    assert [c["status"] for c in record["checks"].values()] == ["fail", "n/a", "pass"]
    with pytest.raises(SystemExit, match="unknown check speeds; choose from kernels"):
        gpu_check.main(["--device", "cpu", "--only", "speeds"])


def test_gpu_check_compares_gradients_only_where_the_spikes_agree(gpu_check):
    ref = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])  # [T = 2, 3 neurons]
    spikes = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # neuron 2 differs at t = 0
    ref_grad = torch.ones(2, 3)
    grad = torch.tensor([[1.0, 1.5, 9.0], [1.0, 1.0, 9.0]])  # off by 0.5 at neuron 1
    mismatches, ratio = gpu_check.compare_spikes_and_grads(spikes, grad, ref, ref_grad,
                                                           rtol=0.0, atol=0.25)  # fmt: skip
    assert mismatches == 1 and ratio == 2.0  # 0.5 / 0.25; neuron 2's 8.0 left out

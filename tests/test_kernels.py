import pytest
import torch

from stbp import kernels


def _double(x: torch.Tensor) -> torch.Tensor:
    return x * 2


def _steps(x: torch.Tensor) -> torch.Tensor:
    for t in range(x.shape[0]):  # one compiled variant per length, as the LIF scans
        x = x + t
    return x


@pytest.fixture
def compiling(monkeypatch):
    """Compilation on, with this test's own compiled-kernel table and state."""
    monkeypatch.setenv("STBP_COMPILE", "1")
    monkeypatch.setattr(kernels, "_COMPILED", {})
    monkeypatch.setattr(kernels, "_STATE", {"failed": False})
    monkeypatch.setattr(kernels, "_OVER_LIMIT", set())


def _raising(err: Exception):
    def compiled(*args):
        raise err

    return compiled


def test_out_of_memory_in_a_compiled_call_is_raised_not_retried(compiling):
    kernels._COMPILED[_double] = _raising(torch.OutOfMemoryError("CUDA out of memory"))
    with pytest.raises(torch.OutOfMemoryError):
        kernels.run(_double, torch.ones(3))
    assert not kernels.failed()


def test_device_errors_are_raised(compiling):
    kernels._COMPILED[_double] = _raising(RuntimeError("CUDA error: an illegal memory access"))
    with pytest.raises(RuntimeError, match="illegal memory access"):
        kernels.run(_double, torch.ones(3))
    assert not kernels.failed()


def test_compiler_failure_warns_and_runs_eagerly(compiling):
    from torch._inductor.exc import InductorError, InvalidCxxCompiler

    kernels._COMPILED[_double] = _raising(InductorError(InvalidCxxCompiler(), None))
    with pytest.warns(UserWarning, match="torch.compile failed.*No working C\\+\\+ compiler"):
        out = kernels.run(_double, torch.ones(3))
    assert torch.equal(out, torch.full((3,), 2.0)) and kernels.failed()
    assert torch.equal(kernels.run(_double, torch.ones(2)), torch.full((2,), 2.0))


def test_recompile_limit_warns_and_runs_the_new_variant_eagerly(compiling):
    from torch._dynamo import config

    # config.patch, not monkeypatch: monkeypatch's undo deletes the entry and hides it from torch
    with config.patch(recompile_limit=1):
        assert torch.equal(kernels.run(_steps, torch.zeros(2, 3)), torch.ones(2, 3))
        with pytest.warns(UserWarning, match="_steps needs more than .*recompile_limit = 1"):
            assert torch.equal(kernels.run(_steps, torch.zeros(3, 3)), torch.full((3, 3), 3.0))
    assert not kernels.failed()

"""Test-wide settings: the eager LIF kernels (the tests that check the compiled ones turn them
on themselves), so the suite pays no torch.compile start-up per time-window length; no
crossover timing for the event-driven synapses; and the `device` fixture, which runs a test on
every device present."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

os.environ.setdefault("STBP_COMPILE", "0")
# Event-driven synapses run where the stored crossover says so, but the tests never time a
# layer to measure one (tests/test_sparse_dispatch.py does, in its own cache folder).
os.environ.setdefault("STBP_SPARSE_CALIBRATE", "0")

DATA = Path(__file__).parent / "data"

NO_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
# Every test that takes `device` runs on the CPU and on CUDA; without a CUDA device the cuda
# case is listed as skipped rather than left out, so a CPU-only run shows what it did not test.
DEVICES = [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=NO_CUDA)]


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    """The device a test runs on: the CPU, then CUDA (skipped where there is none)."""
    return torch.device(request.param)


@pytest.fixture
def nmnist_sample() -> Path:
    return DATA / "nmnist_03263.bin"


def checkpoint_position(path: Path) -> tuple[int, int]:
    """(epochs done, steps done in the next epoch) of the checkpoint at `path`; (0, 0) while
    there is none (a run that is still starting)."""
    from stbp import checkpoint as ck

    try:
        state = ck.load_checkpoint(path)
    except ck.CheckpointError:
        return (0, 0)
    return state["epoch"], state.get("step", 0)


def start_training(config: Path, out: Path, *extra: str, env: dict, cwd=None) -> subprocess.Popen:
    """`python -m stbp train --config CONFIG --out OUT [extra]` as a child process."""
    cmd = [sys.executable, "-m", "stbp", "train", "--config", str(config), "--out", str(out)]
    return subprocess.Popen([*cmd, *extra], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip


def stop_at(process: subprocess.Popen, out: Path, epoch: int, step: int, sig: int):
    """Send `sig` once the run in `out` has saved step `step` of epoch `epoch` (1-based);
    its `(stdout, stderr)`."""
    while checkpoint_position(out / "last.pt") < (epoch - 1, step):
        assert process.poll() is None, process.communicate()
        time.sleep(0.01)
    process.send_signal(sig)
    return process.communicate(timeout=120)

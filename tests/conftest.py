"""Test-wide settings: the eager LIF kernels (one test checks the compiled ones explicitly),
so the suite pays no torch.compile start-up per time-window length."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("STBP_COMPILE", "0")

DATA = Path(__file__).parent / "data"


@pytest.fixture
def nmnist_sample() -> Path:
    return DATA / "nmnist_03263.bin"

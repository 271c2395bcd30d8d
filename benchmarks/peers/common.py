"""Shared pieces of the peer networks: the layers of stbp's "nmnist-small" network,
128C3(Enc)-128C3-AP2-128C3-256C3-AP2-1024FC-Voting on [T, B, 2, 34, 34] (plain torch only:
this runs in the peers' throw-away venv, where stbp is not installed)."""

from __future__ import annotations

import importlib.metadata

import torch
from torch import nn

DECAY, THRESHOLD = 0.2, 0.5  # stbp's LIFParameters defaults
NUM_CLASSES, VOTES = 10, 10


def synapses() -> list[nn.Module]:
    """The stateless layers in order; each conv/linear is followed by LIF neurons."""
    return [
        nn.Conv2d(2, 128, 3, padding=1),
        nn.Conv2d(128, 128, 3, padding=1),
        nn.AvgPool2d(2),
        nn.Conv2d(128, 128, 3, padding=1),
        nn.Conv2d(128, 256, 3, padding=1),
        nn.AvgPool2d(2),
        nn.Sequential(nn.Flatten(), nn.Linear(256 * 8 * 8, 1024)),
        nn.Linear(1024, NUM_CLASSES * VOTES),
    ]


def needs_lif(module: nn.Module) -> bool:
    return not isinstance(module, nn.AvgPool2d)


def vote(spikes_sum: torch.Tensor, T: int) -> torch.Tensor:
    """Voting layer: output spikes summed over T `[B, 100]` -> class scores `[B, 10]`."""
    rates = spikes_sum / T
    return rates.view(rates.shape[0], NUM_CLASSES, VOTES).mean(dim=-1)


def version(dist: str) -> str:
    return f"{dist} {importlib.metadata.version(dist)}"

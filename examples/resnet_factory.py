"""A small spiking ResNet of stbp's building blocks, for `stbp train --model`.

From the repository's root folder (stbp puts the folder it runs in first on `sys.path`):

    stbp train --config demo --model examples.resnet_factory:resnet --epochs 1

or in a config: `[model] factory = "examples.resnet_factory:resnet"` and, to change it,
`[model] factory_kwargs = {widths = [16, 32, 64], blocks = 2}`. stbp calls
`resnet(T=..., in_shape=(C, H, W), **factory_kwargs)`; the network takes static images
`[B, C, H, W]` (its first conv is the paper's encoding layer, `stbp.Encoding`) or event frames
`[T, B, C, H, W]`, and returns voted firing rates `[B, num_classes]` in [0, 1], which the
default `[optim] loss = "mse"` compares with the one-hot labels as in the paper.

The architecture (stem, stages of `ResidualBlock`s, global average pooling, voting) is a
scaled-down tdBN ResNet (Zheng et al., AAAI 2021) of our choosing; its sizes are ours.
"""

from __future__ import annotations

from torch import nn

import stbp
from stbp.blocks import ResidualBlock, TDBatchNorm
from stbp.layers import Encoding, Temporal, Voting


class SpikingResNet(nn.Module):
    """stem (conv3x3 stride 2 - tdBN - LIF) -> stages of `ResidualBlock`s (each stage after
    the first halves H and W) -> average over H, W -> FC - tdBN to `num_classes * votes` LIF
    neurons -> voting."""

    def __init__(self, T: int, in_shape: tuple[int, ...], num_classes: int, widths: list[int],
                 blocks: int, votes: int, lif: dict):  # fmt: skip
        super().__init__()
        channels = in_shape[0]
        threshold = lif.get("threshold", 0.5)
        self.stem = nn.Sequential(
            Encoding(nn.Conv2d(channels, widths[0], 3, 2, padding=1, bias=False), T, 3),
            TDBatchNorm(widths[0], threshold=threshold),
            stbp.LIF(**lif),
        )
        stages, width = [], widths[0]
        for i, out in enumerate(widths):
            for j in range(blocks):
                stages.append(ResidualBlock(width, out, 2 if i and not j else 1, **lif))
                width = out
        self.stages = nn.Sequential(*stages)
        self.pool = Temporal(nn.AdaptiveAvgPool2d(1))
        self.fc = Temporal(nn.Linear(width, num_classes * votes))
        self.norm_fc = TDBatchNorm(num_classes * votes, threshold=threshold)  # [T, B, features]
        self.lif_fc = stbp.LIF(**lif)
        self.vote = Voting(num_classes, votes)

    def forward(self, x):
        """Voted rates `[B, num_classes]` of static images `[B, C, H, W]` or frames
        `[T, B, C, H, W]`."""
        h = self.stages(self.stem(x))
        h = self.pool(h).flatten(2)  # [T, B, width]
        return self.vote(self.lif_fc(self.norm_fc(self.fc(h))))


def resnet(T: int, in_shape: tuple[int, ...], num_classes: int = 10,
           widths: list[int] = (16, 32), blocks: int = 1, votes: int = 10,
           decay: float = 0.2, threshold: float = 0.5) -> SpikingResNet:  # fmt: skip
    """The factory: a `SpikingResNet` for `in_shape` (C, H, W) over `T` steps; `widths` are
    the channels of the stages, `blocks` the residual blocks per stage, `decay` and
    `threshold` those of every LIF neuron (the tdBNs normalise to that threshold)."""
    lif = {"decay": decay, "threshold": threshold}
    return SpikingResNet(T, tuple(in_shape), num_classes, list(widths), blocks, votes, lif)

"""The paper's layers around the LIF neurons: encoding, time-folded synapses, voting.

All take and return multi-step tensors `[T, B, ...]`.
"""

from __future__ import annotations

import torch
from torch import nn


class Temporal(nn.Module):
    """Apply a stateless module (conv, pooling, linear) to all T steps at once by folding
    time into the batch: `[T, B, ...] -> [T*B, ...] -> module -> [T, B, ...]`."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.module(x.flatten(0, 1))
        return y.unflatten(0, x.shape[:2])


class Encoding(Temporal):
    """The encoding layer: the first synaptic layer takes the analog input directly.

    A static input `[B, *in_shape]` (an image) is presented at every one of the T steps; the
    layer is stateless, so its output is computed once and repeated without a copy. A
    sequence `[T, B, *in_shape]` (event frames) is processed step by step as in `Temporal`.
    """

    def __init__(self, module: nn.Module, T: int, in_dims: int):
        super().__init__(module)
        self.T, self.in_dims = T, in_dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == self.in_dims + 1:
            y = self.module(x)
            return y.unsqueeze(0).expand(self.T, *y.shape)
        return super().forward(x)


class SeqDropout(nn.Module):
    """Dropout with one mask per sample, kept for all T steps of that sample."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        mask = torch.empty_like(x[0]).bernoulli_(1 - self.p).div_(1 - self.p)
        return x * mask

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Voting(nn.Module):
    """Voting output layer: `votes` LIF neurons per class; the class score is their firing
    rate averaged over the time window and over the class's group (fixed, not trained):
    `score_c = (1/T) sum_t mean_{i in group c} o[t, i]` (the paper's voting matrix M)."""

    def __init__(self, num_classes: int, votes: int = 10):
        super().__init__()
        self.num_classes, self.votes = num_classes, votes

    def forward(self, spikes: torch.Tensor) -> torch.Tensor:
        rates = spikes.mean(dim=0)
        return rates.view(rates.shape[0], self.num_classes, self.votes).mean(dim=-1)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, votes={self.votes}"

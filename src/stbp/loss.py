"""Losses on rate-coded class scores (the output of `Voting`, each in [0, 1])."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def rate_mse_loss(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The paper's loss: mean squared error between the voted firing rates
    `(1/T) sum_t M o[t]` and the one-hot label vector Y."""
    target = F.one_hot(labels, scores.shape[-1]).to(scores.dtype)
    return F.mse_loss(scores, target)


def rate_ce_loss(scores: torch.Tensor, labels: torch.Tensor, scale: float = 10.0) -> torch.Tensor:
    """Cross-entropy on rate scores; rates lie in [0, 1], so they are scaled to logits."""
    return F.cross_entropy(scores * scale, labels)

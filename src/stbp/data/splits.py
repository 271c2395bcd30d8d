"""A seeded, stratified validation split carved from a training set."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def stratified_split(
    labels: Sequence[int] | np.ndarray | torch.Tensor, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, validation indices) of a training set with these `labels`.

    Each class gives `round(fraction * n_class)` samples (at least one when `fraction > 0` and
    the class has two or more), chosen by a permutation seeded by `seed` and the class. Both
    index arrays are sorted; together they hold every index exactly once.
    """
    labels = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
    if not 0 <= fraction < 1:
        raise ValueError(f"validation fraction must be in [0, 1), got {fraction}")
    val = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        n_val = round(fraction * len(members))
        if fraction > 0 and len(members) > 1:
            n_val = max(n_val, 1)
        order = np.random.default_rng([seed, int(c)]).permutation(len(members))
        val.append(members[order[:n_val]])
    val_idx = np.sort(np.concatenate(val)) if val else np.zeros(0, dtype=np.int64)
    train_idx = np.setdiff1d(np.arange(len(labels)), val_idx)
    return train_idx, val_idx

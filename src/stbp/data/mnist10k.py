"""The embedded default data set: 10,000 real MNIST digits shipped inside the package.

The digits come grouped by label, so the train/test split is a seeded permutation
(8,000 train / 2,000 test by default); the same seed always gives the same split.
"""

from __future__ import annotations

from importlib import resources

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

N_TRAIN = 8000


def load_mnist10k() -> tuple[np.ndarray, np.ndarray]:
    """Return the embedded digits as (images [10000, 28, 28] uint8, labels [10000] int64)."""
    with resources.files("stbp.data").joinpath("mnist10k.npz").open("rb") as f:
        archive = np.load(f)
        return archive["images"], archive["labels"].astype(np.int64)


def check_n_train(n_train: int, n: int) -> None:
    """Refuse a split that leaves the training or the test part empty."""
    if isinstance(n_train, bool) or not isinstance(n_train, (int, np.integer)):
        raise ValueError(f"n_train must be an integer in 1..{n - 1}, got {n_train!r}")
    if not 1 <= n_train <= n - 1:
        raise ValueError(
            f"n_train must be in 1..{n - 1} (the other {n} - n_train digits are the test set), "
            f"got {n_train}"
        )


def split_indices(n: int, n_train: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices: the first `n_train` of a permutation of `n` seeded by `seed`."""
    order = np.random.default_rng(seed).permutation(n)
    return order[:n_train], order[n_train:]


def random_shift(images: torch.Tensor, max_shift: int, generator=None) -> torch.Tensor:
    """Translate each image of a batch [B, C, H, W] by up to `max_shift` pixels (zero fill).

    The shifts are drawn on the CPU (from `generator`, a CPU generator) and applied on the
    images' device, so a batch gets the same shifts on any device."""
    b, _, h, w = images.shape
    device = images.device
    pad = torch.nn.functional.pad(images, (max_shift,) * 4)
    shifts = torch.randint(0, 2 * max_shift + 1, (2, b), generator=generator)
    dy, dx = shifts.to(device, non_blocking=True)
    rows = (dy[:, None] + torch.arange(h, device=device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=device))[:, None, None, :]
    batch = torch.arange(b, device=device)[:, None, None, None]
    chan = torch.arange(images.shape[1], device=device)[None, :, None, None]
    return pad[batch, chan, rows, cols]


def random_affine(
    images: torch.Tensor, degrees: float, scale: float, generator=None
) -> torch.Tensor:
    """Rotate each image of a batch [B, C, H, W] by up to `degrees` and zoom it by a factor in
    [1 - scale, 1 + scale] about its centre (bilinear, zero fill); drawn on the CPU like
    `random_shift`, applied on the images' device."""
    b = images.shape[0]
    angle, zoom = (torch.rand(2, b, generator=generator) * 2 - 1).unbind()
    angle = angle * degrees * torch.pi / 180
    zoom = 1 + zoom * scale
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    zero = torch.zeros_like(cos)
    theta = torch.stack([cos, -sin, zero, sin, cos, zero], 1).view(b, 2, 3)
    theta = theta.to(images.device, images.dtype, non_blocking=True)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, align_corners=False)


class MNIST10k(Dataset):
    """Embedded MNIST digits as static images `[1, 28, 28]` in [0, 1] with integer labels.

    Static images go through the encoding layer, which presents them at every time step.
    `images` holds them as float `[N, 1, 28, 28]`, `pixels` as the stored uint8 (`images` is
    `pixels / 255`; training batches travel to the device as `pixels`).
    """

    def __init__(self, train: bool = True, seed: int = 0, n_train: int = N_TRAIN):
        images, labels = load_mnist10k()
        check_n_train(n_train, len(labels))
        train_idx, test_idx = split_indices(len(labels), n_train, seed)
        idx = train_idx if train else test_idx
        self.pixels = torch.from_numpy(images[idx]).unsqueeze(1)
        self.images = self.pixels.float().div_(255.0)
        self.labels = torch.from_numpy(labels[idx])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.labels[i])

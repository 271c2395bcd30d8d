"""Batch augmentation of static images and of event frames."""

import torch

from stbp.config import DataSettings
from stbp.data.mnist10k import random_affine, random_shift
from stbp.distributed import Batches, Context


def _digit() -> torch.Tensor:
    image = torch.zeros(1, 1, 28, 28)
    image[0, 0, 8:20, 12:16] = 1.0
    return image


def test_affine_without_rotation_or_zoom_is_the_identity():
    image = _digit()
    assert torch.allclose(random_affine(image, 0.0, 0.0), image, atol=1e-6)


def test_affine_rotates_within_the_limit_and_is_seeded():
    images = _digit().expand(64, 1, 28, 28)
    out = random_affine(images, 30.0, 0.0, torch.Generator().manual_seed(1))
    again = random_affine(images, 30.0, 0.0, torch.Generator().manual_seed(1))
    assert torch.equal(out, again) and out.shape == images.shape
    assert not torch.allclose(out, images, atol=0.1)
    mass = out.sum(dim=(1, 2, 3))  # rotating about the centre keeps the stroke in the frame
    assert torch.allclose(mass, images[0].sum().expand(64), rtol=0.05)


def test_affine_zoom_scales_the_area():
    images = _digit().expand(256, 1, 28, 28)
    zoomed = random_affine(images, 0.0, 0.2, torch.Generator().manual_seed(0))
    area = zoomed.sum(dim=(1, 2, 3)) / images[0].sum()
    assert 0.6 < area.min() < 0.8 and 1.2 < area.max() < 1.5  # zoom^2 for zoom in [0.8, 1.2]


def test_event_frames_shift_together_over_time():
    frames = torch.zeros(4, 3, 2, 10, 10)  # [B, T, C, H, W] as the loader gives them
    frames[:, :, :, 4, 4] = 1.0
    out = random_shift(frames.flatten(1, 2), 2, torch.Generator().manual_seed(0)).view(
        frames.shape
    )
    for sample in out:
        where = sample.nonzero()[:, 2:]  # (y, x) of the pixel in every frame and channel
        assert len(where) == 6 and (where == where[0]).all()


def test_batches_shift_event_recordings_only_in_training():
    class Events(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            x = torch.zeros(3, 2, 10, 10)
            x[:, :, 4, 4] = 1.0
            return x, i

    data = DataSettings(augment_shift=2)
    ctx = Context(rank=0, world=1, device=torch.device("cpu"))
    batch = [torch.arange(4)]
    g = torch.Generator().manual_seed(3)
    (train_x, _), = Batches(Events(), data, 0, ctx, train=True)(batch, g)
    (test_x, _), = Batches(Events(), data, 0, ctx, train=False)(batch, g)
    assert train_x.shape == test_x.shape == (3, 4, 2, 10, 10)
    assert test_x[:, :, :, 4, 4].all() and not train_x[:, :, :, 4, 4].all()

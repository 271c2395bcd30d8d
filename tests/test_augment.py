"""Batch augmentation of static images and of event frames, and the data path: batches go to
the device as stored (uint8), are augmented there, and event workers live across epochs."""

import os

import pytest
import torch

from stbp.config import DataSettings
from stbp.data import CIFAR10, MNIST10k
from stbp.data.cifar10 import DATASET_STD, MEAN
from stbp.data.mnist10k import random_affine, random_shift
from stbp.distributed import Batches, Context, collate_compact


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
    out = random_shift(frames.flatten(1, 2), 2, torch.Generator().manual_seed(0)).view(frames.shape)
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
    ((train_x, _),) = Batches(Events(), data, 0, ctx, train=True)(batch, g)
    ((test_x, _),) = Batches(Events(), data, 0, ctx, train=False)(batch, g)
    assert train_x.shape == test_x.shape == (3, 4, 2, 10, 10)
    assert test_x[:, :, :, 4, 4].all() and not train_x[:, :, :, 4, 4].all()


# ------------------------------------------------ the data path: uint8 to the device, then augment


def host_pipeline(ds, idx, data: DataSettings, generator) -> torch.Tensor:
    """The earlier data path: float images augmented on the host, then sent to the device."""
    x = ds.images[idx]
    if x.dtype == torch.uint8:
        x = x.float().div_(255.0)
    if data.augment_rotate or data.augment_scale:
        x = random_affine(x, data.augment_rotate, data.augment_scale, generator)
    if data.augment_shift:
        x = random_shift(x, data.augment_shift, generator)
    if data.augment_flip:
        flips = torch.rand(len(x), generator=generator) < 0.5
        x = torch.where(flips[:, None, None, None], x.flip(-1), x)
    if isinstance(ds, CIFAR10):
        x = (x - ds.mean) / ds.std
    return x


def fake_cifar(n: int = 64) -> CIFAR10:
    ds = CIFAR10.__new__(CIFAR10)  # the in-memory data set without its files
    ds.images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8,
                              generator=torch.Generator().manual_seed(0))  # fmt: skip
    ds.labels = torch.arange(n) % 10
    ds.mean, ds.std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(DATASET_STD).view(3, 1, 1)
    return ds


@pytest.mark.parametrize("ds, data", [
    (MNIST10k(train=False), DataSettings(augment_shift=2, augment_rotate=15.0, augment_scale=0.1,
                                         augment_flip=True)),
    (fake_cifar(), DataSettings(augment_shift=4, augment_flip=True)),
])  # fmt: skip
def test_images_travel_as_uint8_and_augment_as_before(ds, data, monkeypatch):
    sent = []
    to_device = Batches.to_device
    monkeypatch.setattr(Batches, "to_device", lambda self, t: sent.append(t) or to_device(self, t))
    batches = [torch.arange(0, 64, 2), torch.arange(1, 64, 2)]
    ours, before = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    loader = Batches(ds, data, 0, Context(), train=True)
    for idx, (x, y) in zip(batches, loader(batches, ours), strict=True):
        assert torch.equal(x, host_pipeline(ds, idx, data, before))
        assert torch.equal(y, ds.labels[idx])
    assert torch.equal(ours.get_state(), before.get_state())  # the same draws, in the same order
    pixels = ds.pixels if isinstance(ds, MNIST10k) else ds.images
    assert torch.equal(sent[0], pixels[batches[0]]) and sent[0].dtype == torch.uint8


def test_mnist10k_images_are_its_pixels_over_255():
    ds = MNIST10k(train=False)
    assert ds.pixels.dtype == torch.uint8 and ds.pixels.shape == (2000, 1, 28, 28)
    assert torch.equal(ds.images, ds.pixels.float() / 255)


def test_augmentation_runs_on_the_batchs_device():
    meta = torch.device("meta")  # shapes only: every tensor must already be on the device
    images = torch.zeros(4, 1, 28, 28, device=meta)
    assert random_affine(images, 10.0, 0.1, torch.Generator()).device == meta
    assert random_shift(images, 2, torch.Generator()).device == meta
    data = DataSettings(augment_shift=4, augment_flip=True, augment_rotate=5.0)
    loader = Batches(fake_cifar(), data, 0, Context(device=meta), train=True)
    ((x, y),) = loader([torch.arange(8)], torch.Generator())
    assert x.device == y.device == meta and x.dtype == torch.float32


def test_event_counts_travel_as_uint8_when_they_fit():
    counts = [(torch.tensor([[0.0, 3.0], [255.0, 1.0]]), 1), (torch.zeros(2, 2), 0)]
    x, y = collate_compact(counts)
    assert x.dtype == torch.uint8 and torch.equal(x.float(), torch.stack([c for c, _ in counts]))
    assert y.tolist() == [1, 0]
    for frames in (torch.full((2, 2), 0.5), torch.full((2, 2), 256.0), torch.full((2, 2), -1.0)):
        assert collate_compact([(frames, 0)])[0].dtype == torch.float32  # kept as they are


class Recordings(torch.utils.data.Dataset):
    """Event recordings [T, C, H, W] whose label is the process that read them."""

    def __len__(self):
        return 8

    def __getitem__(self, i):
        x = torch.zeros(3, 2, 10, 10)
        x[:, :, 4, 4] = float(i)
        return x, os.getpid()


def test_event_loader_workers_live_across_epochs():
    loader = Batches(Recordings(), DataSettings(augment_shift=1), 1, Context(), train=True)
    readers = []
    for epoch in range(2):
        batches = [torch.randperm(8, generator=torch.Generator().manual_seed(epoch))[:4]]
        ((x, pid),) = loader(batches, torch.Generator())
        assert x.shape == (3, 4, 2, 10, 10)
        assert x.sum(dim=(0, 2, 3, 4)).tolist() == (6 * batches[0]).tolist()  # those recordings
        readers.append(set(pid.tolist()))
    assert readers[0] == readers[1] and os.getpid() not in readers[0]  # one worker, kept


def test_event_batches_shift_as_before_with_workers_or_without():
    def shifted(workers):
        g = torch.Generator().manual_seed(2)
        loader = Batches(Recordings(), DataSettings(augment_shift=2), workers, Context(), True)
        return [x for x, _ in loader([torch.arange(4), torch.arange(4, 8)], g)], g.get_state()

    (ours, state), (kept, state_kept) = shifted(0), shifted(2)
    g = torch.Generator().manual_seed(2)
    for i, x in enumerate(ours):
        frames = torch.stack([Recordings()[j][0] for j in range(4 * i, 4 * i + 4)])
        before = random_shift(frames.flatten(1, 2), 2, g).view(frames.shape).transpose(0, 1)
        assert torch.equal(x, before) and torch.equal(kept[i], before)
    assert torch.equal(state, g.get_state()) and torch.equal(state_kept, state)

"""Data-parallel training with `torch.distributed`, as launched by `torchrun`.

`torchrun` sets RANK, LOCAL_RANK and WORLD_SIZE; with WORLD_SIZE > 1 `setup` joins the process
group (nccl on CUDA, gloo on CPU). Every process sees its own part of each global batch; the
gradients are averaged by `DistributedDataParallel`, metrics are summed by `all_sum`, and only
rank 0 writes files and prints.

Batches: in-memory image sets (`MNIST10k`, `CIFAR10`) are indexed as tensors, a whole batch at
a time, and augmented on the batch; event sets go through a `DataLoader` with worker processes
(pinned memory on CUDA). Each epoch's order comes from a generator seeded by (seed, epoch), so
a resumed run sees the same batches as an uninterrupted one, and each process takes a
contiguous share of every global batch.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset

from stbp.config import ConfigError, DataSettings
from stbp.data import CIFAR10, MNIST10k
from stbp.data.mnist10k import random_affine, random_shift


@dataclass(frozen=True)
class Context:
    """Where this process stands: its rank, the number of processes and its device."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """`cpu`, `cuda` or `auto` (CUDA when present) as a device for this process."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda was asked for, but torch sees no CUDA device")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def setup(device_name: str) -> Context:
    """Join the process group when started by torchrun with more than one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = pick_device(device_name, int(os.environ.get("LOCAL_RANK", "0")))
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Context(rank, world, device)


def teardown(ctx: Context) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def all_sum(ctx: Context, values: torch.Tensor) -> torch.Tensor:
    """The sum of `values` over all processes (the tensor itself on one process)."""
    if ctx.distributed:
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def broadcast_object(ctx: Context, value):
    """Rank 0's `value` on every process."""
    if not ctx.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shard(indices: torch.Tensor, ctx: Context) -> torch.Tensor:
    """This process's contiguous share of one global batch of indices."""
    if not ctx.distributed:
        return indices
    per_rank = len(indices) // ctx.world
    return indices[ctx.rank * per_rank : (ctx.rank + 1) * per_rank]


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, world: int) -> list:
    """The global batches of one training epoch: a permutation seeded by (seed, epoch), cut
    into batches of `batch_size` (trimmed so that every process gets an equal share)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n, generator=generator)
    batches = []
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        idx = idx[: len(idx) - len(idx) % world]
        if len(idx):
            batches.append(idx)
    return batches


def eval_batches(indices: int | torch.Tensor, batch_size: int, ctx: Context) -> list:
    """This process's contiguous part of an evaluation set (`indices`, or `range(indices)`),
    in batches."""
    if isinstance(indices, int):
        indices = torch.arange(indices)
    part = torch.tensor_split(indices, ctx.world)[ctx.rank]
    return list(part.split(batch_size))


class Batches:
    """Yields `(x, labels)` on the device for a list of index batches of one data set."""

    def __init__(self, dataset: Dataset, data: DataSettings | None, workers: int, ctx: Context,
                 train: bool):  # fmt: skip
        """`data` gives the augmentation of training batches (unused when not `train`)."""
        self.dataset, self.ctx, self.train = dataset, ctx, train
        self.shift = data.augment_shift if train else 0
        self.flip = train and data.augment_flip
        self.rotate = data.augment_rotate if train else 0.0
        self.scale = data.augment_scale if train else 0.0
        self.workers = workers
        self.in_memory = isinstance(dataset, (MNIST10k, CIFAR10))

    def __call__(self, batches: list, generator: torch.Generator | None = None) -> Iterator:
        local = [shard(b, self.ctx) for b in batches]
        source = (self._tensors if self.in_memory else self._loader)(local, generator)
        for x, y in source:
            yield x.to(self.ctx.device, non_blocking=True), y.to(self.ctx.device, non_blocking=True)

    def _tensors(self, batches: list, generator: torch.Generator | None) -> Iterator:
        ds = self.dataset
        for idx in batches:
            x = ds.images[idx]
            if x.dtype == torch.uint8:
                x = x.float().div_(255.0)
            if self.rotate or self.scale:
                x = random_affine(x, self.rotate, self.scale, generator)
            if self.shift:
                x = random_shift(x, self.shift, generator)
            if self.flip:
                flips = torch.rand(len(x), generator=generator) < 0.5
                x = torch.where(flips[:, None, None, None], x.flip(-1), x)
            if isinstance(ds, CIFAR10):
                x = (x - ds.mean) / ds.std
            yield x, ds.labels[idx]

    def _loader(self, batches: list, generator: torch.Generator | None) -> Iterator:
        loader = DataLoader(
            self.dataset, batch_sampler=[b.tolist() for b in batches],
            num_workers=self.workers, pin_memory=self.ctx.device.type == "cuda",
            generator=torch.Generator(),  # so that starting the workers leaves torch's RNG alone
        )  # fmt: skip
        for x, y in loader:
            if self.shift:  # one shift per recording, the same for all its frames
                x = random_shift(x.flatten(1, 2), self.shift, generator).view(x.shape)
            yield x.transpose(0, 1), y  # [B, T, C, H, W] -> [T, B, C, H, W]


def rank() -> int:
    """This process's rank under torchrun (0 otherwise)."""
    return int(os.environ.get("RANK", "0"))

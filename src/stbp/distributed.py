"""Data-parallel training with `torch.distributed`, as launched by `torchrun`.

`torchrun` sets RANK, LOCAL_RANK and WORLD_SIZE; with WORLD_SIZE > 1 `setup` joins the process
group (nccl on CUDA, gloo on CPU). Every process sees its own part of each global batch; the
gradients are averaged by `DistributedDataParallel`, metrics are summed by `all_sum`, and only
rank 0 writes files and prints.

Batches: in-memory image sets (`MNIST10k`, `CIFAR10`) are indexed as tensors, a whole batch at
a time; event sets go through one `DataLoader` whose worker processes live as long as the run.
Batches travel to the device as stored (uint8 pixels; event counts as uint8 where they fit),
from pinned memory on CUDA, and are converted and augmented there. Each epoch's order comes from
a generator seeded by (seed, epoch), so a resumed run sees the same batches as an uninterrupted
one, and each process takes a contiguous share of every global batch.

Random numbers: every process starts from the run's seed (so the model starts the same
everywhere), then each process other than rank 0 reseeds with `rank_seed(seed, rank)`, so the
processes draw different dropout masks. Saving a checkpoint gathers every process's RNG states
on rank 0 (`gather_object`), and a time-based save is decided by rank 0 for all (`agree`).
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, default_collate

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


def gather_object(ctx: Context, value) -> list | None:
    """Every process's `value` (tensors and plain values) in rank order on rank 0, `None` on the
    others (`[value]` on one process). A collective: every process calls it at the same point
    of the run. Sent as `torch.save` bytes, read back with `weights_only=True`."""
    if not ctx.distributed:
        return [value]
    buffer = io.BytesIO()
    torch.save(value, buffer)
    gathered = [None] * ctx.world if ctx.is_main else None
    dist.gather_object(buffer.getvalue(), gathered, dst=0)
    if gathered is None:
        return None
    return [torch.load(io.BytesIO(data), weights_only=True) for data in gathered]


def agree(ctx: Context, flag: bool) -> bool:
    """Rank 0's `flag` on every process (a collective), for decisions that must not differ
    between processes, such as one taken from a clock."""
    if not ctx.distributed:
        return flag
    box = torch.tensor([int(flag)], device=ctx.device)  # nccl sends device tensors only
    dist.broadcast(box, src=0)
    return bool(box.item())


def rank_seed(seed: int, rank: int) -> int:
    """The seed of process `rank`'s training random numbers: `seed` for rank 0 (so that one
    process draws what it always drew), a 32-bit seed mixed from (seed, rank) for the others."""
    if rank == 0:
        return seed
    return int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])


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
    """Yields `(x, labels)` on the device for a list of index batches of one data set.

    A batch travels as stored (uint8 pixels; event counts as uint8 where they fit), from pinned
    memory on CUDA without waiting, and is converted and augmented on the device. The
    augmentation's random numbers are drawn on the CPU from the generator passed in, batch by
    batch as the batches are taken, so they are the same on every device, and the generator's
    state after a step is what a mid-epoch checkpoint needs to resume."""

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
        self.pin = ctx.device.type == "cuda"
        self._passes = _BatchList()  # what the kept DataLoader of an event set reads next
        self._loader: DataLoader | None = None

    def __call__(self, batches: list, generator: torch.Generator | None = None) -> Iterator:
        local = [shard(b, self.ctx) for b in batches]
        yield from (self._images if self.in_memory else self._frames)(local, generator)

    def to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` on the device; on CUDA from pinned memory, so the host does not wait."""
        if self.pin and not tensor.is_pinned():
            tensor = tensor.pin_memory()
        return tensor.to(self.ctx.device, non_blocking=True)

    def _images(self, batches: list, generator: torch.Generator | None) -> Iterator:
        ds = self.dataset
        stored = ds.pixels if isinstance(ds, MNIST10k) else ds.images
        for idx in batches:
            x = self.to_device(stored[idx])
            yield self._augment_images(x, generator), self.to_device(ds.labels[idx])

    def _augment_images(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
        if self.rotate or self.scale:
            x = random_affine(x, self.rotate, self.scale, generator)
        if self.shift:
            x = random_shift(x, self.shift, generator)
        if self.flip:
            flips = torch.rand(len(x), generator=generator) < 0.5
            flips = flips.to(x.device, non_blocking=True)
            x = torch.where(flips[:, None, None, None], x.flip(-1), x)
        if isinstance(self.dataset, CIFAR10):
            ds = self.dataset
            x = (x - ds.mean.to(x.device)) / ds.std.to(x.device)
        return x

    def _frames(self, batches: list, generator: torch.Generator | None) -> Iterator:
        self._passes.batches = [b.tolist() for b in batches]
        for x, y in self.event_loader():
            x, y = self.to_device(x).float(), self.to_device(y)
            if self.shift:  # one shift per recording, the same for all its frames
                x = random_shift(x.flatten(1, 2), self.shift, generator).view(x.shape)
            yield x.transpose(0, 1), y  # [B, T, C, H, W] -> [T, B, C, H, W]

    def event_loader(self) -> DataLoader:
        """The `DataLoader` of an event set, made once: its workers stay alive between passes
        (epochs), each pass reading the batches it is given."""
        if self._loader is None:
            self._loader = DataLoader(
                self.dataset, batch_sampler=self._passes, num_workers=self.workers,
                persistent_workers=self.workers > 0, pin_memory=self.pin,
                collate_fn=collate_compact,
                generator=torch.Generator(),  # starting the workers leaves torch's RNG alone
            )  # fmt: skip
        return self._loader


class _BatchList:
    """The batch sampler of a kept `DataLoader`: the index batches of the current pass."""

    def __init__(self):
        self.batches: list[list[int]] = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def collate_compact(samples: list) -> tuple[torch.Tensor, torch.Tensor]:
    """`default_collate` of `(frames, label)` samples, with the frames as uint8 when every
    value is a whole number in 0..255 (event counts usually are): the same values in a quarter
    of the bytes of float32, across the worker pipe and to the device."""
    x, y = default_collate(samples)
    if x.is_floating_point() and x.numel():
        low, high = torch.aminmax(x)
        if low >= 0 and high <= 255 and torch.equal(x, x.trunc()):
            x = x.to(torch.uint8)
    return x, y


def rank() -> int:
    """This process's rank under torchrun (0 otherwise)."""
    return int(os.environ.get("RANK", "0"))

"""The training order and its random draws as functions of (seed, epoch, position).

A run resumed from a checkpoint, or one read with any number of DataLoader workers, sees the same batches,
the same crops and flips, as a run that never stopped: `Stream` deals each epoch's order from (seed, epoch)
and hands every index over as a `Key` that carries the seed of that item's own random draws; data sets take
their random stream from it with `item_rng`. (The training step's noise is seeded per batch in the same way:
`DiffusionModule.on_train_batch_start`.)
"""
from __future__ import annotations

import hashlib
import math
import random
from typing import Iterator, Optional

import torch
import torch.distributed as dist
from torch.utils.data import Dataset, DistributedSampler


def draw_seed(*ints: int) -> int:
    """A 63-bit seed from integers (blake2b of their decimal form: the same on every machine and Python)."""
    digest = hashlib.blake2b(repr(tuple(int(i) for i in ints)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class Key(int):
    """A data set index that carries the seed of its item's random draws (crop window, flips, variant, mask)."""

    seed: int

    def __new__(cls, index: int, seed: int) -> "Key":
        key = super().__new__(cls, index)
        key.seed = seed
        return key

    def __reduce__(self):  # to DataLoader workers with its seed
        return Key, (int(self), self.seed)


def item_rng(i: int, fallback: random.Random) -> tuple[int, random.Random]:
    """(index, random stream) for a data set's __getitem__: a Key's own stream, else the data set's."""
    if isinstance(i, Key):
        return int(i), random.Random(i.seed)
    return i, fallback


def process_rank() -> tuple[int, int]:
    """(world size, rank) of torch.distributed, (1, 0) outside it."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


class Stream(DistributedSampler):
    """Epoch e: back-to-back permutations of the data set drawn from (seed, e), at least `min_items` long,
    dealt to the processes in turn (rank r takes items r, r + world, ...); each index is a Key with its own
    seed. `start = (epoch, items)` makes that epoch begin after the items the checkpointed run had taken.

    A DistributedSampler, so that Lightning keeps it under DDP (and calls `set_epoch`) instead of wrapping it."""

    def __init__(self, data: Dataset, seed: int = 0, min_items: int = 0, *, world: Optional[int] = None,
                 rank: Optional[int] = None):
        if world is None or rank is None:
            world, rank = process_rank()
        super().__init__(data, num_replicas=world, rank=rank, shuffle=True, seed=seed)
        if len(data) == 0:
            raise ValueError("the training data set is empty")
        self.num_samples = math.ceil(max(len(data), min_items) / world)  # per process
        self.total_size = self.num_samples * world
        self.start: tuple[Optional[int], int] = (None, 0)

    def __iter__(self) -> Iterator[Key]:
        n = len(self.dataset)
        g = torch.Generator().manual_seed(draw_seed(self.seed, self.epoch))
        order = torch.cat([torch.randperm(n, generator=g) for _ in range(math.ceil(self.total_size / n))])
        seeds = torch.randint(0, 2**62, (self.total_size,), generator=g)
        skip = self.start[1] if self.start[0] == self.epoch else 0
        mine = slice(self.rank + skip * self.num_replicas, self.total_size, self.num_replicas)
        for i, s in zip(order[: self.total_size][mine].tolist(), seeds[mine].tolist()):
            yield Key(i, s)

    def __len__(self) -> int:
        return self.num_samples


class StreamLoader(torch.utils.data.DataLoader):
    """A DataLoader over a Stream. It tells Lightning that it resumes mid-epoch (Lightning warns about loaders that
    do not): where the stream stands is saved by ImageDataModule.state_dict, which knows the trainer's progress
    (this loader's own count would run ahead by the batches its workers prefetch)."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

"""Deterministic, resumable, shardable sample streams for iteration-based training."""
from __future__ import annotations

import random
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

from utils.errors import ConfigError


class StreamSampler(Sampler[int]):
    """An endless stream of dataset indices: a fresh permutation every epoch, the same for a seed.

    Epoch e is `numpy.random.default_rng([seed, e]).permutation(num_items)`; rank r of `world_size`
    takes the r-th of `world_size` equal contiguous slices of it (the last `num_items % world_size`
    items of each permutation, different every epoch, are skipped so that ranks stay disjoint and in
    step). `start` is how many samples this rank already drew: the stream continues from there.

    With `with_seeds` the stream yields `(index, sample_seed)` pairs instead: the seed is a pure
    function of (seed, epoch, position in the epoch), so a dataset that seeds its augmentation from
    it draws the same flips and crops whatever the worker count and across a resume.
    """

    def __init__(self, num_items: int, seed: int, start: int = 0, rank: int = 0, world_size: int = 1,
                 with_seeds: bool = False) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
        if num_items < world_size:
            raise ConfigError(f"cannot shard {num_items} items over {world_size} ranks")
        if start < 0:
            raise ConfigError(f"start must be >= 0, got {start}")
        self.num_items = num_items
        self.seed = seed
        self.start = start
        self.rank = rank
        self.world_size = world_size
        self.per_rank = num_items // world_size  # samples per rank and epoch
        self.with_seeds = with_seeds

    def epoch_indices(self, epoch: int) -> np.ndarray:
        """This rank's indices of epoch `epoch`, in stream order."""
        perm = np.random.default_rng([self.seed, epoch]).permutation(self.num_items)
        return perm[self.rank * self.per_rank:(self.rank + 1) * self.per_rank]

    def epoch_seeds(self, epoch: int) -> np.ndarray:
        """This rank's per-sample augmentation seeds of epoch `epoch`, aligned with `epoch_indices`."""
        # a generator of its own ([seed, epoch, 1]) so that the permutation's stream is untouched
        seeds = np.random.default_rng([self.seed, epoch, 1]).integers(0, 2**63 - 1, size=self.num_items)
        return seeds[self.rank * self.per_rank:(self.rank + 1) * self.per_rank]

    def __iter__(self) -> Iterator[int] | Iterator[tuple[int, int]]:
        epoch, offset = divmod(self.start, self.per_rank)
        while True:
            indices = self.epoch_indices(epoch)[offset:]
            if self.with_seeds:
                for index, sample_seed in zip(indices, self.epoch_seeds(epoch)[offset:]):
                    yield int(index), int(sample_seed)
            else:
                for index in indices:
                    yield int(index)
            epoch, offset = epoch + 1, 0


def seed_worker(worker_id: int) -> None:
    """DataLoader `worker_init_fn`: seed NumPy and `random` from the worker's torch seed."""
    worker_seed = torch.initial_seed() % 2**32
    np.random.seed(worker_seed)  # noqa: NPY002 - legacy global RNG that third-party code may use
    random.seed(worker_seed)

"""ShardSampler: each rank reads a disjoint, equal-length shard of the samples.

DDP steps in lock-step, so every rank of a training loader takes the same number of steps.
"""

from __future__ import annotations

import numpy as np
from torch.utils.data import Sampler


class ShardSampler(Sampler):
    """Rank `rank` owns positions rank, rank+world, ... for the whole run (so a staged shard
    stays valid); the order inside the shard is reshuffled each epoch from (seed, epoch)."""

    def __init__(self, n: int, rank: int, world: int, shuffle: bool, seed: int, equal: bool):
        self.positions = np.arange(rank, n, world)
        if equal:  # lock-step DDP: every rank takes the same number of steps
            self.positions = self.positions[: n // world]
        self.shuffle, self.seed, self.epoch = shuffle, seed, 0

    def set_epoch(self, epoch: int) -> None:  # Lightning calls this each epoch
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.positions)

    def __iter__(self):
        if not self.shuffle:
            return iter(self.positions.tolist())
        perm = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.positions))
        return iter(self.positions[perm].tolist())

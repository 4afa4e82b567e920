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
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:  # Lightning calls this each epoch
        self.epoch = epoch

    def skip_next(self, n: int) -> None:
        """The next pass starts n positions into the epoch's order: resumed inside an epoch a
        stop cut short, a job trains only the samples the cut part had not
        (src/callbacks/checkpoint.py). Passes after it are whole again."""
        self._skip = n

    def __len__(self) -> int:
        return len(self.positions)

    def __iter__(self):
        order = self.positions
        if self.shuffle:
            order = order[np.random.default_rng([self.seed, self.epoch]).permutation(len(order))]
        skip, self._skip = self._skip, 0
        return iter(order[skip:].tolist())

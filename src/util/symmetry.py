"""The mirror images of a periodic cube: the 8 flips of its axes times the 6 orders of its axes.

A periodic simulation box has no preferred axis or direction, so every image of a sub-volume
is a sample with the same labels (the training augmentation draws one at random,
src/datamodules/dataset.py). Averaging a network's predictions over several images of each
validation cube removes the part of its error that depends on the cube's orientation.
"""

from __future__ import annotations

import itertools

import torch

COUNTS = (1, 8, 48)  # the cube itself; its flips; its flips in every axis order


def mirror_images(x: torch.Tensor, n: int):
    """The first n (one of COUNTS) images of a batch of [C, d, d, d] cubes, the cube first."""
    if n not in COUNTS:
        raise ValueError(f"{n} mirror images: choose one of {COUNTS}")
    orders = list(itertools.permutations((2, 3, 4)))[: max(1, n // 8)]
    flips = [dims for k in range(4) for dims in itertools.combinations((2, 3, 4), k)][: min(n, 8)]
    for order in orders:
        turned = x.permute(0, 1, *order)
        for dims in flips:
            yield turned.flip(dims) if dims else turned

"""The symmetries of a periodic box: the mirror images of a cube (the 8 flips of its axes times
the 6 orders of its axes) and its translations (a sub-volume cut at any offset, wrapping round).

A periodic simulation box has no preferred axis, direction or origin, so every image of a
sub-volume, and every sub-volume cut at another offset, is a sample with the same labels (the
training augmentation draws them at random, src/datamodules/dataset.py). Averaging a network's
predictions over several images of each validation cube removes the part of its error that
depends on the cube's orientation.
"""

from __future__ import annotations

import itertools

import numpy as np
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


def periodic_crop(read_sub, m: int, origin, size: int) -> np.ndarray:
    """The [C, size, size, size] region at `origin` (three voxel indices) of a periodic box
    tiled by m³ sub-volumes of side `size` in (i, j, k) row-major order, wrapping round its
    faces. `read_sub(k)` returns sub-volume k as [C, size, size, size]; only the (at most 8)
    sub-volumes the region touches are read, and only the region is copied."""
    runs = [_runs(int(o), size, m) for o in origin]
    out = None
    for (bi, si, oi), (bj, sj, oj), (bk, sk, ok) in itertools.product(*runs):
        part = read_sub((bi * m + bj) * m + bk)[:, si, sj, sk]
        if out is None:
            out = np.empty((part.shape[0], size, size, size), dtype=part.dtype)
        out[:, oi, oj, ok] = part
    return out


def _runs(start: int, size: int, m: int) -> list[tuple[int, slice, slice]]:
    """Along one axis: (sub-volume index, its slice, the slice of the region it fills) for the
    one or two sub-volumes that the `size` voxels from `start` cross, wrapping round m·size."""
    start %= m * size
    block, lo = divmod(start, size)
    if lo == 0:
        return [(block, slice(0, size), slice(0, size))]
    return [(block, slice(lo, size), slice(0, size - lo)),
            ((block + 1) % m, slice(0, lo), slice(size - lo, size))]

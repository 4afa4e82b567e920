"""CosmoDataset: (x, y) samples read from the HDF5 files of the data contract.

HDF5 handles are opened lazily per process, so DataLoader workers never share one.
"""

from __future__ import annotations

import os

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

from src.errors import DataError
from src.util.symmetry import periodic_crop

TRANSFORMS = {"log1p": np.log1p, "none": None}


class CosmoDataset(Dataset):
    """Samples `(file index, sub-volume index)` of HDF5 files; returns (x, y) tensors.

    `shift_files`: the files whose sub-volumes tile one periodic box (simulations, not GAN
    cubes); each of their samples is its sub-volume moved by a random offset (0 to one
    sub-volume's side, per axis) in that box. The region reaches into the box's other
    sub-volumes, so `index` must hold every sub-volume of each such file."""

    def __init__(self, files, index, labels, transform="log1p", augment=False, cache=None,
                 shift_files=()):
        self.files = [str(f) for f in files]
        self.index = np.asarray(index, dtype=np.int64).reshape(-1, 2)
        self.labels = np.asarray(labels, dtype=np.float32)
        self.transform = TRANSFORMS[transform]
        self.augment = augment
        self.cache = cache or {}  # optional in-RAM staging: sample position -> array
        # a shifted sample is cut from its whole box: each file's positions, in sub-volume order
        self._box_positions = self._positions_by_file(set(map(int, shift_files)))
        self._handles: dict[int, h5py.File] = {}
        self._pid = None

    def __len__(self) -> int:
        return len(self.index)

    def _handle(self, file_idx: int) -> h5py.File:
        if self._pid != os.getpid():  # a forked worker must not reuse the parent's handles
            self._handles, self._pid = {}, os.getpid()
        if file_idx not in self._handles:
            try:
                self._handles[file_idx] = h5py.File(self.files[file_idx], "r")
            except OSError as err:
                raise DataError(f"{self.files[file_idx]}: cannot open ({err})") from err
        return self._handles[file_idx]

    def read_raw(self, i: int) -> np.ndarray:
        if i in self.cache:
            return self.cache[i]
        file_idx, sub = self.index[i]
        try:
            return self._handle(file_idx)["x"][sub]
        except (OSError, KeyError) as err:
            raise DataError(f"{self.files[file_idx]}: cannot read sub-volume {sub} ({err})") from err

    def _positions_by_file(self, shift_files: set[int]) -> dict[int, np.ndarray]:
        if not shift_files:
            return {}
        order = np.lexsort((self.index[:, 1], self.index[:, 0]))
        order = order[np.isin(self.index[order, 0], list(shift_files))]
        file_of = self.index[order, 0]
        firsts, starts = np.unique(file_of, return_index=True)
        boxes = {}
        for file_idx, positions in zip(firsts, np.split(order, starts[1:]), strict=True):
            subs = self.index[positions, 1]
            n = len(subs)
            if round(n ** (1 / 3)) ** 3 != n or not np.array_equal(subs, np.arange(n)):
                raise DataError(
                    f"{self.files[file_idx]}: a random shift cuts each sample from its whole box, "
                    f"but this set holds its sub-volumes {subs.tolist()}, not 0..m³-1")
            boxes[int(file_idx)] = positions
        return boxes

    def read_shifted(self, i: int) -> np.ndarray:
        file_idx, sub = (int(v) for v in self.index[i])
        positions = self._box_positions[file_idx]
        m = round(len(positions) ** (1 / 3))
        own = self.read_raw(i)  # the region starts inside the sample's own sub-volume
        size = own.shape[-1]
        corner = np.array(np.unravel_index(sub, (m, m, m))) * size
        # torch's generator, seeded as random_symmetry's is
        origin = corner + torch.randint(0, size, (3,)).numpy()
        return periodic_crop(lambda k: own if k == sub else self.read_raw(int(positions[k])),
                             m, origin, size)

    def __getitem__(self, i: int):
        shifted = int(self.index[i][0]) in self._box_positions
        x = np.asarray(self.read_shifted(i) if shifted else self.read_raw(i), dtype=np.float32)
        if not np.isfinite(x).all():
            raise DataError(f"{self.files[self.index[i][0]]}: NaN/inf in sub-volume {self.index[i][1]}")
        if self.transform is not None:
            x = self.transform(x)
        if self.augment:
            x = random_symmetry(x)
        y = self.labels[self.index[i][0]]
        return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y)


def random_symmetry(x: np.ndarray) -> np.ndarray:
    """A random flip and axis permutation of a [C, d, d, d] cube."""
    # A periodic box has no preferred axis or direction: flips and axis permutations
    # of the cube are label-preserving.
    # torch's generator: seeded from the run's `seed` (per loader worker too, by
    # Lightning's seed_everything(workers=True)), so an augmented run is reproducible
    x = np.transpose(x, (0, *(1 + torch.randperm(3).numpy())))
    flips = tuple(1 + a for a in range(3) if torch.rand(()) < 0.5)
    return np.flip(x, flips) if flips else x

"""CosmoDataModule: manifest -> split by simulation -> nested fraction -> rank shard -> read.

- The split puts whole simulations on one side (sub-volumes of one simulation never straddle it).
- `fraction` takes a nested prefix of one fixed seeded order of training samples, so the
  1/8 run trains on a subset of the 1/4 run's samples (data-scaling curves stay comparable).
- Each rank reads a disjoint, equal-length shard (DDP steps in lock-step, so equal lengths).
- HDF5 handles are opened lazily per process, so DataLoader workers never share one.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from fractions import Fraction
from pathlib import Path

import h5py
import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from src.dist import ranks_on_this_machine
from src.errors import DataError
from src.perf.system import available_memory_bytes
from src.sim.store import file_checksum, inspect_simulation, read_manifest

log = logging.getLogger(__name__)

TRANSFORMS = {"log1p": np.log1p, "none": None}


def parse_fraction(value) -> float:
    """`1/32`, `0.25` or `1` -> float in (0, 1]; anything else names itself in the error."""
    try:
        frac = float(Fraction(str(value).strip()))
    except (ValueError, ZeroDivisionError) as err:
        raise DataError(f"data.fraction={value!r} is not a number or a ratio like 1/32") from err
    if not 0.0 < frac <= 1.0:
        raise DataError(f"data.fraction={value!r} must lie in (0, 1]")
    return frac


class CosmoDataset(Dataset):
    """Samples `(file index, sub-volume index)` of HDF5 files; returns (x, y) tensors."""

    def __init__(self, files, index, labels, transform="log1p", augment=False, cache=None):
        self.files = [str(f) for f in files]
        self.index = np.asarray(index, dtype=np.int64).reshape(-1, 2)
        self.labels = np.asarray(labels, dtype=np.float32)
        self.transform = TRANSFORMS[transform]
        self.augment = augment
        self.cache = cache or {}  # optional in-RAM staging: sample position -> array
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

    def __getitem__(self, i: int):
        x = np.asarray(self.read_raw(i), dtype=np.float32)
        if not np.isfinite(x).all():
            raise DataError(f"{self.files[self.index[i][0]]}: NaN/inf in sub-volume {self.index[i][1]}")
        if self.transform is not None:
            x = self.transform(x)
        if self.augment:
            x = self._random_symmetry(x)
        y = self.labels[self.index[i][0]]
        return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y)

    @staticmethod
    def _random_symmetry(x: np.ndarray) -> np.ndarray:
        # A periodic box has no preferred axis or direction: flips and axis permutations
        # of the cube are label-preserving.
        # torch's generator: seeded from the run's `seed` (per loader worker too, by
        # Lightning's seed_everything(workers=True)), so an augmented run is reproducible
        x = np.transpose(x, (0, *(1 + torch.randperm(3).numpy())))
        flips = tuple(1 + a for a in range(3) if torch.rand(()) < 0.5)
        return np.flip(x, flips) if flips else x


class TimedDataLoader(DataLoader):
    """A DataLoader that adds up the seconds spent blocked in `next()` (`fetch_s`): the
    loader's real share of a training step, apart from the loop's other work between steps
    (the ThroughputMonitor reads it for `data_wait_frac`)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fetch_s = 0.0

    def __iter__(self):
        return _TimedIterator(super().__iter__(), self)


class _TimedIterator:
    def __init__(self, iterator, owner: TimedDataLoader):
        self._iterator, self._owner = iterator, owner

    def __iter__(self):
        return self

    def __next__(self):
        start = time.perf_counter()
        try:
            return next(self._iterator)
        finally:
            self._owner.fetch_s += time.perf_counter() - start

    def __len__(self) -> int:
        return len(self._iterator)


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


class CosmoDataModule(L.LightningDataModule):
    def __init__(
        self,
        dir: str,
        fraction=1.0,
        batch_size: int = 4,
        val_fraction: float = 0.25,
        split_seed: int = 0,
        transform: str = "log1p",
        augment: bool = False,
        num_workers: int = 0,
        pin_memory: bool = False,
        prefetch_factor: int | None = None,
        persistent_workers: bool = True,
        stage: str | None = None,
        stage_ram_max_frac: float = 0.25,
        verify: str = "full",
        seed: int = 0,
    ):
        super().__init__()
        if transform not in TRANSFORMS:
            raise DataError(f"data.transform={transform!r}; choose one of {sorted(TRANSFORMS)}")
        if verify not in ("full", "shapes"):
            raise DataError(f"data.verify={verify!r}; choose 'full' or 'shapes'")
        self.data_dir = Path(dir)
        self.fraction = parse_fraction(fraction)
        self.batch_size = int(batch_size)
        self.val_fraction = float(val_fraction)
        self.split_seed = split_seed
        self.transform = transform
        self.augment = augment
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.prefetch_factor = prefetch_factor
        self.persistent_workers = persistent_workers
        self.stage = stage
        self.stage_ram_max_frac = float(stage_ram_max_frac)
        self.staged_to = None  # what `stage` resolved to in setup()
        self.verify = verify
        self.seed = seed
        self.staging_s = 0.0
        self.manifest = read_manifest(self.data_dir)  # fails fast on a missing dir/manifest
        self.param_names = list(self.manifest["param_names"])
        self.sample_shape = tuple(int(s) for s in self.manifest["sample_shape"])
        self.train_set = self.val_set = None

    # -- facts the model and the report need -------------------------------------------
    @property
    def n_params(self) -> int:
        return len(self.param_names)

    @property
    def param_ranges(self) -> dict:
        return {n: tuple(map(float, self.manifest["param_ranges"][n])) for n in self.param_names}

    @property
    def sample_bytes(self) -> int:
        return int(np.prod(self.sample_shape)) * 4

    # -- set-up ------------------------------------------------------------------------
    def _world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0, 1
        return trainer.global_rank, trainer.world_size

    def _check_files(self) -> tuple[list[Path], np.ndarray]:
        files, labels = [], []
        for entry in self.manifest["files"]:
            path = self.data_dir / entry["file"]
            if not path.is_file():
                raise DataError(f"{path}: listed in the manifest but missing")
            if self.verify == "full" and entry.get("sha256") and file_checksum(path) != entry["sha256"]:
                raise DataError(f"{path}: checksum differs from the manifest (corrupt or truncated)")
            info = inspect_simulation(path)
            expect = (int(entry.get("n_sub", info["x_shape"][0])), *self.sample_shape)
            if tuple(info["x_shape"]) != expect:
                raise DataError(
                    f"{path}: x has shape {tuple(info['x_shape'])}, the manifest says {expect}"
                )
            if info["y"].shape != (self.n_params,):
                raise DataError(
                    f"{path}: y has shape {info['y'].shape}, the manifest names {self.n_params} parameters"
                )
            if not np.isfinite(info["y"]).all():
                raise DataError(f"{path}: y holds NaN/inf")
            if self.verify == "full":
                with h5py.File(path, "r") as fh:
                    for sub in range(expect[0]):  # one chunk at a time keeps memory flat
                        if not np.isfinite(fh["x"][sub]).all():
                            raise DataError(f"{path}: NaN/inf in x, sub-volume {sub}")
            files.append(path)
            labels.append(info["y"])
        return files, np.stack(labels)

    def _normalise_labels(self, y: np.ndarray) -> np.ndarray:
        lo = np.array([self.param_ranges[n][0] for n in self.param_names], dtype=np.float32)
        hi = np.array([self.param_ranges[n][1] for n in self.param_names], dtype=np.float32)
        return (2.0 * (y - lo) / (hi - lo) - 1.0).astype(np.float32)

    def split(self, n_files: int) -> tuple[np.ndarray, np.ndarray]:
        """Simulation indices (train, val): whole simulations on one side."""
        order = np.random.default_rng(self.split_seed).permutation(n_files)
        n_val = max(1, round(self.val_fraction * n_files)) if self.val_fraction > 0 else 0
        if n_files - n_val < 1:
            raise DataError(
                f"{self.data_dir}: {n_files} simulation(s) cannot be split into train and val "
                f"with data.val_fraction={self.val_fraction}"
            )
        return np.sort(order[n_val:]), np.sort(order[:n_val])

    @staticmethod
    def _samples(sim_indices, n_subs) -> np.ndarray:
        return np.array([(f, s) for f in sim_indices for s in range(n_subs[f])], dtype=np.int64).reshape(-1, 2)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        files, raw_labels = self._check_files()
        labels = self._normalise_labels(raw_labels)
        n_subs = [int(e.get("n_sub", 1)) for e in self.manifest["files"]]
        train_sims, val_sims = self.split(len(files))
        train_all = self._samples(train_sims, n_subs)
        # One fixed seeded order; a fraction is a prefix of it, so fractions nest.
        order = np.random.default_rng(self.split_seed + 1).permutation(len(train_all))
        n_take = int(np.floor(self.fraction * len(train_all) + 1e-9))
        rank, world = self._world()
        if n_take < world:
            raise DataError(
                f"data.fraction={self.fraction:g} of {len(train_all)} training samples in "
                f"{self.data_dir} gives {n_take}, fewer than the {world} rank(s): some rank would "
                "get no sample; raise the fraction or add simulations"
            )
        train_index = train_all[order[:n_take]]
        self.n_train_total = n_take
        self.train_files_bytes = int(n_take * self.sample_bytes)
        cache = None
        mine = ShardSampler(n_take, rank, world, False, self.seed, equal=True).positions
        self.staged_to = self._resolve_stage(len(mine))
        if self.staged_to:
            files, cache = self._stage(files, mine, train_index)
        self.train_set = CosmoDataset(files, train_index, labels, self.transform, self.augment, cache)
        self.val_set = CosmoDataset(files, self._samples(val_sims, n_subs), labels, self.transform)
        if 0 < len(self.val_set) < world:  # a rank without a batch would hang the metric reduce
            raise DataError(
                f"{len(self.val_set)} validation samples in {self.data_dir} for {world} ranks: "
                "every rank needs one; add simulations or raise data.val_fraction"
            )
        log.info(
            "data: %d train samples (fraction %g of %d), %d val samples, world %d",
            n_take, self.fraction, len(train_all), len(self.val_set), world,
        )

    def _resolve_stage(self, shard_samples: int) -> str | None:
        """`stage: auto` -> "ram" when the shards of every rank on this machine fit in
        `stage_ram_max_frac` of the available memory, else no staging (read the files)."""
        if self.stage != "auto":
            return self.stage or None
        trainer = getattr(self, "trainer", None)
        ranks_here = 1
        if trainer is not None:  # emulated nodes all run on this machine
            ranks_here = ranks_on_this_machine(trainer.world_size, trainer.num_devices)
        need = shard_samples * self.sample_bytes * max(1, ranks_here)
        available = available_memory_bytes()
        if available is not None and need <= self.stage_ram_max_frac * available:
            return "ram"
        log.info("data: not staging to RAM: %d rank(s) x %.3g GB of shard vs %s GB available",
                 ranks_here, shard_samples * self.sample_bytes / 1e9,
                 "?" if available is None else f"{available / 1e9:.3g}")
        return None

    def _stage(self, files, mine, train_index):
        """Copy this rank's shard (sample positions `mine`) to node-local storage or RAM;
        the time goes into metrics as `staging_s`."""
        start = time.perf_counter()
        cache = None
        if self.staged_to == "ram":
            reader = CosmoDataset(files, train_index, np.zeros((len(files), self.n_params)), "none")
            cache = {int(i): np.asarray(reader.read_raw(int(i))) for i in mine}
        else:
            target = Path(self.staged_to)
            target.mkdir(parents=True, exist_ok=True)
            needed = {int(train_index[i][0]) for i in mine}
            staged = []
            for i, path in enumerate(files):
                dest = target / path.name
                if i in needed and not (dest.is_file() and dest.stat().st_size == path.stat().st_size):
                    # ranks of one node may stage the same file: copy privately, rename atomically
                    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
                    shutil.copy2(path, tmp)
                    os.replace(tmp, dest)
                staged.append(dest if i in needed else path)
            files = staged
        self.staging_s = time.perf_counter() - start
        log.info("data: staged %d samples to %s in %.2f s", len(mine), self.staged_to, self.staging_s)
        return files, cache

    # -- loaders -----------------------------------------------------------------------
    def _loader(self, dataset, shuffle: bool, equal: bool) -> DataLoader:
        rank, world = self._world()
        sampler = ShardSampler(len(dataset), rank, world, shuffle, self.seed, equal)
        workers = int(self.num_workers)
        return TimedDataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=workers,
            pin_memory=self.pin_memory,
            prefetch_factor=self.prefetch_factor if workers > 0 else None,
            persistent_workers=bool(self.persistent_workers and workers > 0),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True, equal=True)

    def val_dataloader(self) -> DataLoader:
        # Validation keeps every sample; metrics are reduced once per epoch, so unequal
        # shard lengths cannot deadlock.
        return self._loader(self.val_set, shuffle=False, equal=False)

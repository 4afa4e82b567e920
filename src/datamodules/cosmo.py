"""CosmoDataModule: manifest -> split by simulation -> nested fraction -> rank shard -> read.

`extra_train_dirs` (e.g. GAN cubes, docs/gan.md) only ever add training samples: all of their
sub-volumes join the training set after the split and the fraction of `dir`, so validation
stays on `dir`'s simulations and their split is unchanged; labels are normalised by `dir`'s
ranges. `data_sources` counts the training samples per method ("simulation", "gan").

The pieces live beside it: the split and the nested fraction (split.py), the rank shards
(sampler.py), staging to RAM or node-local storage (staging.py), the samples (dataset.py),
the per-file checks against the manifest (src.sim.store.verify_simulation) and the
timed loader the ThroughputMonitor reads (src.perf.timing.TimedDataLoader).
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import numpy as np
from torch.utils.data import DataLoader

from src.datamodules.dataset import TRANSFORMS, CosmoDataset
from src.datamodules.sampler import ShardSampler
from src.datamodules.split import data_fraction, nested_prefix, sample_index, split_simulations
from src.datamodules.staging import resolve_stage, stage_shard
from src.errors import DataError
from src.perf.timing import TimedDataLoader
from src.sim.store import normalise_labels, read_manifest, verify_simulation

log = logging.getLogger(__name__)


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
        random_shift: bool = False,
        num_workers: int = 0,
        pin_memory: bool = False,
        prefetch_factor: int | None = None,
        persistent_workers: bool = True,
        stage: str | None = None,
        stage_ram_max_frac: float = 0.25,
        verify: str = "full",
        seed: int = 0,
        extra_train_dirs=(),
    ):
        super().__init__()
        if transform not in TRANSFORMS:
            raise DataError(f"data.transform={transform!r}; choose one of {sorted(TRANSFORMS)}")
        if verify not in ("full", "shapes"):
            raise DataError(f"data.verify={verify!r}; choose 'full' or 'shapes'")
        self.data_dir = Path(dir)
        self.fraction = data_fraction(fraction)
        self.batch_size = int(batch_size)
        self.val_fraction, self.split_seed = float(val_fraction), split_seed
        self.transform, self.augment = transform, augment
        self.random_shift = bool(random_shift)
        if self.random_shift and self.fraction != 1.0:
            raise DataError(
                f"data.random_shift=true cuts each sample from its simulation's whole box, which "
                f"would train on sub-volumes outside data.fraction={fraction}: use one or the other")
        workers = int(num_workers)
        # the DataLoader arguments every loader of this module shares
        self._loader_args = {
            "batch_size": self.batch_size, "num_workers": workers, "pin_memory": pin_memory,
            "prefetch_factor": prefetch_factor if workers > 0 else None,
            "persistent_workers": bool(persistent_workers and workers > 0),
        }
        self.stage, self.stage_ram_max_frac = stage, float(stage_ram_max_frac)
        self.staged_to = None  # what `stage` resolved to in setup()
        self.verify, self.seed = verify, seed
        self.staging_s = 0.0
        self.manifest = read_manifest(self.data_dir)  # fails fast on a missing dir/manifest
        self.param_names = list(self.manifest["param_names"])
        # what decides a simulation's side of the split (docs/contracts.md)
        self.sim_ids = [int(e["id"]) for e in self.manifest["files"]]
        self.train_sim_ids: list[int] = []  # with a sample in this fraction's training set
        self.val_sim_ids: list[int] = []
        self.sample_shape = tuple(int(s) for s in self.manifest["sample_shape"])
        self.train_set = self.val_set = None
        self.extra = [self._extra_manifest(Path(str(d))) for d in (extra_train_dirs or ())]
        self.data_sources: dict[str, int] = {}

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

    def _extra_manifest(self, path: Path) -> tuple[Path, dict]:
        """An extra training dir's manifest, checked against `dir`'s: same samples, same
        parameters, parameter ranges within `dir`'s (its labels are normalised by those)."""
        if path.absolute() == self.data_dir.absolute():
            raise DataError(f"data.extra_train_dirs: {path} is data.dir itself")
        try:
            manifest = read_manifest(path)
        except DataError as err:
            raise DataError(f"data.extra_train_dirs: {err}") from err
        for key in ("sample_shape", "param_names"):
            if list(manifest[key]) != list(self.manifest[key]):
                raise DataError(f"data.extra_train_dirs: {path} has {key} {manifest[key]}, "
                                f"data.dir={self.data_dir} has {self.manifest[key]}")
        for name in self.param_names:
            (lo, hi), (mlo, mhi) = manifest["param_ranges"][name], self.param_ranges[name]
            if float(lo) < mlo or float(hi) > mhi:
                raise DataError(f"data.extra_train_dirs: {path} has {name} in [{lo}, {hi}], "
                                f"beyond data.dir's [{mlo}, {mhi}]")
        return path, manifest

    # -- set-up ------------------------------------------------------------------------
    def _world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0, 1
        return trainer.global_rank, trainer.world_size

    def _check_files(self, data_dir: Path, manifest: dict) -> tuple[list[Path], np.ndarray]:
        files, labels = [], []
        for entry in manifest["files"]:
            path = data_dir / entry["file"]
            labels.append(verify_simulation(path, entry, self.verify == "full",
                                            self.sample_shape, self.n_params))
            files.append(path)
        return files, np.stack(labels)

    def split(self) -> tuple[np.ndarray, np.ndarray]:
        """File indices (train, val): whole simulations on one side, by their manifest ids."""
        return split_simulations(self.sim_ids, self.val_fraction, self.split_seed, self.data_dir)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        files, raw_labels = self._check_files(self.data_dir, self.manifest)
        labels = normalise_labels(raw_labels, self.param_names, self.param_ranges)
        n_subs = [int(e.get("n_sub", 1)) for e in self.manifest["files"]]
        train_sims, val_sims = self.split()
        self.val_sim_ids = [self.sim_ids[i] for i in val_sims]
        train_all = sample_index(train_sims, n_subs)
        # One fixed seeded order; a fraction is a prefix of it, so fractions nest.
        train_index = train_all[nested_prefix(len(train_all), self.fraction, self.split_seed + 1)]
        self.train_sim_ids = sorted({self.sim_ids[f] for f in train_index[:, 0].tolist()})
        self.data_sources = {"simulation": len(train_index)}
        # the baselines fit on these alone, so a target relative to them does not move when
        # generated cubes are added (src/callbacks/quality.py)
        self.n_primary_train = len(train_index)
        files, labels, train_index = self._add_extra(files, labels, train_index)
        n_take = len(train_index)
        rank, world = self._world()
        if n_take < world:
            raise DataError(
                f"data.fraction={self.fraction:g} of {len(train_all)} training samples in "
                f"{self.data_dir} gives {n_take}, fewer than the {world} rank(s): some rank would "
                "get no sample; raise the fraction or add simulations"
            )
        self.n_train_total = n_take
        self.train_files_bytes = int(n_take * self.sample_bytes)
        cache = None
        mine = ShardSampler(n_take, rank, world, False, self.seed, equal=True).positions
        self.staged_to = resolve_stage(self.stage, len(mine) * self.sample_bytes,
                                       getattr(self, "trainer", None), self.stage_ram_max_frac)
        if self.staged_to:  # the time goes into metrics as `staging_s`
            files, cache, self.staging_s = stage_shard(self.staged_to, files, mine, train_index)
        self.train_set = CosmoDataset(files, train_index, labels, self.transform, self.augment,
                                      cache, self._tiled_files() if self.random_shift else ())
        self.val_set = CosmoDataset(files, sample_index(val_sims, n_subs), labels, self.transform)
        if 0 < len(self.val_set) < world:  # a rank without a batch would hang the metric reduce
            raise DataError(
                f"{len(self.val_set)} validation samples in {self.data_dir} for {world} ranks: "
                "every rank needs one; add simulations or raise data.val_fraction"
            )
        log.info(
            "data: %d train samples (fraction %g of %d), %d val samples, world %d",
            n_take, self.fraction, len(train_all), len(self.val_set), world,
        )

    def _tiled_files(self) -> list[int]:
        """Indices (data.dir's files, then each extra dir's) of the files whose sub-volumes tile
        one periodic simulation box; a GAN file's cubes are drawn one by one, so they don't."""
        entries = [*self.manifest["files"], *(e for _, m in self.extra for e in m["files"])]
        return [i for i, e in enumerate(entries) if e.get("method", "simulation") == "simulation"]

    def _add_extra(self, files: list, labels: np.ndarray, train_index: np.ndarray):
        """Append every sub-volume of the extra dirs to the training index (after the split and
        the fraction of `dir`, which they leave as they were); count them per method."""
        files, labels, parts = list(files), [labels], [train_index]
        for path, manifest in self.extra:
            extra_files, raw = self._check_files(path, manifest)
            first = len(files)
            files += extra_files
            labels.append(normalise_labels(raw, self.param_names, self.param_ranges))
            n_subs = [int(e.get("n_sub", 1)) for e in manifest["files"]]
            parts.append(sample_index(range(len(n_subs)), n_subs) + [first, 0])
            for entry, n_sub in zip(manifest["files"], n_subs, strict=True):
                method = str(entry.get("method", "simulation"))
                self.data_sources[method] = self.data_sources.get(method, 0) + n_sub
        return files, np.concatenate(labels), np.concatenate(parts).reshape(-1, 2)

    # -- loaders -----------------------------------------------------------------------
    def _loader(self, dataset, shuffle: bool, equal: bool) -> DataLoader:
        rank, world = self._world()
        sampler = ShardSampler(len(dataset), rank, world, shuffle, self.seed, equal)
        return TimedDataLoader(dataset, sampler=sampler, **self._loader_args)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True, equal=True)

    def val_dataloader(self) -> DataLoader:
        # Validation keeps every sample; metrics are reduced once per epoch, so unequal
        # shard lengths cannot deadlock.
        return self._loader(self.val_set, shuffle=False, equal=False)

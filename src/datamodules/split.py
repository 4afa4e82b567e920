"""Which samples train and which validate: split by simulation, then a nested fraction.

- The split puts whole simulations on one side (sub-volumes of one simulation never straddle it),
  decided by a seeded hash of each simulation's id: a simulation validates or trains whatever
  else the directory holds, so quality at two data sizes is measured on the same simulations.
- `fraction` takes a nested prefix of one fixed seeded order of training samples, so the
  1/8 run trains on a subset of the 1/4 run's samples (data-scaling curves stay comparable).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from src.errors import DataError
from src.util.fractions import parse_fraction


def data_fraction(value) -> float:
    """`data.fraction` (`1/32`, `0.25` or `1`) -> float in (0, 1]; DataError naming it else."""
    try:
        frac = parse_fraction(value)
    except ValueError as err:
        raise DataError(f"data.fraction={value!r} is not a number or a ratio like 1/32") from err
    if not 0.0 < frac <= 1.0:
        raise DataError(f"data.fraction={value!r} must lie in (0, 1]")
    return frac


def split_unit(sim_id: int, seed: int) -> float:
    """A number in [0, 1) that depends on (seed, simulation id) alone: sha256, not numpy's
    generators, so it is the same on every platform and version."""
    digest = hashlib.sha256(f"{int(seed)}:{int(sim_id)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_simulations(sim_ids, val_fraction: float, seed: int,
                      data_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Positions in `sim_ids` (train, val): whole simulations on one side.

    A simulation validates when its `split_unit` is below `val_fraction`, so its side does not
    depend on what else the directory holds: adding simulations leaves the others where they
    were. Only where that puts no simulation on one side (a handful of simulations), the one
    nearest the threshold moves over.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"data.val_fraction={val_fraction} must lie in [0, 1)")
    units = np.array([split_unit(i, seed) for i in sim_ids])
    if len(units) < (2 if val_fraction > 0 else 1):
        raise DataError(
            f"{data_dir}: {len(units)} simulation(s) cannot be split into train and val "
            f"with data.val_fraction={val_fraction}"
        )
    is_val = units < val_fraction
    if val_fraction > 0 and not is_val.any():
        is_val[np.argmin(units)] = True
    if is_val.all():
        is_val[np.argmax(units)] = False
    positions = np.arange(len(units))
    return positions[~is_val], positions[is_val]


def sample_index(sim_indices, n_subs) -> np.ndarray:
    """(file index, sub-volume index) of every sub-volume of the simulations `sim_indices`."""
    return np.array([(f, s) for f in sim_indices for s in range(n_subs[f])],
                    dtype=np.int64).reshape(-1, 2)


def nested_prefix(n_samples: int, fraction: float, seed: int) -> np.ndarray:
    """Positions of the `fraction` of `n_samples` to train on: a prefix of one fixed seeded
    order, so the samples of a smaller fraction are among those of a larger one."""
    order = np.random.default_rng(seed).permutation(n_samples)
    return order[: int(np.floor(fraction * n_samples + 1e-9))]

"""Which samples train and which validate: split by simulation, then a nested fraction.

- The split puts whole simulations on one side (sub-volumes of one simulation never straddle it).
- `fraction` takes a nested prefix of one fixed seeded order of training samples, so the
  1/8 run trains on a subset of the 1/4 run's samples (data-scaling curves stay comparable).
"""

from __future__ import annotations

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


def split_simulations(n_files: int, val_fraction: float, seed: int,
                      data_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Simulation indices (train, val): whole simulations on one side."""
    order = np.random.default_rng(seed).permutation(n_files)
    n_val = max(1, round(val_fraction * n_files)) if val_fraction > 0 else 0
    if n_files - n_val < 1:
        raise DataError(
            f"{data_dir}: {n_files} simulation(s) cannot be split into train and val "
            f"with data.val_fraction={val_fraction}"
        )
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def sample_index(sim_indices, n_subs) -> np.ndarray:
    """(file index, sub-volume index) of every sub-volume of the simulations `sim_indices`."""
    return np.array([(f, s) for f in sim_indices for s in range(n_subs[f])],
                    dtype=np.int64).reshape(-1, 2)


def nested_prefix(n_samples: int, fraction: float, seed: int) -> np.ndarray:
    """Positions of the `fraction` of `n_samples` to train on: a prefix of one fixed seeded
    order, so the samples of a smaller fraction are among those of a larger one."""
    order = np.random.default_rng(seed).permutation(n_samples)
    return order[: int(np.floor(fraction * n_samples + 1e-9))]

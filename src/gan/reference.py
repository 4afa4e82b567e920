"""The simulated sub-volumes a generator is checked against (docs/gan.md).

Two sets, both from the training side of `gan.train_data`'s split (the validation
simulations stay unseen by everything the GAN does), drawn from one order: round robin over
the training simulations, sub-volume 0 of each, then 1, ..., so that any prefix spreads over
the parameter range the sigma_8 response needs.
- the physics validation: the first `gan.n_validation` of that order (src/gan/campaign.py);
- the checkpoint selection: the next `gan.n_select` (src/gan/selection.py). Kept apart from
  the validation's, so that picking the best of many checkpoints on them does not flatter the
  validation that is reported and that gates the generator.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from src.datamodules.split import split_simulations
from src.gan.nets import GanConfigError
from src.sim.store import read_simulation
from src.util import checks

log = logging.getLogger(__name__)
MIN_CUBES = 6  # cube pairs src.gan.physics.validate needs (its slope fit has 4 terms)
# the generated twins' noise streams: selection and validation see different noise too
VALIDATION_STREAM, SELECTION_STREAM = 1, 2


def set_size(gcfg: Mapping, key: str) -> int:
    """`gan.<key>` (n_validation, n_select): a number of cube pairs, >= MIN_CUBES."""
    n = checks.integer(f"gan.{key}", gcfg.get(key), 1, GanConfigError)
    if n < MIN_CUBES:
        raise GanConfigError(f"gan.{key}={n} must be >= {MIN_CUBES} (the sigma_8 response is "
                             "a fit of 4 coefficients)")
    return n


def training_order(train_dir: Path, manifest: Mapping, gcfg: Mapping) -> list[tuple[int, int]]:
    """(file index, sub-volume) of every training sub-volume, round robin over simulations."""
    files = manifest["files"]
    train, _ = split_simulations([int(e["id"]) for e in files], float(gcfg["val_fraction"]),
                                 int(gcfg["split_seed"]), train_dir)
    n_subs = {i: int(files[i].get("n_sub", 1)) for i in train}
    return [(i, sub) for sub in range(max(n_subs.values(), default=0))
            for i in train if sub < n_subs[i]]


def reference_cubes(train_dir: Path, manifest: Mapping, picks: list[tuple[int, int]]):
    """(counts [N, C, S, S, S] float32, params [N, 3] float64) of the picked sub-volumes,
    reading only the files they come from (a large set would not fit in memory whole)."""
    files = manifest["files"]
    cubes = {i: read_simulation(train_dir / files[i]["file"])[:2] for i in {i for i, _ in picks}}
    return (np.stack([cubes[i][0][sub] for i, sub in picks]).astype(np.float32),
            np.stack([cubes[i][1] for i, _ in picks]).astype(np.float64))


def twin_seeds(seed: int, stream: int, n: int) -> list[int]:
    """One noise seed per generated twin, a pure function of (gan.seed, stream, index)."""
    return [int(np.random.default_rng([int(seed), stream, i]).integers(2**63 - 1))
            for i in range(n)]


def validation_set(train_dir: Path, manifest: Mapping, gcfg: Mapping):
    """The first `gan.n_validation` training sub-volumes (fewer, with a warning, when the set
    has fewer; GanConfigError below MIN_CUBES)."""
    n = set_size(gcfg, "n_validation")
    order = training_order(train_dir, manifest, gcfg)
    if len(order) < MIN_CUBES:
        raise GanConfigError(
            f"gan.train_data={train_dir}: {len(order)} training sub-volumes, the physics "
            f"validation needs at least {MIN_CUBES}; add simulations")
    if len(order) < n:
        log.warning("gan.n_validation=%d: %s has only %d training sub-volumes; validating on "
                    "those", n, train_dir, len(order))
    return reference_cubes(train_dir, manifest, order[:n])


def selection_set(train_dir: Path, manifest: Mapping, gcfg: Mapping):
    """The `gan.n_select` training sub-volumes after the validation's; GanConfigError when
    the set has not that many beyond them."""
    n_val, n = set_size(gcfg, "n_validation"), set_size(gcfg, "n_select")
    order = training_order(train_dir, manifest, gcfg)
    if len(order) < n_val + n:
        raise GanConfigError(
            f"gan.n_select={n}: gan.train_data={train_dir} has {len(order)} training "
            f"sub-volumes, gan.n_validation={n_val} of them validate; lower gan.n_select (or "
            "gan.n_validation), add simulations, or set gan.select_every=0 to keep the last "
            "weights")
    return reference_cubes(train_dir, manifest, order[n_val:n_val + n])


__all__ = ["MIN_CUBES", "VALIDATION_STREAM", "SELECTION_STREAM", "set_size", "training_order",
           "reference_cubes", "twin_seeds", "validation_set", "selection_set"]

"""Staging: copy this rank's training shard to RAM or node-local storage before training.

`stage: auto` stages to RAM only when the shards of every rank on this machine fit in a
fraction of the available memory; a directory gets a copy of each file the shard reads,
written atomically since ranks of one node may stage the same file.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from src.datamodules.dataset import CosmoDataset
from src.dist import ranks_on_this_machine
from src.perf.system import available_memory_bytes
from src.util.atomic import copy_atomic

log = logging.getLogger(__name__)


def resolve_stage(stage: str | None, shard_bytes: int, trainer, ram_max_frac: float) -> str | None:
    """`stage: auto` -> "ram" when the shards (`shard_bytes` each) of every rank on this
    machine fit in `ram_max_frac` of the available memory, else no staging (read the files);
    any other value as it is ("ram", a directory, or None)."""
    if stage != "auto":
        return stage or None
    ranks_here = 1
    if trainer is not None:  # emulated nodes all run on this machine
        ranks_here = ranks_on_this_machine(trainer.world_size, trainer.num_devices)
    need = shard_bytes * max(1, ranks_here)
    available = available_memory_bytes()
    if available is not None and need <= ram_max_frac * available:
        return "ram"
    log.info("data: not staging to RAM: %d rank(s) x %.3g GB of shard vs %s GB available",
             ranks_here, shard_bytes / 1e9, "?" if available is None else f"{available / 1e9:.3g}")
    return None


def stage_shard(staged_to: str, files: list[Path], mine, train_index) -> tuple[list, dict | None, float]:
    """Copy the shard (sample positions `mine` of `train_index`) to `staged_to`: "ram" or a
    directory. Returns (the files to read, the in-RAM cache or None, seconds it took)."""
    start = time.perf_counter()
    cache = None
    if staged_to == "ram":
        reader = CosmoDataset(files, train_index, np.zeros((len(files), 1)), "none")
        cache = {int(i): np.asarray(reader.read_raw(int(i))) for i in mine}
    else:
        files = _stage_to_dir(Path(staged_to), files, {int(train_index[i][0]) for i in mine})
    seconds = time.perf_counter() - start
    log.info("data: staged %d samples to %s in %.2f s", len(mine), staged_to, seconds)
    return files, cache, seconds


def _stage_to_dir(target: Path, files: list[Path], needed: set[int]) -> list[Path]:
    """Files `needed` (by index) copied into `target` unless a same-size copy is there."""
    target.mkdir(parents=True, exist_ok=True)
    staged = []
    for i, path in enumerate(files):
        if i not in needed:
            staged.append(path)
            continue
        dest = target / path.name
        if not (dest.is_file() and dest.stat().st_size == path.stat().st_size):
            copy_atomic(path, dest)
        staged.append(dest)
    return staged

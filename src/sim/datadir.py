"""The campaign's data dir: lock, leftovers of killed runs, files already there, free space.

The coordinator holds an exclusive lock on DATA_DIR/.campaign.lock for the whole campaign, so
it may drop temporaries (never valid) and judge existing files without racing another
campaign. A rerun keeps a file that verifies and belongs to the same campaign
(`campaign_sha256`), simulates again one that is unreadable, and refuses one of another
campaign (it is never deleted).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import math
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

from src.errors import DataError, SimConfigError, SimStorageError
from src.sim.identity import sample_parameters
from src.sim.nbody import SimSpec
from src.sim.store import inspect_simulation, sim_filename, verify_simulation
from src.util.atomic import TMP_SUFFIX

log = logging.getLogger(__name__)

LOCK_NAME = ".campaign.lock"


def prepare_data_dir(data_dir: Path):
    """Create and probe the dir, take the campaign lock, drop stale temporaries.

    Returns the open lock file (closing it releases the lock)."""
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=data_dir, prefix=".write_probe_"):
            pass
        lock = open(data_dir / LOCK_NAME, "a")  # held (locked) until the campaign ends
    except OSError as err:
        raise SimStorageError(
            f"paths.data_dir={data_dir} is not a writable directory ({err.strerror or err})"
        ) from err
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as err:
        lock.close()
        raise SimStorageError(
            f"paths.data_dir={data_dir}: another campaign is running on this directory (it "
            f"holds {LOCK_NAME}); wait for it to end or use another paths.data_dir"
        ) from err
    except OSError as err:  # a file system without flock (some Lustre mounts)
        log.warning("%s: cannot lock (%s); run one campaign at a time on this dir",
                    data_dir / LOCK_NAME, err)
    # leftovers of a killed run: never valid, and safe to drop while we hold the lock
    for tmp in data_dir.glob(f"*{TMP_SUFFIX}"):
        tmp.unlink(missing_ok=True)
    return lock


def existing_ok(path: Path, sim_id: int, job: Mapping, spec: SimSpec, full: bool) -> bool:
    """True when `path` is a good file of this campaign; False (and removed) when broken."""
    if not path.exists():
        return False
    try:
        verify_simulation(path, full=full)
        info = inspect_simulation(path)
    except DataError as err:
        log.warning("removing unreadable %s (%s); it will be simulated again", path, err)
        path.unlink(missing_ok=True)
        return False
    _, seed = sample_parameters(job["seed"], sim_id, job["ranges"])
    attrs = info["attrs"]
    expected_shape = (spec.n_sub, *spec.sample_shape)
    if (int(attrs.get("seed", -1)) != seed or tuple(info["x_shape"]) != expected_shape
            or attrs.get("campaign_sha256") != job["campaign_sha256"]):
        raise SimConfigError(
            f"{path} belongs to another campaign (its campaign_sha256 "
            f"{attrs.get('campaign_sha256', 'is missing')} != {job['campaign_sha256']}: the "
            f"campaign seed, param_ranges or sim config differ from this run's); use a fresh "
            f"paths.data_dir or the original settings (existing files are never deleted)"
        )
    return True


def check_disk_space(data_dir: Path, spec: SimSpec, n_missing: int, margin: float) -> None:
    per_file = 4 * spec.n_sub * math.prod(spec.sample_shape) + 64 * 1024  # float32 + HDF5 meta
    need = margin * per_file * n_missing
    free = shutil.disk_usage(data_dir).free
    if need > free:
        raise SimStorageError(
            f"paths.data_dir={data_dir}: {n_missing} files need about {need / 2**20:.1f} MiB, "
            f"only {free / 2**20:.1f} MiB free"
        )


def missing_ids(job: Mapping, spec: SimSpec, settings: Mapping, data_dir: Path):
    """(ids still to simulate, number of good files kept); refuses when they cannot fit."""
    todo, skipped = [], 0
    for sim_id in range(settings["n_sims"]):
        if existing_ok(data_dir / sim_filename(sim_id), sim_id, job, spec,
                       settings["verify_existing"]):
            skipped += 1
        else:
            todo.append(sim_id)
    check_disk_space(data_dir, spec, len(todo), settings["disk_margin"])
    return todo, skipped


def warn_extra_files(data_dir: Path, n_sims: int) -> int:
    """Files of ids >= n_sims (an earlier, larger run) stay on disk but not in the manifest."""
    ours = {sim_filename(i) for i in range(n_sims)}
    extra = sorted(p.name for p in data_dir.glob("sim_*.h5") if p.name not in ours)
    if extra:
        log.warning("%s: %d files beyond campaign.n_sims=%d (%s ...) are kept but not listed in "
                    "the manifest", data_dir, len(extra), n_sims, extra[0])
    return len(extra)


def is_disk_full(err: BaseException) -> bool:
    while err is not None:
        if getattr(err, "errno", None) == errno.ENOSPC or "No space left" in str(err):
            return True
        err = err.__cause__
    return False


@contextlib.contextmanager
def disk_full_means(message: str) -> Iterator[None]:
    """A write failing for want of space becomes SimStorageError(`message`); other errors pass."""
    try:
        yield
    except DataError as err:
        if is_disk_full(err):
            raise SimStorageError(message) from err
        raise


__all__ = ["LOCK_NAME", "prepare_data_dir", "existing_ok", "check_disk_space", "missing_ids",
           "warn_extra_files", "is_disk_full", "disk_full_means"]

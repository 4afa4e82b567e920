"""A simulation campaign: ids -> (parameters, seed) -> HDF5 files + manifest.

Every simulation id gets its parameters (uniform in the configured ranges) and its seed
from numpy's SeedSequence([campaign seed, id]), so any rerun, on any rank or worker,
reproduces them bit for bit. Work is handed out dynamically:
  * under MPI (mpirun/srun, mpi4py): rank 0 is the parameter server (paper, Algorithm 1),
    ranks 1.. ask it for the next id whenever they are free;
  * otherwise a local process pool (spawn/forkserver) of `campaign.workers` processes.
Files are written atomically by src.sim.store; a rerun skips ids whose file verifies and
belongs to the same campaign (`campaign_sha256`), removes temporaries left by a killed run,
and rebuilds the manifest from the files of ids 0..n_sims-1. The coordinator holds an
exclusive lock on DATA_DIR/.campaign.lock for the whole campaign.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import hashlib
import json
import logging
import math
import multiprocessing as mp
import os
import shutil
import signal
import sys
import tempfile
import time
from collections import deque
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import torch

from src.errors import DataError, SimConfigError, SimError, SimStorageError
from src.sim.nbody import SimSpec, Simulation, describe
from src.sim.store import (
    MANIFEST_NAME,
    PARAM_NAMES,
    inspect_simulation,
    rebuild_manifest,
    sim_filename,
    verify_simulation,
    write_simulation,
)
from src.util.atomic import TMP_SUFFIX

log = logging.getLogger(__name__)

GENERATOR = "saih-cosmo particle-mesh (EH98 P(k), 2LPT, FastPM KDK, CIC)"
# mpirun / srun / hydra-PMI launchers set one of these in every rank's environment
_MPI_ENV = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "PMI_RANK", "MPI_LOCALNRANKS")
_START_METHODS = ("spawn", "forkserver")
# sim keys that do not change a simulation's output, so not part of the campaign's identity
_NOT_CAMPAIGN_KEYS = ("device", "name")
LOCK_NAME = ".campaign.lock"
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def code_version() -> str:
    try:
        from importlib.metadata import version

        return f"saih-cosmo {version('saih-cosmo')}"
    except Exception:  # not installed as a distribution (a bare checkout)
        return "saih-cosmo unknown"


# ---------------------------------------------------------------- parameters and seeds
def validate_ranges(ranges: Mapping) -> dict:
    """{name: (low, high)} for exactly PARAM_NAMES, each with low < high."""
    if ranges is None:
        raise SimConfigError("campaign.param_ranges is missing")
    names = set(ranges)
    if names != set(PARAM_NAMES):
        raise SimConfigError(
            f"campaign.param_ranges must name exactly {list(PARAM_NAMES)}, got {sorted(names)}"
        )
    out = {}
    for name in PARAM_NAMES:
        value = ranges[name]
        try:
            lo, hi = (float(v) for v in value)
        except (TypeError, ValueError) as err:
            raise SimConfigError(
                f"campaign.param_ranges.{name}={value!r} must be [low, high]"
            ) from err
        if not (math.isfinite(lo) and math.isfinite(hi)) or lo >= hi:
            raise SimConfigError(f"campaign.param_ranges.{name}=[{lo}, {hi}]: low must be < high")
        out[name] = (lo, hi)
    if not (0 < out["Omega_M"][0] and out["Omega_M"][1] <= 1):
        raise SimConfigError(f"campaign.param_ranges.Omega_M={list(out['Omega_M'])} must lie in (0, 1]")
    if out["sigma_8"][0] <= 0:
        raise SimConfigError(f"campaign.param_ranges.sigma_8={list(out['sigma_8'])} must be > 0")
    return out


def sample_parameters(campaign_seed: int, sim_id: int, ranges: Mapping) -> tuple[dict, int]:
    """(params, seed) of simulation `sim_id`: a pure function of (campaign seed, id)."""
    rng = np.random.default_rng(np.random.SeedSequence([int(campaign_seed), int(sim_id)]))
    params = {name: float(rng.uniform(*ranges[name])) for name in PARAM_NAMES}
    seed = int(rng.integers(0, 2**63 - 1))
    return params, seed


def campaign_digest(sim_cfg: Mapping, ranges: Mapping, campaign_seed: int) -> str:
    """sha256 of what defines a campaign's files: the sim config (less device and preset
    name), the parameter ranges and the campaign seed. Numbers compare by value (64 == 64.0)."""
    def canon(v):
        if isinstance(v, Mapping):
            return {str(k): canon(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [canon(x) for x in v]
        if isinstance(v, int | float) and not isinstance(v, bool) and float(v) == v:
            return float(v)
        return v

    ident = {"sim": {k: v for k, v in sim_cfg.items() if k not in _NOT_CAMPAIGN_KEYS},
             "param_ranges": ranges, "seed": int(campaign_seed)}
    return hashlib.sha256(json.dumps(canon(ident), sort_keys=True).encode()).hexdigest()


# ---------------------------------------------------------------- configuration
def _campaign_settings(camp: Mapping, spec: SimSpec) -> dict:
    def get(key):
        if key not in camp:
            raise SimConfigError(f"campaign.{key} is missing from the config")
        return camp[key]

    n_sims = get("n_sims")
    if not isinstance(n_sims, int) or n_sims < 1:
        raise SimConfigError(f"campaign.n_sims={n_sims} must be a positive integer")
    workers = get("workers")
    if not isinstance(workers, int) or workers < 1:
        raise SimConfigError(f"campaign.workers={workers} must be a positive integer")
    threads = get("threads_per_worker")
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise SimConfigError(f"campaign.threads_per_worker={threads} must be null or >= 1")
    method = get("start_method")
    if method not in _START_METHODS:
        raise SimConfigError(f"campaign.start_method={method!r} must be one of {_START_METHODS}")
    mode = str(get("mpi")).lower()
    if mode not in ("auto", "true", "false"):
        raise SimConfigError(f"campaign.mpi={get('mpi')!r} must be auto, true or false")
    margin = float(get("disk_margin"))
    if margin < 1:
        raise SimConfigError(f"campaign.disk_margin={margin} must be >= 1")
    ranges = validate_ranges(get("param_ranges"))
    omega_b = spec.fixed.get("omega_b")
    if omega_b is not None and ranges["Omega_M"][0] <= float(omega_b):
        raise SimConfigError(
            f"campaign.param_ranges.Omega_M={list(ranges['Omega_M'])}: low must be > "
            f"sim.cosmology.omega_b={omega_b} (baryons are part of the matter)"
        )
    return {
        "n_sims": n_sims, "seed": int(get("seed")), "ranges": ranges,
        "workers": workers, "threads": threads, "start_method": method, "mpi": mode,
        "progress": bool(get("progress")), "verify_existing": bool(get("verify_existing")),
        "disk_margin": margin,
    }


# ---------------------------------------------------------------- one simulation
def simulate_one(job: Mapping, sim_id: int, local_rank: int = 0) -> dict:
    """Simulate id `sim_id` and write its file; returns {id, file, timings}."""
    t0 = time.perf_counter()
    spec = SimSpec.from_config(job["sim"])
    params, seed = sample_parameters(job["seed"], sim_id, job["ranges"])
    sim = Simulation(spec, params, seed, local_rank=local_rank)
    t1 = time.perf_counter()
    x = sim.run()
    timings = {"setup_s": t1 - t0, **sim.timings, "simulate_s": time.perf_counter() - t0}
    y = np.array([params[n] for n in PARAM_NAMES], dtype=np.float32)
    attrs = {
        "sim_id": int(sim_id), "seed": seed, "campaign_seed": int(job["seed"]),
        "box_size": spec.box_size, "n_particles": spec.n_particles, "n_mesh": spec.n_mesh,
        "grid": spec.grid, "steps": sim.steps_taken, "z_init": spec.z_init,
        "redshifts": list(spec.redshifts), "lpt_order": spec.lpt_order,
        "param_names": list(PARAM_NAMES), "device": str(sim.device),
        "code_version": job["code_version"], "campaign_sha256": job["campaign_sha256"],
        **{f"timing_{k}": float(v) for k, v in timings.items()},
    }
    path = Path(job["data_dir"]) / sim_filename(sim_id)
    try:
        write_simulation(path, x, y, attrs)
    except DataError as err:
        if _is_disk_full(err):
            raise SimStorageError(
                f"{path}: disk full while writing simulation {sim_id}; free space in "
                f"{job['data_dir']} and rerun (finished files are kept)"
            ) from err
        raise
    return {"id": int(sim_id), "file": path.name, "timings": timings}


def _is_disk_full(err: BaseException) -> bool:
    while err is not None:
        if getattr(err, "errno", None) == errno.ENOSPC or "No space left" in str(err):
            return True
        err = err.__cause__
    return False


def _init_worker(threads):
    if threads:
        torch.set_num_threads(threads)


def _init_pool_worker(threads, parent):
    """Pool worker set-up; on Linux the worker is SIGKILLed when its parent dies, so a killed
    campaign leaves no orphans still simulating (`parent`: the coordinator's pid with spawn;
    None with forkserver, whose server exits with the coordinator)."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):
            pass
        if parent is not None and os.getppid() != parent:  # it died before prctl took effect
            os._exit(1)
    _init_worker(threads)


# ---------------------------------------------------------------- data dir
def _prepare_data_dir(data_dir: Path):
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


def _existing_ok(path: Path, sim_id: int, job: Mapping, spec: SimSpec, full: bool) -> bool:
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


def _check_disk_space(data_dir: Path, spec: SimSpec, n_missing: int, margin: float) -> None:
    per_file = 4 * spec.n_sub * math.prod(spec.sample_shape) + 64 * 1024  # float32 + HDF5 meta
    need = margin * per_file * n_missing
    free = shutil.disk_usage(data_dir).free
    if need > free:
        raise SimStorageError(
            f"paths.data_dir={data_dir}: {n_missing} files need about {need / 2**20:.1f} MiB, "
            f"only {free / 2**20:.1f} MiB free"
        )


def _header(spec: SimSpec, job: Mapping) -> dict:
    return {
        "param_names": list(PARAM_NAMES),
        "param_ranges": {k: list(v) for k, v in job["ranges"].items()},
        "sample_shape": spec.sample_shape,
        "n_sub": spec.n_sub,
        "redshifts": list(spec.redshifts),
        "generator": f"{GENERATOR}; {describe(spec)}",
        "code_version": job["code_version"],
        "campaign_seed": job["seed"],
        "campaign_sha256": job["campaign_sha256"],
        "sim": job["sim"],
    }


# ---------------------------------------------------------------- progress
class _Progress:
    """rich progress bar (done/total, rate, ETA), or nothing when disabled."""

    def __init__(self, enabled: bool, total: int, label: str):
        self._bar = None
        if not enabled:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            ProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.text import Text

        class RateColumn(ProgressColumn):
            def render(self, task):
                return Text(f"{task.speed or 0.0:.2f} sim/s")

        self._bar = Progress(TextColumn("{task.description}"), BarColumn(),
                             MofNCompleteColumn(), RateColumn(), TimeElapsedColumn(),
                             TextColumn("ETA"), TimeRemainingColumn())
        self._task = self._bar.add_task(label, total=total)
        self._bar.start()

    def advance(self):
        if self._bar:
            self._bar.advance(self._task)

    def close(self):
        if self._bar:
            self._bar.stop()


# ---------------------------------------------------------------- drivers
def _mpi_comm(mode: str):
    """COMM_WORLD when this process is one of several MPI ranks, else None."""
    if mode == "false":
        return None
    launched = any(v in os.environ for v in _MPI_ENV)
    if mode == "auto" and not launched:
        return None
    try:
        from mpi4py import MPI
    except ImportError as err:
        raise SimConfigError(
            "campaign.mpi: launched under MPI (or campaign.mpi=true) but mpi4py is not "
            "importable; pip install mpi4py, or set campaign.mpi=false"
        ) from err
    comm = MPI.COMM_WORLD
    return comm if comm.Get_size() > 1 else None


def _wait(request, poll_s: float = 0.02):
    """Wait on an MPI request without the busy spin of a blocking call (keeps cores free)."""
    while True:
        done, value = request.test()
        if done:
            return value
        time.sleep(poll_s)


def _plan(job, spec, settings, data_dir):
    """Coordinator set-up (under the lock): which ids still need running."""
    todo, skipped = [], 0
    for sim_id in range(settings["n_sims"]):
        if _existing_ok(data_dir / sim_filename(sim_id), sim_id, job, spec,
                        settings["verify_existing"]):
            skipped += 1
        else:
            todo.append(sim_id)
    _check_disk_space(data_dir, spec, len(todo), settings["disk_margin"])
    return todo, skipped


def _run_local(job, todo, settings, bar) -> list:
    if settings["workers"] == 1 or len(todo) <= 1:
        old = torch.get_num_threads()
        _init_worker(settings["threads"])
        try:
            infos = []
            for sim_id in todo:
                infos.append(simulate_one(job, sim_id))
                bar.advance()
            return infos
        finally:
            torch.set_num_threads(old)
    ctx = mp.get_context(settings["start_method"])
    infos = []
    parent = os.getpid() if settings["start_method"] == "spawn" else None
    pool = ProcessPoolExecutor(max_workers=min(settings["workers"], len(todo)), mp_context=ctx,
                               initializer=_init_pool_worker,
                               initargs=(settings["threads"], parent))
    try:
        # the pool hands each free worker the next queued id: dynamic load balance
        futures = {pool.submit(simulate_one, job, sim_id, k): sim_id
                   for k, sim_id in enumerate(todo)}
        for fut in as_completed(futures):
            try:
                infos.append(fut.result())
            except SimError:
                raise
            except Exception as err:
                raise SimError(f"simulation {futures[fut]} failed: "
                               f"{type(err).__name__}: {err}") from err
            bar.advance()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return infos


def _serve(comm, todo, bar) -> tuple[list, list]:
    """Rank 0: hand ids to whichever worker asks, until none are left (Algorithm 1)."""
    queue = deque(todo)
    active = comm.Get_size() - 1
    infos, errors = [], []
    while active:
        msg = _wait(comm.irecv(tag=1))
        if msg["kind"] == "done":
            infos.append(msg["info"])
            bar.advance()
        elif msg["kind"] == "error":
            errors.append(msg["error"])
        if queue and not errors:
            comm.send(queue.popleft(), dest=msg["rank"], tag=2)
        else:
            comm.send(None, dest=msg["rank"], tag=2)
            active -= 1
    return infos, errors


def _work(comm, job, threads):
    rank = comm.Get_rank()
    _init_worker(threads)
    comm.send({"kind": "ready", "rank": rank}, dest=0, tag=1)
    while (sim_id := _wait(comm.irecv(source=0, tag=2))) is not None:
        try:
            info = simulate_one(job, sim_id, local_rank=rank - 1)
            comm.send({"kind": "done", "rank": rank, "info": info}, dest=0, tag=1)
        except Exception as err:  # reported to the server, which stops handing out ids
            comm.send({"kind": "error", "rank": rank,
                       "error": f"simulation {sim_id} on rank {rank}: {type(err).__name__}: {err}"},
                      dest=0, tag=1)


def run_campaign(sim_cfg: Mapping, camp_cfg: Mapping, data_dir) -> dict:
    """Run (or complete) a campaign; returns a summary dict (the same on every MPI rank but for
    `rank`, this process's)."""
    t_start = time.perf_counter()
    spec = SimSpec.from_config(sim_cfg)
    settings = _campaign_settings(camp_cfg, spec)
    data_dir = Path(data_dir)
    job = {"sim": dict(sim_cfg), "seed": settings["seed"], "ranges": settings["ranges"],
           "campaign_sha256": campaign_digest(sim_cfg, settings["ranges"], settings["seed"]),
           "data_dir": str(data_dir), "code_version": code_version()}
    comm = _mpi_comm(settings["mpi"])
    rank = comm.Get_rank() if comm is not None else 0
    lock = None
    try:
        # set-up on the coordinator only; its verdict is shared so every rank fails alike
        plan, error = None, None
        if rank == 0:
            try:
                lock = _prepare_data_dir(data_dir)
                plan = _plan(job, spec, settings, data_dir)
            except SimError as err:
                error = err
        if comm is not None:
            plan, error = comm.bcast((plan, error), root=0)
        if error is not None:
            raise error
        todo, skipped = plan

        infos, errors = [], []
        bar = _Progress(settings["progress"] and rank == 0 and bool(todo), len(todo),
                        f"simulating ({'mpi' if comm else 'local'})")
        try:
            if comm is None:
                infos = _run_local(job, todo, settings, bar)
            elif rank == 0:
                infos, errors = _serve(comm, todo, bar)
            else:
                _work(comm, job, settings["threads"])
        finally:
            bar.close()

        result, error = None, None
        if rank == 0:
            try:
                if errors:
                    raise SimError("; ".join(errors))
                manifest = _write_manifest(data_dir, spec, job, settings["n_sims"])
                result = {
                    "data_dir": str(data_dir), "manifest": str(manifest),
                    "n_files": settings["n_sims"], "n_extra": _warn_extra_files(data_dir, settings),
                    "n_simulated": len(infos), "n_skipped": skipped,
                    "mode": "mpi" if comm is not None else ("pool" if settings["workers"] > 1
                                                            and len(todo) > 1 else "serial"),
                    "ranks": comm.Get_size() if comm is not None else 1,
                    "wall_s": time.perf_counter() - t_start,
                    "sim_s": sum(i["timings"]["simulate_s"] for i in infos),
                }
            except (SimError, DataError) as err:
                error = err
        if comm is not None:
            _wait(comm.Ibarrier())
            result, error = comm.bcast((result, error), root=0)
        if error is not None:
            raise error
        return {**result, "rank": rank}
    finally:
        if lock is not None:
            lock.close()  # releases the flock


def _write_manifest(data_dir: Path, spec: SimSpec, job: Mapping, n_sims: int) -> Path:
    """The manifest lists ids 0..n_sims-1 only (the files of this campaign)."""
    try:
        return rebuild_manifest(data_dir, _header(spec, job), ids=range(n_sims))
    except DataError as err:
        if _is_disk_full(err):
            raise SimStorageError(
                f"{data_dir / MANIFEST_NAME}: disk full while writing the manifest; free space "
                f"in {data_dir} and rerun (the simulation files are kept)"
            ) from err
        raise


def _warn_extra_files(data_dir: Path, settings: Mapping) -> int:
    """Files of ids >= n_sims (an earlier, larger run) stay on disk but not in the manifest."""
    ours = {sim_filename(i) for i in range(settings["n_sims"])}
    extra = sorted(p.name for p in data_dir.glob("sim_*.h5") if p.name not in ours)
    if extra:
        log.warning("%s: %d files beyond campaign.n_sims=%d (%s ...) are kept but not listed in "
                    "the manifest", data_dir, len(extra), settings["n_sims"], extra[0])
    return len(extra)


__all__ = ["run_campaign", "sample_parameters", "validate_ranges", "simulate_one", "campaign_digest",
           "MANIFEST_NAME", "SimConfigError", "SimStorageError"]

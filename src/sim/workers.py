"""One simulation, and the processes that map simulations over ids.

`Ranks` is this process among the campaign's processes: alone, or one rank of an MPI world
(mpirun/srun with mpi4py); the coordinator (rank 0) decides and `agree` shares its verdict,
so every rank returns or fails alike. `workers_for` picks one of three ways to run the ids,
all with the same `map(job, todo, progress, make_one)`, each handing out ids dynamically
(`make_one(job, id, local_rank)` writes one file: `simulate_one` by default; another method,
such as the GAN's generator, passes its own module-level function):
  * Serial: in this process;
  * LocalPool: a spawn/forkserver process pool of `campaign.workers` processes;
  * MpiServer: rank 0 is the parameter server (paper, Algorithm 1), ranks 1.. ask it for
    the next id whenever they are free.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import socket
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Protocol, TypeVar

import numpy as np
import torch

from src.dist import launched_by_mpi, scheduler_tasks
from src.errors import SimConfigError, SimError, UserError
from src.sim.datadir import disk_full_means
from src.sim.identity import sample_parameters
from src.sim.nbody import SimSpec, Simulation
from src.sim.store import PARAM_NAMES, sim_filename, write_simulation
from src.util.procs import die_with_parent
from src.util.progress import Progress

log = logging.getLogger(__name__)
T = TypeVar("T")
# (infos of the finished simulations, failures reported by other ranks): a failure in this
# process raises at once; one on another rank can only be reported, so the coordinator
# can still tell every rank how the campaign ended
Outcome = tuple[list, list]
# writes the file of one id: (job, id, local_rank) -> {id, file, timings}
MakeOne = Callable[[Mapping, int, int], dict]


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
    with disk_full_means(f"{path}: disk full while writing simulation {sim_id}; free space in "
                         f"{job['data_dir']} and rerun (finished files are kept)"):
        write_simulation(path, x, y, attrs)
    return {"id": int(sim_id), "file": path.name, "timings": timings}


def _set_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)


def _init_pool_worker(threads: int | None, parent: int | None) -> None:
    """A killed campaign leaves no orphan still simulating (`parent`: the coordinator's pid
    with spawn; None with forkserver, whose server exits with the coordinator)."""
    die_with_parent(parent)
    _set_threads(threads)


# ---------------------------------------------------------------- this process among the ranks
def _mpi_comm(mode: str):
    """COMM_WORLD when this process is one of several MPI ranks, else None. Several tasks of
    one scheduler step without an MPI world among them would each run the whole campaign:
    that is refused."""
    comm = None if mode == "false" or (mode == "auto" and not launched_by_mpi()) \
        else _world(mode)
    tasks = scheduler_tasks()
    if comm is None and tasks > 1:
        raise SimConfigError(
            f"the scheduler started {tasks} tasks (SLURM_STEP_NUM_TASKS) but MPI sees a world of "
            "1, so each task would run its own campaign: launch with `srun --mpi=pmix ...` (Open "
            "MPI needs PMIx under srun), or run one task (srun -n 1) with campaign.mpi=false for "
            "a local pool")
    return comm


def _world(mode: str):
    """COMM_WORLD if it has several ranks, else None (mpi4py must import)."""
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


class Ranks:
    """This process and its peers: one process, or the ranks of an MPI world (`comm`)."""

    def __init__(self, comm=None):
        self.comm = comm
        self.rank = comm.Get_rank() if comm is not None else 0
        self.size = comm.Get_size() if comm is not None else 1
        self.coordinator = self.rank == 0

    def hosts(self) -> list[str]:
        """The distinct hosts of all ranks (a collective: every rank calls it)."""
        host = socket.gethostname()
        return sorted(set(self.comm.allgather(host))) if self.comm is not None else [host]

    @classmethod
    def connect(cls, mpi_mode: str) -> Ranks:
        """The MPI world when `campaign.mpi` (auto/true/false) asks for it, else this process."""
        return cls(_mpi_comm(mpi_mode))

    def agree(self, step: Callable[[], T]) -> T:
        """Run `step` on the coordinator; every rank returns its value or raises its UserError."""
        value, error = None, None
        if self.coordinator:
            try:
                value = step()
            except UserError as err:
                error = err
        if self.comm is not None:
            _wait(self.comm.Ibarrier())  # the others wait here, polling, while rank 0 works
            value, error = self.comm.bcast((value, error), root=0)
        if error is not None:
            raise error
        return value


# ---------------------------------------------------------------- ways to map ids
class Workers(Protocol):
    mode: str  # "serial", "pool" or "mpi": what the campaign's summary reports

    def map(self, job: Mapping, todo: list, progress: Progress,
            make_one: MakeOne = ...) -> Outcome: ...


class Serial:
    mode = "serial"

    def __init__(self, threads: int | None):
        self.threads = threads

    def map(self, job: Mapping, todo: list, progress: Progress,
            make_one: MakeOne = simulate_one) -> Outcome:
        old = torch.get_num_threads()
        _set_threads(self.threads)
        try:
            infos = []
            for sim_id in todo:
                infos.append(make_one(job, sim_id))
                progress.advance()
            return infos, []
        finally:
            torch.set_num_threads(old)


class LocalPool:
    mode = "pool"

    def __init__(self, workers: int, threads: int | None, start_method: str):
        self.workers, self.threads, self.start_method = workers, threads, start_method

    def map(self, job: Mapping, todo: list, progress: Progress,
            make_one: MakeOne = simulate_one) -> Outcome:
        parent = os.getpid() if self.start_method == "spawn" else None
        pool = ProcessPoolExecutor(max_workers=min(self.workers, len(todo)),
                                   mp_context=mp.get_context(self.start_method),
                                   initializer=_init_pool_worker, initargs=(self.threads, parent))
        infos = []
        try:
            # the pool hands each free worker the next queued id: dynamic load balance
            futures = {pool.submit(make_one, job, sim_id, k): sim_id
                       for k, sim_id in enumerate(todo)}
            for fut in as_completed(futures):
                try:
                    infos.append(fut.result())
                except SimError:
                    raise
                except Exception as err:
                    raise SimError(f"simulation {futures[fut]} failed: "
                                   f"{type(err).__name__}: {err}") from err
                progress.advance()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return infos, []


class MpiServer:
    """Rank 0 serves ids to whichever rank asks; the other ranks simulate them."""

    mode = "mpi"

    def __init__(self, comm, threads: int | None):
        self.comm, self.threads = comm, threads

    def map(self, job: Mapping, todo: list, progress: Progress,
            make_one: MakeOne = simulate_one) -> Outcome:
        rank, host = self.comm.Get_rank(), socket.gethostname()
        if rank == 0:
            log.info("rank 0 on %s: parameter server, %d ids for %d workers", host, len(todo),
                     self.comm.Get_size() - 1)
            return self._serve(todo, progress)
        log.info("rank %d on %s: worker", rank, host)
        self._work(job, make_one)
        return [], []

    def _serve(self, todo: list, progress: Progress) -> Outcome:
        """Hand out ids until none are left or a rank failed (Algorithm 1)."""
        comm, queue = self.comm, deque(todo)
        active = comm.Get_size() - 1
        infos, errors = [], []
        while active:
            msg = _wait(comm.irecv(tag=1))
            if msg["kind"] == "done":
                infos.append(msg["info"])
                progress.advance()
            elif msg["kind"] == "error":
                errors.append(msg["error"])
            if queue and not errors:
                comm.send(queue.popleft(), dest=msg["rank"], tag=2)
            else:
                comm.send(None, dest=msg["rank"], tag=2)
                active -= 1
        return infos, errors

    def _work(self, job: Mapping, make_one: MakeOne) -> None:
        comm, rank = self.comm, self.comm.Get_rank()
        _set_threads(self.threads)
        comm.send({"kind": "ready", "rank": rank}, dest=0, tag=1)
        while (sim_id := _wait(comm.irecv(source=0, tag=2))) is not None:
            try:
                info = make_one(job, sim_id, rank - 1)
                comm.send({"kind": "done", "rank": rank, "info": info}, dest=0, tag=1)
            except Exception as err:  # reported to the server, which stops handing out ids
                comm.send({"kind": "error", "rank": rank, "error": f"simulation {sim_id} on "
                           f"rank {rank}: {type(err).__name__}: {err}"}, dest=0, tag=1)


def workers_for(ranks: Ranks, settings: Mapping, n_todo: int) -> Workers:
    """The MPI server under MPI, else a pool when it has more than one id to share out."""
    if ranks.comm is not None:
        return MpiServer(ranks.comm, settings["threads"])
    if settings["workers"] > 1 and n_todo > 1:
        return LocalPool(settings["workers"], settings["threads"], settings["start_method"])
    return Serial(settings["threads"])


__all__ = ["simulate_one", "Ranks", "Workers", "Serial", "LocalPool", "MpiServer",
           "workers_for"]

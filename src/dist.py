"""Facts about this process's place among the ranks of a job, read from the environment.

Whoever starts ranks says so in their environment: torchrun, SLURM, LSF and MPI with their
own variables, and `src.training.launch` (our loopback launcher) with CHILD_FLAG and, when
several "nodes" share one machine, EMULATED_FLAG. Every layer may read these facts; only the
launcher sets them.
"""

from __future__ import annotations

import os

CHILD_FLAG = "SAIH_LAUNCHED"
# set in every rank when several "nodes" share this machine (all ranks see the same cores)
EMULATED_FLAG = "SAIH_EMULATED_NODES"
# mpirun / srun / hydra-PMI launchers set one of these in every rank's environment
MPI_ENV = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "PMI_RANK", "MPI_LOCALNRANKS")


# what a scheduler says about the ranks of this process's step (srun sets them per step; a
# batch script, one process, has SLURM_NTASKS but no step count)
SCHEDULER_TASKS_ENV = ("SLURM_STEP_NUM_TASKS",)
# this process's global rank, as whoever started it says, in the order they are trusted
RANK_ENV = ("RANK", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK")


def launched_by_mpi() -> bool:
    """An MPI launcher started this process (whatever the size of its world)."""
    return any(v in os.environ for v in MPI_ENV)


def mpi_world_size() -> int:
    """Ranks of the MPI world this process was started in, as its launcher says (1: none)."""
    return int(os.environ.get("OMPI_COMM_WORLD_SIZE", os.environ.get("PMI_SIZE", "1")))


def under_batch_system() -> bool:
    """Started by mpirun or inside a SLURM job: whatever looks like a terminal (Open MPI
    forwards output through one) reaches a log file, where a redrawn bar becomes noise."""
    return launched_by_mpi() or "SLURM_JOB_ID" in os.environ


def scheduler_tasks() -> int:
    """Tasks the scheduler started for this step (1: none, or not under a scheduler)."""
    return max((int(os.environ[v]) for v in SCHEDULER_TASKS_ENV if v in os.environ), default=1)


def global_rank() -> int:
    """This process's rank in its job before any process group exists (0 when alone)."""
    for var in RANK_ENV:
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


def cluster_launched() -> bool:
    """True when something else already started this process as one rank of many."""
    # Not a bare LOCAL_RANK: Lightning leaves one behind in os.environ after an in-process
    # job, and trusting it made the next multirun job run with the wrong world size.
    if os.environ.get(CHILD_FLAG):
        return True
    # imported here: Lightning costs seconds of start-up that simulation workers never need
    from lightning.fabric.plugins.environments import (
        LSFEnvironment,
        SLURMEnvironment,
        TorchElasticEnvironment,
    )

    if any(env.detect() for env in (SLURMEnvironment, TorchElasticEnvironment, LSFEnvironment)):
        return True
    return mpi_world_size() > 1


def emulated_nodes() -> bool:
    """Several "nodes" of this job share this one machine (launched on loopback)."""
    return bool(os.environ.get(EMULATED_FLAG))


def launched_rank_is_zero() -> bool:
    """Global rank 0 of a launched job, from the torch.distributed variables."""
    return os.environ.get("NODE_RANK", "0") == "0" and os.environ.get("LOCAL_RANK", "0") == "0"


def ranks_on_this_machine(world_size: int, devices_per_node: int) -> int:
    """How many ranks of the job share this machine's memory and cores."""
    return world_size if emulated_nodes() else devices_per_node


def machine_leader(global_rank: int, local_rank: int) -> bool:
    """The one rank per machine that benchmarks it (ranks of one machine would contend)."""
    return global_rank == 0 if emulated_nodes() else local_rank == 0


def job_root_pid() -> int:
    """The process under which all of this machine's ranks of the job run: the launcher's
    (our loopback launcher, torchrun, a SLURM step, mpirun) when one started this rank, else
    this process. What runs outside its tree is not the job (src.perf.contention)."""
    launched = (os.environ.get(CHILD_FLAG) or "TORCHELASTIC_RUN_ID" in os.environ
                or "SLURM_STEP_ID" in os.environ or launched_by_mpi())
    return os.getppid() if launched else os.getpid()

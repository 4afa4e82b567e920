"""The ranks of one job agree before they train: one process group, opened with a timeout,
and rank 0's verdicts shared with every rank.

Each rank of a cluster-launched job (SLURM, torchrun) runs `run_job` on its own, and on a
cluster each node may see its own output dir: rank 0, the one that writes metrics.json, can
find a finished result that rank 1 cannot. Were each rank to decide alone, rank 0 would skip
and exit while rank 1 waited to train with it forever. So rank 0 decides and every rank
follows. The group is opened here with `launch.timeout_s` (the wait for the other ranks to
join, and for every collective after), and Lightning reuses it instead of opening its own.
"""

from __future__ import annotations

import logging
import os
from datetime import timedelta

import torch.distributed as dist
from omegaconf import DictConfig

from src.dist import CHILD_FLAG, global_rank
from src.errors import LaunchError
from src.util.devices import auto_device_type

log = logging.getLogger(__name__)


def _rendezvous() -> tuple[str, int, int, int] | None:
    """(address, port, rank, world size) of this process's job, when something started it
    as one rank of several; None otherwise (or for launchers Lightning handles alone)."""
    from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    if os.environ.get(CHILD_FLAG) or TorchElasticEnvironment.detect():
        world = int(os.environ.get("WORLD_SIZE", "1"))
        return os.environ.get("MASTER_ADDR", "127.0.0.1"), int(os.environ.get("MASTER_PORT", "0")), \
            global_rank(), world
    if SLURMEnvironment.detect():
        env = SLURMEnvironment()
        return env.main_address, env.main_port, env.global_rank(), env.world_size()
    return None


def _backend(cfg: DictConfig) -> str:
    """What Lightning would pick: NCCL for a job on GPUs, gloo on CPUs."""
    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and auto_device_type() == "cuda")
    return "nccl" if on_gpu else "gloo"


def open_job_group(cfg: DictConfig) -> bool:
    """Join the job's process group (idempotent); False when this process is a job alone."""
    if dist.is_initialized():
        return True
    where = _rendezvous()
    if where is None or where[3] <= 1:
        return False
    addr, port, rank, world = where
    timeout_s = float(cfg.launch.timeout_s)
    # Lightning reads these when it sets up its strategy; under SLURM it derives them itself
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = addr, str(port)
    try:
        dist.init_process_group(_backend(cfg), rank=rank, world_size=world,
                                timeout=timedelta(seconds=timeout_s))
    except (RuntimeError, ValueError) as err:  # DistStoreError / DistNetworkError included
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise LaunchError(
            f"rank {rank} of {world}: the job's ranks did not all join at {addr}:{port} within "
            f"launch.timeout_s={timeout_s:g} ({first}); check that every rank was started with "
            "the same job, or raise launch.timeout_s") from None
    log.info("rank %d of %d joined the job's process group at %s:%s", rank, world, addr, port)
    return True


def from_rank0(value):
    """Rank 0's `value` on every rank of the open group (through gloo: any backend's job)."""
    group = None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
    box = [value]
    try:
        dist.broadcast_object_list(box, src=0, group=group)
    except RuntimeError as err:
        raise LaunchError(f"rank {dist.get_rank()}: no word from rank 0 within launch.timeout_s "
                          f"({str(err).strip().splitlines()[0]})") from None
    return box[0]


def close_job_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()

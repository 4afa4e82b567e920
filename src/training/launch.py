"""Start the ranks of one job on this machine when no cluster launcher did.

Lightning's own `ddp` launcher re-runs `sys.argv` in its child processes. Under a Hydra
multirun that argv holds the whole sweep, so children re-run every job, and a second job
inherits the first job's LOCAL_RANK and never starts its ranks. We launch instead: the job's
resolved config goes to `<job dir>/.launch/config.yaml` and `num_nodes x devices` fresh
processes run `python -m src.training.launch <that file>` with the torch.distributed variables set,
like torchrun does. Nothing leaks from one job to the next, and a crashed job cannot take
the sweep down. `num_nodes > 1` on one machine is emulated: one process group spans all
"nodes" over loopback.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from src.dist import CHILD_FLAG, EMULATED_FLAG, cluster_launched, launched_rank_is_zero
from src.errors import LaunchError, UserError
from src.training.collective import open_job_group
from src.training.fit import fit_job
from src.training.records import record_failure, recorded_error
from src.util.procs import die_with_parent

log = logging.getLogger(__name__)


def local_devices(trainer_cfg) -> int:
    """Processes per node that `trainer.devices` asks for."""
    devices = trainer_cfg.get("devices", 1)
    if devices in ("auto", -1, "-1"):
        if trainer_cfg.get("accelerator") in ("gpu", "cuda"):
            return max(1, torch.cuda.device_count())
        return 1
    if isinstance(devices, str) and "," in devices:  # "0,1": a list of device ids
        return len([d for d in devices.split(",") if d.strip()])
    if OmegaConf.is_list(devices) or isinstance(devices, (list, tuple)):
        return len(devices)
    return int(devices)


def world_shape(cfg: DictConfig) -> tuple[int, int]:
    return int(cfg.trainer.get("num_nodes", 1)), local_devices(cfg.trainer)


def needs_local_launch(cfg: DictConfig) -> bool:
    nodes, devices = world_shape(cfg)
    return nodes * devices > 1 and not cluster_launched()


@contextlib.contextmanager
def isolated_job():
    """Undo what an in-process job leaves behind (environment variables Lightning sets,
    a process group) so the next job of a multirun starts clean."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and not cluster_launched():
            dist.destroy_process_group()
        os.environ.clear()
        os.environ.update(saved)


def free_port(addr: str) -> int:
    with socket.socket() as sock:
        sock.bind((addr, 0))
        return sock.getsockname()[1]


def launch_local(cfg: DictConfig) -> Path:
    """Run the job's ranks as local processes; returns the job dir. Raises LaunchError."""
    out_dir = Path(cfg.paths.output_dir)
    nodes, devices = world_shape(cfg)
    world = nodes * devices
    if nodes > 1:
        log.warning("trainer.num_nodes=%d on one machine: the nodes are emulated (shared CPU/GPU, loopback)", nodes)
    launch_dir = out_dir / ".launch"
    launch_dir.mkdir(parents=True, exist_ok=True)
    cfg_path = launch_dir / "config.yaml"
    # the job as asked, nothing added: each rank's config hash is the one a rerun compares
    cfg_path.write_text(OmegaConf.to_yaml(OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))))

    threads = cfg.launch.get("threads_per_rank") or max(1, (os.cpu_count() or 1) // world)
    port = free_port(cfg.launch.master_addr)
    procs = []
    for rank in range(world):
        env = dict(os.environ)
        env.update(
            {
                CHILD_FLAG: "1",
                EMULATED_FLAG: "1" if nodes > 1 else "",
                "MASTER_ADDR": str(cfg.launch.master_addr),
                "MASTER_PORT": str(port),
                "WORLD_SIZE": str(world),
                "RANK": str(rank),
                "NODE_RANK": str(rank // devices),
                "LOCAL_RANK": str(rank % devices),
                "OMP_NUM_THREADS": str(threads),
            }
        )
        log_file = None if rank == 0 else open(launch_dir / f"rank{rank}.log", "w")  # noqa: SIM115
        procs.append(
            (
                subprocess.Popen(
                    [sys.executable, "-m", "src.training.launch", str(cfg_path)],
                    env=env,
                    stdout=log_file,
                    stderr=subprocess.STDOUT if log_file else None,
                    preexec_fn=functools.partial(die_with_parent, sig=signal.SIGTERM),
                ),
                log_file,
            )
        )
    try:
        _wait(procs, float(cfg.launch.grace_s), launch_dir)
    except BaseException:
        for proc, _ in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        raise
    finally:
        for _, fh in procs:
            if fh:
                fh.close()
    return out_dir


def _wait(procs, grace_s: float, launch_dir: Path) -> None:
    failed_at = None
    while True:
        codes = [p.poll() for p, _ in procs]
        if all(c is not None for c in codes):
            break
        if failed_at is None and any(c not in (None, 0) for c in codes):
            failed_at = time.monotonic()
        # a rank stuck in a collective ignores SIGTERM (Lightning defers it to the next
        # batch): ask after grace_s, insist after twice that
        waited = time.monotonic() - failed_at if failed_at is not None else 0.0
        for p, _ in procs:
            if p.poll() is None and waited > 2 * grace_s:
                p.kill()
            elif p.poll() is None and waited > grace_s:
                p.terminate()
        time.sleep(0.2)
    bad = [(r, c) for r, c in enumerate(codes) if c != 0]
    if bad:
        rank, code = bad[0]
        if rank == 0:
            detail = recorded_error(launch_dir.parent) or "see the console output above"
        else:
            log_path = launch_dir / f"rank{rank}.log"
            detail = f"see {log_path}\n" + "\n".join(log_path.read_text().splitlines()[-15:])
        raise LaunchError(f"rank {rank} exited with code {code}: {detail}")


def main(cfg_path: str) -> None:
    cfg = OmegaConf.load(cfg_path)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    try:
        open_job_group(cfg)  # the ranks' joining and collectives wait launch.timeout_s at most
        fit_job(cfg)
    except Exception as err:
        rank0 = launched_rank_is_zero()
        if rank0:
            record_failure(Path(cfg.paths.output_dir), err)
        if isinstance(err, UserError):
            # bad input: rank 0's error reaches the user once, through the launcher
            if not rank0:
                print(f"error: {err}", file=sys.stderr)
            sys.exit(1)
        raise


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main(sys.argv[1])

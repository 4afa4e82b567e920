"""SLURM from the sweep's side: each job's resources, and waiting on the queue with a limit.

A sweep's jobs differ in nodes and tasks (`trainer.num_nodes=1,2,4,8`), so each job's resources
are read from its own config; jobs alike are submitted together. Waiting is never silent
and never unbounded: a job that pends past `pending_limit_s`, or for a reason that does not
clear by waiting, is cancelled and reported with SLURM's own reason; a running job is
bounded by its SLURM time limit (`timeout_min`).
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from src.errors import SchedulerError

log = logging.getLogger(__name__)

# what the launcher config holds for us, not for sbatch
OWN_KEYS = ("pending_limit_s", "poll_s", "never_start_reasons")
_QUEUE_CALL_S = 60  # one squeue/scancel call; a controller that does not answer is an error


def job_resources(launcher: Mapping, trainer: Mapping) -> dict:
    """The launcher's parameters for one job: GPUs per node follow the trainer (none unless
    it trains on GPUs), tasks per node are the trainer's devices, a number."""
    params = {k: v for k, v in launcher.items() if k != "_target_"}
    tasks = params.get("tasks_per_node")
    if not isinstance(tasks, int) and not str(tasks).isdigit():
        raise SchedulerError(f"trainer.devices={tasks}: SLURM needs the tasks per node as a "
                             "number; pass trainer.devices=N")
    params["tasks_per_node"] = int(tasks)
    if params.get("gpus_per_node") == "auto":
        on_gpu = str(trainer.get("accelerator")) in ("gpu", "cuda")
        params["gpus_per_node"] = params["tasks_per_node"] if on_gpu else None
    return params


@dataclass(frozen=True)
class QueueLimits:
    pending_limit_s: float
    poll_s: float
    never_start_reasons: tuple[str, ...]

    @classmethod
    def from_params(cls, params: Mapping) -> QueueLimits:
        return cls(float(params["pending_limit_s"]), float(params["poll_s"]),
                   tuple(params.get("never_start_reasons") or ()))


def _run(cmd: Sequence[str]) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(list(cmd), capture_output=True, text=True, timeout=_QUEUE_CALL_S)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise SchedulerError(f"`{' '.join(cmd)}` failed: {err}") from None


def queue_states(job_ids: Sequence[str]) -> dict[str, tuple[str, str]]:
    """SLURM's (state, reason) of each of `job_ids` still in the queue; ended jobs are absent."""
    masters = sorted({str(j).split("_")[0] for j in job_ids})
    if not masters:
        return {}
    proc = _run(["squeue", "-h", "-r", "-o", "%i|%T|%r", "-j", ",".join(masters)])
    if proc.returncode != 0:
        if "Invalid job id" in proc.stderr:  # all of them ended and were purged
            return {}
        raise SchedulerError(f"squeue failed: {proc.stderr.strip()}")
    states = {}
    for line in proc.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3:
            states[parts[0]] = (parts[1], parts[2])
    return states


def cancel(job_id: str) -> None:
    _run(["scancel", str(job_id)])


def await_jobs(job_ids: Sequence[str], limits: QueueLimits,
               names: Mapping[str, str] | None = None) -> dict[str, SchedulerError]:
    """Wait until every job left the queue; returns the error of each one that never started
    (cancelled here). States are logged as they change, so a wait is never silent."""
    names = names or {}
    start = time.monotonic()
    waiting, seen, never = set(map(str, job_ids)), {}, {}
    while waiting:
        states = queue_states(sorted(waiting))
        waited = time.monotonic() - start
        for job_id in sorted(waiting):
            state, reason = states.get(job_id, ("", ""))
            label = names.get(job_id, job_id)
            if seen.get(job_id) != (state, reason) and state:
                log.info("SLURM job %s (%s): %s (%s)", job_id, label, state, reason)
                seen[job_id] = (state, reason)
            if not state:
                waiting.discard(job_id)
            elif state == "PENDING" and (why := _never_starts(reason, waited, limits)):
                cancel(job_id)
                never[job_id] = SchedulerError(f"SLURM job {job_id} ({label}) did not start: "
                                               f"pending ({reason}), {why}")
                log.error("%s", never[job_id])
                waiting.discard(job_id)
        if waiting:
            time.sleep(limits.poll_s)
    return never


def _never_starts(reason: str, waited: float, limits: QueueLimits) -> str:
    """Why a pending job is given up on now ("" to wait on)."""
    if reason in limits.never_start_reasons:
        return "a reason waiting does not clear (hydra.launcher.never_start_reasons)"
    if waited > limits.pending_limit_s:
        return f"past hydra.launcher.pending_limit_s={limits.pending_limit_s:g}"
    return ""

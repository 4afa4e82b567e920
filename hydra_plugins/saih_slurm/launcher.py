"""`hydra/launcher=slurm`: hydra-submitit-launcher, with each job's own resources.

Submitit's launcher fixes nodes and tasks once per sweep, so `trainer.num_nodes=1,2,4,8`
could not be one multirun. This one resolves every job's launcher config against that job's
own overrides, submits one SLURM array per distinct set of resources, waits with the limits
of src.training.slurm_queue, and hands Hydra one JobReturn per job in the sweep's order. A
job SLURM refuses (sbatch's error) or that never starts (squeue's reason) is recorded in its
job dir as that job's failure, and the others go on.
"""

# no `from __future__ import annotations`: Hydra's plugin scan runs this module outside
# sys.modules, where dataclasses cannot resolve string annotations
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf, SlurmQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher
from omegaconf import OmegaConf, open_dict

log = logging.getLogger(__name__)


@dataclass
class GroupedSlurmConf(SlurmQueueConf):
    """Submitit's SLURM settings, resolved per job, plus how long to wait on the queue."""

    _target_: str = "hydra_plugins.saih_slurm.launcher.GroupedSlurmLauncher"
    nodes: Any = 1
    tasks_per_node: Any = 1
    gpus_per_node: Any = None
    pending_limit_s: float = 3600.0
    poll_s: float = 5.0
    never_start_reasons: list[str] = field(default_factory=list)


ConfigStore.instance().store(group="hydra/launcher", name="grouped_slurm",
                             node=GroupedSlurmConf(), provider="saih_slurm")


@dataclass
class _Job:
    idx: int
    overrides: list[str]
    cfg: Any
    params: dict | None = None
    error: Exception | None = None

    @property
    def out_dir(self) -> Path:
        return Path(str(self.cfg.hydra.sweep.dir)) / str(self.cfg.hydra.sweep.subdir)

    def label(self) -> str:
        return f"#{self.idx} in {self.out_dir}"


class GroupedSlurmLauncher(SlurmLauncher):
    def launch(self, job_overrides, initial_job_idx: int):
        from src.training.slurm_queue import OWN_KEYS, QueueLimits, await_jobs

        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        jobs = [self._resolve(initial_job_idx + k, list(o)) for k, o in enumerate(job_overrides)]
        groups: dict[str, list[_Job]] = {}
        for job in jobs:
            if job.error is None:
                sbatch = {k: v for k, v in job.params.items() if k not in OWN_KEYS}
                groups.setdefault(json.dumps(sbatch, sort_keys=True, default=str), []).append(job)
        submitted = []
        for members in groups.values():
            submitted += self._submit(members)
        limits = QueueLimits.from_params(self.params)
        names = {sj.job_id: job.label() for job, sj in submitted}
        never = await_jobs([sj.job_id for _, sj in submitted], limits, names)
        for job, sj in submitted:
            job.error = never.get(sj.job_id)
        returns = {job.idx: self._collect(job, sj) for job, sj in submitted if job.error is None}
        return [returns.get(job.idx) or self._failed(job) for job in jobs]

    def _resolve(self, idx: int, overrides: list[str]) -> _Job:
        """The job's own config, and its launcher parameters resolved against it."""
        from src.errors import UserError
        from src.training.slurm_queue import job_resources

        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        with open_dict(cfg.hydra.job):
            cfg.hydra.job.num = idx
        job = _Job(idx, overrides, cfg)
        try:
            launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
            job.params = job_resources(launcher, OmegaConf.to_container(cfg.trainer, resolve=True))
        except UserError as err:
            job.error = err
        return job

    def _submit(self, members: list[_Job]) -> list:
        """One SLURM array for jobs with the same resources; a refusal fails them all."""
        import submitit

        from src.errors import SchedulerError
        from src.training.slurm_queue import OWN_KEYS

        params = {k: v for k, v in members[0].params.items() if k not in OWN_KEYS}
        executor = submitit.AutoExecutor(cluster="slurm", folder=params.pop("submitit_folder"),
                                         slurm_max_num_timeout=params.pop("max_num_timeout"))
        base = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{k if k in base else f"slurm_{k}": v
                                      for k, v in params.items()})
        for job in members:
            log.info("\t#%d : %s : nodes=%s tasks_per_node=%s gpus_per_node=%s", job.idx,
                     " ".join(filter_overrides(job.overrides)), params["nodes"],
                     params["tasks_per_node"], params.get("gpus_per_node"))
        calls = [(job.overrides, "hydra.sweep.dir", job.idx, f"job_id_for_{job.idx}",
                  _singleton_state()) for job in members]
        try:
            sjobs = executor.map_array(self, *zip(*calls, strict=True))
        except submitit.core.utils.FailedJobError as err:
            reason = str(err).strip() or "no message"
            for job in members:
                job.error = SchedulerError(f"SLURM refused {job.label()} (nodes={params['nodes']}, "
                                           f"tasks_per_node={params['tasks_per_node']}): {reason}")
                log.error("%s", job.error)
            return []
        return list(zip(members, sjobs, strict=True))

    def _collect(self, job: _Job, sjob) -> JobReturn | None:
        """Task 0's JobReturn, or None (the job then fails) when the job left no result."""
        import submitit

        from src.errors import SchedulerError

        try:
            return sjob.results()[0]
        except submitit.core.utils.UncompletedJobError as err:
            job.error = SchedulerError(f"SLURM job {sjob.job_id} ({job.label()}) ended without a "
                                       f"result: {str(err).strip().splitlines()[-1]}")
            return None

    def _failed(self, job: _Job) -> JobReturn:
        """The job's failure, recorded in its dir (unless its ranks recorded one)."""
        from src import contract
        from src.training.records import record_failure

        if not (job.out_dir / contract.ERROR_FILE).is_file():
            record_failure(job.out_dir, job.error)
        return JobReturn(overrides=job.overrides, cfg=job.cfg, hydra_cfg=job.cfg,
                         working_dir=str(job.out_dir), task_name=str(job.cfg.hydra.job.name),
                         status=JobStatus.FAILED, _return_value=job.error)


def _singleton_state():
    from hydra.core.singleton import Singleton

    return Singleton.get_state()

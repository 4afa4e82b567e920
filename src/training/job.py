"""One job of a sweep, from the parent's side: skip it when it already finished with this
config, set an older result aside, train in this process or start its ranks, and leave its
error behind when it fails (so the sweep goes on and the report can say why).

Under a cluster launcher every rank runs this; rank 0 (the one that writes metrics.json)
makes each decision and the others follow it, so all ranks skip or all train.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from src import contract
from src.dist import cluster_launched, global_rank
from src.training.collective import close_job_group, from_rank0, open_job_group
from src.training.fit import fit_job
from src.training.launch import isolated_job, launch_local, needs_local_launch, world_shape
from src.training.preflight import check_memory
from src.training.records import finished_result, record_failure, set_aside_stale_result

log = logging.getLogger(__name__)


def _finished(cfg: DictConfig, shared: bool, writer: bool) -> dict | None:
    """The saved payload when this job already finished, as rank 0 sees it."""
    if not cfg.get("skip_complete", True):
        return None
    done = finished_result(cfg) if writer else None
    return from_rank0(done) if shared else done


def run_job(cfg: DictConfig) -> dict:
    """Train (in-process, or as locally launched ranks) and return the metrics.json payload."""
    out_dir = Path(cfg.paths.output_dir)
    shared = cluster_launched() and open_job_group(cfg)  # one rank of several
    writer = global_rank() == 0
    if (done := _finished(cfg, shared, writer)) is not None:
        # a rerun of the same sweep: this job already finished with this exact config
        log.info("skipping %s: already complete (metrics.json)", out_dir)
        if shared:
            close_job_group()
        return done
    if writer:
        set_aside_stale_result(out_dir)
    try:
        if not needs_local_launch(cfg):
            with isolated_job():
                return fit_job(cfg)
        nodes, devices = world_shape(cfg)
        check_memory(cfg, nodes * devices)
        launch_local(cfg)
        saved = contract.read_job_record(out_dir / contract.METRICS_FILE)
        if saved is None:
            raise contract.ContractError(f"{out_dir / contract.METRICS_FILE}: the ranks exited "
                                         "cleanly but rank 0 wrote no readable result")
    except Exception as err:
        # a launched rank 0 records its own; other ranks of a cluster job leave it to rank 0
        if writer and not (out_dir / contract.ERROR_FILE).is_file():
            record_failure(out_dir, err)
        raise
    return saved

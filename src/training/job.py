"""One job of a sweep, from the parent's side: skip it when it already finished with this
config, set an older result aside, train in this process or start its ranks, and leave its
error behind when it fails (so the sweep goes on and the report can say why)."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from src import contract
from src.training.fit import fit_job
from src.training.launch import isolated_job, launch_local, needs_local_launch
from src.training.records import finished_result, record_failure, set_aside_stale_result

log = logging.getLogger(__name__)


def run_job(cfg: DictConfig) -> dict:
    """Train (in-process, or as locally launched ranks) and return the metrics.json payload."""
    out_dir = Path(cfg.paths.output_dir)
    if cfg.get("skip_complete", True) and (done := finished_result(cfg)) is not None:
        # a rerun of the same sweep: this job already finished with this exact config
        log.info("skipping %s: already complete (metrics.json)", out_dir)
        return done
    set_aside_stale_result(out_dir)
    try:
        if not needs_local_launch(cfg):
            with isolated_job():
                return fit_job(cfg)
        launch_local(cfg)
        saved = contract.read_job_record(out_dir / contract.METRICS_FILE)
        if saved is None:
            raise contract.ContractError(f"{out_dir / contract.METRICS_FILE}: the ranks exited "
                                         "cleanly but rank 0 wrote no readable result")
    except Exception as err:
        if not (out_dir / contract.ERROR_FILE).is_file():  # a launched rank 0 records its own
            record_failure(out_dir, err)
        raise
    return saved

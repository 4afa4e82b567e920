"""Train one CosmoFlow-family model and write the job's metrics.json.

    python train.py model=small data.dir=data/tiny data.fraction=1/4 trainer.max_epochs=1 hydra.run.dir=OUT
    python train.py -m model=small data.fraction=1,0.5 trainer=ddp_sim
    python train.py -m model=small,medium,large trainer.num_nodes=1,2,4,8
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from src.launch import LaunchError, isolated_job, launch_local, needs_local_launch
from src.training import (
    BAD_INPUT_ERRORS,
    ERROR_FILE,
    METRICS_FILE,
    finished_result,
    fit_job,
    record_failure,
    set_aside_stale_result,
)

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict:
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
    except Exception as err:
        if not (out_dir / ERROR_FILE).is_file():  # rank 0 of a launched job records its own
            record_failure(out_dir, err)
        raise
    return json.loads((out_dir / METRICS_FILE).read_text())


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()
    if cfg.get("sweep_group") is None and hydra_cfg.mode == RunMode.MULTIRUN:
        cfg.sweep_group = Path(hydra_cfg.sweep.dir).name
    try:
        result = run(cfg)
    except (*BAD_INPUT_ERRORS, LaunchError) as err:
        if hydra_cfg.mode == RunMode.MULTIRUN:
            raise  # Hydra records the failed job and goes on with the sweep
        # bad input or a failed rank: one line naming the culprit (details in error.txt)
        print(f"train.py: error: {err}", file=sys.stderr)
        sys.exit(2)
    print(f"metrics: {Path(cfg.paths.output_dir) / METRICS_FILE}")
    return result


if __name__ == "__main__":
    main()

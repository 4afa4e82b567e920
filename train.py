"""Train one CosmoFlow-family model and write the job's metrics.json.

    python train.py model=small data.dir=data/tiny data.fraction=1/4 trainer.max_epochs=1 hydra.run.dir=OUT
    python train.py -m model=small data.fraction=1,0.5 trainer=ddp_sim
    python train.py -m model=small,medium,large trainer.num_nodes=1,2,4,8
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig

from src.launch import isolated_job, launch_local, needs_local_launch
from src.training import METRICS_FILE, fit_job, record_failure

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict:
    """Train (in-process, or as locally launched ranks) and return the metrics.json payload."""
    out_dir = Path(cfg.paths.output_dir)
    if not needs_local_launch(cfg):
        try:
            with isolated_job():
                return fit_job(cfg)
        except Exception as err:
            record_failure(out_dir, err)
            raise
    launch_local(cfg)
    return json.loads((out_dir / METRICS_FILE).read_text())


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    result = run(cfg)
    print(f"metrics: {Path(cfg.paths.output_dir) / METRICS_FILE}")
    return result


if __name__ == "__main__":
    main()
